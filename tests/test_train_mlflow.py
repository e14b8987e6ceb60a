"""Training logs to a real MLflow store (sqlite backend): loss curves, params, validation grid, run id handed back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset, tiny_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlf")
    return root, tiny_model(root), make_dataset(root / "data", n=2)


@pytest.mark.integration
def test_new_run_then_env_run_id(env, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from spf_lib.train.run import train

    root, model, data = env
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SPF_EXPERIMENT", "train-test")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # mlflow's default artifact root lands here
    res = train(base_cfg(tmp_path, model, data, steps=2, mlflow=True, output_dir=str(tmp_path / "a")))
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "lora" and run.data.params["lora.rank"] == "4"
    assert run.data.tags["config_hash"] == res.config_hash
    hist = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in hist] == [1, 2] and [m.value for m in hist] == pytest.approx(res.losses)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/step-000002.png" in arts
    assert "train_summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    # a launcher-owned run (KFP's MLflow integration sets MLFLOW_RUN_ID): we log into it, its status stays ours
    exp = client.get_experiment_by_name("train-test")
    outer = client.create_run(exp.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    res2 = train(base_cfg(tmp_path, model, data, steps=1, mlflow=True, output_dir=str(tmp_path / "b"),
                          validation={"enabled": False}))
    assert res2.mlflow_run_id == outer
    run2 = client.get_run(outer)
    assert run2.info.status == "RUNNING" and "train/loss" in run2.data.metrics
