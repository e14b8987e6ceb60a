"""Beyond Inserting as a plugin of the shared training loop (``spf train --method beyond-inserting``).

Loss = ε-MSE + λ · face-wise attention loss (λ = 0.003). UNet and text encoder are frozen; gradients reach only the
token module, through the frozen text transformer (K path) and the frozen UNet (both paths).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spf_lib.methods.beyond_inserting.options import BeyondInsertingOptions
from spf_lib.methods.celeb_basis.options import parse_options

log = logging.getLogger(__name__)
WEIGHTS_FILE = "beyond_inserting.safetensors"
FORMAT = "beyond-inserting-v1"
LOADER = "spf_lib.methods.beyond_inserting.adapter:load"


def placeholder_token(trigger: str) -> str:
    return f"<bi-{trigger}>"


class BeyondInsertingMethod:
    name = "beyond-inserting"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.opts: BeyondInsertingOptions = parse_options(getattr(cfg, "beyond_inserting", {}) or {},
                                                          BeyondInsertingOptions, "beyond_inserting")
        self.enabled = True

    def setup(self, ctx: Any) -> list:
        import torch

        from spf_lib.methods.beyond_inserting.inject import Injector, assign_stages, cross_attention_layers
        from spf_lib.methods.beyond_inserting.module import KVTokenGenerator
        from spf_lib.methods.tokens import add_placeholder_tokens, positions_of, token_id_of

        o = self.opts
        te, tok = ctx.text_encoder, ctx.tokenizer
        ref_word_id = token_id_of(tok, o.reference_word)
        self.token = placeholder_token(o.trigger)
        self.token_id = add_placeholder_tokens(tok, te, [self.token])[0]
        te.to(ctx.device)
        with torch.no_grad():
            ref_ids = ctx.tokenize([o.reference_prompt])
            self.ref_pos = positions_of(ref_ids, ref_word_id)
            self.ref_hidden = te(ref_ids)[0].float()
            init_token = te.get_input_embeddings().weight[ref_word_id].float()
        anchor_v = self.ref_hidden[0, int(self.ref_pos[0])] if o.value_mode == "direct" else init_token
        layers = cross_attention_layers(ctx.unet)
        self.stage_of = assign_stages(layers, o.n_stages)
        self.n_stages = max(self.stage_of.values()) + 1
        if self.n_stages < o.n_stages:
            log.warning("beyond-inserting: %d stages requested, the UNet has %d cross-attention layers; using %d",
                        o.n_stages, len(layers), self.n_stages)
        torch.manual_seed(ctx.cfg.seed)
        self.module = KVTokenGenerator(init_token.shape[0], self.n_stages, init_token, anchor_v, o.heads,
                                       o.layers).to(ctx.device)
        self.injector = Injector(ctx.unet, te, self.stage_of, self.n_stages, tok.model_max_length, self.token_id,
                                 o.value_mode)
        self.injector.install(hook=False)
        self._write_row(ctx)
        return list(self.module.parameters())

    def _write_row(self, ctx: Any) -> None:
        """V*'s table row = the module's current v_star, exactly what the loader writes: the text encoding of the
        tokens around V* (end-of-text, padding) then matches between training, validation and generation."""
        from spf_lib.methods.tokens import write_token_rows

        write_token_rows(ctx.text_encoder, [self.token_id], self.module.v_star.detach()[None])

    def compute_loss(self, ctx: Any, batch: dict, step: int):
        from spf_lib.methods.base import diffusion_loss
        from spf_lib.methods.beyond_inserting.inject import attention_loss, pack_hidden
        from spf_lib.methods.tokens import positions_of

        b = len(batch["index"])
        ids = ctx.tokenize([self.opts.template.format(self.token)] * b)
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _, timesteps, target = ctx.add_noise(latents)
        k, v = self.module()
        self._write_row(ctx)
        with self.injector.bypass():
            # the base encoding sees V* = v_star through the override (differentiable), equal to the table row
            with self.injector.override.use({self.token_id: self.module.v_star}):
                base = ctx.text_encoder(ids)[0]
            packed = pack_hidden(ctx.text_encoder, self.injector.override, ids, self.token_id, k, v,
                                 self.opts.value_mode, base=base)
        st = self.injector.store
        st.capture, st.maps = True, []
        st.token_pos = positions_of(ids, self.token_id)
        st.ref_hidden = self.ref_hidden.expand(b, -1, -1)
        st.ref_pos = self.ref_pos.expand(b)
        try:
            pred = ctx.unet(noisy, timesteps, packed.to(ctx.weight_dtype)).sample
        finally:
            st.capture = False
        l_diff = diffusion_loss(pred, target)
        l_attn = attention_loss(st.maps).to(l_diff.device)
        st.maps = []
        loss = l_diff + self.opts.attn_weight * l_attn
        return loss, {"loss_diffusion": float(l_diff.detach()), "loss_attention": float(l_attn.detach())}

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd)

    def tokens(self):
        import torch

        with torch.no_grad():
            k, v = self.module()
        return k.detach().clone(), v.detach().clone()

    def set_enabled(self, ctx: Any, enabled: bool) -> None:
        if enabled:
            self._write_row(ctx)
            self.injector.install(self.tokens(), hook=True)
        else:
            self.injector.remove()
        self.enabled = enabled

    def prompt(self, text: str) -> str:
        from spf_lib.methods.tokens import replace_trigger

        return replace_trigger(text, self.opts.trigger, self.token) if self.enabled else text

    def save_adapter(self, ctx: Any, out_dir: Path) -> dict:
        from safetensors.torch import save_file

        k, v = self.tokens()
        tensors = {"k_tokens": k.cpu().contiguous(), "v_tokens": v.cpu().contiguous()}
        tensors.update({f"module.{n}": t.cpu().contiguous() for n, t in self.module.state_dict().items()})
        save_file(tensors, str(Path(out_dir) / WEIGHTS_FILE))
        o = self.opts
        return {
            "method": self.name, "format": FORMAT, "loader": LOADER, "weights_file": WEIGHTS_FILE,
            "trigger": o.trigger, "token": self.token, "value_mode": o.value_mode, "n_stages": self.n_stages,
            "n_stages_requested": o.n_stages, "stage_of_layer": self.stage_of, "template": o.template,
            "reference_prompt": o.reference_prompt, "reference_word": o.reference_word, "attn_weight": o.attn_weight,
            "trainable_params": sum(p.numel() for p in self.module.parameters()),
        }
