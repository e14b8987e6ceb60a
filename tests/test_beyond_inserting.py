"""Beyond Inserting on tiny models: stage split, packed K/V injection equals plain attention when the tokens are the
plain ones, attention loss, gradients only in the token module, reload to identical tokens, shared loop end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _identity_helpers import identity_cfg, make_identity_dataset, tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bi")
    return root, tiny_model(root), make_identity_dataset(root / "data", ("sks",), with_column=False)


def _sd15_shaped_unet():
    """SD 1.5's block layout (3 cross-attn down blocks, mid, 3 cross-attn up blocks, 2 layers each) at tiny width."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, block_out_channels=(8, 8, 8, 8), layers_per_block=2, cross_attention_dim=8,
        attention_head_dim=4, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def test_attention_loss_zero_iff_identical():
    import torch

    from spf_lib.methods.beyond_inserting.inject import attention_loss

    a = torch.rand(2, 64)
    assert float(attention_loss([(a, a.clone())])) == 0.0
    assert float(attention_loss([(a * 3, a)])) < 1e-12                 # same places, different mass → 0
    assert float(attention_loss([(a, torch.rand(2, 64))])) > 0


def test_stage_split_on_sd15_layout():
    from spf_lib.methods.beyond_inserting.inject import assign_stages, cross_attention_layers

    layers = cross_attention_layers(_sd15_shaped_unet())
    assert len(layers) == 16
    assert layers[0].startswith("down_blocks.0") and layers[6].startswith("mid_block")
    assert layers[-1].startswith("up_blocks.3.attentions.2")
    stage = assign_stages(layers, 5)
    sizes = [list(stage.values()).count(s) for s in range(5)]
    assert sizes == [4, 3, 3, 3, 3]
    assert list(stage.values()) == sorted(stage.values())          # contiguous, in forward order


def test_packed_injection_matches_plain_attention():
    import torch

    from spf_lib.methods.beyond_inserting.inject import Injector, assign_stages, cross_attention_layers
    from spf_lib.models.factory import build_tiny_components

    comp = build_tiny_components()
    unet, te = comp["unet"], comp["text_encoder"]
    ids = comp["tokenizer"](["a photo of a person"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hid = te(ids)[0]
        z, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
        ref = unet(z, t, hid).sample
        stage = assign_stages(cross_attention_layers(unet), 5)
        n = max(stage.values()) + 1
        inj = Injector(unet, te, stage, n, 77, token_id=10**6, value_mode="direct")
        inj.install(hook=False)
        plain = unet(z, t, hid).sample                              # unpacked input: ordinary attention
        packed = unet(z, t, torch.cat([hid] * (1 + 2 * n), dim=1)).sample
        other = unet(z, t, torch.cat([hid] + [hid * 0.5] * (2 * n), dim=1)).sample
        inj.remove()
        back = unet(z, t, hid).sample
    assert torch.allclose(plain, ref, atol=1e-5) and torch.allclose(packed, ref, atol=1e-5)
    assert not torch.allclose(other, ref, atol=1e-3)                 # the per-stage slices are really used
    assert torch.equal(back, ref)


def test_only_token_module_gets_gradients_and_init_loss_is_zero(setup, tmp_path):
    from spf_lib.train.run import Trainer

    root, model, data = setup
    tr = Trainer(identity_cfg(tmp_path, model, data, "beyond-inserting"))
    loss, logs = tr.method.compute_loss(tr.ctx, tr.source.batch(0), 0)
    # at init V* == "person" (zero heads) and the prompts share the prefix: the maps coincide
    assert logs["loss_attention"] == pytest.approx(0.0, abs=1e-10)
    loss.backward()
    params = dict(tr.method.module.named_parameters())
    assert {"v_star", "slots", "head_k.weight", "head_v.weight"} <= set(params)
    assert tr.method.module.anchor_v.requires_grad is False
    for n in ("v_star", "head_k.weight", "head_v.weight"):
        assert params[n].grad is not None and params[n].grad.abs().sum() > 0, n
    for m in (tr.ctx.unet, tr.ctx.text_encoder, tr.ctx.vae):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())


@pytest.mark.slow
def test_train_reload_identical_tokens_and_generate(setup, tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from spf_lib.methods import load_adapter
    from spf_lib.methods.beyond_inserting.module import KVTokenGenerator
    from spf_lib.models.loading import load_pipeline
    from spf_lib.train.run import train

    root, model, data = setup
    res = train(identity_cfg(tmp_path, model, data, "beyond-inserting", steps=3))
    assert res.loss_terms["loss_attention"][-1] > 0
    adapter = Path(res.adapter_dir)
    info = json.loads((adapter / "adapter_info.json").read_text())
    assert info["loader"] == "spf_lib.methods.beyond_inserting.adapter:load"
    assert info["n_stages"] == 4 and info["n_stages_requested"] == 5   # the tiny UNet has 4 cross-attn layers
    t = load_file(str(adapter / "beyond_inserting.safetensors"))
    mod_sd = {k[len("module."):]: v for k, v in t.items() if k.startswith("module.")}
    mod = KVTokenGenerator(32, 4, mod_sd["v_star"], mod_sd["anchor_v"], heads=4)
    mod.load_state_dict(mod_sd)
    with torch.no_grad():
        k, v = mod()
    assert torch.allclose(k, t["k_tokens"], atol=1e-6) and torch.allclose(v, t["v_tokens"], atol=1e-6)

    pipe = load_pipeline(str(model))
    run = lambda text: pipe(text, num_inference_steps=2, height=64, width=64,  # noqa: E731
                            generator=torch.Generator().manual_seed(0), output_type="np").images
    before = run("a photo of sks person")
    handle = load_adapter(pipe, adapter)
    assert torch.equal(handle.k_tokens, t["k_tokens"]) and torch.equal(handle.v_tokens, t["v_tokens"])
    text = handle.prompt("a photo of sks person")
    assert text == "a photo of <bi-sks>"
    tuned = run(text)
    handle.disable()
    after = run(handle.prompt("a photo of sks person"))
    assert np.array_equal(before, after)           # disable restores the original model exactly
    assert not np.allclose(tuned, before, atol=1e-4)


def _unet_inputs(unet):
    """Record the encoder_hidden_states every UNet call receives (training step or pipeline call alike)."""
    seen = []
    handle = unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[2] if len(args) > 2 else kwargs["encoder_hidden_states"])
                                              .detach().clone()), with_kwargs=True)
    return seen, handle


