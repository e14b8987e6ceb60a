"""Small Stable-Diffusion-architecture models built in code.

They are the real diffusers/transformers classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
StableDiffusionPipeline, CLIPModel) at small widths, saved in diffusers format, so every code path that SD 1.5 takes
(loading, LoRA, attention processors, generation, MLflow's diffusers flavor) runs here without downloads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from spf_lib.errors import SpfError


@dataclass(frozen=True)
class TinySDConfig:
    """Widths of the tiny model. Defaults keep one training step well under a second on 2 CPU cores."""

    resolution: int = 64
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 32
    vae_channels: tuple[int, ...] = (32, 32, 32)
    latent_channels: int = 4
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    max_text_length: int = 77
    # "sd": StableDiffusionPipeline; "sdxl": StableDiffusionXLPipeline (two text encoders of width text_hidden,
    # so the UNet's cross_attention_dim is 2 x text_hidden; text_time added conditioning); "sd3":
    # StableDiffusion3Pipeline (an SD3.5-style MMDiT of 2 joint blocks, CLIP-L/G with projections, a T5 encoder)
    arch: str = "sd"

    def __post_init__(self) -> None:
        if self.arch not in ("sd", "sdxl", "sd3"):
            raise SpfError(f"TinySDConfig.arch={self.arch!r}: expected 'sd', 'sdxl' or 'sd3'")
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.resolution % (factor * 2 ** (len(self.unet_channels) - 1)) != 0:
            raise SpfError(
                f"TinySDConfig.resolution={self.resolution} must be divisible by the VAE factor {factor} times "
                f"the UNet downsampling {2 ** (len(self.unet_channels) - 1)}"
            )
        if self.arch == "sd" and self.cross_attention_dim != self.text_hidden:
            raise SpfError(
                f"TinySDConfig.cross_attention_dim={self.cross_attention_dim} must equal text_hidden={self.text_hidden}"
            )

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def build_tiny_components(cfg: TinySDConfig | None = None, seed: int = 0) -> dict:
    """Return the components dict of a StableDiffusion(XL)Pipeline with random (seeded) weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from spf_lib.models.tokenizer import build_tokenizer

    cfg = cfg or TinySDConfig()
    n = len(cfg.unet_channels)
    xl = cfg.arch == "sdxl"
    # SDXL's layout in small: text_time conditioning, linear projections, 2 transformer layers in the last level
    unet_xl = {"addition_embed_type": "text_time", "addition_time_embed_dim": 8, "use_linear_projection": True,
               "projection_class_embeddings_input_dim": 6 * 8 + cfg.text_hidden,
               "transformer_layers_per_block": (1,) * (n - 1) + (2,)} if xl else {}
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=2 * cfg.text_hidden if xl else cfg.cross_attention_dim,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, min(cfg.unet_channels)),
        **unet_xl,
    )
    torch.manual_seed(seed + 1)
    m = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * m,
        up_block_types=("UpDecoderBlock2D",) * m,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.vae_channels)),
        sample_size=cfg.resolution,
        scaling_factor=0.13025 if xl else 0.18215,
    )
    tokenizer = build_tokenizer(cfg.max_text_length)

    def text_config(**kw):
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 4,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_text_length, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw)

    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config())
    extra = {"safety_checker": None, "feature_extractor": None, "image_encoder": None}
    if xl:
        from transformers import CLIPTextModelWithProjection

        torch.manual_seed(seed + 3)
        tokenizer_2 = build_tokenizer(cfg.max_text_length)
        tokenizer_2.pad_token = "!"  # as SDXL's second tokenizer
        extra = {"text_encoder_2": CLIPTextModelWithProjection(text_config(projection_dim=cfg.text_hidden)),
                 "tokenizer_2": tokenizer_2, "feature_extractor": None, "image_encoder": None}
    # DDIM for few-step deterministic sampling; training derives DDPM from the same config.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        **extra,
    }


