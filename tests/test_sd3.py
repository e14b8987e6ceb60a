"""SD3-class base models (MMDiT, flow matching): loading, the flow-matching target, SPF's capture of the image→text
block of joint attention, LoRA on both halves of the joint attention, training, generation and registration. A tiny
SD3 built in code (real StableDiffusion3Pipeline classes: SD3Transformer2DModel with SD3.5's dual attention in its
first block, CLIP-L/G with projections, a T5 encoder and a locally built T5 tokenizer) stands in for SD3.5."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset

from tests._registry_helpers import embedded, embedded_store  # noqa: F401


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from spf_lib.models.factory import TinySDConfig, save_tiny_pipeline

    root = tmp_path_factory.mktemp("sd3")
    return {"model": save_tiny_pipeline(root / "tiny-sd3", TinySDConfig(arch="sd3")),
            "data": make_dataset(root / "data", n=4, size=64), "root": root}


@pytest.fixture(scope="module")
def spf_run(sd3):
    from spf_lib.train.run import train

    return train(base_cfg(sd3["root"] / "spf", sd3["model"], sd3["data"], method="spf", steps=2,
                          spf={"stage1_steps": 0}))


def test_local_t5_tokenizer_behaves_like_t5():
    from spf_lib.models.t5_tokenizer import build_t5_tokenizer

    tok = build_t5_tokenizer()
    ids = tok("a photo of a woman", padding="max_length", max_length=8).input_ids
    assert ids[5:] == [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id] and tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens(ids[:2]) == ["▁a", "▁photo"]
    assert tok.unk_token_id not in tok("Zebra-42!").input_ids  # unknown words fall back to characters


def test_flow_matching_noise_and_target(sd3, tmp_path):
    import torch

    from spf_lib.train.run import Trainer

    tr = Trainer(base_cfg(tmp_path, sd3["model"], sd3["data"], method="lora"))
    ctx = tr.ctx
    assert ctx.backbone.kind == "sd3" and type(ctx.noise_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert set(ctx.backbone.frozen_modules()) == {"transformer", "vae", "text_encoder", "text_encoder_2",
                                                  "text_encoder_3"}
    x0 = torch.randn(3, 4, 8, 8)
    noisy, noise, t, target = ctx.add_noise(x0)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(ctx.predict_x0(noisy, target, t), x0, rtol=1e-4, atol=1e-5)
    assert ((t > 0) & (t < 1000)).all()


def test_lora_covers_both_halves_of_joint_attention():
    from spf_lib.models.backbone import Sd3Backbone

    names = Sd3Backbone.lora_target(["to_q", "to_k", "to_v", "to_out.0"], False)
    assert set(names) == {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}
    import re

    rx = re.compile(Sd3Backbone.lora_target(["to_q"], True))
    assert rx.fullmatch("transformer_blocks.3.attn.add_q_proj") and rx.fullmatch("transformer_blocks.3.attn.to_q")
    assert not rx.fullmatch("transformer_blocks.3.attn2.to_q")


def test_joint_capture_matches_sdpa_and_covers_every_joint_layer(sd3, tmp_path):
    """The explicit joint attention gives the model's own output (so capturing changes nothing), records an
    image→CLIP-text map per joint block, and the reference path is the original transformer (adapter off)."""
    import torch

    from spf_lib.train.run import Trainer

    tr = Trainer(base_cfg(tmp_path, sd3["model"], sd3["data"], method="spf", spf={"stage1_steps": 0}))
    ctx, m = tr.ctx, tr.method
    g = torch.Generator().manual_seed(0)
    noisy, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([600.0])
    base, res = ["a photo of a woman, red dress"], ["a photo of a woman, red dress, blonde hair"]
    with torch.no_grad():
        eps_orig = ctx.denoise(noisy, t, ctx.condition(base))  # adapter at init = identity; SDPA processors
        for p in m.params:
            p.normal_(std=0.05, generator=g)
        eps_ref, eps_res = m.dual_forward(ctx, noisy, t, base, res)
    torch.testing.assert_close(eps_ref, eps_orig, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps_res, eps_ref)
    maps = m.store.maps["ref"]
    layers = ctx.unet.config.num_layers
    assert sorted(maps) == [f"transformer_blocks.{i}.attn" for i in range(layers)]
    for c in maps.values():
        assert c.hw == (8, 8) and c.probs.shape == (1, 4, 64, 77)
        torch.testing.assert_close(c.probs.sum(-1), torch.ones(1, 4, 64))
    assert set(m.store.maps["res"]) == set(maps)


def test_joint_capture_keeps_only_the_image_to_clip_block_of_the_full_attention():
    """The kept map equals the image-query × CLIP-key block of the full joint softmax (over image, CLIP and T5 keys)
    renormalised over the CLIP keys; the output equals the layer's own SDPA processor's; nothing else is kept."""
    import torch
    from diffusers import SD3Transformer2DModel

    from spf_lib.models.attention import AttentionStore, JointCaptureProcessor

    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                               attention_head_dim=8, num_attention_heads=3, joint_attention_dim=24,
                               caption_projection_dim=24, pooled_projection_dim=16, qk_norm="rms_norm",
                               dual_attention_layers=(0,))
    for attn in (tr.transformer_blocks[0].attn, tr.transformer_blocks[1].attn):  # the last: context_pre_only
        n, clip, t5 = 16, 77, 19
        x, ctx = torch.randn(2, n, 24), torch.randn(2, clip + t5, 24)
        store = AttentionStore()
        proc = JointCaptureProcessor("a", store, attn.processor, text_len=clip)
        store.mode = "ref"
        with torch.no_grad():
            img, txt = proc(attn, x, ctx)
            img0, txt0 = attn.processor(attn, x, ctx)
            torch.testing.assert_close(img, img0, rtol=1e-5, atol=1e-6)
            if txt0 is not None:
                torch.testing.assert_close(txt, txt0, rtol=1e-5, atol=1e-6)

            def heads(t):
                return t.view(2, -1, 3, 8).transpose(1, 2)

            q = torch.cat([attn.norm_q(heads(attn.to_q(x))), attn.norm_added_q(heads(attn.add_q_proj(ctx)))], 2)
            k = torch.cat([attn.norm_k(heads(attn.to_k(x))), attn.norm_added_k(heads(attn.add_k_proj(ctx)))], 2)
            full = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)  # (2, 3, n + 96, n + 96)
        block = full[:, :, :n, n:n + clip]
        kept = store.maps["ref"]["a"]
        assert kept.probs.shape == (2, 3, n, clip) and kept.hw == (4, 4)
        torch.testing.assert_close(kept.probs, block / block.sum(-1, keepdim=True), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(kept.query, attn.to_q(x).detach())
        store.keep_probs = False
        with torch.no_grad():
            proc(attn, x, ctx)
        assert store.maps["ref"]["a"].probs is None


def test_clip_embedder_decodes_sd3_latents_with_the_vae_shift():
    """L_enh decodes x̂0 as the inverse of encode_images ((z − shift) × scale): z = latents / scaling_factor +
    shift_factor (SD3's VAE), so a training latent decodes to the image its VAE sample z decodes to."""
    import torch
    from diffusers import AutoencoderKL

    from spf_lib.methods.base import TrainContext
    from spf_lib.methods.spf.embedder import ClipEmbedder
    from spf_lib.models.architectures import SD3_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(**{**SD3_VAE, "block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2,
                           "up_block_types": ("UpDecoderBlock2D",) * 2, "norm_num_groups": 8, "layers_per_block": 1,
                           "shift_factor": 0.5})
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    ctx = type("Ctx", (), {"vae": vae, "device": "cpu", "weight_dtype": torch.float32,
                           "generator": torch.Generator().manual_seed(3)})()
    emb = ClipEmbedder.__new__(ClipEmbedder)
    emb._features = lambda img: img  # the decode is under test, not CLIP
    with torch.no_grad():
        lat = TrainContext.encode_images(ctx, x)  # what training noises and x̂0 estimates
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(lat, (z - 0.5) * vae.config.scaling_factor)
        got = emb.embed_latents(lat, vae)
        want = vae.decode(z).sample
        unshifted = vae.decode(lat / vae.config.scaling_factor).sample
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unshifted, want, atol=1e-3)


