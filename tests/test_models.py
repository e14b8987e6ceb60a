"""Base-model factory and loading: the code path SD 1.5 takes, on tiny models built here."""

import socket

import pytest

from spf_lib.errors import SpfError
from spf_lib.models.factory import TinySDConfig
from spf_lib.models.loading import load_pipeline, resolve_model_ref
from spf_lib.models.tokenizer import build_tokenizer


def test_tokenizer_is_clip_bpe_with_special_tokens():
    tok = build_tokenizer()
    ids = tok("a photo of a woman, wearing round glasses").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids)[1:3] == ["a</w>", "photo</w>"]
    # an unseen word still tokenizes (down to bytes), never to nothing
    assert len(tok("zqxj").input_ids) > 2


def test_tiny_config_validation_names_bad_value():
    with pytest.raises(SpfError, match="resolution=60"):
        TinySDConfig(resolution=60)


def test_local_model_loads_and_generates_deterministically(tiny_model_dir):
    import numpy as np
    import torch

    pipe = load_pipeline(str(tiny_model_dir))
    gen = lambda: pipe("a photo of a woman", num_inference_steps=2, height=64, width=64,  # noqa: E731
                       generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    a, b = gen(), gen()
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b)


def test_bad_references_give_one_clear_error(tmp_path):
    with pytest.raises(SpfError, match="empty"):
        resolve_model_ref("  ")
    with pytest.raises(SpfError, match="does not exist"):
        resolve_model_ref(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpfError, match="no model_index.json"):
        resolve_model_ref(str(tmp_path / "empty"))
    assert resolve_model_ref("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_s3_model_reference_mirrors_and_loads(tiny_model_dir, tmp_path, monkeypatch):
    """s3://bucket/prefix against a real S3 endpoint on loopback (moto server), through boto3."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        s3.create_bucket(Bucket="models")
        for f in tiny_model_dir.rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), "models", f"sd/tiny/{f.relative_to(tiny_model_dir)}")
        pipe = load_pipeline("s3://models/sd/tiny", cache_dir=tmp_path / "cache")
        assert pipe.unet.config.sample_size == 16
        with pytest.raises(SpfError, match="no objects"):
            resolve_model_ref("s3://models/missing", cache_dir=tmp_path / "cache")
    finally:
        server.stop()
