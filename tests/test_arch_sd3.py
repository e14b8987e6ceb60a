"""SD3.5 Medium's architecture: the full published layout on the meta device (its 2.2B-parameter transformer is 9 GB
in fp32, T5-XXL 19 GB), and stepped at full depth at a quarter of every width (24 joint blocks, the 13 MMDiT-X
image-only attention layers, 24 heads of 16, CLIP-L and CLIP-G depths): one LoRA step and one SPF step at 128 px.
T5 is left out as build_sd3_pipeline does by default (the pipeline feeds zeros at its 256 positions, so the joint
attention still sees 77 CLIP + 256 T5 text tokens); the tiny SD3 in tests/test_sd3.py has a (tiny) T5 encoder."""

from __future__ import annotations

import pytest
from _arch_helpers import RESOLUTION, arch_trainer, frozen_checksum, reset, spf_step_with_maps, token_rows_moved

pytestmark = pytest.mark.arch


def test_sd35_medium_layout_capture_and_lora_targets():
    import re

    import torch
    from diffusers import SD3Transformer2DModel

    from spf_lib.models.architectures import SD35M_TRANSFORMER
    from spf_lib.models.backbone import Sd3Backbone

    with torch.device("meta"):
        tr = SD3Transformer2DModel(**SD35M_TRANSFORMER)
    procs = [k.removesuffix(".processor") for k in tr.attn_processors]
    joint = [n for n in procs if n.endswith(".attn")]
    image_only = [n for n in procs if n.endswith(".attn2")]
    assert len(joint) == 24 and len(image_only) == 13  # SD3.5's MMDiT-X: extra self-attention in blocks 0-12
    assert tr.transformer_blocks[-1].attn.context_pre_only  # last block: text keys/values only
    assert tr.transformer_blocks[0].attn.heads == 24 and tr.transformer_blocks[0].attn.inner_dim == 1536
    rx = re.compile(Sd3Backbone.lora_target(["to_q", "to_k", "to_v", "to_out.0"], True))
    targets = [n for n, _ in tr.named_modules() if rx.fullmatch(n)]
    # 23 blocks x 8 projections + the last block's 7 (no to_add_out: its text output is discarded)
    assert len(targets) == 23 * 8 + 7
    assert sum(p.numel() for p in tr.parameters()) > 2_000_000_000


@pytest.fixture(scope="module")
def sd35():
    from spf_lib.models.architectures import build_sd3_pipeline

    pipe = build_sd3_pipeline(seed=0, width_divisor=4)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    del pipe


@pytest.fixture
def fresh(sd35):
    reset(sd35)
    yield sd35
    reset(sd35)


def test_sd35_medium_lora_and_spf_steps_at_full_depth(fresh, tmp_path):
    import torch

    tr_cfg = fresh.transformer.config
    assert tr_cfg.num_layers == 24 and len(tr_cfg.dual_attention_layers) == 13 and fresh.text_encoder_3 is None
    before = frozen_checksum(fresh.transformer)
    tr = arch_trainer(fresh, tmp_path, "spf")
    ctx = tr.ctx
    assert ctx.backbone.kind == "sd3"
    g = torch.Generator().manual_seed(1)
    side = RESOLUTION // fresh.vae_scale_factor
    noisy, t = torch.randn(1, 16, side, side, generator=g), torch.tensor([500.0])
    base, res = ["a photo of a woman, brown jacket"], ["a photo of a woman, brown jacket, blonde hair"]
    cond = ctx.condition(base)
    assert cond.hidden.shape == (1, 77 + 256, tr_cfg.joint_attention_dim)  # CLIP positions, then T5's (zeros)
    with torch.no_grad():
        eps0 = ctx.denoise(noisy, t, cond)  # the original model: the adapter is still the identity here
    logs, ref, res_maps = spf_step_with_maps(tr)
    for k in ("loss_diffusion", "loss_text", "loss_fine", "loss_preserve"):
        assert torch.isfinite(torch.tensor(logs[k])), k
    assert token_rows_moved(tr) == {"text_encoder", "text_encoder_2"}  # the target-token rows of both CLIPs trained
    assert all(p.dtype == torch.float32 for p in tr.params)
    joint = [f"transformer_blocks.{i}.attn" for i in range(24)]
    assert sorted(ref) == sorted(res_maps) == sorted(joint)  # every joint block, none of the image-only attn2
    n = (side // 2) ** 2  # 2x2 patches
    for name, c in ref.items():
        assert c.hw == (side // 2, side // 2) and c.probs.shape == (1, 24, n, 77), name
        assert c.probs.dtype == torch.float32 and c.query.shape == (1, n, tr_cfg.num_attention_heads * 16), name
        torch.testing.assert_close(c.probs.sum(-1), torch.ones(1, 24, n))
    with torch.no_grad():
        eps_ref, eps_res = tr.method.dual_forward(ctx, noisy, t, base, res)
    assert eps_ref.shape == noisy.shape and eps_ref.dtype == torch.float32
    torch.testing.assert_close(eps_ref, eps0, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps_res, eps_ref)
    assert frozen_checksum(fresh.transformer) == before
    reset(fresh)
    tr = arch_trainer(fresh, tmp_path, "lora")
    logs = tr.train_step()
    assert torch.isfinite(torch.tensor(logs["loss"])) and all(p.dtype == torch.float32 for p in tr.params)
    with torch.no_grad(), tr.method.switch.off():
        torch.testing.assert_close(tr.ctx.denoise(noisy, t, cond), eps0, rtol=0, atol=0)
    assert frozen_checksum(fresh.transformer) == before
