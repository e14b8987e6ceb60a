"""Send the evaluation to MLflow: the same grids and per-pair table as the HTML report, metrics, and the report.

Logs only into a run that exists: the one named by ``run_id`` or the active one. Evaluation never creates runs of its
own; the registry stage decides which run a model version belongs to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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
    for name in ("report.html", "metrics.json"):
        if (out_dir / name).is_file():
            client.log_artifact(rid, str(out_dir / name), artifact_path="eval")
    return rid