@pytest.mark.slow
def test_spf_on_sd3_trains_generates_and_registers(sd3, spf_run, embedded):
    import io

    import numpy as np
    from PIL import Image

    from spf_lib.eval.evalset import EvalItem
    from spf_lib.eval.generate import default_resolution, generate_images
    from spf_lib.methods import load_adapter, read_adapter_info
    from spf_lib.models.loading import load_pipeline
    from spf_lib.registry import register_model
    from tests._registry_helpers import generate

    assert all(np.isfinite(spf_run.losses)) and {"loss_text", "loss_fine"} <= set(spf_run.loss_terms)
    assert read_adapter_info(spf_run.adapter_dir)["architecture"] == "sd3"
    pipe = load_pipeline(str(sd3["model"]))
    assert default_resolution(pipe) == 64
    items = [EvalItem(kind="base", index=0, prompt="a photo of a man", seed=1)]
    kw = {"steps": 2, "guidance": 4.0, "resolution": 64, "batch_size": 1, "progress": False}
    plain = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    handle = load_adapter(pipe, spf_run.adapter_dir)
    tuned = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    handle.disable()
    off = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    assert np.array_equal(plain, off) and not np.array_equal(plain, tuned)
    rv = register_model(spf_run.adapter_dir, str(sd3["model"]), metrics={"pollution": 0.3}, lineage={},
                        model_name="portrait-sd3")
    png = generate(f"models:/portrait-sd3@{rv.aliases[0]}")
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_demo_builds_a_tiny_base_of_the_named_architecture(tmp_path, monkeypatch):
    import json

    from spf_lib.demo import ensure_base_model

    got = ensure_base_model(tmp_path, "tiny-sd3")
    assert json.loads((Path(got) / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert ensure_base_model(tmp_path, "tiny-sd3") == got  # built once
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-sdxl").mkdir()  # a folder of that name is the user's model, not a request to build one
    assert ensure_base_model(tmp_path / "ws", "tiny-sdxl") == "tiny-sdxl"
