"""Tiny world models for tests: real classes, seconds to build."""

from __future__ import annotations

from pathlib import Path


def tiny_pretrain(out: Path):
    from spf_lib.world.pretrain import PretrainConfig, pretrain_world

    cfg = PretrainConfig(n_images=24, vae_extra_target_images=8, vae_steps=2, vae_batch=4, unet_steps=3, batch=4,
                         threads=1, text_hidden=32, unet_channels=(32, 64), vae_channels=(16, 32, 32))
    return pretrain_world(out, cfg)
