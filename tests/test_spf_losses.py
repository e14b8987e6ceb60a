"""SPF-Portrait losses: zero for identical paths, positive otherwise; the SFCM gate really removes regions."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset, tiny_model

from spf_lib.methods.spf import losses as L


# ---- pure functions -------------------------------------------------------------------------------------------
def _probs(b=2, h=2, n=16, t=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, t, generator=g).softmax(-1)


def test_text_loss_zero_identical_positive_otherwise():
    p = _probs()
    idx = torch.arange(10).expand(2, 10)
    valid = torch.ones(2, 10, dtype=torch.bool)
    gate = torch.ones(2, 16)
    assert L.text_consistent_loss(p, p.clone(), idx, idx, valid, gate) == 0
    assert L.text_consistent_loss(_probs(seed=1), p, idx, idx, valid, gate) > 0


def _with_target_share(p_ref, share, target_pos):
    """The reference's attention with the target's tokens taking ``share`` (B, H, N) of every pixel: each other
    token keeps its place, scaled by 1 − share — what appending the target to the prompt does to a softmax."""
    p = p_ref * (1.0 - share)[..., None]
    p[..., target_pos] = 0.0
    p[..., target_pos] += (share / len(target_pos))[..., None]
    return p


def test_text_loss_reads_the_response_without_the_targets_share():
    """text_without_target: the target taking a share of the attention (its response) costs nothing; the base
    tokens' maps moving among themselves still costs; raw maps charge the target's share as base attention lost."""
    g = torch.Generator().manual_seed(0)
    b, h, n = 2, 2, 16
    p_ref = torch.randn(b, h, n, 77, generator=g).softmax(-1)
    p_ref[..., 60:] = 0.0  # the target's positions carry nothing in the base prompt
    p_ref = p_ref / p_ref.sum(-1, keepdim=True)
    share = 0.8 * torch.rand(b, h, n, generator=g)
    tpos = [60, 61, 62]
    p_res = _with_target_share(p_ref, share, tpos)
    idx = torch.arange(1, 12).expand(b, 11)
    valid = torch.ones(b, 11, dtype=torch.bool)
    gate = torch.ones(b, n)
    target = torch.zeros(b, 77)
    target[:, tpos] = 1.0
    assert L.text_consistent_loss(p_res, p_ref, idx, idx, valid, gate, target) < 1e-10
    raw = L.text_consistent_loss(p_res, p_ref, idx, idx, valid, gate)
    assert raw > 1e-3
    wrong = torch.zeros(b, 77)
    wrong[:, [40, 41, 42]] = 1.0  # positions the target does not hold: no excuse for the lost share
    assert L.text_consistent_loss(p_res, p_ref, idx, idx, valid, gate, wrong) > 0.5 * raw
    # a base token's map moved (attention swapped between two base tokens): still charged
    moved = p_res.clone()
    moved[..., [2, 3]] = moved[..., [3, 2]]
    assert L.text_consistent_loss(moved, p_ref, idx, idx, valid, gate, target) > 1e-3


def test_text_loss_finds_each_captions_target_tokens():
    """SpfMethod.text_loss: the positions it takes out are the caption's target-phrase tokens (a real tokenizer and
    TokenMapper), wherever the target sits in the caption; with the option off the same maps are charged."""
    from types import SimpleNamespace

    from spf_lib.methods.spf.method import SpfMethod
    from spf_lib.methods.spf.tokens import TokenMapper
    from spf_lib.models.tokenizer import build_tokenizer

    mapper = TokenMapper(build_tokenizer())
    base = ["a photo of a woman, red hair", "a photo of a man, blue shirt, smiling"]
    target = "wearing round glasses"
    caption = [f"{base[0]}, {target}", f"a photo of a man, {target}, blue shirt, smiling"]
    g = torch.Generator().manual_seed(1)
    maps = {"ref": {}, "res": {}}
    for res in (8, 4):
        n = res * res
        p_ref = torch.randn(2, 2, n, 77, generator=g).softmax(-1)
        p_res = torch.zeros_like(p_ref)
        share = 0.7 * torch.rand(2, 2, n, generator=g)
        for i in range(2):
            ref_i, res_i = mapper.index_map(base[i], caption[i], include_special=False)
            # the response: every paired base token where it sits in the caption, scaled by 1 − share
            p_res[i][..., res_i] = p_ref[i][..., ref_i] * (1.0 - share[i])[..., None]
            tpos = mapper.phrase_positions(caption[i], target)
            assert tpos
            p_res[i][..., tpos] = (share[i] / len(tpos))[..., None]
        maps["ref"][f"l{res}"] = SimpleNamespace(probs=p_ref, hw=(res, res))
        maps["res"][f"l{res}"] = SimpleNamespace(probs=p_res, hw=(res, res))
    m = SpfMethod.__new__(SpfMethod)
    m.mapper, m.store = mapper, SimpleNamespace(maps=maps)
    batch = {"base_text": base, "caption": caption, "target_phrase": [target, target]}
    mask = L.ControlMap.off(2, 16, 16)
    m.o = SimpleNamespace(sfcm_gate_pool="max", text_include_special=False, text_without_target=True)
    without = m.text_loss(batch, mask)
    m.o.text_without_target = False
    raw = m.text_loss(batch, mask)
    assert raw > 0 and without < 1e-6 * raw


def test_fine_loss_zero_identical_positive_otherwise():
    q = torch.randn(2, 16, 8)
    gate = torch.ones(2, 16)
    assert L.fine_grained_loss(q, q.clone(), gate) == 0
    assert L.fine_grained_loss(q + 0.1, q, gate) > 0


def test_sfcm_masked_region_contributes_nothing():
    """Differences confined to where M = 1 give zero loss; the same difference outside the mask does not."""
    h = w = 4
    mask = torch.zeros(2, h, w)
    mask[:, :2, :] = 1.0                       # top half is the target region
    gate = L.gate_for(mask, (h, w))
    inside = torch.zeros(2, h * w, dtype=torch.bool)
    inside.view(2, h, w)[:, :2, :] = True
    q_ref = torch.randn(2, h * w, 8)
    q_in = q_ref + 5.0 * inside[..., None]
    q_out = q_ref + 5.0 * (~inside)[..., None]
    assert L.fine_grained_loss(q_in, q_ref, gate) == 0
    assert L.fine_grained_loss(q_out, q_ref, gate) > 0
    p_ref = _probs(n=h * w)
    p_in = torch.where(inside[:, None, :, None], _probs(n=h * w, seed=3), p_ref)
    p_out = torch.where(~inside[:, None, :, None], _probs(n=h * w, seed=3), p_ref)
    idx = torch.arange(77).expand(2, 77)
    valid = torch.ones(2, 77, dtype=torch.bool)
    assert L.text_consistent_loss(p_in, p_ref, idx, idx, valid, gate) == 0
    assert L.text_consistent_loss(p_out, p_ref, idx, idx, valid, gate) > 0


def test_sfcm_subtracts_far_phrases_and_stays_in_unit_range():
    n = torch.zeros(1, 4, 4)
    n[0, :, :2] = 1.0                           # noise differs on the left half
    phrase = torch.zeros(1, 1, 4, 4)
    phrase[0, 0, :2, :] = 1.0                   # a base phrase sits on the top half
    far = L.sfcm(n, phrase, torch.tensor([[1.0]]))
    near = L.sfcm(n, phrase, torch.tensor([[0.0]]))
    assert far.min() >= 0 and far.max() <= 1
    assert far[0, :2, :2].sum() == 0 and far[0, 2:, :2].min() == 1   # far phrase region removed
    assert near[0, :, :2].min() == 1                                 # a phrase close to the target is kept


def test_sfcm_quantile_norm_saturates_the_whole_target_region():
    """Min-max lets one hot pixel set the scale; the quantile norm gives every clearly responding pixel M = 1."""
    n = torch.zeros(1, 8, 8)
    n[0, 2:4, 2:6] = 0.5                        # an 8-pixel target response ...
    n[0, 3, 3] = 1.0                            # ... with one hot pixel
    none = torch.zeros(1, 0, 8, 8)
    mm = L.sfcm(n, none, torch.zeros(1, 0))
    q = L.sfcm(n, none, torch.zeros(1, 0), quantile=0.85)
    region = n[0] > 0
    assert mm[0][region].mean() < 0.6 and q[0][region].min() == 1
    assert q[0][~region].max() == 0 and q.max() <= 1


def test_max_pool_gate_frees_a_low_res_cell_holding_a_small_target():
    mask = torch.zeros(1, 16, 16)
    mask[0, 6, 6] = 1.0                         # one latent pixel responds
    area = L.gate_for(mask, (4, 4)).view(4, 4)
    mx = L.gate_for(mask, (4, 4), "max").view(4, 4)
    assert area[1, 1] > 0.9                     # averaged away: that cell is still aligned
    assert mx[1, 1] == 0 and mx.sum() == 15     # freed, and only that cell
    assert torch.equal(L.gate_for(mask, (16, 16), "max"), L.gate_for(mask, (16, 16)))


def test_output_alignment_frees_exactly_the_sfcm_region():
    ref = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[:, 2:4, 3:6] = 1.0
    inside = ref + 3.0 * mask[:, None]
    outside = ref + 3.0 * (1 - mask[:, None])
    assert L.output_alignment_loss(inside, ref, mask) == 0
    assert L.output_alignment_loss(outside, ref, mask) > 0
    no_sfcm = torch.zeros_like(mask)                      # use_sfcm=false: align the whole prediction
    assert torch.isclose(L.output_alignment_loss(inside, ref, no_sfcm), ((inside - ref) ** 2).mean())


def test_enhanced_loss_zero_when_shift_matches_direction():
    e_ref = torch.randn(3, 16)
    d = torch.randn(3, 16)
    valid = torch.ones(3, dtype=torch.bool)
    assert L.enhanced_loss(e_ref + 2 * d, e_ref, d, valid).abs() < 1e-6
    assert L.enhanced_loss(e_ref - d, e_ref, d, valid) > 1.9
    assert L.enhanced_loss(e_ref + d, e_ref, d, torch.zeros(3, dtype=torch.bool)) == 0


def test_token_map_pairs_same_tokens():
    from spf_lib.methods.spf.tokens import TokenMapper
    from spf_lib.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    m = TokenMapper(tok)
    base, res = "a photo of a woman, brown jacket", "a photo of a woman, blonde hair, brown jacket"
    ref_i, res_i = m.index_map(base, res)
    ids_b = tok(base, padding="max_length", max_length=77).input_ids
    ids_r = tok(res, padding="max_length", max_length=77).input_ids
    assert [ids_b[i] for i in ref_i] == [ids_r[j] for j in res_i]
    content = m.content_ids("brown jacket")
    pos = m.phrase_positions(res, "brown jacket")
    assert [ids_r[p] for p in pos] == list(content) and pos[0] > m.phrase_positions(res, "blonde hair")[0]
    assert m.phrase_positions(base, "blonde hair") == []


# ---- through the tiny UNet ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from spf_lib.train.run import Trainer

    from spf_lib.models.factory import save_tiny_clip

    root = tmp_path_factory.mktemp("spf")
    clip = save_tiny_clip(root / "clip")  # L_enhanced is off without a CLIP
    cfg = base_cfg(root, tiny_model(root), make_dataset(root / "data"), method="spf", steps=3, lr=5e-2,
                   spf={"stage1_steps": 0, "enh_max_timestep": 1000, "image_embedder": str(clip)},
                   validation={"enabled": False})
    return Trainer(cfg)


def _paths(tr, batch, base_text, res_text):
    ctx, m = tr.ctx, tr.method
    torch.manual_seed(0)
    lat = ctx.encode_images(batch["pixel_values"])
    noisy, _, t, _ = ctx.add_noise(lat)
    eps_ref, eps_res = m.dual_forward(ctx, noisy, t, base_text, res_text)
    mask = torch.zeros(eps_res.shape[0], *eps_res.shape[-2:])
    b = {**batch, "base_text": base_text, "caption": res_text}
    return m.text_loss(b, mask), m.fine_loss(mask), m.control_map(ctx, b, eps_res, eps_ref)


@contextmanager
def perturbed_lora(unet, scale: float = 0.05):
    """A 'trained' adapter for the duration of a test: random LoRA B (A is random from init), zeroed after."""
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.add_(scale * torch.randn_like(p))
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if "lora_B" in n:
                    p.zero_()
                p.grad = None


def test_capture_only_on_chosen_layers(trainer):
    from spf_lib.models.attention import CaptureProcessor

    procs = trainer.ctx.unet.attn_processors
    captured = [k for k, p in procs.items() if isinstance(p, CaptureProcessor)]
    assert captured and all(k.endswith("attn2.processor") for k in captured)
    assert all(type(p).__name__ == "AttnProcessor2_0" for k, p in procs.items() if k not in captured)


def test_alignment_losses_zero_for_identical_paths_positive_otherwise(trainer):
    batch = trainer.source.batch(0)
    text = batch["caption"]
    # LoRA at init has B = 0: adapter on == adapter off, so same text → identical paths
    l_text, l_fine, mask = _paths(trainer, batch, text, text)
    assert l_text == 0 and l_fine == 0 and mask.latent.max() == 0
    # different text (base vs base + target) → positive
    l_text, l_fine, mask = _paths(trainer, batch, batch["base_text"], text)
    assert l_text > 0 and l_fine > 0 and mask.latent.max() > 0  # a response somewhere (random tiny model: no clear region)
    # same text, trained adapter → positive
    with perturbed_lora(trainer.ctx.unet):
        l_text, l_fine, _ = _paths(trainer, batch, text, text)
        assert l_text > 0 and l_fine > 0


def _reference_step(trainer):
    """One batch, its z_t and the reference path's ε (adapter off, base text): the inputs of L_preserve."""
    ctx, m = trainer.ctx, trainer.method
    batch = trainer.source.batch(0)
    torch.manual_seed(0)
    noisy, _, t, _ = ctx.add_noise(ctx.encode_images(batch["pixel_values"]))
    eps_ref, _ = m.dual_forward(ctx, noisy, t, batch["base_text"], batch["caption"])
    return batch, noisy, t, eps_ref


