"""The published architectures (SD 1.5, SDXL, SD3.5 Medium) built in code with random weights.

Nothing is downloaded: the configs below are the published diffusers/transformers config files written out, so CI
exercises every code path at a real model's layer count, widths and attention layout (and benchmarks measure real
step times and memory), while weights stay random (speed, memory and code paths do not depend on them). Only the
tokenizer is ours (spf_lib.models.tokenizer): same BPE algorithm, a small local vocabulary; the embedding tables keep
the published vocabulary size so parameter counts match.
"""

from __future__ import annotations

from typing import Any

from spf_lib.errors import SpfError

ARCHITECTURES = ("sd15", "sdxl", "sd3")
CLIP_VOCAB = 49408

# runwayml/stable-diffusion-v1-5: unet/config.json, vae/config.json, text_encoder/config.json (CLIP ViT-L/14 text)
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8, "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_scale_factor": 1,
    "norm_eps": 1e-5, "norm_num_groups": 32, "act_fn": "silu", "center_input_sample": False,
}
SD_VAE: dict[str, Any] = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}
SD_SCHEDULER: dict[str, Any] = {  # the published PNDM config's betas, as DDIM for few-step evaluation
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}


def _clip_text(cls, spec: dict[str, Any], tokenizer):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id))


def build_sd15_pipeline(seed: int = 0):
    """SD 1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M parameters), random weights, fp32, on the CPU."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from spf_lib.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD_VAE)
    te = _clip_text(CLIPTextModel, CLIP_L_TEXT, tok)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_architecture(arch: str, seed: int = 0):
    """The pipeline of ``arch`` (one of ARCHITECTURES) at its published size, random weights."""
    builders = {"sd15": build_sd15_pipeline}
    if arch not in ARCHITECTURES:
        raise SpfError(f"model={arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if arch not in builders:
        raise SpfError(f"model={arch!r}: not built in code yet")
    return builders[arch](seed)


def cross_attention_layers(unet_config) -> list[str]:
    """Module names of every cross-attention layer a UNet config implies (what SPF may capture), derived from the
    config alone so a test can check an installed capture against it."""
    def per_block(value, n):
        return list(value) if isinstance(value, (list, tuple)) else [value] * n

    c = unet_config
    downs, ups = list(c["down_block_types"]), list(c["up_block_types"])
    tl = per_block(c.get("transformer_layers_per_block", 1) or 1, len(downs))
    lpb = per_block(c["layers_per_block"], len(downs))
    names = []
    for i, kind in enumerate(downs):
        if kind.startswith("CrossAttn"):
            names += [f"down_blocks.{i}.attentions.{j}.transformer_blocks.{k}.attn2"
                      for j in range(lpb[i]) for k in range(tl[i])]
    if c.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn":
        names += [f"mid_block.attentions.0.transformer_blocks.{k}.attn2" for k in range(tl[-1])]
    rtl, rlpb = tl[::-1], lpb[::-1]
    for i, kind in enumerate(ups):
        if kind.startswith("CrossAttn"):
            names += [f"up_blocks.{i}.attentions.{j}.transformer_blocks.{k}.attn2"
                      for j in range(rlpb[i] + 1) for k in range(rtl[i])]
    return names
