"""Against a real `mlflow server` process on loopback (sqlite backend, proxied artifacts)."""

from __future__ import annotations

import logging
import threading

import pytest

from spf_lib.registry import RetryPolicy, flavors, lineage, mlflow_session, register_model
from tests._registry_helpers import (  # noqa: F401
    GOOD,
    lineage_for,
    lora_adapter,
    mlflow_server,
    promotion_scenario,
    served,
    tiny_base,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_server_register_promote_refuse_rollback(served, lora_adapter, tiny_base):
    promotion_scenario("portrait-server", lora_adapter, tiny_base)
    # proxied artifacts: the server, not this process, wrote the files
    assert any((served.root / "artifacts").rglob("pytorch_lora_weights.safetensors"))


def test_server_stopped_mid_register_then_restarted(served, lora_adapter, tiny_base, monkeypatch, caplog):
    """The server dies after the run was created and before the model is logged; it comes back once restarted
    (~11 s idle, up to a minute on a loaded machine: the retry budget here is generous, ~3 min).
    The register call retries, succeeds, and the KFP run still owns exactly one version and one run."""
    import mlflow

    real = flavors.log_lora
    restarted = threading.Event()
    calls = []

    def dying_log_lora(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            served.stop()
            threading.Thread(target=lambda: (served.start(), restarted.set()), daemon=True).start()
        return real(*args, **kwargs)

    monkeypatch.setattr(flavors, "log_lora", dying_log_lora)
    lin = lineage_for("restart", 1, "rev-restart")
    with caplog.at_level(logging.WARNING, logger="spf_lib.registry.session"):
        rv = register_model(lora_adapter, str(tiny_base), metrics=GOOD, lineage=lin, model_name="restart",
                            retry=RetryPolicy(attempts=40, initial_delay=1.0, factor=2.0, max_delay=5.0))
    assert restarted.is_set() and len(calls) >= 2
    retries = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert retries and "retrying" in retries[0].getMessage()
    with mlflow_session():
        client = mlflow.MlflowClient()
        versions = client.search_model_versions("name = 'restart'")
        exp = client.get_experiment_by_name("spf-portrait")
        runs = client.search_runs([exp.experiment_id], "tags.kfp_run_id = 'restart-run-1'")
    assert [str(v.version) for v in versions] == [rv.version] == ["1"]
    assert [r.info.run_id for r in runs] == [rv.run_id]
    assert lineage("models:/restart@challenger")["lineage"]["data_rev"] == "rev-restart"
    again = register_model(lora_adapter, str(tiny_base), metrics=GOOD, lineage=lin, model_name="restart")
    assert (again.version, again.created) == ("1", False)
