"""Celeb Basis on tiny models: basis shape/orthonormality, gradients only in the MLP, exported codes reload to the
same embeddings, several identities in one prompt, and the run through the shared loop + load_adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _identity_helpers import (
    STUB_ENCODER,
    identity_cfg,
    make_identity_dataset,
    register_stub_encoder,
    tiny_model,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    register_stub_encoder()
    root = tmp_path_factory.mktemp("cb")
    model = tiny_model(root)
    data = make_identity_dataset(root / "data", ("sks", "xyz"))
    return root, model, data


def test_names_list_is_data_with_stated_size():
    from spf_lib.methods.celeb_basis.basis import load_names, names_path

    names = load_names()
    assert len(names) == 734
    assert len({n.lower() for n in names}) == len(names)
    assert all(len(n.split()) >= 2 for n in names)
    assert names_path().is_file()


def test_basis_sd1x_shape_and_orthonormal_components():
    import torch

    from spf_lib.methods.celeb_basis.basis import build_basis, load_names
    from spf_lib.models.tokenizer import build_tokenizer

    tok = build_tokenizer()
    table = torch.randn(len(tok), 768, generator=torch.Generator().manual_seed(0))
    cb = build_basis(tok, table, load_names(), k=512)
    assert tuple(cb.basis.shape) == (2, 513, 768)
    for c in range(2):
        comps = cb.basis[c, 1:].double()
        assert torch.allclose(comps @ comps.T, torch.eye(512, dtype=torch.float64), atol=1e-5)
    # row 0 is the column mean: first names' mean differs from surnames' mean
    assert not torch.allclose(cb.basis[0, 0], cb.basis[1, 0])


def test_basis_on_tiny_text_encoder_clips_k():
    from spf_lib.methods.celeb_basis.basis import basis_from_text_encoder
    from spf_lib.models.factory import build_tiny_components

    comp = build_tiny_components()
    cb = basis_from_text_encoder(comp["tokenizer"], comp["text_encoder"], k=512)
    assert tuple(cb.basis.shape) == (2, 33, 32)      # k = min(512, dim=32, 734 names)
    assert cb.n_names == 734


def test_bad_options_and_names(tmp_path):
    from spf_lib.errors import SpfError
    from spf_lib.methods.celeb_basis.basis import build_basis, load_names
    from spf_lib.methods.celeb_basis.options import parse_options
    from spf_lib.models.tokenizer import build_tokenizer

    with pytest.raises(SpfError, match="celeb_basis.k"):
        parse_options({"k": 0})
    with pytest.raises(SpfError, match="celeb_basis.trigger"):
        parse_options({"trigger": "Two Words"})
    bad = tmp_path / "names.txt"
    bad.write_text("Madonna\n")
    with pytest.raises(SpfError, match="names.txt:1"):
        load_names(bad)
    import torch

    tok = build_tokenizer()
    with pytest.raises(SpfError, match="usable names"):   # every name splits into pieces in the tiny vocabulary
        build_basis(tok, torch.randn(len(tok), 32), load_names(), multi_token="skip")


def test_only_mlp_gets_gradients(setup, tmp_path):
    from spf_lib.train.run import Trainer

    root, model, data = setup
    tr = Trainer(identity_cfg(tmp_path, model, data, "celeb-basis", celeb_basis={"face_encoder": STUB_ENCODER}))
    loss, logs = tr.method.compute_loss(tr.ctx, tr.source.batch(0), 0)
    loss.backward()
    assert "loss_diffusion" in logs
    mlp = dict(tr.method.mlp.named_parameters())
    assert set(mlp) == {"linear.weight", "linear.bias"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.values())
    for m in (tr.ctx.unet, tr.ctx.text_encoder, tr.ctx.vae):
        assert all(p.grad is None and not p.requires_grad for p in m.parameters())


@pytest.mark.slow
def test_train_export_reload_and_generate(setup, tmp_path):
    import torch
    from safetensors.torch import load_file

    from spf_lib.methods import load_adapter
    from spf_lib.methods.celeb_basis.model import CelebBasisMLP
    from spf_lib.models.loading import load_pipeline
    from spf_lib.train.run import train

    root, model, data = setup
    res = train(identity_cfg(tmp_path, model, data, "celeb-basis", steps=3,
                             celeb_basis={"face_encoder": STUB_ENCODER, "coef_momentum": 0}))
    adapter = Path(res.adapter_dir)
    info = json.loads((adapter / "adapter_info.json").read_text())
    assert info["loader"] == "spf_lib.methods.celeb_basis.adapter:load"
    assert [i["trigger"] for i in info["identities"]] == ["sks", "xyz"]
    codes = load_file(str(adapter / "identity_codes.safetensors"))
    assert tuple(codes["coefficients"].shape) == (2, 2, 32) and info["numbers_per_identity"] == 64
    # momentum 0: the exported codes are exactly what the trained MLP gives for each identity's face vector
    mlp_t = load_file(str(adapter / "celeb_basis_mlp.safetensors"))
    mlp = CelebBasisMLP(mlp_t["linear.weight"].shape[1], codes["basis"])
    mlp.load_state_dict({k: v for k, v in mlp_t.items() if k.startswith("linear.")})
    with torch.no_grad():
        assert torch.allclose(mlp.coefficients(mlp_t["face_embeddings"]), codes["coefficients"], atol=1e-6)
        expected = mlp(mlp_t["face_embeddings"])                       # (2 identities, 2 tokens, D)
    pipe = load_pipeline(str(model))
    handle = load_adapter(pipe, adapter)
    rows = pipe.text_encoder.get_input_embeddings().weight
    for i, ident in enumerate(info["identities"]):
        ids = pipe.tokenizer.convert_tokens_to_ids(ident["tokens"])
        assert torch.allclose(rows[ids], expected[i], atol=1e-6)
    both = handle.prompt("a photo of sks person and xyz person")
    assert both == "a photo of <cb-sks-a> <cb-sks-b> and <cb-xyz-a> <cb-xyz-b>"
    ids = pipe.tokenizer(both).input_ids
    assert all(t in ids for ident in info["identities"] for t in pipe.tokenizer.convert_tokens_to_ids(ident["tokens"]))
    g = torch.Generator().manual_seed(0)
    out = pipe(both, num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images
    assert out.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.from_numpy(out)).all())
    handle.disable()
    assert handle.prompt("a photo of sks person") == "a photo of sks person"


def test_training_path_equals_table_path(setup, tmp_path):
    """The differentiable override used in training encodes prompts exactly like rows written into the table."""
    import torch

    from spf_lib.train.run import Trainer

    root, model, data = setup
    tr = Trainer(identity_cfg(tmp_path, model, data, "celeb-basis", celeb_basis={"face_encoder": STUB_ENCODER}))
    m, ctx = tr.method, tr.ctx
    ids = ctx.tokenize([m.prompt("a photo of sks person")])
    with torch.no_grad():
        emb = m.embeddings()
        with m.override.use({t: emb[i, c] for i, tt in enumerate(m.token_ids) for c, t in enumerate(tt)}):
            a = ctx.text_encoder(ids)[0]
        m.set_enabled(ctx, True)
        b = ctx.text_encoder(ids)[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_official_init_is_equal_linear_and_torch_init_is_not():
    import torch

    from spf_lib.methods.celeb_basis.model import CelebBasisMLP

    basis = torch.randn(2, 65, 32)
    torch.manual_seed(0)
    off = CelebBasisMLP(512, basis, init="official")
    torch.manual_seed(0)
    tor = CelebBasisMLP(512, basis, init="torch")
    assert abs(float(off.linear.weight.detach().std()) - 1.0) < 0.02
    assert float(off.linear.bias.detach().abs().max()) == 0.0
    assert float(tor.linear.weight.detach().abs().max()) <= 1 / 512 ** 0.5 + 1e-6
    face = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    scaled = CelebBasisMLP(512, basis, init="official", lr_mul=0.1)
    scaled.load_state_dict(off.state_dict())
    # LeakyReLU is positively homogeneous and the rows are L2-normalised: a runtime scale changes no output
    assert torch.allclose(scaled.coefficients(face), off.coefficients(face), atol=1e-6)


def test_export_is_the_momentum_average_of_the_forward_outputs(setup, tmp_path):
    """coef_momentum m: after each forward c_ema = m·c_ema + (1-m)·c (per batch row); the adapter stores c_ema,
    checkpoints carry it (resume continues it), and validation writes it into the table."""
    import torch
    from safetensors.torch import load_file

    from spf_lib.train.run import Trainer

    root, model, data = setup
    m_ = 0.5
    tr = Trainer(identity_cfg(tmp_path, model, data, "celeb-basis", lr=5e-2,
                              celeb_basis={"face_encoder": STUB_ENCODER, "coef_momentum": m_}))
    m = tr.method
    with torch.no_grad():
        ema = m.mlp.coefficients(m.face).clone()
    for step in range(3):
        rows = [m.row_identity[i] for i in tr.source.batch(step)["index"]]
        with torch.no_grad():
            c = m.mlp.coefficients(m.face)
        for i in rows:
            ema[i] = m_ * ema[i] + (1 - m_) * c[i]
        tr.train_step()
    with torch.no_grad():
        last = m.mlp.coefficients(m.face)
    assert not torch.allclose(ema, last, atol=1e-4)                  # the average is not the last output
    out = tmp_path / "adapter"
    out.mkdir()
    m.save_adapter(tr.ctx, out)
    assert torch.allclose(load_file(str(out / "identity_codes.safetensors"))["coefficients"], ema, atol=1e-6)
    assert torch.allclose(m.state_dict()["coef_ema"], ema, atol=1e-6)
    m.set_enabled(tr.ctx, True)
    from spf_lib.methods.celeb_basis.basis import embed_coefficients

    rows = tr.ctx.text_encoder.get_input_embeddings().weight[m.token_ids[0]]
    assert torch.allclose(rows, embed_coefficients(ema, m.mlp.basis)[0], atol=1e-5)