def test_training_encodings_equal_loaded_adapter_encodings(setup, tmp_path):
    """At every step, the packed text encoding the UNet gets in training equals what a fresh pipeline gives for the
    same prompt after loading the adapter saved at that step (V*'s table row included): the validation grids and
    the trained loss see the model the user gets."""
    import torch

    from spf_lib.methods import load_adapter
    from spf_lib.models.loading import load_pipeline
    from spf_lib.train.run import Trainer

    root, model, data = setup
    tr = Trainer(identity_cfg(tmp_path, model, data, "beyond-inserting", lr=5e-2, steps=3))
    m, ctx = tr.method, tr.ctx
    pipe = load_pipeline(str(model))
    prompt = m.opts.template.format(m.token)
    gen_seen, gen_hook = _unet_inputs(pipe.unet)
    rows = []
    for step in range(3):
        train_seen, hook = _unet_inputs(ctx.unet)
        with torch.no_grad():
            m.compute_loss(ctx, tr.source.batch(step), step)
        hook.remove()
        out = tmp_path / f"adapter-{step}"
        out.mkdir()
        info = m.save_adapter(ctx, out)
        (out / "adapter_info.json").write_text(json.dumps(info))
        handle = load_adapter(pipe, out)
        gen_seen.clear()
        pipe(prompt, num_inference_steps=1, guidance_scale=1.0, height=64, width=64, output_type="latent")
        handle.disable()
        trained, generated = train_seen[0][0].float(), gen_seen[0][0].float()
        row = ctx.text_encoder.get_input_embeddings().weight[m.token_id]
        loaded_row = pipe.text_encoder.get_input_embeddings().weight[m.token_id]
        print(f"step {step}: max |train - generation| = {float((trained - generated).abs().max()):.4g}, "
              f"max |train row - loaded row| = {float((row - loaded_row).abs().max()):.4g}")
        assert torch.allclose(row, loaded_row, atol=1e-6), step
        assert torch.allclose(trained, generated, atol=1e-5), step
        rows.append(row.clone())
        tr.train_step()
    gen_hook.remove()
    assert not torch.allclose(rows[0], rows[-1], atol=1e-4)        # V* did move: the check covered a changing row


def test_step0_token_behaves_exactly_like_the_reference_word(setup, tmp_path):
    """Zero-initialised heads: before training, the learned prompt with V* gives the UNet output of the reference
    prompt ("... person"), not only the same attention maps."""
    import torch

    from spf_lib.train.run import Trainer

    root, model, data = setup
    tr = Trainer(identity_cfg(tmp_path, model, data, "beyond-inserting"))
    m, ctx = tr.method, tr.ctx
    m.set_enabled(ctx, True)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        learned = ctx.unet(z, t, ctx.text_encoder(ctx.tokenize([m.opts.template.format(m.token)]))[0]).sample
        m.set_enabled(ctx, False)
        ref = ctx.unet(z, t, ctx.text_encoder(ctx.tokenize([m.opts.reference_prompt]))[0]).sample
    print(f"step 0: max |V* - person| = {float((learned - ref).abs().max()):.4g}, mean |out| = "
          f"{float(ref.abs().mean()):.3g}")
    assert torch.allclose(learned, ref, atol=1e-5)