def test_preserve_loss_zero_at_init_positive_for_trained_adapter(trainer):
    ctx, m = trainer.ctx, trainer.method
    batch, noisy, t, eps_ref = _reference_step(trainer)
    assert float(m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref)) == 0  # B = 0: adapter is identity
    with perturbed_lora(ctx.unet):
        loss = m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref)
        assert float(loss) > 0
        loss.backward()
        grads = [p.grad for n, p in ctx.unet.named_parameters() if "lora_B" in n]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_preserve_loss_covers_the_unconditional_branch(trainer):
    """With preserve_uncond_frac = 1 the loss is exactly tuned-vs-original on the empty prompt (CFG's other branch)."""
    ctx, m = trainer.ctx, trainer.method
    batch, noisy, t, eps_ref = _reference_step(trainer)
    saved = m.o
    with perturbed_lora(ctx.unet):
        try:
            m.o = saved.model_copy(update={"preserve_uncond_frac": 1.0})
            got = float(m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref))
            empty = ctx.encode_text([""] * noisy.shape[0])
            with torch.no_grad():
                tuned = ctx.unet(noisy, t, encoder_hidden_states=empty, return_dict=False)[0]
                m.switch.set(False)
                orig = ctx.unet(noisy, t, encoder_hidden_states=empty, return_dict=False)[0]
                m.switch.set(True)
            want = float(torch.nn.functional.mse_loss(tuned, orig))
            assert want > 0 and got == pytest.approx(want, rel=1e-5)
            m.o = saved.model_copy(update={"preserve_uncond_frac": 0.0})  # base text only: a different number
            assert float(m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref)) != pytest.approx(want, rel=1e-3)
        finally:
            m.o = saved


