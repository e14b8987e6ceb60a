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


# stabilityai/stable-diffusion-xl-base-1.0: unet, vae, text_encoder (CLIP-L, as above), text_encoder_2 (OpenCLIP bigG)
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10), "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "norm_eps": 1e-5, "norm_num_groups": 32, "act_fn": "silu",
}
SDXL_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
CLIP_G_TEXT: dict[str, Any] = {
    "vocab_size": CLIP_VOCAB, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
    "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280,
    "layer_norm_eps": 1e-5,
}
SDXL_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon",
}


# stabilityai/stable-diffusion-3.5-medium: transformer (MMDiT-X), vae (16 latent channels), CLIP-L and CLIP-G with
# projections, T5 v1.1 XXL encoder; flow matching with shift 3
SD35M_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD3_VAE: dict[str, Any] = {**SD_VAE, "sample_size": 1024, "latent_channels": 16, "scaling_factor": 1.5305,
                           "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False,
                           "force_upcast": True}
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True, "layer_norm_epsilon": 1e-6,
}
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}


def _clip_text(cls, spec: dict[str, Any], tokenizer):
    from transformers import CLIPTextConfig

    return cls(CLIPTextConfig(**spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id))


class _default_dtype:
    """Build directly in ``dtype``: a bf16 model built in fp32 first needs twice its memory at the peak."""

    def __init__(self, dtype) -> None:
        self.dtype = dtype

    def __enter__(self):
        import torch

        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype or torch.float32)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.previous)


def build_sd15_pipeline(seed: int = 0, dtype=None):
    """SD 1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M parameters), random weights, on the CPU; fp32 unless
    ``dtype``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from spf_lib.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    with _default_dtype(dtype):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD_VAE)
        te = _clip_text(CLIPTextModel, CLIP_L_TEXT, tok)
    return StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                                   scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sdxl_configs(width_divisor: int = 1) -> tuple[dict, dict, dict]:
    """(unet, clip-l, clip-g) configs of SDXL; ``width_divisor`` > 1 shrinks every width by that factor and keeps
    everything else (3 levels, 1/2/10 transformer layers = 70 cross-attention layers, 5/10/20 heads, 12/32 text
    layers, text_time conditioning): the layout at a size a 2-core CI machine can step (divisor 4: ~1/16 params)."""
    d = width_divisor
    if d == 1:
        return dict(SDXL_UNET), dict(CLIP_L_TEXT), dict(CLIP_G_TEXT)
    if d not in (2, 4, 8):
        raise SpfError(f"width_divisor={d}: expected 1, 2, 4 or 8")
    te1 = {**CLIP_L_TEXT, "hidden_size": 768 // d, "intermediate_size": 3072 // d, "projection_dim": 768 // d}
    te2 = {**CLIP_G_TEXT, "hidden_size": 1280 // d, "intermediate_size": 5120 // d, "projection_dim": 1280 // d}
    unet = {**SDXL_UNET, "block_out_channels": tuple(c // d for c in SDXL_UNET["block_out_channels"]),
            "cross_attention_dim": te1["hidden_size"] + te2["hidden_size"],
            "addition_time_embed_dim": 256 // d, "norm_num_groups": 32 // d,
            "projection_class_embeddings_input_dim": 6 * (256 // d) + te2["projection_dim"]}
    return unet, te1, te2


def build_sdxl_pipeline(seed: int = 0, width_divisor: int = 1, dtype=None):
    """SDXL base 1.0 (UNet 2.57B, CLIP-L 123M, CLIP-G 695M, VAE 84M parameters) with random weights; ``dtype``
    (e.g. torch.bfloat16) builds directly in that precision (fp32 SDXL is ~14 GB)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from spf_lib.models.tokenizer import build_tokenizer

    unet_cfg, te1_cfg, te2_cfg = sdxl_configs(width_divisor)
    tok, tok2 = build_tokenizer(), build_tokenizer()
    tok2.pad_token = "!"  # SDXL's second tokenizer pads with "!" (id 0 in the published vocabulary)
    with _default_dtype(dtype):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**SDXL_VAE)
        te1 = _clip_text(CLIPTextModel, te1_cfg, tok)
        te2 = _clip_text(CLIPTextModelWithProjection, te2_cfg, tok2)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
                                     add_watermarker=False)


def sd3_configs(width_divisor: int = 1) -> tuple[dict, dict, dict]:
    """(transformer, clip-l, clip-g) configs of SD3.5 Medium; ``width_divisor`` > 1 divides every width and keeps
    the 24 joint blocks, the 13 dual-attention blocks and the 24 heads (head size 64 / divisor)."""
    d = width_divisor
    if d == 1:
        return dict(SD35M_TRANSFORMER), dict(CLIP_L_TEXT), dict(CLIP_G_TEXT)
    if d not in (2, 4, 8):
        raise SpfError(f"width_divisor={d}: expected 1, 2, 4 or 8")
    _, te1, te2 = sdxl_configs(d)
    tr = {**SD35M_TRANSFORMER, "attention_head_dim": 64 // d, "joint_attention_dim": 4096 // d,
          "caption_projection_dim": 1536 // d, "pooled_projection_dim": te1["projection_dim"] + te2["projection_dim"]}
    return tr, te1, te2


def build_sd3_pipeline(seed: int = 0, dtype=None, with_t5: bool = False, width_divisor: int = 1):
    """SD3.5 Medium (MMDiT-X transformer, CLIP-L + CLIP-G with projections, VAE with 16 channels), random weights.

    ``with_t5=False`` (default) leaves T5-XXL out: its 4.76B parameters (19 GB in fp32) do not fit a shared CPU
    machine, and the pipeline then feeds zeros in T5's place, so step time and memory of the trained transformer
    are unchanged except for the T5 forward itself (precomputed by most SD3 trainers anyway). The tokenizer for it
    is the local T5 one either way.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from spf_lib.models.t5_tokenizer import build_t5_tokenizer
    from spf_lib.models.tokenizer import build_tokenizer

    tr_cfg, te1_cfg, te2_cfg = sd3_configs(width_divisor)
    tok, tok2, tok3 = build_tokenizer(), build_tokenizer(), build_t5_tokenizer()
    tok2.pad_token = "!"
    t5 = {**T5_XXL, "d_model": tr_cfg["joint_attention_dim"], "d_ff": T5_XXL["d_ff"] // width_divisor}
    with _default_dtype(dtype):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**tr_cfg)
        vae = AutoencoderKL(**SD3_VAE)
        te1 = _clip_text(CLIPTextModelWithProjection, te1_cfg, tok)
        te2 = _clip_text(CLIPTextModelWithProjection, te2_cfg, tok2)
        te3 = T5EncoderModel(T5Config(**t5)) if with_t5 else None
    return StableDiffusion3Pipeline(transformer=transformer, vae=vae, text_encoder=te1, tokenizer=tok,
                                    text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=te3, tokenizer_3=tok3,
                                    scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER))


def build_architecture(arch: str, seed: int = 0, **kw):
    """The pipeline of ``arch`` (one of ARCHITECTURES) at its published size, random weights; ``kw`` go to its
    builder (``dtype``; SDXL and SD3: ``width_divisor``)."""
    builders = {"sd15": build_sd15_pipeline, "sdxl": build_sdxl_pipeline, "sd3": build_sd3_pipeline}
    if arch not in ARCHITECTURES:
        raise SpfError(f"model={arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if arch not in builders:
        raise SpfError(f"model={arch!r}: not built in code yet")
    return builders[arch](seed, **kw)


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
