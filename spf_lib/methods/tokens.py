"""Token rows shared by the methods: placeholder tokens of the identity methods (Celeb Basis, Beyond Inserting) and
the override SPF's target-token rows train through.

Why a forward hook on the token-embedding layer instead of calling the text model with ``inputs_embeds``: the CLIP
text model in transformers 5 no longer accepts ``inputs_embeds``, and re-implementing its causal mask and encoder
call would silently drift from the library. Overriding the embedding layer's OUTPUT at the placeholder positions
uses the library's own forward pass unchanged, stays differentiable (training) and is exactly equivalent to writing
the same vector into the embedding table (generation), which the tests check.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from spf_lib.errors import SpfError


def add_placeholder_tokens(tokenizer: Any, text_encoder: Any, tokens: list[str]) -> list[int]:
    """Add ``tokens`` to the tokenizer (idempotent) and grow the embedding table; the text encoder stays frozen."""
    for t in tokens:
        if t != t.lower() or " " in t:
            raise SpfError(f"placeholder token {t!r}: must be lower-case without spaces (CLIP lower-cases prompts)")
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    emb = text_encoder.get_input_embeddings()
    if emb.num_embeddings < len(tokenizer):
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    text_encoder.requires_grad_(False)
    for t in tokens:
        if len(tokenizer.tokenize(t)) != 1:
            raise SpfError(f"placeholder token {t!r}: the tokenizer splits it; pick another name")
    return list(ids)


def write_token_rows(text_encoder: Any, ids: list[int], vectors: Any) -> None:
    """Write ``vectors`` (len(ids), D) into the embedding table rows ``ids`` (no grad; generation path)."""
    import torch

    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for i, v in zip(ids, vectors):
            weight[i] = v.to(weight.dtype, copy=True).to(weight.device)


def token_id_of(tokenizer: Any, word: str) -> int:
    """Id of a word that must be ONE token (e.g. "person"); raises naming the word otherwise."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise SpfError(f"word {word!r}: tokenizes into {len(ids)} tokens; need exactly one")
    return int(ids[0])


def positions_of(input_ids: Any, token_id: int) -> Any:
    """(B,) index of the first occurrence of ``token_id`` per row; raises if a row lacks it."""
    mask = input_ids == token_id
    if not bool(mask.any(dim=1).all()):
        raise SpfError(f"token id {token_id}: missing from at least one prompt row")
    return mask.int().argmax(dim=1)


class TokenOverride:
    """Replace the embedding-layer output wherever a given token id occurs, while active.

    ``values[token_id]`` is a (D,) vector (same for every row) or an (N, D) tensor (one per batch row).
    """

    def __init__(self, text_encoder: Any) -> None:
        self.values: dict[int, Any] = {}
        self._handle = text_encoder.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module: Any, args: tuple, output: Any) -> Any:
        if not self.values:
            return None
        import torch

        ids = args[0]
        out = output
        for tid, vec in self.values.items():
            mask = (ids == tid).unsqueeze(-1)
            if not bool(mask.any()):
                continue
            v = vec.to(device=out.device, dtype=out.dtype)
            v = v.expand_as(out) if v.dim() == 1 else v[:, None, :].expand_as(out)
            out = torch.where(mask, v, out)
        return out

    @contextlib.contextmanager
    def use(self, values: dict[int, Any]) -> Iterator[None]:
        old = self.values
        self.values = values
        try:
            yield
        finally:
            self.values = old

    def remove(self) -> None:
        self._handle.remove()


def replace_trigger(text: str, trigger: str, replacement: str) -> str:
    """Rewrite ``"<trigger> person"`` or a bare ``<trigger>`` (whole word, any case) into ``replacement``."""
    pat = re.compile(rf"\b{re.escape(trigger)}\b(\s+person\b)?", re.IGNORECASE)
    return pat.sub(replacement, text)
