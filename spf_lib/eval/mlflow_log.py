"""Send the evaluation to MLflow: the same grids and per-pair table as the HTML report, metrics, and the report
(its text, its images as files, and a single-file copy for the browser preview).

Logs only into a run that exists: the one named by ``run_id`` or the active one. Evaluation never creates runs of its
own; the registry stage decides which run a model version belongs to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The report with its images inlined: what MLflow's artifact preview (one file in a sandboxed frame) can show.
SINGLE_FILE_REPORT = "report_single_file.html"


def target_run_id(run_id: str | None) -> str | None:
    import mlflow

    if run_id:
        return run_id
    active = mlflow.active_run()
    return active.info.run_id if active else None


def log_evaluation(out_dir: Path, *, run_id: str | None, metrics: dict[str, Any], items: list[Any],
                   pairs: dict[str, dict[str, Any]], grids: dict[str, Any]) -> str | None:
    """Return the run id logged to, or None when no run was given or active."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from spf_lib.settings import Settings, quiet_third_parties

    quiet_third_parties()
    if not run_id and mlflow.active_run() is None:
        return None
    if run_id and mlflow.active_run() is None:
        mlflow.set_tracking_uri(Settings.from_env().tracking_uri)
    rid = target_run_id(run_id)
    client = MlflowClient()
    numeric = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(rid, metrics=[Metric(k, v, now, 0) for k, v in numeric.items()])
    rows: dict[str, list] = {"key": [], "kind": [], "prompt": [], "seed": []}
    grid_cells: list[Any] = []
    cols = sorted({c for p in pairs.values() for c, v in p.items() if isinstance(v, (int, float, bool))} - set(rows))
    for c in cols:
        rows[c] = []
    for step, it in enumerate(items):
        grid = grids[it.key]
        client.log_image(rid, grid, key=f"eval_{it.kind}_{it.index:02d}", step=int(it.seed))
        rows["key"].append(it.key)
        rows["kind"].append(it.kind)
        rows["prompt"].append(it.prompt)
        rows["seed"].append(int(it.seed))
        grid_cells.append(grid)
        for c in cols:
            v = pairs.get(it.key, {}).get(c)
            rows[c].append(None if v is None else float(v))
    import pandas as pd

    table = pd.DataFrame(rows)
    # Set after construction: pandas would otherwise try to unpack image objects as sequences.
    table["grid"] = pd.Series(grid_cells, dtype=object, index=table.index)
    client.log_table(rid, data=table, artifact_file="eval/pairs.json")
    if (out_dir / "metrics.json").is_file():
        client.log_artifact(rid, str(out_dir / "metrics.json"), artifact_path="eval")
    log_report(client, rid, out_dir, artifact_path="eval")
    return rid


def log_report(client, run_id: str, eval_dir: Path, artifact_path: str) -> bool:
    """Attach report.html, its images and the single-file copy MLflow's preview can show; False when the report is
    missing or its text looks like it holds a credential (then nothing of it is attached)."""
    import tempfile

    from spf_lib.eval.report import inline_images
    from spf_lib.registry.scrub import find_secrets

    page = eval_dir / "report.html"
    if not page.is_file():
        return False
    text = page.read_text(encoding="utf-8", errors="replace")
    if found := find_secrets(text):
        log.warning("%s looks like it holds a credential (%s); not attached", page, ", ".join(found))
        return False
    client.log_artifact(run_id, str(page), artifact_path=artifact_path)
    if (eval_dir / "images").is_dir():
        client.log_artifacts(run_id, str(eval_dir / "images"), artifact_path=f"{artifact_path}/images")
    with tempfile.TemporaryDirectory(prefix="spf-report-") as tmp:
        single = Path(tmp) / SINGLE_FILE_REPORT
        single.write_text(inline_images(text, eval_dir), encoding="utf-8")
        client.log_artifact(run_id, str(single), artifact_path=artifact_path)
    return True
