"""The whole pipeline under kfp's local runner on tiny data, ending in a model version that loads and generates.

This is the demo's path with fewer images and steps: real DVC repo (local remote), real face detection and GX suite,
real LoRA/SPF training of a tiny SD-architecture model, evaluation, and MLflow's registry on a sqlite file.
"""

import io
import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from spf_lib.demo import prepare_workspace

    return prepare_workspace(tmp_path_factory.mktemp("demo"), n_images=6, seed=1)


# SPF's run (same pipeline, same assertions, a real `mlflow server` as the store) is in tests/test_pipeline_mlflow.py
@pytest.mark.parametrize("method", ["lora", "celeb-basis", "beyond-inserting"])
def test_pipeline_runs_end_to_end_and_model_loads_by_alias(workspace, method, monkeypatch, tmp_path):
    import mlflow
    from mlflow import MlflowClient
    from PIL import Image

    from pipelines.local import run_local
    from spf_lib.demo import demo_configs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace.tracking_uri)
    name = f"e2e-{method}"
    configs = demo_configs(workspace.resolution, steps=2, method=method, eval_prompts=2, eval_seeds=1)
    params = {"data_repo": workspace.data_repo, "data_rev": workspace.data_rev, "base_model": workspace.base_model,
              "method": method, "model_name": name, **configs}
    out = run_local(params, tmp_path / "root")

    assert out["data_rev"] == workspace.data_rev
    assert out["n_kept"] + out["n_rejected"] == 6 and out["n_kept"] >= 4
    reg = out["registration"]["registered"]
    assert "challenger" in reg["aliases"]

    mlflow.set_tracking_uri(workspace.tracking_uri)
    client = MlflowClient()
    version = client.get_model_version(name, str(reg["version"]))
    promo = out["registration"]["promotion"]
    alias = "champion" if promo and promo["passed"] else "challenger"
    assert client.get_model_version_by_alias(name, alias).version == version.version
    assert version.tags.get("data_rev") == workspace.data_rev
    assert version.tags.get("method") == method
    if method in ("celeb-basis", "beyond-inserting"):
        # the prepared faces travelled to the evaluation: identity similarity to them is on the version
        assert client.get_run(version.run_id).data.metrics["eval/id_ref_faces"] >= 1
        assert "id_ref_sim" in out["metrics"] and "metric.id_ref_sim" in version.tags
        assert {"id_ref_sim", "id_ref_gain"} <= {c["metric"] for c in promo["checks"]}   # the identity gate ran

    model = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    res = workspace.resolution
    images = model.predict({"prompt": ["a photo of a woman, wearing round glasses"]},
                           params={"num_inference_steps": 2, "height": res, "width": res})
    img = Image.open(io.BytesIO(images[0]))
    assert img.size == (res, res)
    assert json.dumps(out["metrics"])  # metrics made it through as JSON


def test_bad_data_stops_the_run_before_training(tmp_path, tiny_model_dir, monkeypatch):
    """A dataset without usable faces fails the QA gate in `prepare`; `train` never starts; one clear error."""
    import numpy as np
    from PIL import Image

    from pipelines.local import run_local
    from spf_lib.data.dvc_versioning import track_dataset
    from spf_lib.errors import SpfError

    repo = tmp_path / "repo"
    (repo / "data" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(repo / "data" / "images" / f"{i}.png")
        lines.append(json.dumps({"file": f"images/{i}.png", "caption": "a photo of a woman, red hair"}))
    (repo / "data" / "captions.jsonl").write_text("\n".join(lines) + "\n")
    rev, _ = track_dataset(repo, data_dir_name="data", remote_url=str(tmp_path / "remote"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    root, log = tmp_path / "root", tmp_path / "pipeline.log"
    with pytest.raises(SpfError) as err:
        run_local({"data_repo": str(repo), "data_rev": rev, "base_model": str(tiny_model_dir), "method": "lora",
                   "prepare_config": {"size": 64}}, root, log_path=log)
    message = str(err.value)
    assert "prepare-data" in message and str(log) in message
    assert "no_face" in log.read_text() or "expect" in log.read_text()
    assert not list(root.glob("*/train-model"))
