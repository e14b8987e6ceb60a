"""What differs between base-model architectures, in one object per architecture, so methods stay architecture-free.

A method asks the backbone for the text conditioning (``encode``) and hands it back to the denoiser (``denoise``);
SPF's reference and response paths receive the same kind of ``Conditioning`` built the same way, only from their own
text. That is where SDXL's second text encoder, its pooled embedding and its size/crop time ids live, and where SD3's
three encoders and its flow-matching noise would live, instead of ``if sdxl`` branches in every method.

- ``sd``: StableDiffusionPipeline (SD 1.x/2.x): UNet, one CLIP text encoder, ε/v prediction on a DDPM schedule.
- ``sdxl``: StableDiffusionXLPipeline: UNet with text_time added conditioning, CLIP-L + CLIP-G (penultimate hidden
  states concatenated along features: the 77 token positions are shared, so one token map serves both tokenizers).
- ``sd3``: StableDiffusion3Pipeline: an MMDiT transformer (joint attention over image and text tokens), CLIP-L +
  CLIP-G (77 positions, as SDXL) followed by T5's tokens on the text axis, a pooled CLIP embedding, flow matching.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from spf_lib.errors import SpfError

PIPELINE_KINDS = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
                  "StableDiffusion3Pipeline": "sd3"}


@dataclass
class Conditioning:
    """Everything the denoiser takes from the text. Rows are prompts; slice and concatenate like a tensor."""

    hidden: Any                  # (B, T, D) encoder_hidden_states
    pooled: Any | None = None    # (B, P) SDXL text_embeds / SD3 pooled_projections
    time_ids: Any | None = None  # (B, 6) SDXL (original size, crop top-left, target size)

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (getattr(self, f.name) for f in fields(self)) if x is not None)

    def _map(self, fn) -> Conditioning:
        return Conditioning(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                               for f in fields(self)})

    def __getitem__(self, idx) -> Conditioning:
        return self._map(lambda x: x[idx])

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        import torch

        first = parts[0]
        return Conditioning(**{f.name: (None if getattr(first, f.name) is None
                                        else torch.cat([getattr(p, f.name) for p in parts]))
                               for f in fields(first)})


class SdBackbone:
    """SD 1.x/2.x: exactly the calls the methods made before backbones existed (bit-identical results)."""

    kind = "sd"
    denoiser_name = "unet"
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    flow_matching = False

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @property
    def denoiser(self):
        return getattr(self.pipe, self.denoiser_name)

    def frozen_modules(self) -> dict[str, Any]:
        names = (self.denoiser_name, "vae", *self.text_encoder_names)
        return {n: getattr(self.pipe, n) for n in names if getattr(self.pipe, n, None) is not None}

    def tokenize(self, texts: list[str], device):
        tok = self.pipe.tokenizer
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(device)

    def encode(self, texts: list[str], *, device, resolution: int, grad: bool = False) -> Conditioning:
        import torch

        with torch.set_grad_enabled(grad):
            return Conditioning(self.pipe.text_encoder(self.tokenize(texts, device))[0])

    def pooled_text(self, texts: list[str], *, device):
        """One vector per text from the (first) text encoder: SFCM's phrase-to-target distances."""
        import torch

        with torch.no_grad():
            return self.pipe.text_encoder(self.tokenize(texts, device))[1]

    def denoise(self, noisy, t, cond: Conditioning):
        return self.denoiser(noisy, t, encoder_hidden_states=cond.hidden, return_dict=False)[0]

    def lora_weights_for_save(self, peft_state: dict) -> dict:
        """peft's LoRA keys → what this pipeline's ``load_lora_weights`` reads (UNets: diffusers' own names, as
        diffusers' SD/SDXL LoRA scripts write them)."""
        from diffusers.utils import convert_state_dict_to_diffusers

        return convert_state_dict_to_diffusers(peft_state)

    def training_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def install_capture(self, patterns: list[str]):
        from spf_lib.models.attention import install_capture

        return install_capture(self.denoiser, patterns)

    @staticmethod
    def lora_target(target_modules: list[str], cross_attention_only: bool) -> list[str] | str:
        """peft ``target_modules``: suffix list, or a full-match regex restricted to ``attn2`` (cross-attention)."""
        if not cross_attention_only:
            return list(target_modules)
        import re

        alts = "|".join(re.escape(m) for m in target_modules)
        return rf".*attn2\.({alts})"