def test_shares_are_spread_evenly_over_the_run_without_random_draws(trainer):
    """A share of a run (the empty prompt's among preserved samples, L_preserve's among all) is the rounded running
    total, differenced: exact over a whole period, within one item over any stretch, and no draw from the run's
    random stream — a step's cost does not depend on chance."""
    from spf_lib.methods.spf.preserve import share

    m, ctx = trainer.method, trainer.ctx
    state = ctx.generator.get_state()
    assert m._uncond_count(8, 0) == 4 and m._uncond_count(8, 3) == 4
    ones = [m._uncond_count(1, i) for i in range(10)]
    assert ones == [1, 0] * 5  # batch 1: the empty prompt on every other preserved sample
    per_batch = [share(0.125, n * 2, 2) for n in range(16)]  # 1/8 of batches of 2: one sample every 4th batch
    assert per_batch == [0, 1, 0, 0] * 4
    for rate in (0.1, 0.3, 0.125, 2 / 3):
        counts = [share(rate, n * 3, 3) for n in range(40)]
        running = [sum(counts[:k]) for k in range(41)]
        assert all(abs(r - rate * 3 * k) <= 1 for k, r in enumerate(running)), rate
    assert torch.equal(ctx.generator.get_state(), state)


def test_stage1_trains_the_caption_and_preserves_the_base_text(trainer):
    """Stage 1 with L_preserve: at init (adapter = identity) the loss IS the diffusion loss; the preserve term is
    logged, and without preservation stage 1 is plain LoRA."""
    ctx, m = trainer.ctx, trainer.method
    batch = trainer.source.batch(0)
    saved = m.o
    try:
        m.o = saved.model_copy(update={"stage1_steps": 5})
        state = ctx.generator.get_state()
        loss, logs = m.compute_loss(ctx, batch, 0)
        assert logs["stage"] == 1.0 and logs["loss_preserve"] == 0.0
        assert float(loss) == pytest.approx(logs["loss_diffusion"], rel=1e-6)
        m.o = saved.model_copy(update={"stage1_steps": 5, "preserve_in_stage1": False})
        ctx.generator.set_state(state)
        loss2, logs2 = m.compute_loss(ctx, batch, 0)
        assert "loss_preserve" not in logs2 and float(loss2) == pytest.approx(float(loss), rel=1e-6)
    finally:
        m.o = saved


