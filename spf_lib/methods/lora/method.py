"""LoRA on the UNet: the baseline, and stage 1 / the trainable part of SPF-Portrait.

peft adds the LoRA layers in place, so "original model" = the same UNet with adapters disabled: one copy of the
weights serves the frozen reference path, the tuned path and the before/after validation grid.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spf_lib.methods import LORA_WEIGHTS
from spf_lib.methods.base import TrainContext, diffusion_loss

log = logging.getLogger(__name__)
ADAPTER_NAME = "default"


class AdapterSwitch:
    """Turn every LoRA layer of a model off/on in O(layers) attribute writes.

    ``unet.disable_adapters()`` walks all modules, re-checks the peft version and toggles ``requires_grad`` on every
    LoRA tensor: ~15 ms of Python per call pair even on the tiny model, paid twice per SPF step. The reference path
    only needs each layer's forward to skip its adapter, which is exactly peft's ``_disable_adapters`` flag.
    Falls back to the public API if a peft release renames the flag.
    """

    def __init__(self, model) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        self.fast = bool(self.layers) and all(hasattr(m, "_disable_adapters") for m in self.layers)

    def set(self, enabled: bool) -> None:
        if not self.fast:
            (self.model.enable_adapters if enabled else self.model.disable_adapters)()
            return
        for m in self.layers:
            m._disable_adapters = not enabled

    @contextmanager
    def off(self):
        """The original model for the duration; the adapter is back on afterwards, also after an error."""
        self.set(False)
        try:
            yield
        finally:
            self.set(True)


class LoraMethod:
    name = "lora"

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.unet = None
        self.params: list = []
        self.switch: AdapterSwitch | None = None

    # -- plugin interface -------------------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> list:
        import torch
        from peft import LoraConfig

        o = self.cfg.lora
        lcfg = LoraConfig(r=o.rank, lora_alpha=o.alpha or o.rank, lora_dropout=o.dropout, init_lora_weights="gaussian",
                          target_modules=ctx.backbone.lora_target(o.target_modules, o.cross_attention_only))
        unet = ctx.unet
        unet.requires_grad_(False)
        # LoRA init draws from the global RNG: seed it so the init (and so the whole run) is reproducible.
        state = torch.get_rng_state()
        torch.manual_seed(o.init_seed if o.init_seed is not None else self.cfg.seed)
        try:
            unet.add_adapter(lcfg, adapter_name=ADAPTER_NAME)
        except ValueError as e:
            from spf_lib.errors import SpfError

            raise SpfError(f"lora.target_modules={o.target_modules!r}: {str(e).splitlines()[0]}") from None
        finally:
            torch.set_rng_state(state)
        self.params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in self.params:  # trainable params in fp32 even when the frozen weights are bf16/fp16
            p.data = p.data.float()
            p.requires_grad_(True)
        self.unet = unet
        self.switch = AdapterSwitch(unet)
        log.info("LoRA r=%d on %d tensors (%d params)", o.rank, len(self.params), sum(p.numel() for p in self.params))
        return self.params

    def compute_loss(self, ctx: TrainContext, batch: dict[str, Any], step: int):
        latents = ctx.encode_images(batch["pixel_values"])
        noisy, _noise, t, target = ctx.add_noise(latents)
        pred = ctx.denoise(noisy, t, self.condition(ctx, batch["caption"]))
        loss = diffusion_loss(pred, target)
        return loss, {"loss_diffusion": float(loss.detach())}

    def condition(self, ctx: TrainContext, texts: list[str]):
        """The conditioning of the texts the adapter is trained on (SPF: with its learned target-token rows)."""
        return ctx.condition(texts)

    def state_dict(self) -> dict:
        return self.lora_state_dict()

    def lora_state_dict(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().float().cpu().contiguous()
                for k, v in get_peft_model_state_dict(self.unet, adapter_name=ADAPTER_NAME).items()}

    def load_state_dict(self, sd: dict) -> None:
        from peft.utils import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.unet, sd, adapter_name=ADAPTER_NAME)
        unexpected = getattr(res, "unexpected_keys", None)
        if unexpected:
            from spf_lib.errors import SpfError

            raise SpfError(f"checkpoint adapter weights do not match this LoRA config: unexpected {unexpected[:3]}")

    def set_enabled(self, ctx: TrainContext, enabled: bool) -> None:
        self.switch.set(enabled)

    def prompt(self, text: str) -> str:
        return text

    def save_adapter(self, ctx: TrainContext, out_dir: Path) -> dict:
        sd = ctx.backbone.lora_weights_for_save(self.lora_state_dict())
        meta = self.unet.peft_config[ADAPTER_NAME].to_dict()
        name = ctx.backbone.denoiser_name  # the pipeline class's own writer: SD, SDXL and SD3 key prefixes differ
        type(ctx.pipe).save_lora_weights(
            str(out_dir), weight_name=LORA_WEIGHTS, safe_serialization=True,
            **{f"{name}_lora_layers": sd, f"{name}_lora_adapter_metadata": meta},
        )
        o = self.cfg.lora
        return {"method": self.name, "format": "lora", "weight_name": LORA_WEIGHTS, "architecture": ctx.backbone.kind,
                "rank": o.rank,
                "alpha": o.alpha or o.rank, "target_modules": o.target_modules,
                "cross_attention_only": o.cross_attention_only}
