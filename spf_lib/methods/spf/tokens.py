"""Token bookkeeping between the base prompt (reference path) and base + target prompt (response path).

The target phrase inserts tokens, so the i-th base token sits at a different position in the response prompt; the
alignment loss must compare each base token's map with ITS OWN map in the other path. We align the two token-id
sequences (difflib on ids; the base caption is the response caption minus the target phrase, so this is exact for
our captions) and pair the special tokens (BOS, EOS, then padding in order).
"""

from __future__ import annotations

import difflib
from functools import lru_cache


class TokenMapper:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.max_len = int(tokenizer.model_max_length)
        self._ids = lru_cache(maxsize=4096)(self._content_ids)

    def _content_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids)

    def content_ids(self, text: str) -> tuple[int, ...]:
        return self._ids(text)

    def index_map(self, base_text: str, res_text: str, include_special: bool = True) -> tuple[list[int], list[int]]:
        """Pairs (i_ref, j_res) of positions in the padded 77-token sequences that carry the same base token."""
        a, b = self.content_ids(base_text), self.content_ids(res_text)
        last = self.max_len - 1  # position of EOS when truncated
        ref, res = [], []
        for blk in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
            for k in range(blk.size):
                i, j = 1 + blk.a + k, 1 + blk.b + k
                if i < last and j < last:
                    ref.append(i)
                    res.append(j)
        if include_special:
            ref.append(0)
            res.append(0)
            i, j = min(1 + len(a), last), min(1 + len(b), last)
            while i < self.max_len and j < self.max_len:
                ref.append(i)
                res.append(j)
                i += 1
                j += 1
        return ref, res

    def phrase_positions(self, text: str, phrase: str) -> list[int]:
        """Positions (in the padded sequence of ``text``) of the first occurrence of ``phrase``'s tokens; [] if none."""
        hay, needle = self.content_ids(text), self.content_ids(phrase)
        if not needle:
            return []
        for s in range(len(hay) - len(needle) + 1):
            if hay[s:s + len(needle)] == needle:
                return [1 + s + k for k in range(len(needle)) if 1 + s + k < self.max_len - 1]
        return []
