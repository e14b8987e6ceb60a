"""Celeb Basis as a plugin of the shared training loop (``spf train --method celeb-basis``).

Only the face→coefficient MLP trains; UNet and text encoder stay frozen. The identity's face vector is computed once
(frozen encoder), so a training step costs one text-encoder and one UNet forward/backward, like textual inversion.
Several identities (manifest column ``identity``) train jointly through one MLP, each with its own two tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError
from spf_lib.methods.celeb_basis.options import TRIGGER_RE, CelebBasisOptions, parse_options

log = logging.getLogger(__name__)
CODES_FILE = "identity_codes.safetensors"
MLP_FILE = "celeb_basis_mlp.safetensors"
FORMAT = "celeb-basis-v1"
LOADER = "spf_lib.methods.celeb_basis.adapter:load"


def placeholder_tokens(trigger: str) -> list[str]:
    return [f"<cb-{trigger}-a>", f"<cb-{trigger}-b>"]


def read_identities(data_dir: str | Path, column: str, default_trigger: str) -> tuple[list[str], list[int], list[Path]]:
    """(triggers, identity index per manifest row, crop path per row), in manifest row order (= the loop's order)."""
    import pandas as pd

    path = Path(data_dir) / "manifest.parquet"
    df = pd.read_parquet(path)
    if column in df.columns:
        names = [str(v).strip().lower() for v in df[column]]
        bad = sorted({n for n in names if not TRIGGER_RE.match(n)})
        if bad:
            raise SpfError(f"{path}: column {column!r} values {bad[:3]} must be one lower-case word each (prompt "
                           "triggers)")
    else:
        names = [default_trigger] * len(df)
    triggers = list(dict.fromkeys(names))
    rows = [triggers.index(n) for n in names]
    crops = [Path(data_dir) / str(c) for c in df["crop_path"]]
    return triggers, rows, crops


class CelebBasisMethod:
    name = "celeb-basis"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.opts: CelebBasisOptions = parse_options(getattr(cfg, "celeb_basis", {}) or {})
        self.enabled = True

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, ctx: Any) -> list:
        import torch
        from PIL import Image

        from spf_lib.methods.celeb_basis.basis import basis_from_text_encoder
        from spf_lib.methods.celeb_basis.encoder import make_face_encoder
        from spf_lib.methods.celeb_basis.model import CelebBasisMLP
        from spf_lib.methods.tokens import TokenOverride, add_placeholder_tokens

        o = self.opts
        self.triggers, self.row_identity, crops = read_identities(ctx.cfg.data_dir, o.identity_column, o.trigger)
        encoder = make_face_encoder(o.face_encoder)
        images = []
        for p in crops:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
                images[-1].filename = str(p)
        faces = encoder.encode(images).float()
        per_id = torch.stack([faces[[r == i for r in self.row_identity]].mean(0) for i in range(len(self.triggers))])
        self.face = torch.nn.functional.normalize(per_id, dim=1).to(ctx.device)
        # the basis comes from the ORIGINAL table, before placeholder rows exist
        cb = basis_from_text_encoder(ctx.tokenizer, ctx.text_encoder, k=o.k, names_file=o.names_file,
                                     multi_token=o.multi_token)
        self.basis_info = {"k": cb.k, "dim": cb.dim, "n_names": cb.n_names, "n_multi_token_names": cb.n_multi_token}
        log.info("celeb basis: %s, %d identities, face dim %d", self.basis_info, len(self.triggers), faces.shape[1])
        self.tokens = [placeholder_tokens(t) for t in self.triggers]
        self.token_ids = [add_placeholder_tokens(ctx.tokenizer, ctx.text_encoder, toks) for toks in self.tokens]
        ctx.text_encoder.to(ctx.device)
        torch.manual_seed(ctx.cfg.seed)
        self.mlp = CelebBasisMLP(int(faces.shape[1]), cb.basis, o.negative_slope, init=o.mlp_init,
                                 lr_mul=o.lr_mul).to(ctx.device)
        with torch.no_grad():   # the running average starts at the initial output (official: N(0, 1) draws)
            self.coef_ema = self.mlp.coefficients(self.face).detach().clone()
        self.override = TokenOverride(ctx.text_encoder)
        self.face_encoder_name = getattr(encoder, "name", o.face_encoder)
        self._write_rows(ctx)
        return list(self.mlp.parameters())

    # -- training ---------------------------------------------------------------------------------------------
    def embeddings(self):
        """(n_identities, 2, D) token embeddings from the current MLP."""
        return self.mlp(self.face)

    def exported_coefficients(self):
        """(n_identities, 2, k): what the adapter stores and generation uses: the running average of the MLP's
        outputs (coef_momentum > 0, the official export) or the current output."""
        import torch

        if self.opts.coef_momentum > 0:
            return self.coef_ema.detach().clone()
        with torch.no_grad():
            return self.mlp.coefficients(self.face)

    def _update_ema(self, coef, rows: list[int]) -> None:
        """One momentum update per batch row, with that row's identity (as the official training step does)."""
        m = self.opts.coef_momentum
        if m <= 0:
            return
        c = coef.detach()
        for i in rows:
            self.coef_ema[i] = m * self.coef_ema[i] + (1 - m) * c[i]

    def placeholder(self, i: int) -> str:
        return " ".join(self.tokens[i])

    def compute_loss(self, ctx: Any, batch: dict, step: int):
        from spf_lib.methods.base import diffusion_loss

        idx = batch["index"]
        t = self.opts.templates
        prompts = [t[(step * len(idx) + j) % len(t)].format(self.placeholder(self.row_identity[i]))
                   for j, i in enumerate(idx)]
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _, timesteps, target = ctx.add_noise(latents)
        from spf_lib.methods.celeb_basis.basis import embed_coefficients

        coef = self.mlp.coefficients(self.face)
        self._update_ema(coef, [self.row_identity[i] for i in idx])
        emb = embed_coefficients(coef, self.mlp.basis)
        values = {tid: emb[i, c] for i, ids in enumerate(self.token_ids) for c, tid in enumerate(ids)}
        with self.override.use(values):
            hidden = ctx.text_encoder(ctx.tokenize(prompts))[0]
        pred = ctx.unet(noisy, timesteps, hidden.to(ctx.weight_dtype)).sample
        loss = diffusion_loss(pred, target)
        return loss, {"loss_diffusion": float(loss.detach())}

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # the running average is training state too: resume must continue it, not restart it
        return {**{k: v.detach().clone() for k, v in self.mlp.state_dict().items()},
                "coef_ema": self.coef_ema.detach().clone()}

    def load_state_dict(self, sd: dict) -> None:
        sd = dict(sd)
        ema = sd.pop("coef_ema", None)
        self.mlp.load_state_dict(sd)
        if ema is not None:
            self.coef_ema = ema.to(self.coef_ema.device, self.coef_ema.dtype).clone()

    def _write_rows(self, ctx: Any) -> None:
        import torch

        from spf_lib.methods.celeb_basis.basis import embed_coefficients
        from spf_lib.methods.tokens import write_token_rows

        with torch.no_grad():   # the exported code, so validation grids show what a loaded adapter generates
            emb = embed_coefficients(self.exported_coefficients(), self.mlp.basis)
        for i, ids in enumerate(self.token_ids):
            write_token_rows(ctx.text_encoder, ids, emb[i])

    def set_enabled(self, ctx: Any, enabled: bool) -> None:
        if enabled:
            self._write_rows(ctx)
        self.enabled = enabled

    def prompt(self, text: str) -> str:
        from spf_lib.methods.tokens import replace_trigger

        if not self.enabled:
            return text
        for i, trig in enumerate(self.triggers):
            text = replace_trigger(text, trig, self.placeholder(i))
        return text

    def save_adapter(self, ctx: Any, out_dir: Path) -> dict:
        from safetensors.torch import save_file

        coef = self.exported_coefficients().cpu().contiguous()
        save_file({"coefficients": coef, "basis": self.mlp.basis.cpu().contiguous()}, str(Path(out_dir) / CODES_FILE))
        save_file({**{k: v.cpu().contiguous() for k, v in self.mlp.state_dict().items()},
                   "face_embeddings": self.face.cpu().contiguous()}, str(Path(out_dir) / MLP_FILE))
        return {
            "method": self.name, "format": FORMAT, "loader": LOADER, "codes_file": CODES_FILE, "mlp_file": MLP_FILE,
            "identities": [{"trigger": t, "tokens": toks} for t, toks in zip(self.triggers, self.tokens)],
            "numbers_per_identity": int(coef[0].numel()), "face_encoder": self.face_encoder_name,
            "names_file": self.opts.names_file or "spf_lib/assets/celeb_names.txt", **self.basis_info,
            "mlp_init": self.opts.mlp_init, "lr_mul": self.opts.lr_mul, "coef_momentum": self.opts.coef_momentum,
            "trainable_params": sum(p.numel() for p in self.mlp.parameters()),
        }