def build_tiny_sd3_components(cfg: TinySDConfig, seed: int = 0) -> dict:
    """An SD3.5-shaped pipeline in small: joint (MMDiT) blocks with qk RMS-norm, the first with SD3.5's extra
    image self-attention; three text encoders; flow matching; a VAE with SD3's shift and scale."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from spf_lib.models.t5_tokenizer import build_t5_tokenizer
    from spf_lib.models.tokenizer import build_tokenizer

    tok, tok2, tok3 = build_tokenizer(cfg.max_text_length), build_tokenizer(cfg.max_text_length), build_t5_tokenizer()
    tok2.pad_token = "!"
    h = cfg.text_hidden
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=cfg.latent_size, patch_size=2, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        num_layers=2, attention_head_dim=cfg.attention_head_dim, num_attention_heads=4, joint_attention_dim=2 * h,
        caption_projection_dim=4 * cfg.attention_head_dim, pooled_projection_dim=2 * h, pos_embed_max_size=32,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    torch.manual_seed(seed + 1)
    m = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=tuple(cfg.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * m, up_block_types=("UpDecoderBlock2D",) * m,
        latent_channels=cfg.latent_channels, norm_num_groups=min(32, min(cfg.vae_channels)),
        sample_size=cfg.resolution, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
        use_post_quant_conv=False,
    )

    def clip(t, s):
        torch.manual_seed(s)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(t), hidden_size=h, intermediate_size=h * 4, num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_text_length, projection_dim=h,
            bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id))

    te1, te2 = clip(tok, seed + 2), clip(tok2, seed + 3)
    torch.manual_seed(seed + 4)
    te3 = T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=2 * h, d_kv=8, d_ff=4 * h, num_layers=cfg.text_layers,
                                  num_heads=8, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                  pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
                                  decoder_start_token_id=tok3.pad_token_id))
    return {"transformer": transformer, "vae": vae, "text_encoder": te1, "tokenizer": tok, "text_encoder_2": te2,
            "tokenizer_2": tok2, "text_encoder_3": te3, "tokenizer_3": tok3,
            "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)}


def build_tiny_pipeline(cfg: TinySDConfig | None = None, seed: int = 0):
    """StableDiffusionPipeline, or the SDXL / SD3 pipeline for ``cfg.arch``."""
    cfg = cfg or TinySDConfig()
    if cfg.arch == "sd3":
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(**build_tiny_sd3_components(cfg, seed))
    if cfg.arch == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(**build_tiny_components(cfg, seed), add_watermarker=False)
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**build_tiny_components(cfg, seed), requires_safety_checker=False)


def save_tiny_pipeline(out_dir: str | Path, cfg: TinySDConfig | None = None, seed: int = 0) -> Path:
    """Build and save a tiny pipeline in diffusers format (safetensors), atomically."""
    from spf_lib.io import atomic_dir

    cfg = cfg or TinySDConfig()
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        pipe = build_tiny_pipeline(cfg, seed)
        pipe.save_pretrained(tmp, safe_serialization=True)
        import json

        (tmp / "spf_tiny_config.json").write_text(json.dumps({**asdict(cfg), "seed": seed}, indent=2))
    return out


@dataclass(frozen=True)
class TinyCLIPConfig:
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    projection_dim: int = 32


def build_tiny_clip(cfg: TinyCLIPConfig | None = None, seed: int = 0):
    """Return (CLIPModel, CLIPProcessor-like pair) built locally; weights are random unless trained."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor

    from spf_lib.models.tokenizer import build_tokenizer

    cfg = cfg or TinyCLIPConfig()
    tok = build_tokenizer()
    torch.manual_seed(seed)
    text = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 4,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, max_position_embeddings=77,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 4, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
    )
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=cfg.projection_dim))
    processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    return model, tok, processor


def save_tiny_clip(out_dir: str | Path, cfg: TinyCLIPConfig | None = None, seed: int = 0) -> Path:
    from spf_lib.io import atomic_dir

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model, tok, proc = build_tiny_clip(cfg, seed)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        proc.save_pretrained(tmp)
    return out


# The published architectures at full size (random weights) live next door; re-exported so "the model factory" is
# one import for callers that build either kind.
from spf_lib.models.architectures import build_architecture, build_sd15_pipeline  # noqa: E402,F401
