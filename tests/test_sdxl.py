"""SDXL base models: loading (folder, hub id, s3://), LoRA and SPF training, the conditioning both SPF paths
receive, SDXL's token map, generation with the trained adapter, and what the identity methods refuse. A tiny SDXL
(real StableDiffusionXLPipeline classes, two CLIP text encoders) built in code stands in for the 6.9 GB model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset

from spf_lib.errors import SpfError
from tests._registry_helpers import embedded, embedded_store  # noqa: F401


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    from spf_lib.models.factory import TinySDConfig, save_tiny_pipeline

    root = tmp_path_factory.mktemp("sdxl")
    return {"model": save_tiny_pipeline(root / "tiny-sdxl", TinySDConfig(arch="sdxl")),
            "data": make_dataset(root / "data", n=4, size=64), "root": root}


@pytest.fixture(scope="module")
def spf_run(xl):
    from spf_lib.train.run import train

    return train(base_cfg(xl["root"] / "spf", xl["model"], xl["data"], method="spf", steps=2,
                          spf={"stage1_steps": 0}))


def test_tiny_sdxl_loads_as_sdxl_with_two_text_encoders(xl):
    from spf_lib.models.backbone import backbone_for
    from spf_lib.models.loading import load_pipeline

    pipe = load_pipeline(str(xl["model"]))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    bb = backbone_for(pipe)
    assert bb.kind == "sdxl" and set(bb.frozen_modules()) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size + \
        pipe.text_encoder_2.config.hidden_size


def test_pipeline_class_is_checked_before_weights(tmp_path):
    from spf_lib.models.loading import load_pipeline

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(SpfError, match="_class_name='FluxPipeline'"):
        load_pipeline(str(tmp_path / "m"))
    # a hub id offline: one clear line, not a stack of hub errors
    with pytest.raises(SpfError, match="stabilityai/stable-diffusion-xl-base-1.0: cannot load"):
        load_pipeline("stabilityai/stable-diffusion-xl-base-1.0")


def test_sdxl_token_positions_agree_between_both_tokenizers(xl):
    """L_text's token map is built with the first tokenizer; the second must put every content token at the same
    position (only padding differs: '!' instead of <|endoftext|>), or the map would be wrong for CLIP-G's half."""
    from spf_lib.methods.spf.tokens import TokenMapper
    from spf_lib.models.loading import load_pipeline

    pipe = load_pipeline(str(xl["model"]))
    text = "a photo of a woman, brown jacket, curtain background, blonde hair"
    a = pipe.tokenizer(text, padding="max_length", max_length=77).input_ids
    b = pipe.tokenizer_2(text, padding="max_length", max_length=77).input_ids
    n = len(pipe.tokenizer(text).input_ids)
    assert a[:n] == b[:n] and a[n:] != b[n:]
    ref, res = TokenMapper(pipe.tokenizer).index_map("a photo of a woman, brown jacket", text, False)
    assert [a[j] for j in res] == [pipe.tokenizer("a photo of a woman, brown jacket",
                                                  padding="max_length", max_length=77).input_ids[i] for i in ref]


