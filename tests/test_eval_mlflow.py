"""The same grids, per-pair table, metrics and report land in a real MLflow tracking store (sqlite backend)."""

from __future__ import annotations

import json

import pytest

from tests._eval_helpers import evaluated


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SPF_HOME", str(tmp_path))
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("eval-test", artifact_location=(tmp_path / "art").as_uri())
    yield exp
    mlflow.set_tracking_uri(None)


def test_logs_into_the_run_given_by_id(tracking, tmp_path_factory):
    import mlflow
    from mlflow.tracking import MlflowClient

    from spf_lib.eval.mlflow_log import log_evaluation

    run = MlflowClient().create_run(tracking)
    res = evaluated(tmp_path_factory, 0.3)
    grids = _grids(res)
    items = _items(res)
    assert mlflow.active_run() is None
    rid = log_evaluation(res.output_dir, run_id=run.info.run_id, metrics=res.metrics, items=items,
                         pairs=_pairs(res), grids=grids)
    assert rid == run.info.run_id
    client = MlflowClient()
    data = client.get_run(rid).data
    assert data.metrics["eval/pollution"] == pytest.approx(res.metrics["pollution"])
    assert "eval/clip_t" not in data.metrics  # unavailable metrics are not logged as numbers
    arts = {a.path for a in client.list_artifacts(rid, "eval")}
    assert {"eval/pairs.json", "eval/report.html", "eval/metrics.json"} <= arts
    with open(client.download_artifacts(rid, "eval/pairs.json")) as f:
        table = json.load(f)
    assert len(table["data"]) == len(items) and "ssim" in table["columns"] and "grid" in table["columns"]
    images = [a.path for a in client.list_artifacts(rid, "images")]
    assert len([p for p in images if p.endswith((".png", ".webp"))]) >= len(items)


def test_no_run_no_logging(tracking, tmp_path_factory):
    from spf_lib.eval.mlflow_log import log_evaluation

    res = evaluated(tmp_path_factory, 0.3)
    assert log_evaluation(res.output_dir, run_id=None, metrics=res.metrics, items=_items(res), pairs=_pairs(res),
                          grids=_grids(res)) is None


@pytest.mark.slow  # one more (small) evaluation
def test_evaluate_logs_into_the_active_run(tracking, tmp_path_factory):
    import mlflow

    from tests._eval_helpers import SMALL_EVAL_SET

    one_seed = {**SMALL_EVAL_SET, "seeds": [0]}
    with mlflow.start_run(experiment_id=tracking) as run:
        res = evaluated(tmp_path_factory, 0.3, log_mlflow=True, eval_set=one_seed)
    assert res.mlflow_run_id == run.info.run_id
    assert mlflow.get_run(run.info.run_id).data.metrics["eval/ssim"] == pytest.approx(res.metrics["ssim"])


def _items(res):
    from spf_lib.eval.evalset import resolve_eval_set
    from tests._eval_helpers import SMALL_EVAL_SET

    return list(resolve_eval_set(SMALL_EVAL_SET).items)


def _pairs(res):
    return json.loads((res.output_dir / "pairs.json").read_text())


def _grids(res):
    from PIL import Image

    from spf_lib.eval.report import pair_grid

    d = res.output_dir / "images"
    return {it.key: pair_grid(*(Image.open(d / k / f"{it.key}.png") for k in ("original", "tuned", "diff")))
            for it in _items(res)}
