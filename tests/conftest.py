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


def _mlflow_state() -> tuple:
    from spf_lib.registry.session import mlflow_state

    return mlflow_state(MLFLOW_VARS)


def _restore_mlflow_state(saved: tuple) -> None:
    from spf_lib.registry.session import restore_mlflow_state

    restore_mlflow_state(saved)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """One tiny SD pipeline saved in diffusers format, shared by the whole session (read-only)."""
    from spf_lib.models.factory import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


# `make test` runs two pytest-xdist processes (--dist loadgroup). Each takes whole groups in collection order: a group
# is a test file (its module fixtures are set up once), except that the published-architecture files (marker arch:
# GBs of RAM and long matrix products each) form one group, so two of them never run side by side. The longest groups
# on the 2-core CI machine (pytest --durations) come first: both processes start on long ones and the short files
# fill in around them, instead of one process finishing the suite alone on a long file collected last. A file not
# listed runs after these, in its usual place.
LONGEST_FIRST = (
    "test_pipeline_local.py",
    "test_readme_commands.py",
    "test_arch_sd15.py",
    "test_registry_faults.py",
    "test_pipeline_mlflow.py",
    "test_train_bench.py",
)

# Two processes on a machine's cores: each gets its share of compute threads (and so do the processes it starts),
# or each one's OpenMP threads spin-wait on cores the other needs (an SDXL test took 126 s beside another process,
# 8 s without one).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    arch_files = {item.path.name for item in items if item.get_closest_marker("arch")}
    items.sort(key=lambda item: (rank.get("test_arch_sd15.py" if item.path.name in arch_files else item.path.name,
                                          len(rank))))  # stable: files stay whole and in order
    for item in items:
        item.add_marker(pytest.mark.xdist_group("arch" if item.path.name in arch_files else item.path.name))
