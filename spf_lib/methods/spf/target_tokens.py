"""Our addition to SPF (docs/method.md "target tokens"): the target phrase's own tokens get learned input embeddings.

Why: with the adapter alone, the target words become the attribute only through weights that every prompt passes
through — whatever the UNet learns for "wearing round glasses" also reaches prompts without it (the leak and
pollution SPF's losses then have to fight). An embedding row reaches only the prompts that contain its token: the text
encodings of prompts without the target stay bit-identical, so what the rows learn cannot pollute them. Tokens the
target shares with any base phrase of the set (``wearing`` of ``wearing a hat``) are left alone for the same reason.
Textual inversion learns such rows for a new word; pivotal tuning learns them beside a LoRA — here for the target's
own words, in every text encoder the base model has.

Training overrides the embedding layer's output (``TokenOverride``: differentiable, the library's own forward);
generation writes the same vectors into the table (``TokenRows``, switched with the adapter), which is equivalent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError

TOKENS_FILE = "target_tokens.safetensors"


def tokenizer_name(encoder_name: str) -> str:
    """``text_encoder_2`` → ``tokenizer_2`` (diffusers' pipeline attribute pairs)."""
    return encoder_name.replace("text_encoder", "tokenizer")


def select_target_tokens(tokenizer: Any, target_phrases: Iterable[str], base_phrases: Iterable[str]) -> list[int]:
    """Ids in some target phrase, in no base phrase, and not special (BOS/EOS/padding carry every prompt)."""
    def ids(phrases: Iterable[str]) -> set[int]:
        out: set[int] = set()
        for p in {p for p in phrases if p}:
            out |= set(tokenizer(p, add_special_tokens=False).input_ids)
        return out

    return sorted(ids(target_phrases) - ids(base_phrases) - set(tokenizer.all_special_ids))


class TargetTokens:
    """The learned rows of every text encoder of a pipeline, as trainable parameters (training side)."""

    def __init__(self, pipe: Any, encoder_names: Iterable[str], examples: list) -> None:
        import torch

        from spf_lib.methods.tokens import TokenOverride

        targets = [e.target_phrase for e in examples if e.target_phrase]
        if not targets:
            raise SpfError("spf.target_tokens: the training set has no target phrase (manifest target_phrase is empty)")
        bases = [p for e in examples for p in e.base_phrases]
        self.encoders: list[tuple[str, list[int], Any, Any]] = []  # (name, ids, vectors (Parameter), override)
        for name in encoder_names:
            te, tok = getattr(pipe, name, None), getattr(pipe, tokenizer_name(name), None)
            if te is None or tok is None:
                continue
            ids = select_target_tokens(tok, targets, bases)
            if not ids:
                continue
            weight = te.get_input_embeddings().weight
            vec = torch.nn.Parameter(weight[ids].detach().float().clone())
            self.encoders.append((name, ids, vec, TokenOverride(te)))
        if not self.encoders:
            raise SpfError(f"spf.target_tokens: every token of the target phrase {targets[0]!r} also occurs in a base "
                           "phrase of the set; nothing to learn (set spf.target_tokens=false)")
        self.tokens = {name: tok_names(getattr(pipe, tokenizer_name(name)), ids) for name, ids, _, _ in self.encoders}

    def params(self) -> list:
        return [vec for _, _, vec, _ in self.encoders]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The live (trainable) rows in every text encoder's forward, for the duration."""
        with contextlib.ExitStack() as stack:
            for _, ids, vec, ov in self.encoders:
                stack.enter_context(ov.use({tid: vec[i] for i, tid in enumerate(ids)}))
            yield

    def set_enabled(self, enabled: bool) -> None:
        """The rows (detached) in every forward while enabled — the pipeline's own sampling during training."""
        for _, ids, vec, ov in self.encoders:
            ov.values = {tid: vec[i].detach() for i, tid in enumerate(ids)} if enabled else {}

    def state_dict(self) -> dict:
        out = {}
        for name, ids, vec, _ in self.encoders:
            out[f"{name}.ids"] = _ids_tensor(ids)
            out[f"{name}.vectors"] = vec.detach().float().cpu().clone()
        return out

    def load_state_dict(self, sd: dict, where: str) -> None:
        import torch

        for name, ids, vec, _ in self.encoders:
            got = sd.get(f"{name}.ids")
            if got is None or got.tolist() != ids or f"{name}.vectors" not in sd:
                raise SpfError(f"{where}: target-token rows of {name} do not match this training set's target tokens")
            with torch.no_grad():
                vec.copy_(sd[f"{name}.vectors"].to(vec))

    def save(self, out_dir: Path) -> dict:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(Path(out_dir) / TOKENS_FILE))
        return {"file": TOKENS_FILE, "tokens": self.tokens}

    def remove(self) -> None:
        for _, _, _, ov in self.encoders:
            ov.remove()


def tok_names(tokenizer: Any, ids: list[int]) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def _ids_tensor(ids: list[int]):
    import torch

    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class TokenRows:
    """One text encoder's embedding rows: the adapter's and the base model's, written on enable/disable."""

    weight: Any
    ids: list[int]
    tuned: Any
    original: Any

    def write(self, enabled: bool) -> None:
        import torch

        with torch.no_grad():
            self.weight[self.ids] = self.tuned if enabled else self.original


def load_token_rows(pipe: Any, adapter_dir: Path, info: dict) -> list[TokenRows]:
    """The rows an adapter carries, checked against this pipeline's text encoders (nothing written yet)."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / str(info.get("file", TOKENS_FILE))
    if not path.is_file():
        raise SpfError(f"{path}: missing (adapter_info.json lists target tokens)")
    sd = load_file(str(path))
    rows = []
    for name in sorted({k.rsplit(".", 1)[0] for k in sd}):
        te = getattr(pipe, name, None) if name.startswith("text_encoder") else None
        if te is None or f"{name}.ids" not in sd or f"{name}.vectors" not in sd:
            raise SpfError(f"{path}: rows for {name!r}, which this base model does not have")
        weight = te.get_input_embeddings().weight
        ids = [int(i) for i in sd[f"{name}.ids"].tolist()]
        vec = sd[f"{name}.vectors"]
        if vec.shape != (len(ids), weight.shape[1]) or not all(0 <= i < weight.shape[0] for i in ids):
            raise SpfError(f"{path}: {name} rows {tuple(vec.shape)} for ids {ids[:4]} do not fit this base model's "
                           f"embedding table {tuple(weight.shape)}")
        rows.append(TokenRows(weight, ids, vec.to(weight.device, weight.dtype), weight[ids].detach().clone()))
    return rows
