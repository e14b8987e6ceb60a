"""MLflow logging for a training run, through MlflowClient (no global active-run state).

Run selection, in order: ``MLFLOW_RUN_ID`` (a launcher such as KFP's MLflow integration owns the run: we log into it
and never change its status), the run id saved in the checkpoint being resumed (one run per training, even across
restarts), else a new run in ``MLFLOW_EXPERIMENT_ID`` or the ``SPF_EXPERIMENT`` experiment, ended by us.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAIN_PREFIX = "train/"


class Tracker:
    """No-op when disabled, so the loop never branches on MLflow."""

    def __init__(self, enabled: bool, run_id: str | None = None, run_name: str | None = None) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self._owned = False
        self.client = None
        if not enabled:
            return
        from spf_lib.settings import Settings, quiet_third_parties

        quiet_third_parties()
        import mlflow
        from mlflow.tracking import MlflowClient

        settings = Settings.from_env()
        mlflow.set_tracking_uri(settings.tracking_uri)
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        env_run = os.environ.get("MLFLOW_RUN_ID")
        if env_run:
            self.run_id = env_run
            self.client.get_run(env_run)  # fail early on a wrong id
        elif run_id:
            self.run_id = run_id
            self.client.get_run(run_id)
            self.client.update_run(run_id, status="RUNNING")
            self._owned = True
        else:
            from spf_lib.registry.session import resolve_experiment_id

            exp_id = resolve_experiment_id(settings)
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            self._owned = True
        log.info("MLflow run %s at %s", self.run_id, settings.tracking_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        # "train/" groups the loss terms into one chart section of MLflow's UI, apart from the evaluation's "eval/"
        self.client.log_batch(self.run_id, metrics=[Metric(f"{TRAIN_PREFIX}{k}", float(v), ts, step)
                                                    for k, v in metrics.items()])

    def log_image(self, path: Path, key: str, step: int) -> None:
        if not self.enabled:
            return
        from PIL import Image

        with Image.open(path) as im:
            self.client.log_image(self.run_id, im.copy(), key=key, step=step)
        self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def finish(self, ok: bool) -> None:
        if self.enabled and self._owned:
            self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
