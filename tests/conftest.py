"""Shared test setup: quiet dependencies, keep every test's state in its own temp folders."""

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """SPF_HOME and the MLflow store default into the test's temp folder, never the checkout."""
    monkeypatch.setenv("SPF_HOME", str(tmp_path / "spf-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """One tiny SD pipeline saved in diffusers format, shared by the whole session (read-only)."""
    from spf_lib.models.factory import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")
