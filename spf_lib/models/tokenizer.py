"""A CLIP BPE tokenizer built locally, so tiny models need nothing from a model hub.

The vocabulary is CLIP's byte alphabet (each byte alone and as a word end) plus whole-word merges for a portrait
vocabulary. Unknown words still tokenize (down to bytes), exactly as the real CLIP tokenizer behaves.
"""

from __future__ import annotations

import json
from pathlib import Path

PORTRAIT_WORDS: tuple[str, ...] = (
    "a photo of the face person portrait man woman with and in wearing on background studio close up "
    "up-close headshot smiling smile neutral serious expression looking at camera glasses round sunglasses hat "
    "beard moustache earrings necklace scarf hair blonde black brown red grey gray white blue green yellow pink "
    "purple orange dark light short long curly straight bald shirt jacket sweater dress suit tie collar coat "
    "curtain wall sky plain gradient outdoor indoor office street park brick wooden striped dotted "
    "skin tone pale tan olive young old astronaut uniform flag spacesuit officer navy admiral hopper grace "
    "eileen collins lit bright dim warm cool soft hard lighting high quality detailed sks v* person's face"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab(words: tuple[str, ...] = PORTRAIT_WORDS) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) in CLIP's format."""
    alphabet = list(_bytes_to_unicode().values())
    tokens: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(tokens)
    for word in dict.fromkeys(w.lower() for w in words):
        enc = "".join(_bytes_to_unicode()[b] for b in word.encode("utf-8"))
        symbols = list(enc[:-1]) + [enc[-1] + "</w>"]
        while len(symbols) > 1:
            pair = f"{symbols[0]} {symbols[1]}"
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in seen:
                tokens.append(merged)
                seen.add(merged)
            symbols = [merged] + symbols[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def save_tokenizer_files(out_dir: str | Path, words: tuple[str, ...] = PORTRAIT_WORDS) -> Path:
    """Write vocab.json + merges.txt and return the folder; load it with ``CLIPTokenizer.from_pretrained``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def build_tokenizer(max_length: int = 77, words: tuple[str, ...] = PORTRAIT_WORDS):
    """An in-memory CLIPTokenizer with the local vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab(words)
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok.model_max_length = max_length
    return tok