def test_gradients_only_on_trainable_and_disabled_unet_unchanged(trainer):
    ctx = trainer.ctx
    unet = ctx.unet
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 16, 16, generator=g)
    cond = ctx.encode_text(["a photo of a woman, red dress"])
    t = torch.tensor([500])

    def out(enabled: bool):
        (unet.enable_adapters if enabled else unet.disable_adapters)()
        with torch.no_grad():
            y = unet(x, t, encoder_hidden_states=cond).sample
        unet.enable_adapters()
        return y

    before_off, before_on = out(False), out(True)
    base = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    trainable = {id(p) for p in trainer.params}
    loss, logs = trainer.method.compute_loss(ctx, trainer.source.batch(0), step=0)
    assert {"loss_text", "loss_fine", "loss_enhanced"} <= logs.keys()
    loss.backward()
    for mod in (unet, ctx.vae, ctx.text_encoder):
        for n, p in mod.named_parameters():
            if id(p) not in trainable:
                assert p.grad is None, n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.params)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train_step()
    trainer.train_step()
    # the base weights bit-identical; the output equal up to the kernels' own float order (the first forward of a
    # fresh process can pick another CPU kernel than later ones: ~1e-6 apart when this test runs alone)
    assert all(torch.equal(p, base[n]) for n, p in unet.named_parameters() if "lora_" not in n)
    assert torch.allclose(out(False), before_off, atol=1e-5), "adapter-disabled UNet must be unchanged by training"
    assert not torch.allclose(out(True), before_on, atol=1e-3)


