"""The model card and the evaluation report in MLflow: a report with images is attached (text scanned, images as
files, a single-file copy for the browser preview); a report with a planted credential is not."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _registry_helpers import embedded, embedded_store  # noqa: F401

pytestmark = pytest.mark.integration

AWS_KEY_ID = "AKIAZ7Q3EXAMPLE4KEYS"


def _eval_dir(root: Path, *, planted: str = "") -> Path:
    """A real report (render_report) over noisy PNGs: their base64 would match an AWS-secret-shaped regex."""
    import numpy as np
    from PIL import Image

    from spf_lib.eval.report import render_report

    rng = np.random.default_rng(0)
    prompts = {"base": "a photo of a woman", "target": "a photo of a woman, wearing glasses"}
    items = [SimpleNamespace(kind=k, key=f"{k}_00_s{s}", prompt=prompts[k], seed=s, index=0)
             for k in ("base", "target") for s in (0, 1)]
    paths: dict[str, dict[str, str]] = {}
    for label in ("original", "tuned", "diff"):
        (root / "images" / label).mkdir(parents=True)
        for it in items:
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
                root / "images" / label / f"{it.key}.png")
            paths.setdefault(label, {})[it.key] = f"images/{label}/{it.key}.png"
    import json

    (root / "pairs.json").write_text(json.dumps({it.key: {"kind": it.kind, "prompt": it.prompt, "seed": it.seed}
                                                 for it in items}))
    html_text = render_report(root, title="report", metrics={"pollution": 0.1}, unavailable={},
                              pollution_detail={"formula": "1 - ssim"}, items=items, pairs={}, paths=paths,
                              eval_set={"name": "t", "version": 1, "hash": "h" * 12, "target": "glasses"},
                              context={"remote": planted} if planted else None)
    (root / "report.html").write_text(html_text)
    return root


def _card(tmp_path: Path, eval_dir: Path) -> tuple[set[str], str, object]:
    import mlflow

    from spf_lib.registry.card import log_model_card
    from spf_lib.registry.metrics import Metrics
    from spf_lib.registry.session import mlflow_session, resolve_experiment_id

    with mlflow_session() as s:
        client = mlflow.MlflowClient()
        run_id = client.create_run(resolve_experiment_id(s)).info.run_id
        summary = log_model_card(client, run_id, name="m", tags={"method": "spf", "data_rev": "r" * 40},
                                 metrics=Metrics({"pollution": 0.1}), eval_dir=eval_dir)
        arts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl")))
    return {str(p.relative_to(arts)) for p in arts.rglob("*") if p.is_file()}, summary, arts


def test_a_report_with_images_is_attached(embedded, tmp_path):  # noqa: F811
    from PIL import Image

    files, summary, arts = _card(tmp_path, _eval_dir(tmp_path / "eval"))
    assert {"model_card/README.md", "model_card/card.html", "model_card/summary_grid.png",
            "model_card/report/report.html", "model_card/report/report_single_file.html",
            "model_card/report/images/tuned/target_00_s1.png"} <= files
    page = (arts / "model_card/report/report.html").read_text()
    assert "data:image" not in page and "src='images/original/base_00_s0.png'" in page
    single = (arts / "model_card/report/report_single_file.html").read_text()
    assert single.count("data:image/png;base64,") == 12 and "src='images/" not in single
    grid = Image.open(arts / "model_card/summary_grid.png")
    assert grid.width > 2 * 192 and grid.height > 4 * 192  # 4 labelled rows: original | tuned
    assert "model_card/report/report_single_file.html" in (arts / "model_card/README.md").read_text()
    assert summary.startswith("**spf** adapter") and "| pollution | 0.1 |" in summary


def test_a_report_with_a_planted_aws_key_is_not_attached(embedded, tmp_path, caplog):  # noqa: F811
    files, _, arts = _card(tmp_path, _eval_dir(tmp_path / "eval", planted=f"uploaded with {AWS_KEY_ID}"))
    assert not any(f.startswith("model_card/report") for f in files)
    assert "model_card/summary_grid.png" in files  # the images are still evidence
    assert not any(AWS_KEY_ID in p.read_bytes().decode("latin-1") for p in arts.rglob("*") if p.is_file())
    assert "AWS Access Key" in caplog.text and "not attached" in caplog.text


def test_documents_are_scanned_by_detect_secrets_not_by_shape():
    import base64
    import os

    from spf_lib.registry.scrub import find_secrets, looks_secret

    noise = base64.b64encode(os.urandom(30000)).decode()
    assert find_secrets(f"<img src='data:image/png;base64,{noise}'>") == []
    assert find_secrets(f'aws_secret_access_key = "{"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"') == ["AWS Access Key"]
    assert find_secrets("remote s3://ak:hunter2@minio:9000/b") and find_secrets("-----BEGIN RSA PRIVATE KEY-----")
    assert looks_secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")  # a bare key as a tag value


def test_the_gate_reads_untagged_metrics_from_the_versions_run(embedded):  # noqa: F811
    """Versions carry few metric tags; a rule on any other metric finds it in the linked run (eval/ or plain)."""
    import mlflow

    from spf_lib.registry.gate import GateRules, evaluate_gate
    from spf_lib.registry.metrics import version_metrics
    from spf_lib.registry.session import mlflow_session, resolve_experiment_id

    with mlflow_session() as s:
        client = mlflow.MlflowClient()
        run_id = client.create_run(resolve_experiment_id(s)).info.run_id
        for k, v in {"eval/lpips": 0.3, "fid": 12.0, "train/loss": 0.5, "eval/pollution": 0.9}.items():
            client.log_metric(run_id, k, v)
        mv = SimpleNamespace(tags={"metric.pollution": "0.1", "metric.clip_t": "unavailable: no CLIP"},
                             run_id=run_id)
        m = version_metrics(client, mv)
    assert m.values == {"pollution": 0.1, "clip_t": None, "lpips": 0.3, "fid": 12.0}  # tags win; no train/ terms
    strict = GateRules.parse({"rules": [{"metric": "lpips", "better": "lower", "bound": 0.2}]})
    assert not evaluate_gate(strict, m, None).passed
    assert evaluate_gate(strict.with_rule("lpips", bound=0.4), m, None).passed
