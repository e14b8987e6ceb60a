"""SD 1.5 at its published size (random weights, no download): one LoRA step, one SPF step and one generation
through the evaluation path at 128 px. The tiny models elsewhere cannot show that the code paths hold at the real
layer count (16 cross-attention layers, 8 heads, 4 resolutions) and widths."""

from __future__ import annotations

import pytest
from _arch_helpers import RESOLUTION, arch_trainer, frozen_checksum, reset, spf_step_with_maps

pytestmark = pytest.mark.arch


@pytest.fixture(scope="module")
def sd15():
    from spf_lib.models.architectures import build_sd15_pipeline

    pipe = build_sd15_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    del pipe


@pytest.fixture
def fresh(sd15):
    reset(sd15)
    yield sd15
    reset(sd15)


def _probe(pipe):
    """A fixed (z_t, t, text) and the ORIGINAL model's ε on it."""
    import torch

    g = torch.Generator().manual_seed(1)
    side = RESOLUTION // pipe.vae_scale_factor
    noisy = torch.randn(1, 4, side, side, generator=g)
    t = torch.tensor([500])
    ids = pipe.tokenizer(["a photo of a woman, brown jacket"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        cond = pipe.text_encoder(ids)[0]
        eps = pipe.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
    return noisy, t, cond, eps


def test_sd15_matches_published_parameter_counts(sd15):
    counts = {n: sum(p.numel() for p in getattr(sd15, n).parameters()) for n in ("unet", "vae", "text_encoder")}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_sd15_lora_step_leaves_the_original_intact(fresh, tmp_path):
    import torch

    noisy, t, cond, eps0 = _probe(fresh)
    before = frozen_checksum(fresh.unet)
    tr = arch_trainer(fresh, tmp_path, "lora")
    logs = tr.train_step()
    assert torch.isfinite(torch.tensor(logs["loss"]))
    assert all(p.dtype == torch.float32 and p.grad is None for p in tr.params)  # zeroed after the step
    assert {p.dtype for p in fresh.unet.parameters()} == {torch.float32}
    with torch.no_grad():
        tuned = fresh.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        with tr.method.switch.off():
            ref = fresh.unet(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
    assert tuned.shape == eps0.shape == (1, 4, RESOLUTION // 8, RESOLUTION // 8)
    torch.testing.assert_close(ref, eps0, rtol=0, atol=0)  # adapters off = the original, bit for bit
    assert not torch.equal(tuned, eps0)
    assert frozen_checksum(fresh.unet) == before


def test_sd15_spf_step_captures_every_cross_attention_layer(fresh, tmp_path):
    import torch

    from spf_lib.models.architectures import SD15_UNET, cross_attention_layers

    noisy, t, cond, eps0 = _probe(fresh)
    before = frozen_checksum(fresh.unet)
    tr = arch_trainer(fresh, tmp_path, "spf")
    logs, ref, res = spf_step_with_maps(tr)
    for k in ("loss_diffusion", "loss_text", "loss_fine", "loss_out", "loss_preserve"):
        assert torch.isfinite(torch.tensor(logs[k])), k
    assert "loss_enhanced" not in logs  # no CLIP configured: L_enh is off (issue 15)
    expected = cross_attention_layers(SD15_UNET)
    assert len(expected) == 16
    assert sorted(ref) == sorted(res) == sorted(expected)
    heads = SD15_UNET["attention_head_dim"]  # SD 1.5's config calls its head count attention_head_dim
    side = RESOLUTION // 8
    for name, c in ref.items():
        h, w = c.hw
        assert side % h == 0 and h == w, name
        assert c.probs.shape == (1, heads, h * w, 77), name
        assert c.probs.dtype == torch.float32
        torch.testing.assert_close(c.probs.sum(-1), torch.ones(1, heads, h * w))
        assert res[name].query.shape == c.query.shape and res[name].query.requires_grad and not c.query.requires_grad
    assert {c.hw for c in ref.values()} == {(side >> k, side >> k) for k in range(4)}
    # the reference path SPF runs is the original model (adapter off), also after a step changed the adapter
    with torch.no_grad():
        eps_ref, eps_res = tr.method.dual_forward(tr.ctx, noisy, t, ["a photo of a woman, brown jacket"],
                                                  ["a photo of a woman, brown jacket, blonde hair"])
    torch.testing.assert_close(eps_ref, eps0, rtol=1e-4, atol=1e-5)  # explicit vs SDPA attention arithmetic
    assert eps_res.shape == eps0.shape and not torch.allclose(eps_res, eps_ref)
    assert frozen_checksum(fresh.unet) == before


def test_sd15_generation_through_the_evaluation_path(fresh, tmp_path):
    import numpy as np
    import torch

    from spf_lib.eval.evalset import EvalItem
    from spf_lib.eval.generate import generate_images
    from spf_lib.methods import load_adapter

    tr = arch_trainer(fresh, tmp_path, "spf")
    with torch.no_grad():  # a trained adapter without paying for training: LoRA's B starts at zero
        for p in tr.params:
            p.normal_(std=0.02, generator=torch.Generator().manual_seed(p.numel()))
    adapter = tr.save_adapter()
    reset(fresh)
    items = [EvalItem(kind="base", index=0, prompt="a photo of a man, white shirt", seed=3)]
    kw = {"steps": 1, "guidance": 7.5, "resolution": RESOLUTION, "batch_size": 1, "progress": False}
    plain = generate_images(fresh, items, **kw)[items[0].key]
    handle = load_adapter(fresh, adapter)
    handle.disable()
    orig = generate_images(fresh, items, **kw)[items[0].key]
    handle.enable()
    tuned = generate_images(fresh, items, **kw)[items[0].key]
    assert plain.size == tuned.size == (RESOLUTION, RESOLUTION)
    assert np.array_equal(np.asarray(plain), np.asarray(orig))
    assert not np.array_equal(np.asarray(orig), np.asarray(tuned))
