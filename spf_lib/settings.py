"""Where things live: embedded defaults for one laptop, overridden by environment variables on a cluster.

Nothing here opens a connection; it only decides addresses. Secrets are read from the environment by the clients
that need them (boto3, MLflow) and never copied into params, tags or artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def spf_home() -> Path:
    """The working folder for embedded defaults (``SPF_HOME``, default ``./.spf`` in the current directory)."""
    return Path(os.environ.get("SPF_HOME", ".spf")).resolve()


@dataclass(frozen=True)
class Settings:
    home: Path
    tracking_uri: str
    registry_uri: str | None
    experiment_name: str
    model_name: str

    @classmethod
    def from_env(cls) -> Settings:
        home = spf_home()
        default_uri = f"sqlite:///{home / 'mlflow.db'}"
        return cls(
            home=home,
            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", default_uri),
            registry_uri=os.environ.get("MLFLOW_REGISTRY_URI"),
            experiment_name=os.environ.get("SPF_EXPERIMENT", "spf-portrait"),
            model_name=os.environ.get("SPF_MODEL_NAME", "spf-portrait"),
        )

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"


def quiet_third_parties() -> None:
    """Turn off telemetry/analytics of dependencies (offline machines stall on them) and their import-time chatter.

    Great Expectations logs ~150 "Skipping registering function ..." INFO lines while it is imported; under kfp's
    executor (root logger at INFO) they filled the task logs. Its warnings and errors still come through.
    """
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    for k, v in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        os.environ.setdefault(k, v)
