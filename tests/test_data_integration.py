"""DVC + S3 for real: a moto S3 server on loopback, two data revisions pushed, each pulled into a fresh clone
through `spf data pull` and prepared. The endpoint is kept out of git (config.local on the pushing side) and
given to the puller through the environment, as on a cluster."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests._data_helpers import free_port, git, make_data_repo, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        mp.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="spf-data")
    try:
        yield endpoint
    finally:
        server.stop()
        mp.undo()


def test_push_pull_two_revisions_and_prepare(s3, tmp_path, monkeypatch, capsys):
    import boto3

    repo, revs = make_data_repo(tmp_path, "s3://spf-data/dvcstore", endpoint_url=s3, local_endpoint=True)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="spf-data")["Contents"]]
    assert any(k.endswith(".dir") for k in keys) and len(keys) >= 5  # 4 files + mirror + 2 directory manifests
    assert s3 not in git(repo, "show", "HEAD:.dvc/config")  # the loopback endpoint never went into git

    monkeypatch.setenv("SPF_DVC_ENDPOINT_URL", s3)
    for i, (rev, data_hash) in enumerate(revs):
        clone = tmp_path / f"clone{i}"
        git(tmp_path, "clone", "-q", str(repo), str(clone))  # fresh clone: no DVC cache, no config.local
        pulled = tmp_path / f"pulled{i}"
        assert run_cli(["data", "pull", "--repo", str(clone), "--rev", rev, "--output", str(pulled)]) == 0
        assert data_hash in capsys.readouterr().out
        prepared = tmp_path / f"prepared{i}"
        assert run_cli(["data", "prepare", "--input", str(pulled), "--output", str(prepared), "--size", "64",
                        "--workers", "1"]) == 0
        out = capsys.readouterr().out
        assert "kept" in out and "report" in out
        summary = json.loads((prepared / "prepare_summary.json").read_text())
        assert summary["lineage"] == {"data_rev": rev, "data_hash": data_hash}
        df = pd.read_parquet(prepared / "manifest.parquet")
        expected = {"images/astronaut.png", "images/grace.jpg"} | ({"images/grace_mirror.png"} if i else set())
        assert set(df["source_path"]) == expected
        assert summary["n_input"] == len(expected) and summary["qa_passed"]


def test_pull_without_endpoint_fails_clearly(s3, tmp_path, monkeypatch, capsys):
    repo, revs = make_data_repo(tmp_path, "s3://spf-data/other", endpoint_url=s3, local_endpoint=True)
    monkeypatch.delenv("SPF_DVC_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there: no real AWS either
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    code = run_cli(["data", "pull", "--repo", str(clone), "--rev", revs[0][0], "--output", str(tmp_path / "p")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --repo") and err.count("\n") == 1
    assert not (tmp_path / "p").exists()