class SdxlBackbone(SdBackbone):
    """SDXL: both text encoders through the pipeline's own ``encode_prompt`` (what inference runs), the pooled
    CLIP-G embedding, and time ids for an uncropped square image at the training resolution (the training images
    are centre-cropped and resized, so that is what they are)."""

    kind = "sdxl"
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def encode(self, texts: list[str], *, device, resolution: int, grad: bool = False) -> Conditioning:
        import torch

        pipe = self.pipe
        with torch.set_grad_enabled(grad):
            hidden, _, pooled, _ = pipe.encode_prompt(list(texts), device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        proj = pipe.text_encoder_2.config.projection_dim
        ids = pipe._get_add_time_ids((resolution, resolution), (0, 0), (resolution, resolution), dtype=hidden.dtype,
                                     text_encoder_projection_dim=proj)
        return Conditioning(hidden, pooled, ids.to(device).repeat(len(texts), 1))

    def denoise(self, noisy, t, cond: Conditioning):
        return self.denoiser(noisy, t, encoder_hidden_states=cond.hidden, return_dict=False,
                             added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids})[0]


# SD3's joint attention pairs each image projection with a text one; adapting a name adapts both halves
SD3_TEXT_SIDE = {"to_q": "add_q_proj", "to_k": "add_k_proj", "to_v": "add_v_proj", "to_out.0": "to_add_out"}


class Sd3Backbone(SdBackbone):
    """SD3 / SD3.5: the transformer is the denoiser; the reference path is the same transformer with adapters off
    (as PureCC's ``disable_adapter()``); the target is the flow-matching velocity ε − x0 at σ from the scheduler's
    shifted schedule, timesteps drawn logit-normal (SD3's default, PureCC's too)."""

    kind = "sd3"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    flow_matching = True

    def encode(self, texts: list[str], *, device, resolution: int, grad: bool = False) -> Conditioning:
        import torch

        texts = list(texts)
        with torch.set_grad_enabled(grad):
            hidden, _, pooled, _ = self.pipe.encode_prompt(texts, texts, texts, device=device,
                                                           num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
        return Conditioning(hidden, pooled)

    def pooled_text(self, texts: list[str], *, device):
        import torch

        with torch.no_grad():  # CLIPTextModelWithProjection: text_embeds first
            return self.pipe.text_encoder(self.tokenize(texts, device))[0]

    def denoise(self, noisy, t, cond: Conditioning):
        return self.denoiser(hidden_states=noisy, timestep=t, encoder_hidden_states=cond.hidden,
                             pooled_projections=cond.pooled, return_dict=False)[0]

    def lora_weights_for_save(self, peft_state: dict) -> dict:
        """SD3's loader reads peft's own keys (diffusers' SD3 LoRA script saves them unconverted); converted
        ``lora.down`` names would be dropped on load for every image-side projection."""
        return dict(peft_state)

    def training_scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)

    def add_noise(self, latents, generator, scheduler):
        """(z_t, ε, t, target) for flow matching: z_t = (1 − σ) x0 + σ ε, target = ε − x0, t = σ · 1000."""
        import torch

        b = latents.shape[0]
        u = torch.sigmoid(torch.randn(b, generator=generator))
        idx = (u * scheduler.config.num_train_timesteps).long().clamp_(max=len(scheduler.sigmas) - 2)
        sigma = scheduler.sigmas[idx].to(latents).view(-1, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
        noisy = (1 - sigma) * latents + sigma * noise
        return noisy, noise, scheduler.timesteps[idx].to(latents.device), noise - latents

    def predict_x0(self, noisy, pred, t):
        sigma = (t.float() / 1000).view(-1, 1, 1, 1).to(noisy.device)
        return noisy.float() - sigma * pred.float()

    def install_capture(self, patterns: list[str]):
        from spf_lib.models.attention import install_joint_capture

        return install_joint_capture(self.denoiser, patterns, text_len=int(self.pipe.tokenizer.model_max_length))

    @staticmethod
    def lora_target(target_modules: list[str], cross_attention_only: bool) -> list[str] | str:
        """Each named projection and its text-side twin; ``cross_attention_only`` = the joint attention of each
        block (``transformer_blocks.N.attn``: image↔text), not SD3.5's image-only ``attn2``."""
        import re

        names = list(dict.fromkeys([*target_modules, *(SD3_TEXT_SIDE[m] for m in target_modules
                                                          if m in SD3_TEXT_SIDE)]))
        if not cross_attention_only:
            return names
        return rf".*transformer_blocks\.\d+\.attn\.({'|'.join(re.escape(m) for m in names)})"


BACKBONES = {"sd": SdBackbone, "sdxl": SdxlBackbone, "sd3": Sd3Backbone}


def pipeline_kind(pipe) -> str:
    for cls in type(pipe).__mro__:
        if cls.__name__ in PIPELINE_KINDS:
            return PIPELINE_KINDS[cls.__name__]
    raise SpfError(f"base model: {type(pipe).__name__} is not supported (expected one of {', '.join(PIPELINE_KINDS)})")


def backbone_for(pipe) -> SdBackbone:
    kind = pipeline_kind(pipe)
    if kind not in BACKBONES:
        raise SpfError(f"base model: {type(pipe).__name__} ({kind}) is not supported for training yet")
    return BACKBONES[kind](pipe)
