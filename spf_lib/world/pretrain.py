"""Pretrain the world's base text-to-image model from scratch on CPU: VAE first, then UNet + text encoder.

The result is a StableDiffusionPipeline folder (diffusers format, safetensors) of a few MB, so fine-tuning and
evaluation take exactly the code path SD 1.5 takes. The base world never shows the target (round glasses):
fine-tuning has to teach it, and everything else it changes on the way is pollution.

Run: ``python -m spf_lib.world.pretrain --output assets/world/base`` (see docs/world.md for the exact command).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Defaults aim at ≤ 30 min on 2 dedicated CPU cores."""

    n_images: int = 3000
    vae_extra_target_images: int = 1000
    resolution: int = 64
    seed: int = 0
    threads: int = 2
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6
    unet_steps: int = 1600
    batch: int = 16
    lr: float = 1.5e-3
    keep_phrase: float = 0.7
    uncond_prob: float = 0.1
    text_hidden: int = 64
    unet_channels: tuple[int, ...] = (32, 64)
    vae_channels: tuple[int, ...] = (8, 32, 32)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_images", "resolution", "threads", "vae_batch", "batch"):
            if getattr(self, name) < 1:
                raise SpfError(f"PretrainConfig.{name}={getattr(self, name)}: must be ≥ 1")
        for name in ("vae_steps", "unet_steps"):
            if getattr(self, name) < 0:
                raise SpfError(f"PretrainConfig.{name}={getattr(self, name)}: must be ≥ 0")
        for name in ("keep_phrase", "uncond_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SpfError(f"PretrainConfig.{name}={getattr(self, name)}: expected a probability in [0, 1]")

    def tiny_sd(self):
        from spf_lib.models.factory import TinySDConfig

        return TinySDConfig(resolution=self.resolution, unet_channels=tuple(self.unet_channels),
                            vae_channels=tuple(self.vae_channels), text_hidden=self.text_hidden,
                            cross_attention_dim=self.text_hidden)


def _batches(n: int, batch: int, steps: int, seed: int):
    """Index batches from shuffled epochs (deterministic per seed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    perm, pos = rng.permutation(n), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = rng.permutation(n), 0
        yield perm[pos:pos + batch]
        pos += batch


def train_vae(vae, x, cfg: PretrainConfig) -> list[float]:
    """Short autoencoder training (MSE + L1 + a tiny KL, as SD's VAE is nearly deterministic)."""
    import torch
    from tqdm import tqdm

    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vae_lr, total_steps=max(cfg.vae_steps, 1), pct_start=0.1)
    losses = []
    vae.train()
    bar = tqdm(_batches(len(x), cfg.vae_batch, cfg.vae_steps, cfg.seed + 10), total=cfg.vae_steps, desc="vae")
    for idx in bar:
        xb = x[torch.as_tensor(idx)]
        post = vae.encode(xb).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - xb).pow(2).mean() + 0.1 * (rec - xb).abs().mean() + cfg.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    vae.eval()
    return losses


def encode_all(vae, x, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(x[i:i + batch]).latent_dist.mean for i in range(0, len(x), batch)])


class PromptEncoder:
    """Tokenizes with a cache: training draws from a small set of distinct captions."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    def ids(self, prompts: list[str]):
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            enc = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True)
            self._cache.update(zip(missing, enc["input_ids"]))
        return torch.tensor([self._cache[p] for p in prompts])


def train_unet(unet, text_encoder, tokenizer, latents, attrs, cfg: PretrainConfig) -> list[float]:
    """ε-prediction diffusion loss; the text encoder trains with the UNet (no pretrained CLIP exists here)."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    from spf_lib.world.dataset import caption_variant

    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(cfg.unet_steps, 1), pct_start=0.05)
    enc = PromptEncoder(tokenizer)
    rng = np.random.default_rng(cfg.seed + 20)
    gen = torch.Generator().manual_seed(cfg.seed + 21)
    unet.train()
    text_encoder.train()
    losses = []
    bar = tqdm(_batches(len(latents), cfg.batch, cfg.unet_steps, cfg.seed + 22), total=cfg.unet_steps, desc="unet")
    for idx in bar:
        z0 = latents[torch.as_tensor(idx)]
        prompts = ["" if rng.random() < cfg.uncond_prob else caption_variant(attrs[i], rng, cfg.keep_phrase)
                   for i in idx]
        cond = text_encoder(enc.ids(prompts))[0]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        loss = (unet(zt, t, cond).sample - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
    unet.eval()
    text_encoder.eval()
    return losses


def pretrain_world(output: str | Path, cfg: PretrainConfig | None = None) -> Path:
    """Build, train and save the base model folder (atomically). Returns the folder."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from spf_lib.io import atomic_dir
    from spf_lib.models.factory import build_tiny_components
    from spf_lib.world.dataset import render_arrays, to_tensor

    cfg = cfg or PretrainConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images, attrs = render_arrays(cfg.n_images, cfg.seed, cfg.resolution)  # base world: no glasses
    x = to_tensor(images)
    # The VAE is a general image codec (as SD's is): it also sees the target, so decoded glasses stay measurable.
    vae_x = x
    if cfg.vae_extra_target_images:
        extra, _ = render_arrays(cfg.vae_extra_target_images, cfg.seed + 1, cfg.resolution, target_fraction=0.5)
        vae_x = torch.cat([x, to_tensor(extra)])
    t_render = time.perf_counter() - t0
    comps = build_tiny_components(cfg.tiny_sd(), seed=cfg.seed)
    vae_losses = train_vae(comps["vae"], vae_x, cfg)
    t_vae = time.perf_counter() - t0 - t_render
    mean_latents = encode_all(comps["vae"], x)
    scale = float(1.0 / mean_latents.std())
    comps["vae"].register_to_config(scaling_factor=scale)
    unet_losses = train_unet(comps["unet"], comps["text_encoder"], comps["tokenizer"], mean_latents * scale, attrs,
                             cfg)
    wall = time.perf_counter() - t0
    pipe = StableDiffusionPipeline(**comps, requires_safety_checker=False)
    out = Path(output)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        summary = {
            "config": asdict(cfg), "vae_scaling_factor": scale,
            "seconds": {"render": round(t_render, 1), "vae": round(t_vae, 1), "total": round(wall, 1)},
            "vae_loss_last100": float(np.mean(vae_losses[-100:])) if vae_losses else None,
            "unet_loss_last200": float(np.mean(unet_losses[-200:])) if unet_losses else None,
            "torch": torch.__version__,
        }
        (tmp / "world_pretrain.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("pretrained world base model in %.0f s → %s", wall, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="folder for the diffusers pipeline")
    for f in ("n_images", "vae_extra_target_images", "vae_steps", "unet_steps", "batch", "threads", "seed"):
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(PretrainConfig, f))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k != "output"})
    print(pretrain_world(args.output, cfg))


if __name__ == "__main__":
    main()
