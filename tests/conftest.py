"""Shared test setup: quiet dependencies, keep every test's state in its own temp folders."""

import os
import sys

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


MLFLOW_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(scope="module", autouse=True)
def _mlflow_state_per_module():
    """What a test or a module's fixtures left in MLflow's process-wide state is put back after the module.

    ``mlflow.set_tracking_uri`` (ours inside ``mlflow_session``, or MLflow's own calls) writes ``os.environ`` and
    module globals behind monkeypatch's back: left pointing at a module's server, stopped with the module, they send
    the next module's fixtures there ("Connection refused"). Which module runs next depends on the order, and
    `make test` runs files in two processes in another order than one process would."""
    saved = _mlflow_state()
    yield
    _restore_mlflow_state(saved)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """SPF_HOME and the MLflow store default into the test's temp folder, never the checkout (and MLflow's
    process-wide state is put back after the test, as after a module)."""
    saved = _mlflow_state()
    monkeypatch.setenv("SPF_HOME", str(tmp_path / "spf-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield
    _restore_mlflow_state(saved)


def _mlflow_state() -> tuple[dict, tuple]:
    env = {k: os.environ.get(k) for k in MLFLOW_VARS}
    if "mlflow" not in sys.modules:
        return env, (None, None)
    from mlflow.tracking._model_registry import utils as reg
    from mlflow.tracking._tracking_service import utils as trk

    return env, (trk._tracking_uri, reg._registry_uri)


def _restore_mlflow_state(saved: tuple[dict, tuple]) -> None:
    env, uris = saved
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as reg
        from mlflow.tracking._tracking_service import utils as trk

        trk._tracking_uri, reg._registry_uri = uris


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """One tiny SD pipeline saved in diffusers format, shared by the whole session (read-only)."""
    from spf_lib.models.factory import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


# The longest test files on the 2-core CI machine (pytest --durations, whole file), longest first. `make test` runs two
# pytest-xdist processes that take whole files in collection order: with these first, both processes start on long
# files and the short ones fill in around them, instead of one process finishing the suite alone on a long file that
# happened to be collected last. Order only; a file missing here runs after these, in its usual place.
LONGEST_FIRST = (
    "test_pipeline_local.py",
    "test_readme_commands.py",
    "test_registry_faults.py",
    "test_pipeline_mlflow.py",
    "test_train_bench.py",
    "test_arch_sd3.py",
    "test_arch_sdxl.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole and in order