@pytest.mark.slow
def test_gradient_checkpointing_gives_same_spf_gradients(tmp_path_factory):
    """Captured maps must stay differentiable when the UNet recomputes activations during backward."""
    from spf_lib.train.run import Trainer

    root = tmp_path_factory.mktemp("ckpt")
    model, data = tiny_model(root), make_dataset(root / "data", n=2)
    grads = []
    for checkpointing in (False, True):
        cfg = base_cfg(root, model, data, method="spf", steps=2, gradient_checkpointing=checkpointing,
                       spf={"stage1_steps": 0, "enh_max_timestep": 1000}, validation={"enabled": False})
        tr = Trainer(cfg)
        with torch.no_grad():
            for n, p in tr.ctx.unet.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
        loss, logs = tr.method.compute_loss(tr.ctx, tr.source.batch(0), step=0)
        loss.backward()
        assert logs["loss_text"] > 0
        grads.append(torch.cat([p.grad.flatten() for p in tr.params]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["image", "text"])
def test_enhanced_loss_through_clip_embedder(tmp_path_factory, direction):
    """With a CLIP model configured, L_enhanced decodes x̂0 through the VAE and its gradient reaches the LoRA."""
    from spf_lib.models.factory import save_tiny_clip
    from spf_lib.train.run import Trainer

    root = tmp_path_factory.mktemp("clip")
    clip = save_tiny_clip(root / "clip")
    cfg = base_cfg(root, tiny_model(root), make_dataset(root / "data", n=2), method="spf", steps=2,
                   spf={"stage1_steps": 0, "use_text": False, "use_fine": False, "w_diffusion": 0.0, "image_embedder": str(clip),
                        "enh_direction": direction, "enh_max_timestep": 1000}, validation={"enabled": False})
    tr = Trainer(cfg)
    assert tr.method.embedder.name == "clip"
    with torch.no_grad():
        for n, p in tr.ctx.unet.named_parameters():
            if "lora_B" in n:
                p.copy_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    loss, logs = tr.method.compute_loss(tr.ctx, tr.source.batch(0), step=0)
    assert 0 < logs["loss_enhanced"] <= 2
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in tr.params if p.grad is not None) > 0


def test_preserve_on_the_original_models_own_samples(trainer):
    """preserve_prior: the original model's samples of the set's base texts (the same on a resumed run), and
    L_preserve on them is 0 for an identity adapter and positive, with gradient, for a trained one."""
    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    try:
        m.o = saved.model_copy(update={"preserve_prior": 3, "preserve_prior_steps": 2})
        lat, texts = m.sample_prior(ctx)
        lat2, _ = m.sample_prior(ctx)
        side = ctx.cfg.resolution // ctx.pipe.vae_scale_factor
        assert lat.shape == (3, ctx.unet.config.in_channels, side, side) and torch.isfinite(lat).all()
        assert torch.equal(lat, lat2)
        assert texts == [trainer.source.examples[i % len(trainer.source.examples)].base_text for i in range(3)]
        m.prior = (lat, texts)
        batch, noisy, t, eps_ref = _reference_step(trainer)
        with identity_lora(ctx.unet):  # earlier tests may have trained the shared trainer
            assert float(m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref)) == 0
            with perturbed_lora(ctx.unet):
                loss = m.preserve_loss(ctx, noisy, t, batch["base_text"], eps_ref)
                assert float(loss) > 0
                loss.backward()
                assert any(p.grad is not None and p.grad.abs().sum() > 0
                           for n, p in ctx.unet.named_parameters() if "lora_B" in n)
    finally:
        m.o, m.prior = saved, None


@contextmanager
def identity_lora(unet):
    """LoRA B = 0 (adapter = identity) for the duration, then the previous values back."""
    saved = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if n in saved:
                p.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if n in saved:
                    p.copy_(saved[n])


# ---- issue 15: presets, L_enh only with a CLIP and only where it counts, split batches -----------------------
def test_presets_and_enhanced_needs_a_clip():
    from spf_lib.train.config import SpfOptions

    paper = SpfOptions(preset="spf-paper")
    assert (paper.use_out, paper.use_preserve, paper.stage1_steps, paper.text_include_special) == (False, False, None,
                                                                                                     True)
    assert SpfOptions(preset="spf-paper", use_preserve=True).use_preserve  # explicit fields win over the preset
    assert paper.sfcm_blur == 0 and not paper.sfcm_phrase_share        # the paper's map: no blur, Σ_p D_p·A_p
    ours = SpfOptions()
    assert ours.preset == "spf" and ours.use_out and ours.use_preserve and ours.stage1_steps == 0
    assert ours.sfcm_blur == 1                                         # issue 15's tenth round
    assert ours.sfcm_phrase_share and ours.w_out == 2.0                # issue 15's eleventh round
    assert not ours.use_enhanced                                      # no CLIP: L_enh is off, and the config says so
    assert SpfOptions(image_embedder="some/clip").use_enhanced
    again = SpfOptions(**paper.model_dump())                           # a resolved config reloads unchanged
    assert again == paper
    assert (ours.lr_scale, paper.lr_scale) == (2.0, 1.0)
    assert (ours.text_without_target, paper.text_without_target) == (True, False)


def test_spf_optimizer_runs_at_lr_scale_times_the_configured_lr(trainer):
    """The optimizer (and the scheduler whose lr MLflow logs) runs at cfg.lr × spf.lr_scale."""
    cfg = trainer.cfg
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [cfg.lr * cfg.spf.lr_scale]
    assert trainer.lr_scheduler.get_last_lr() == [pytest.approx(cfg.lr * cfg.spf.lr_scale)]  # what the logs show


