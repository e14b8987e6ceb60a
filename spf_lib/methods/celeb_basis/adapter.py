"""Load a Celeb Basis adapter into a pipeline: ``spf_lib.methods.load_adapter`` calls ``load`` via adapter_info.

Generation needs no face encoder and no MLP: the exported per-identity coefficients (2 x k numbers) and the basis
give the two token embeddings directly, written into the pipeline's own embedding table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.methods import AdapterHandle


@dataclass
class CelebBasisHandle(AdapterHandle):
    triggers: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)
    embeddings: Any = None       # (n_identities, 2, D)

    def enable(self) -> None:
        from spf_lib.methods.tokens import write_token_rows

        for ids, emb in zip(self.token_ids, self.embeddings):
            write_token_rows(self.pipe.text_encoder, ids, emb)
        self._enabled = True

    def disable(self) -> None:
        # The placeholder rows stay in the table but no prompt reaches them: prompt() leaves text unchanged.
        self._enabled = False

    def prompt(self, text: str) -> str:
        from spf_lib.methods.tokens import replace_trigger

        if not self._enabled:
            return text
        for trig, toks in zip(self.triggers, self.tokens):
            text = replace_trigger(text, trig, " ".join(toks))
        return text


def load(pipe: Any, adapter_dir: Path, info: dict) -> CelebBasisHandle:
    from safetensors.torch import load_file

    from spf_lib.methods.celeb_basis.basis import embed_coefficients
    from spf_lib.methods.tokens import add_placeholder_tokens

    path = Path(adapter_dir) / info.get("codes_file", "identity_codes.safetensors")
    if not path.is_file():
        raise SpfError(f"{path}: missing Celeb Basis identity codes")
    t = load_file(str(path))
    if "coefficients" not in t or "basis" not in t:
        raise SpfError(f"{path}: needs tensors 'coefficients' and 'basis', found {sorted(t)}")
    coef, basis = t["coefficients"], t["basis"]
    idents = info.get("identities") or []
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if basis.dim() != 3 or basis.shape[0] != 2 or basis.shape[2] != dim:
        raise SpfError(f"{path}: basis shape {tuple(basis.shape)} does not fit this text encoder "
                       f"(need (2, k+1, {dim}))")
    if coef.shape != (len(idents), 2, basis.shape[1] - 1):
        raise SpfError(f"{path}: coefficients shape {tuple(coef.shape)} != ({len(idents)}, 2, {basis.shape[1] - 1})")
    tokens = [list(i["tokens"]) for i in idents]
    ids = [add_placeholder_tokens(pipe.tokenizer, pipe.text_encoder, toks) for toks in tokens]
    emb = embed_coefficients(coef.float(), basis.float())
    handle = CelebBasisHandle(pipe=pipe, info=info, adapter_name="celeb-basis",
                              triggers=[i["trigger"] for i in idents], tokens=tokens, token_ids=ids, embeddings=emb)
    handle.enable()
    return handle