def test_spf_paths_get_the_same_kind_of_conditioning(xl, tmp_path):
    """Reference and response differ only in their text: same time ids, pooled embedding of their own text."""
    import torch

    from spf_lib.train.run import Trainer

    tr = Trainer(base_cfg(tmp_path, xl["model"], xl["data"], method="spf", spf={"stage1_steps": 0}))
    seen = []
    real = tr.ctx.backbone.denoise
    tr.ctx.backbone.denoise = lambda noisy, t, cond: seen.append(cond) or real(noisy, t, cond)
    base, res = ["a photo of a man, white shirt"], ["a photo of a man, white shirt, blonde hair"]
    noisy = torch.randn(1, 4, 8, 8)
    eps_ref, eps_res = tr.method.dual_forward(tr.ctx, noisy, torch.tensor([300]), base, res)
    ref_c, res_c = seen
    assert torch.equal(ref_c.time_ids, res_c.time_ids)
    assert ref_c.time_ids.tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]
    # each path's texts encoded on their own (the reference's frozen and cached, the response's through the rows)
    own_ref, own_res = tr.ctx.condition(base), tr.ctx.condition(res)
    assert torch.equal(ref_c.pooled, own_ref.pooled) and torch.equal(res_c.pooled, own_res.pooled)
    assert torch.equal(ref_c.hidden, own_ref.hidden) and not torch.equal(ref_c.pooled, res_c.pooled)
    assert eps_ref.shape == eps_res.shape == noisy.shape
    # the captured maps cover every attn2 layer of this UNet: its cross-attention level has 2 transformer layers
    # per attention block, as SDXL's levels have 2 and 10 (down 1 block, mid 1, up 2: 4 blocks x 2 = 8 layers)
    from spf_lib.models.architectures import cross_attention_layers

    assert sorted(tr.method.store.maps["ref"]) == sorted(cross_attention_layers(dict(tr.ctx.unet.config)))
    assert len(tr.method.store.maps["ref"]) == 8


@pytest.mark.slow
def test_spf_on_sdxl_trains_and_the_adapter_generates(xl, spf_run):
    import numpy as np

    from spf_lib.eval.evalset import EvalItem
    from spf_lib.eval.generate import generate_images
    from spf_lib.methods import load_adapter, read_adapter_info
    from spf_lib.models.loading import load_pipeline

    assert all(np.isfinite(spf_run.losses)) and "loss_text" in spf_run.loss_terms
    info = read_adapter_info(spf_run.adapter_dir)
    assert info["method"] == "spf" and info["architecture"] == "sdxl"
    pipe = load_pipeline(str(xl["model"]))
    items = [EvalItem(kind="base", index=0, prompt="a photo of a man", seed=1)]
    kw = {"steps": 2, "guidance": 7.5, "resolution": 64, "batch_size": 1, "progress": False}
    plain = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    handle = load_adapter(pipe, spf_run.adapter_dir)
    tuned = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    handle.disable()
    off = np.asarray(generate_images(pipe, items, **kw)[items[0].key])
    assert tuned.shape == (64, 64, 3) and np.array_equal(plain, off) and not np.array_equal(plain, tuned)


def test_identity_methods_refuse_sdxl_by_name(xl, tmp_path):
    from spf_lib.train.run import Trainer

    with pytest.raises(SpfError, match="method='celeb-basis': supports SD 1.x/2.x base models only.*sdxl"):
        Trainer(base_cfg(tmp_path, xl["model"], xl["data"], method="celeb-basis"))


@pytest.mark.integration
def test_sdxl_from_s3(xl, tmp_path, monkeypatch):
    """s3://bucket/prefix against a real S3 endpoint on loopback (moto server)."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    from spf_lib.models.loading import load_pipeline

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        s3.create_bucket(Bucket="models")
        for f in Path(xl["model"]).rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), "models", f"xl/{f.relative_to(xl['model'])}")
        pipe = load_pipeline("s3://models/xl", cache_dir=tmp_path / "cache")
        assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.text_encoder_2 is not None
    finally:
        server.stop()


@pytest.mark.slow
def test_sdxl_spf_adapter_registers_and_loads_back_by_alias(xl, spf_run, embedded):
    """MLflow's diffusers flavor on an SDXL base: the adapter is logged against the SDXL folder, the registry
    hands it back by alias, and its pyfunc builds a StableDiffusionXLPipeline and generates."""
    import io

    from PIL import Image

    from spf_lib.registry import register_model
    from spf_lib.registry.flavors import native_resolution
    from tests._registry_helpers import generate

    assert native_resolution(str(xl["model"])) == 64
    rv = register_model(spf_run.adapter_dir, str(xl["model"]), metrics={"pollution": 0.2}, lineage={},
                        model_name="portrait-xl")
    assert rv.aliases == ("challenger",)
    png = generate("models:/portrait-xl@challenger")
    assert Image.open(io.BytesIO(png)).size == (64, 64)