def test_enhanced_decodes_only_samples_past_the_threshold(trainer):
    ctx, m = trainer.ctx, trainer.method
    batch = {**trainer.source.batch(0)}
    batch = {k: (v.repeat(3, 1, 1, 1) if k == "pixel_values" else v * 3 if isinstance(v, list) else v)
             for k, v in batch.items()}
    lat = ctx.encode_images(batch["pixel_values"])
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 900, 300])
    noisy = ctx.noise_scheduler.add_noise(lat, noise, t)
    seen = []
    real = m.embedder.embed_latents
    m.embedder.embed_latents = lambda x, vae: seen.append(x.shape[0]) or real(x, vae)
    saved = m.o
    try:
        m.o = saved.model_copy(update={"enh_max_timestep": 500})
        eps_ref, eps_res = m.dual_forward(ctx, noisy, t, batch["base_text"], batch["caption"])
        loss = m.enhanced(ctx, batch, noisy, t, lat, eps_res, eps_ref)
        assert seen == [2, 2] and torch.isfinite(loss)                # reference + response, 2 of 3 samples each
        seen.clear()
        assert float(m.enhanced(ctx, batch, noisy, torch.tensor([900, 800, 700]), lat, eps_res, eps_ref)) == 0
        assert seen == []                                              # nothing decoded
    finally:
        m.o, m.embedder.embed_latents = saved, real


def test_preserve_split_runs_each_sample_through_one_path(trainer):
    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    calls = []
    hook = ctx.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        m.o = saved.model_copy(update={"preserve_schedule": "split", "use_enhanced": False})
        assert [x.tolist() for x in m._split(4, 0)] == [[0, 1], [2, 3]]
        batch = trainer.source.batch(0)                                # batch 1: alternates by step
        _, logs0 = m.compute_loss(ctx, batch, 0)
        n0 = len(calls)
        _, logs1 = m.compute_loss(ctx, trainer.source.batch(1), 1)
        assert "loss_diffusion" in logs0 and "loss_preserve" not in logs0 and n0 == 2      # reference + response
        assert "loss_preserve" in logs1 and "loss_diffusion" not in logs1 and len(calls) - n0 == 2
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_uncond_frac": 0.0, "preserve_frac": 1.0,
                                       "preserve_schedule": "beside"})
        calls.clear()
        _, logs = m.compute_loss(ctx, batch, 0)
        assert {"loss_diffusion", "loss_preserve"} <= logs.keys() and len(calls) == 3  # + the base-text tuned pass
    finally:
        hook.remove()
        m.o = saved


def test_preserve_frac_runs_l_preserve_on_that_share_of_each_batch(trainer):
    """The response path on every sample, L_preserve on the first preserve_frac·B of a batch, spread over the run's
    batches: the preserve pass sees exactly those samples, reusing the response step's reference ε."""
    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    sizes = []
    real = m.preserve_loss
    m.preserve_loss = lambda c, noisy, t, texts, eps_ref=None, first=0: sizes.append(
        (len(texts), eps_ref.shape[0], first)) or real(c, noisy, t, texts, eps_ref, first)
    try:
        m.o = saved.model_copy(update={"preserve_frac": 0.25, "use_enhanced": False, "preserve_schedule": "beside"})
        assert [m._split(8, n)[1].tolist() for n in range(2)] == [[0, 1], [0, 1]]
        m.o = saved.model_copy(update={"preserve_frac": 0.125, "use_enhanced": False, "preserve_schedule": "beside"})
        counts = [m._split(2, n)[1].numel() for n in range(400)]
        assert set(counts) == {0, 1} and sum(counts) == 100  # 1/8 of the samples, exactly
        m.o = saved.model_copy(update={"preserve_frac": 0.5, "use_enhanced": False, "preserve_schedule": "beside"})
        batch = trainer.source.batch(0)  # batch 1: L_preserve on every other step
        parts = [len(list(m.loss_chunks(ctx, {**batch, "micro_batch": n}, 5))) for n in range(8)]
        assert parts == [2, 1] * 4 and sizes == [(1, 1, i) for i in range(4)]
    finally:
        m.preserve_loss = real
        m.o = saved


def test_align_warmup_ramps_only_the_gated_alignment_losses(trainer):
    """At step s of a warm-up of N, L_text, L_fine and L_out count (s + 1) / N of their λ; L_diff and L_preserve
    count fully (the ramp gives the response time to exist before the SFCM localises it)."""
    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    batch = trainer.source.batch(0)

    def parts(update, step):
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 1.0, "preserve_schedule": "beside",
                                       **update})
        torch.manual_seed(7)
        with perturbed_lora(ctx.unet):  # a trained adapter: every alignment loss is > 0
            loss, logs = m.compute_loss(ctx, batch, step)
        fixed = saved.w_diffusion * logs["loss_diffusion"] + saved.w_preserve * logs["loss_preserve"]
        aligned = sum(getattr(saved, f"w_{k}") * logs[f"loss_{k}"] for k in ("text", "fine", "out"))
        return float(loss.detach()), fixed, aligned

    try:
        for step, n, share in ((0, 0, 1.0), (0, 10, 0.1), (4, 10, 0.5), (9, 10, 1.0), (50, 10, 1.0)):
            total, fixed, aligned = parts({"align_warmup": n}, step)
            assert aligned > 0
            assert total == pytest.approx(fixed + share * aligned, rel=1e-4, abs=1e-6)
    finally:
        m.o = saved


