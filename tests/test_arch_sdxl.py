"""SDXL's architecture: the full published config checked on the meta device (its 2.57B-parameter UNet is ~10 GB in
fp32, more than a shared 2-core CI machine should hold), and stepped at a quarter of every width with everything else
kept (3 levels, 1/2/10 transformer layers = 70 cross-attention layers, 5/10/20 heads, CLIP-L + CLIP-G depths,
text_time conditioning): one LoRA step and one SPF step at 128 px."""

from __future__ import annotations

import pytest
from _arch_helpers import RESOLUTION, arch_trainer, frozen_checksum, reset, spf_step_with_maps, token_rows_moved

pytestmark = pytest.mark.arch


def test_sdxl_full_config_has_the_published_parameter_counts():
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from spf_lib.models.architectures import CLIP_G_TEXT, CLIP_L_TEXT, SDXL_UNET, cross_attention_layers

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT))
    count = [sum(p.numel() for p in m.parameters()) for m in (unet, te1, te2)]
    assert count == [2_567_463_684, 123_060_480, 694_659_840]
    names = [k.removesuffix(".processor") for k in unet.attn_processors if k.endswith("attn2.processor")]
    assert sorted(names) == sorted(cross_attention_layers(SDXL_UNET)) and len(names) == 70


@pytest.fixture(scope="module")
def sdxl():
    from spf_lib.models.architectures import build_sdxl_pipeline

    pipe = build_sdxl_pipeline(seed=0, width_divisor=4)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    del pipe


@pytest.fixture
def fresh(sdxl):
    reset(sdxl)
    yield sdxl
    reset(sdxl)


def _probe(pipe, ctx):
    import torch

    g = torch.Generator().manual_seed(1)
    side = RESOLUTION // pipe.vae_scale_factor
    noisy = torch.randn(1, 4, side, side, generator=g)
    t = torch.tensor([500])
    cond = ctx.condition(["a photo of a woman, brown jacket"])
    with torch.no_grad():
        eps = ctx.denoise(noisy, t, cond)
    return noisy, t, cond, eps


def test_sdxl_lora_and_spf_steps_at_full_depth(fresh, tmp_path):
    import torch

    from spf_lib.models.architectures import cross_attention_layers

    before = frozen_checksum(fresh.unet)
    tr = arch_trainer(fresh, tmp_path, "spf")
    noisy, t, cond, eps0 = _probe(fresh, tr.ctx)  # the original model: the adapter is still the identity here
    logs, ref, res = spf_step_with_maps(tr)
    for k in ("loss_diffusion", "loss_text", "loss_fine", "loss_preserve"):
        assert torch.isfinite(torch.tensor(logs[k])), k
    assert token_rows_moved(tr) == {"text_encoder", "text_encoder_2"}  # the target-token rows of both CLIPs trained
    expected = cross_attention_layers(dict(fresh.unet.config))
    assert len(expected) == 70 and sorted(ref) == sorted(res) == sorted(expected)
    heads = {f"down_blocks.{i}": h for i, h in enumerate((5, 10, 20))}
    heads.update({"mid_block": 20, "up_blocks.0": 20, "up_blocks.1": 10})
    for name, c in ref.items():
        h = next(v for k, v in heads.items() if name.startswith(k + "."))
        assert c.probs.shape == (1, h, c.hw[0] * c.hw[1], 77), name
    with torch.no_grad():
        eps_ref, eps_res = tr.method.dual_forward(tr.ctx, noisy, t, ["a photo of a woman, brown jacket"],
                                                  ["a photo of a woman, brown jacket, blonde hair"])
    torch.testing.assert_close(eps_ref, eps0, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps_res, eps_ref)
    assert frozen_checksum(fresh.unet) == before
    reset(fresh)
    tr = arch_trainer(fresh, tmp_path, "lora")
    logs = tr.train_step()
    assert torch.isfinite(torch.tensor(logs["loss"])) and all(p.dtype == torch.float32 for p in tr.params)
    with torch.no_grad(), tr.method.switch.off():
        torch.testing.assert_close(tr.ctx.denoise(noisy, t, cond), eps0, rtol=0, atol=0)
