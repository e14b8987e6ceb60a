"""From a folder of portraits to a submitted Kubeflow run in three `spf` commands (against the recording KFP API):
`spf data add`, `spf pipeline upload` (compiles this checkout), `spf pipeline submit --data-repo --rev`."""

import json

import yaml

from tests._data_helpers import run_cli, two_portraits
from tests._kube_helpers import API, FakeKfp


def test_three_commands_from_folder_to_submitted_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok")
    folder = two_portraits(tmp_path / "my-portraits")
    repo = tmp_path / "data-repo"

    assert run_cli(["data", "add", str(folder), "--repo", str(repo)]) == 0
    rev = next(x.split("=", 1)[1] for x in capsys.readouterr().out.splitlines() if x.startswith("data_rev="))
    with FakeKfp() as kfp:
        assert run_cli(["pipeline", "upload", "--host", kfp.host, "--image", "ghcr.io/me/spf:v1"]) == 0
        up = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert run_cli(["pipeline", "submit", "--host", kfp.host, "--pipeline", "spf-portrait",
                        "--data-repo", str(repo), "--rev", rev, "--base-model", "s3://models/sd15",
                        "--method", "lora", "-p", "model_name=mine"]) == 0
        run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

        (uploaded,) = kfp.calls("POST", f"{API}/pipelines/upload_version")
        spec = next(yaml.safe_load_all(uploaded["raw"].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]))
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert images == {"ghcr.io/me/spf:v1", "ghcr.io/me/spf:v1-cuda"}
        body = kfp.calls("POST", f"{API}/runs")[0]["json"]
        assert body["pipeline_version_reference"]["pipeline_version_id"] == up["version_id"]
        assert body["runtime_config"]["parameters"] == {"data_repo": str(repo), "data_rev": rev,
                                                        "base_model": "s3://models/sd15", "method": "lora",
                                                        "model_name": "mine"}
        assert run["run_id"].startswith("run-")
        assert set(body["runtime_config"]["parameters"]) <= set(spec["root"]["inputDefinitions"]["parameters"])


def test_retrain_if_changed_runs_the_repo_that_holds_data_dvc(tmp_path, capsys, monkeypatch):
    """Default --dvc-file data.dvc in the current repo; data_repo = its origin, data_rev = its HEAD."""
    from tests._data_helpers import git

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    folder = two_portraits(tmp_path / "my-portraits")
    repo = tmp_path / "project"
    assert run_cli(["data", "add", str(folder), "--repo", str(repo)]) == 0
    git(repo, "remote", "add", "origin", "https://git.example.com/team/portraits.git")
    monkeypatch.chdir(repo)
    with FakeKfp() as kfp:
        assert run_cli(["pipeline", "upload", "--host", kfp.host]) == 0
        assert run_cli(["pipeline", "retrain-if-changed", "--host", kfp.host, "--model-name", "none-yet"]) == 0
        decision = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert decision["submitted"] and decision["reason"] == "no champion yet"
        params = kfp.calls("POST", f"{API}/runs")[0]["json"]["runtime_config"]["parameters"]
        assert params == {"data_repo": "https://git.example.com/team/portraits.git",
                          "data_rev": git(repo, "rev-parse", "HEAD")}