def test_loss_chunks_give_compute_losss_value_and_gradients(trainer):
    """The default step back-propagates the response losses before L_preserve's forward (one graph alive at a
    time): the parts sum to ``compute_loss`` and their gradients to its gradients, with the same random draws."""
    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    batch = trainer.source.batch(0)
    params = [p for p in ctx.unet.parameters() if p.requires_grad]

    def run(chunked: bool):
        ctx.generator.manual_seed(11)
        torch.manual_seed(11)
        for p in params:
            p.grad = None
        if chunked:
            parts = []
            for loss, logs in m.loss_chunks(ctx, batch, 0):
                loss.backward()
                parts.append((float(loss), logs))
            value, logs = sum(v for v, _ in parts), {k: v for _, lg in parts for k, v in lg.items()}
            n = len(parts)
        else:
            loss, logs = m.compute_loss(ctx, batch, 0)
            loss.backward()
            value, n = float(loss), 1
        return value, logs, [p.grad.clone() for p in params], n

    try:
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 1.0, "preserve_schedule": "beside"})
        torch.manual_seed(3)
        with perturbed_lora(ctx.unet):
            v1, logs1, g1, _ = run(False)
            v2, logs2, g2, n = run(True)
        assert n == 2 and {"loss_diffusion", "loss_preserve", "loss_out"} <= logs2.keys()
        assert v2 == pytest.approx(v1, rel=1e-5)
        assert logs2["loss_preserve"] == pytest.approx(logs1["loss_preserve"], rel=1e-5)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g1, g2))
        # a share of the batch: the same samples preserved in both, the same sum
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 0.5, "preserve_schedule": "beside"})
        with perturbed_lora(ctx.unet):
            v1, logs1, g1, _ = run(False)
            v2, logs2, g2, n = run(True)
        assert n == 1 + ("loss_preserve" in logs1) and ("loss_preserve" in logs1) == ("loss_preserve" in logs2)
        assert v2 == pytest.approx(v1, rel=1e-5)
        assert any(float(a.abs().sum()) > 0 for a in g1)
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_schedule": "split"})
        assert len(list(m.loss_chunks(ctx, batch, 0))) == 1  # split: one part, as before
    finally:
        m.o = saved
        for p in params:
            p.grad = None


def test_reference_maps_are_freed_before_the_backward(trainer):
    """The reference path's captured maps (no grad) are read by the SFCM, L_text and L_fine but not by their
    backward: the step lets them go once the losses exist, so they are not alive at the backward's peak (issue 15
    cost: SD 1.5 at 256 px, 1.20x -> 1.13x LoRA's step memory). The loss is still what it was with them."""
    import gc
    import weakref

    ctx, m = trainer.ctx, trainer.method
    batch = trainer.source.batch(0)
    refs = []
    real = m.store.drop

    def drop(mode: str) -> None:
        refs.extend(weakref.ref(t) for c in m.store.maps[mode].values() for t in (c.probs, c.query) if t is not None)
        real(mode)

    m.store.drop = drop
    try:
        with perturbed_lora(ctx.unet):
            parts = m.loss_chunks(ctx, batch, 0)
            loss, logs = next(parts)
            gc.collect()
            assert refs and all(r() is None for r in refs), "a reference map outlived the losses"
            assert m.store.maps.get("res") and "ref" not in m.store.maps
            assert logs["loss_text"] > 0 and logs["loss_fine"] > 0
            loss.backward()
            for loss, _ in parts:
                loss.backward()
    finally:
        del m.store.drop
        for p in ctx.unet.parameters():
            p.grad = None


def _pair(tr) -> dict:
    """Two of the set's samples as one batch (the fixture trains at batch 1)."""
    a, b = tr.source.batch(0), tr.source.batch(1)
    out = {k: (torch.cat([v, b[k]]) if isinstance(v, torch.Tensor) and v.dim() else
               v + b[k] if isinstance(v, list) else v) for k, v in a.items()}
    return {**out, "micro_batch": 0}


def test_preserve_instead_shares_the_dual_paths_forward_passes(trainer):
    """The default: a preserved sample takes L_preserve INSTEAD of the response path, batched into the dual path's
    two forward passes (a step costs what the dual path costs). Each loss is what it is on its own samples alone:
    the response losses on the first sample (captured maps narrowed to it), L_preserve = tuned vs original on the
    second sample's base text, or the empty prompt on its share."""
    from spf_lib.methods.spf.method import _take

    ctx, m = trainer.ctx, trainer.method
    saved = m.o
    batch = _pair(trainer)
    calls = []
    hook = ctx.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        for uncond in (0.0, 1.0):
            m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 0.5, "preserve_uncond_frac": uncond})
            assert [x.tolist() for x in m._split(2, 3)] == [[0], [1]]
            assert len(list(m.loss_chunks(ctx, batch, 0))) == 1
            with perturbed_lora(ctx.unet):
                calls.clear()
                ctx.generator.manual_seed(5)
                _, logs = m.compute_loss(ctx, batch, 0)
                assert calls == [2, 2]  # the reference pass and the tuned pass, nothing else
                ctx.generator.manual_seed(5)
                lat = ctx.encode_images(batch["pixel_values"])
                noisy, _, t, target = ctx.add_noise(lat)
                alone: dict = {}
                m.response_losses(ctx, _take(batch, torch.tensor([0])), noisy[:1], t[:1], target[:1], lat[:1], alone)
                cond = ctx.condition(["" if uncond else batch["base_text"][1]])
                with torch.no_grad():
                    tuned = ctx.denoise(noisy[1:], t[1:], cond)
                    orig = m.reference_eps(ctx, noisy[1:], t[1:], cond)
                want = float(torch.nn.functional.mse_loss(tuned, orig))
            assert want > 0 and logs["loss_preserve"] == pytest.approx(want, rel=1e-4)
            for k in ("loss_diffusion", "loss_text", "loss_fine", "loss_out"):
                assert logs[k] == pytest.approx(alone[k], rel=1e-4), k
        # batch 1 at a half share: a step is either L_preserve or the response path, each two passes of one sample
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 0.5})
        one, kinds = trainer.source.batch(0), []
        for n in range(4):
            calls.clear()
            _, logs = m.compute_loss(ctx, {**one, "micro_batch": n}, n)
            kinds.append(("loss_preserve" in logs, "loss_diffusion" in logs))
            assert calls == [1, 1]
        assert kinds == [(True, False), (False, True)] * 2
    finally:
        hook.remove()
        m.o = saved


