"""A local pipeline run (kfp's runner, tiny data, 2 SPF steps) against a real `mlflow server`, read back through
MLflow's client: one run per pipeline run with a child for the method, a metric history per loss term, validation
grids, the evaluation report and its images, the per-prompt table, the dataset input, and a model version that
links to that run with a description and few tags.

With SPF_SCREENSHOT_DIR set, headless Chromium also photographs the run, its charts, the model card preview and the
model version page into that folder (skipped otherwise; the checks above never depend on it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _registry_helpers import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = os.environ.get("SPF_CHROMIUM", "/usr/bin/chromium")
NAME = "e2e-mlflow"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    # a busy CI machine starts it slowly; SPF_TEST_SERVER_START_S (tests/README.md) raises the wait further
    server.start(timeout=max(300.0, float(os.environ.get("SPF_TEST_SERVER_START_S", "0"))))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pipeline(mlflow_server, tmp_path_factory):
    from pipelines.local import run_local
    from spf_lib.demo import demo_configs, prepare_workspace

    ws = prepare_workspace(tmp_path_factory.mktemp("ws"), n_images=6, seed=1)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mp.setenv("SPF_EXPERIMENT", "pipeline-e2e")
    try:
        configs = demo_configs(ws.resolution, steps=2, method="spf", eval_prompts=1, eval_seeds=1)
        configs["train_config"].update(batch_size=2, validation={
            "every": 1, "num_inference_steps": 2, "prompts": ["a photo of a woman"], "seeds": [0]})
        configs["eval_config"].update(num_inference_steps=2)
        params = {"data_repo": ws.data_repo, "data_rev": ws.data_rev, "base_model": ws.base_model,
                  "method": "spf", "model_name": NAME, **configs}
        root = tmp_path_factory.mktemp("root")
        out = run_local(params, root / "pipeline", log_path=root / "pipeline.log")
        yield ws, out
    finally:
        mp.undo()


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def test_the_pipeline_run_is_one_mlflow_run_with_everything_in_it(pipeline, mlflow_server, tmp_path):
    ws, out = pipeline
    client = _client(mlflow_server)
    reg = out["registration"]["registered"]
    mv = client.get_model_version(NAME, str(reg["version"]))
    run = client.get_run(mv.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # classic runs view, not Traces

    # one parent per pipeline run, named after it; the method's child holds the work; both ended
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name.startswith("spf-portrait-") and parent.data.tags["spf.branch"] == "pipeline"
    assert parent.data.tags["kfp_run_id"] == run.data.tags["kfp_run_id"] == mv.tags["kfp_run_id"]
    assert run.info.run_name == "spf" and (run.info.status, parent.info.status) == ("FINISHED", "FINISHED")
    siblings = client.search_runs([exp.experiment_id], f"tags.kfp_run_id = '{mv.tags['kfp_run_id']}'")
    assert len(siblings) == 2

    # training: params and a history per loss term (stage 1 then stage 2 of SPF)
    assert run.data.params["method"] == "spf" and run.data.params["steps"] == "2"
    terms = {k for k in run.data.metrics if k.startswith("train/")}
    assert {"train/loss", "train/loss_diffusion", "train/sfcm_mean", "train/loss_text", "train/loss_fine"} <= terms
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    for term in terms:
        assert {m.step for m in client.get_metric_history(run.info.run_id, term)} <= {1, 2}, term

    # images: validation grids per step (MLflow's image log) and the evaluation's pair grids
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert any(p.startswith("images/validation_grid") for p in images)
    assert any(p.startswith("images/eval_target") for p in images)
    assert {"samples/step-000001.png", "samples/step-000002.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "samples")}

    # evaluation: metrics, report (text + image files + single-file copy), per-prompt table
    assert "eval/pollution" in run.data.metrics
    ev = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/report.html", "eval/report_single_file.html", "eval/images", "eval/pairs.json",
            "eval/metrics.json"} <= ev
    report = Path(client.download_artifacts(run.info.run_id, "eval/report.html", str(tmp_path)))
    assert "src='images/original/" in report.read_text()
    assert client.list_artifacts(run.info.run_id, "eval/images/tuned")
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval/pairs.json", str(tmp_path))).read_text())
    assert {"prompt", "seed", "kind", "grid"} <= set(table["columns"])

    # data: the DVC repo, revision and hash as the run's dataset input
    (inp,) = [d for d in run.inputs.dataset_inputs if d.dataset.source_type == "dvc"]
    source = json.loads(inp.dataset.source)
    assert (source["repo"], source["rev"], source["data_hash"]) == (ws.data_repo, ws.data_rev, ws.data_hash)
    assert any(t.key == "mlflow.data.context" and t.value == "training" for t in inp.tags)

    # the version: linked to the run, described, a meaningful LoggedModel name, tags for lineage and the gate only
    assert mv.description.startswith("**spf** adapter") and ws.data_rev[:12] in mv.description
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    assert logged.name == f"spf-data-{ws.data_rev[:8]}" and logged.source_run_id == run.info.run_id
    metric_tags = [k for k in mv.tags if k.startswith("metric.")]
    assert "metric.pollution" in metric_tags and len(metric_tags) <= 12
    assert {"model_card/card.html", "model_card/summary_grid.png", "model_card/README.md"} <= {
        a.path for a in client.list_artifacts(run.info.run_id, "model_card")}

    if os.environ.get("SPF_SCREENSHOT_DIR"):
        _screenshots(Path(os.environ["SPF_SCREENSHOT_DIR"]), mlflow_server.uri, exp.experiment_id,
                     run.info.run_id, str(mv.version), tmp_path)


def test_the_version_loads_by_alias_through_the_server_and_generates(pipeline, mlflow_server, monkeypatch):
    """The SPF case of tests/test_pipeline_local.py (which runs the other methods on the embedded store): the
    pipeline's data made it through, and the registered version loads by its alias from the server and draws."""
    import io

    import mlflow
    from PIL import Image

    ws, out = pipeline
    assert out["data_rev"] == ws.data_rev
    assert out["n_kept"] + out["n_rejected"] == 6 and out["n_kept"] >= 4
    assert json.dumps(out["metrics"])  # metrics made it through as JSON
    client = _client(mlflow_server)
    reg = out["registration"]["registered"]
    assert "challenger" in reg["aliases"]
    version = client.get_model_version(NAME, str(reg["version"]))
    promo = out["registration"]["promotion"]
    alias = "champion" if promo and promo["passed"] else "challenger"
    assert client.get_model_version_by_alias(NAME, alias).version == version.version
    assert version.tags.get("data_rev") == ws.data_rev and version.tags.get("method") == "spf"

    # this test's URIs only: MLflow's process-wide ones are put back afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", mlflow_server.uri)
    monkeypatch.setattr("mlflow.tracking._model_registry.utils._registry_uri", mlflow_server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{alias}")
    res = ws.resolution
    images = model.predict({"prompt": ["a photo of a woman, wearing round glasses"]},
                           params={"num_inference_steps": 2, "height": res, "width": res})
    assert Image.open(io.BytesIO(images[0])).size == (res, res)


def _screenshots(folder: Path, uri: str, exp_id: str, run_id: str, version: str, tmp_path: Path) -> None:
    """The MLflow UI is a React app: a virtual-time budget lets it fetch and render before the picture."""
    from PIL import Image

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/setup-system.sh (apt chromium)")
    folder.mkdir(parents=True, exist_ok=True)
    from spf_lib.registry.session import CLASSIC_VIEW, ui_url

    run = f"{uri}/#/experiments/{exp_id}/runs/{run_id}"
    pages = {
        "experiment.png": ui_url(uri, experiment_id=exp_id),
        "run.png": ui_url(uri, experiment_id=exp_id, run_id=run_id),
        "run-charts.png": f"{run}/model-metrics?{CLASSIC_VIEW}",
        "run-card.png": f"{run}/artifacts/model_card/card.html?{CLASSIC_VIEW}",
        "run-report.png": f"{run}/artifacts/eval/report_single_file.html?{CLASSIC_VIEW}",
        "model-version.png": ui_url(uri, model=NAME, version=version),
    }
    for name, url in pages.items():
        shot = folder / name
        profile = tmp_path / f"chromium-{name}"
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               f"--user-data-dir={profile}", "--window-size=1600,1400",
                               "--virtual-time-budget=20000", f"--screenshot={shot}", url],
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
        assert Image.open(shot).convert("L").getextrema()[1] > 0
