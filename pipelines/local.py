"""Run the real pipeline on this machine with kfp's SubprocessRunner (no Docker, no cluster)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def run_local(params: dict, pipeline_root: str | Path) -> dict:
    """Run ``portrait_pipeline`` locally and return its outputs (registration and metrics decoded from JSON).

    ``use_venv=False``: tasks run in this interpreter's environment, where spf_lib is installed; the venv mode
    would pip-install kfp per task, which fails offline.
    """
    # Retries (with minutes of backoff) are for preemptible cluster nodes; a local failure should stop at once.
    os.environ["SPF_PIPELINE_RETRIES"] = "0"
    from kfp import local

    from pipelines.portrait import pipeline_version, portrait_pipeline

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    params = {"pipeline_version": pipeline_version(), **params}
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = portrait_pipeline(**params)
    out = dict(task.outputs)
    out["registration"] = json.loads(out["registration"])
    out["metrics"] = json.loads(out["metrics"])
    return out