def test_preserve_instead_reads_the_original_models_samples_with_preserve_prior(trainer):
    """With preserve_prior, an instead step's preserved sample is one of the original model's own samples (drawn
    with the run's generator, noised afresh) with its base text — not the batch's image — still inside the dual
    path's two passes; the response losses stay those of the response sample alone."""
    from spf_lib.methods.spf.method import _take

    ctx, m = trainer.ctx, trainer.method
    saved, saved_prior = m.o, m.prior
    batch = _pair(trainer)
    calls = []
    hook = ctx.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            lat = ctx.encode_images(batch["pixel_values"])
        texts = ["a photo of a man", "a photo of a woman"]
        m.prior = (torch.randn(lat.shape, generator=torch.Generator().manual_seed(3)) * 3, texts)
        m.o = saved.model_copy(update={"use_enhanced": False, "preserve_frac": 0.5, "preserve_uncond_frac": 0.0,
                                       "preserve_prior": 2})
        with perturbed_lora(ctx.unet):
            ctx.generator.manual_seed(11)
            _, logs = m.compute_loss(ctx, batch, 0)
            assert calls == [2, 2]
            ctx.generator.manual_seed(11)
            lat = ctx.encode_images(batch["pixel_values"])
            noisy, _, t, target = ctx.add_noise(lat)
            i = torch.randint(0, 2, (1,), generator=ctx.generator).tolist()
            p_noisy, _, p_t, _ = ctx.add_noise(m.prior[0][i])
            alone: dict = {}
            m.response_losses(ctx, _take(batch, torch.tensor([0])), noisy[:1], t[:1], target[:1], lat[:1], alone)
            cond = ctx.condition([texts[i[0]]])
            with torch.no_grad():
                want = float(torch.nn.functional.mse_loss(ctx.denoise(p_noisy, p_t, cond),
                                                          m.reference_eps(ctx, p_noisy, p_t, cond)))
                own = ctx.condition([batch["base_text"][1]])
                on_batch = float(torch.nn.functional.mse_loss(ctx.denoise(noisy[1:], t[1:], own),
                                                              m.reference_eps(ctx, noisy[1:], t[1:], own)))
        assert want > 0 and logs["loss_preserve"] == pytest.approx(want, rel=1e-4)
        assert logs["loss_preserve"] != pytest.approx(on_batch, rel=1e-2)  # not the batch's own sample
        for k in ("loss_diffusion", "loss_text", "loss_fine", "loss_out"):
            assert logs[k] == pytest.approx(alone[k], rel=1e-4), k
    finally:
        hook.remove()
        m.o, m.prior = saved, saved_prior


def test_preserve_schedule_instead_needs_a_response_sample():
    from pydantic import ValidationError

    from spf_lib.train.config import SpfOptions

    with pytest.raises(ValidationError, match="preserve_schedule='instead'"):
        SpfOptions(preserve_frac=1.0)
    assert SpfOptions(preserve_frac=1.0, preserve_schedule="beside").preserve_frac == 1.0
    assert SpfOptions(preserve_frac=1.0, use_preserve=False).use_preserve is False


def test_configs_written_with_the_older_preserve_flags_read_as_their_schedule():
    """Run configs in MLflow, checkpoints and saved adapters before preserve_schedule carried two booleans."""
    from pydantic import ValidationError

    from spf_lib.train.config import SpfOptions

    assert SpfOptions(preserve_instead=False).preserve_schedule == "beside"
    assert SpfOptions(preserve_instead=True, preserve_split=False).preserve_schedule == "instead"
    assert SpfOptions(preserve_split=True, preserve_instead=False).preserve_schedule == "split"
    assert "preserve_instead" not in SpfOptions(preserve_instead=False).model_dump()
    with pytest.raises(ValidationError, match="contradicts"):
        SpfOptions(preserve_split=True, preserve_schedule="instead")
    with pytest.raises(ValidationError, match="preserve_schedule"):
        SpfOptions(preserve_schedule="sometimes")
