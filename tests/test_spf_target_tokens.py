"""SPF's learned target-token rows: only the target's own tokens learn, prompts without them never change, and the
rows travel with the adapter (table write at generation = the training-side override)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset, tiny_model

from spf_lib.errors import SpfError
from spf_lib.methods.spf.target_tokens import TOKENS_FILE, select_target_tokens

BASE_PROMPT = "a photo of a woman, brown jacket, curtain background"
TARGET_PROMPT = BASE_PROMPT + ", blonde hair"


def _ids(tok, text):
    return set(tok(text, add_special_tokens=False).input_ids)


def test_selection_keeps_only_tokens_no_base_phrase_has(tmp_path):
    from spf_lib.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    got = select_target_tokens(tok, ["wearing round glasses"], ["wearing a hat", "a photo of a man"])
    assert got and set(got) == _ids(tok, "wearing round glasses") - _ids(tok, "wearing a hat")
    assert not set(got) & _ids(tok, "wearing")
    assert not set(got) & set(tok.all_special_ids)
    assert select_target_tokens(tok, ["wearing a hat"], ["wearing a hat"]) == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from spf_lib.train.run import Trainer

    root = tmp_path_factory.mktemp("spftok")
    model = tiny_model(root)
    cfg = base_cfg(root, model, make_dataset(root / "data"), method="spf", steps=3, lr=5e-2, batch_size=2,
                   validation={"enabled": False})
    tr = Trainer(cfg)
    te = tr.ctx.text_encoder
    table0 = te.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        enc0 = {p: tr.ctx.condition([p]).hidden for p in (BASE_PROMPT, TARGET_PROMPT)}
    for _ in range(3):
        tr.train_step()
    return tr, model, table0, enc0


def test_only_the_target_rows_learn_and_prompts_without_them_stay_bit_identical(trained):
    tr, _, table0, enc0 = trained
    m, ctx = tr.method, tr.ctx
    (name, ids, vec, _), = m.tokens.encoders
    assert name == "text_encoder"
    tok = ctx.pipe.tokenizer
    assert set(ids) == _ids(tok, "blonde hair") - set().union(*(_ids(tok, p) for p in (
        "a photo of a woman", "a photo of a man", "brown jacket", "curtain background", "white shirt", "brick wall",
        "red dress", "plain background", "glasses", "office background")))
    assert any(p is vec for p in tr.params)  # in the optimizer
    assert not torch.allclose(vec.detach(), table0[ids]), "the target rows did not move"
    # the frozen table itself is untouched: training reads the rows through the override only
    assert torch.equal(ctx.text_encoder.get_input_embeddings().weight, table0)
    with torch.no_grad():
        base_now = m.condition(ctx, [BASE_PROMPT]).hidden
        target_now = m.condition(ctx, [TARGET_PROMPT]).hidden
    assert torch.equal(base_now, enc0[BASE_PROMPT]), "a prompt without the target changed"
    assert not torch.allclose(target_now, enc0[TARGET_PROMPT])


def test_reference_and_preserve_texts_read_the_original_rows_encoded_once(trained, monkeypatch):
    """The reference path and L_preserve encode texts the rows never touch: from the frozen encoder, once per text
    (cached, bounded), equal to a fresh encoding — and even a text that did hold a target token reads the ORIGINAL
    row there (the reference is the original model), while the response path reads the learned one."""
    import spf_lib.methods.spf.method as spf_method

    tr = trained[0]
    m, ctx = tr.method, tr.ctx
    m._frozen.clear()
    calls = []
    real = ctx.condition
    monkeypatch.setattr(ctx, "condition", lambda texts, grad=False: calls.append(list(texts)) or real(texts, grad))
    with torch.no_grad():
        a = m.frozen_condition(ctx, [BASE_PROMPT, "", BASE_PROMPT])
        b = m.frozen_condition(ctx, ["", BASE_PROMPT])
        fresh = real([BASE_PROMPT, ""]).hidden
        assert calls == [[BASE_PROMPT, ""]]  # each text encoded once
        assert torch.equal(a.hidden[0], fresh[0]) and torch.equal(a.hidden[2], fresh[0])
        assert torch.equal(b.hidden, fresh.flip(0))
        m._frozen.clear()
        frozen_target = m.frozen_condition(ctx, [TARGET_PROMPT]).hidden
        learned_target = m.condition(ctx, [TARGET_PROMPT]).hidden
    assert torch.equal(frozen_target, trained[3][TARGET_PROMPT])  # the original rows
    assert not torch.allclose(learned_target, frozen_target)
    # the bound: with room for two texts, the least recently used one goes
    per_text = frozen_target.numel() * frozen_target.element_size()
    monkeypatch.setattr(spf_method, "FROZEN_CACHE_BYTES", 2 * per_text)
    m._frozen.clear()
    with torch.no_grad():
        for text in ("x one", "x two", "x one", "x three"):
            m.frozen_condition(ctx, [text])
    assert list(m._frozen) == ["x one", "x three"]
    m._frozen.clear()
    # the dual path's reference reads them from there
    seen = []
    real_frozen = m.frozen_condition
    monkeypatch.setattr(m, "frozen_condition", lambda c, texts: seen.append(list(texts)) or real_frozen(c, texts))
    batch = tr.source.batch(0)
    noisy, _, t, _ = ctx.add_noise(ctx.encode_images(batch["pixel_values"]))
    with torch.no_grad():
        m.dual_forward(ctx, noisy, t, batch["base_text"], batch["caption"])
    assert seen == [batch["base_text"]]


def test_gradient_reaches_the_rows_through_the_response_path(trained):
    tr = trained[0]
    vec = tr.method.tokens.encoders[0][2]
    vec.grad = None
    parts = list(tr.method.loss_chunks(tr.ctx, tr.source.batch(0), step=5))
    parts[0][0].backward()
    assert vec.grad is not None and vec.grad.abs().sum() > 0
    vec.grad = None
    if len(parts) > 1:  # L_preserve runs on base texts only: nothing of it reaches the target rows
        parts[1][0].backward()
        assert vec.grad is None or vec.grad.abs().sum() == 0
    tr.optimizer.zero_grad(set_to_none=True)


def test_checkpointed_text_encoder_gives_the_same_gradient(trained):
    """The conditioning is recomputed in the backward (memory): same rows' gradient as keeping the graph."""
    tr = trained[0]
    m, ctx = tr.method, tr.ctx
    vec = m.tokens.encoders[0][2]
    w = torch.randn(1, 77, ctx.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    vec.grad = None
    (m.condition(ctx, [TARGET_PROMPT]).hidden * w).sum().backward()
    via_checkpoint = vec.grad.clone()
    vec.grad = None
    with m.tokens.active():
        (ctx.condition([TARGET_PROMPT], grad=True).hidden * w).sum().backward()
    assert via_checkpoint.abs().sum() > 0 and torch.allclose(via_checkpoint, vec.grad, atol=1e-6)
    vec.grad = None


def test_rows_travel_with_the_adapter_and_switch_with_it(trained, tmp_path):
    from diffusers import StableDiffusionPipeline

    from spf_lib.methods import load_adapter

    tr, model, table0, _ = trained
    adapter = tr.save_adapter()
    info = json.loads((Path(adapter) / "adapter_info.json").read_text())
    assert info["target_tokens"]["file"] == TOKENS_FILE
    assert info["target_tokens"]["tokens"]["text_encoder"]
    with torch.no_grad():
        want_target = tr.method.condition(tr.ctx, [TARGET_PROMPT]).hidden
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    weight = pipe.text_encoder.get_input_embeddings().weight
    handle = load_adapter(pipe, adapter)

    def enc(p):
        with torch.no_grad():
            ids = pipe.tokenizer([p], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids
            return pipe.text_encoder(ids)[0]

    assert torch.allclose(enc(TARGET_PROMPT), want_target, atol=1e-6)  # table write == training's override
    handle.disable()
    assert torch.equal(weight, table0)
    handle.enable()
    assert not torch.equal(weight, table0)


def test_rows_that_do_not_fit_the_base_model_are_one_clear_error(trained, tmp_path):
    import shutil

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from spf_lib.methods import load_adapter

    tr, model, _, _ = trained
    adapter = Path(shutil.copytree(tr.save_adapter(), tmp_path / "bad"))
    save_file({"text_encoder.ids": torch.tensor([10 ** 6]), "text_encoder.vectors": torch.zeros(1, 3)},
              str(adapter / TOKENS_FILE))
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    with pytest.raises(SpfError, match=TOKENS_FILE + ".*do not fit"):
        load_adapter(pipe, adapter)


def test_checkpoint_carries_the_rows(trained):
    tr = trained[0]
    sd = tr.method.state_dict()
    vec = tr.method.tokens.encoders[0][2]
    keys = [k for k in sd if k.startswith("target_tokens.")]
    assert keys and torch.equal(sd["target_tokens.text_encoder.vectors"], vec.detach())
    saved = vec.detach().clone()
    with torch.no_grad():
        vec.zero_()
    tr.method.load_state_dict(sd)
    assert torch.equal(vec.detach(), saved)
    with pytest.raises(SpfError, match="target-token rows"):
        tr.method.load_state_dict({k: v for k, v in sd.items() if k != "target_tokens.text_encoder.ids"})


def test_off_in_the_paper_preset_and_when_switched_off():
    from spf_lib.train.config import SpfOptions

    assert SpfOptions().target_tokens is True
    assert SpfOptions(preset="spf-paper").target_tokens is False
    assert SpfOptions(preset="spf-paper", target_tokens=True).target_tokens is True
