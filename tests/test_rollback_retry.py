"""A retried rollback is ONE rollback: every mutating request of a rollback has its reply lost in turn (the work is
done, the caller hears a connection error and gives up), then the operator runs the same command again, as a new
process. With ``--idempotency-key`` or ``--to`` the end state is one step back, whatever request was lost.

The registry here is an in-memory stand-in for MLflow's client (aliases, tags, registered models; creating one that
exists fails, as MLflow's unique name does), so the whole sweep runs in a second; the same sweep against a real
`mlflow server` behind a reply-dropping proxy is in tests/test_registry_faults.py."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from spf_lib.registry import promotion_lock
from spf_lib.registry.champion_state import HISTORY_TAG, OP_TAG
from spf_lib.registry.promotion import rollback
from spf_lib.registry.promotion_lock import LOCK_SUFFIX
from spf_lib.registry.session import RetryPolicy

NAME = "retry-model"
ONE_SHOT = RetryPolicy(attempts=1)
NO_WAIT = RetryPolicy(attempts=3, initial_delay=0.0, max_delay=0.0)


def _missing(what: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    return MlflowException(f"{what} not found", error_code=RESOURCE_DOES_NOT_EXIST)


class FakeClient:
    """The MlflowClient calls promotion.py makes, on a dict. ``drop_at``: the n-th mutating call does its work and
    then raises a connection error (a lost reply)."""

    def __init__(self, store: dict, drop_at: int | None = None) -> None:
        self.store, self.drop_at, self.mutations = store, drop_at, []

    def _done(self, what: str) -> None:
        self.mutations.append(what)
        if self.drop_at is not None and len(self.mutations) - 1 == self.drop_at:
            raise ConnectionError(f"Connection aborted (reply to {what} lost)")

    def _model(self, name: str) -> dict:
        if name not in self.store:
            raise _missing(f"registered model {name}")
        return self.store[name]

    # reads
    def get_registered_model(self, name):
        m = self._model(name)
        return SimpleNamespace(name=name, tags=dict(m["tags"]))

    def get_model_version(self, name, version):
        m = self._model(name)
        if str(version) not in m["versions"]:
            raise _missing(f"version {version}")
        return SimpleNamespace(name=name, version=str(version), tags=dict(m["versions"][str(version)]))

    def get_model_version_by_alias(self, name, alias):
        m = self._model(name)
        if alias not in m["aliases"]:
            raise _missing(f"alias {alias}")
        return self.get_model_version(name, m["aliases"][alias])

    # writes
    def create_registered_model(self, name, tags=None, description=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

        if name in self.store:
            raise MlflowException(f"{name} exists", error_code=RESOURCE_ALREADY_EXISTS)
        self.store[name] = {"tags": dict(tags or {}), "aliases": {}, "versions": {}, "description": description}
        self._done("create_registered_model")

    def delete_registered_model(self, name):
        self._model(name)
        del self.store[name]
        self._done("delete_registered_model")

    def set_registered_model_tag(self, name, key, value):
        self._model(name)["tags"][key] = str(value)
        self._done(f"set_registered_model_tag {key}")

    def set_registered_model_alias(self, name, alias, version):
        self._model(name)["aliases"][alias] = str(version)
        self._done(f"set_registered_model_alias {alias}")

    def delete_registered_model_alias(self, name, alias):
        if alias not in self._model(name)["aliases"]:
            raise _missing(f"alias {alias}")
        del self.store[name]["aliases"][alias]
        self._done(f"delete_registered_model_alias {alias}")

    def set_model_version_tag(self, name, version, key, value):
        self._model(name)["versions"][str(version)][key] = str(value)
        self._done(f"set_model_version_tag {key}")


def _three_champions() -> dict:
    """Versions 1, 2, 3 were champion in turn: champion 3, previous-champion 2."""
    return {NAME: {"tags": {HISTORY_TAG: "1,2,3"}, "aliases": {"champion": "3", "previous-champion": "2"},
                   "versions": {"1": {}, "2": {}, "3": {}}, "description": None}}


@pytest.fixture
def registry(monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never contacted: the client is the fake
    holder = {"client": None}
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: holder["client"])
    return holder


def _state(store: dict) -> tuple:
    m = store[NAME]
    op = m["tags"].get(OP_TAG)
    return (m["aliases"].get("champion"), m["aliases"].get("previous-champion"), m["tags"][HISTORY_TAG],
            None if op is None else json.loads(op)["state"], NAME + LOCK_SUFFIX in store)


@pytest.mark.parametrize("how", [{"idempotency_key": "incident-7"}, {"to": "2"}], ids=["key", "to"])
def test_every_lost_reply_then_the_same_command_again(registry, monkeypatch, how, capsys):
    clean = FakeClient(_three_champions())
    registry["client"] = clean
    first = rollback(NAME, retry=ONE_SHOT, **how)
    assert first.changed and _state(clean.store) == ("2", "1", "1,2", "done", False)
    n = len(clean.mutations)
    assert n >= 6, clean.mutations  # lock, journal, history, keys, aliases, version tag, journal, unlock
    outcomes = []
    for drop in range(n):
        store = _three_champions()
        registry["client"] = FakeClient(store, drop_at=drop)
        try:
            rollback(NAME, retry=ONE_SHOT, **how)
            failed = False
        except Exception:  # noqa: BLE001 - the caller saw the lost reply (as an SpfError after its one attempt)
            failed = True
        registry["client"] = FakeClient(store)
        with monkeypatch.context() as m:
            m.setattr(promotion_lock, "_pid_alive", lambda pid: False)  # a new process: the first one is gone
            again = rollback(NAME, retry=NO_WAIT, **how)
        outcomes.append((drop, failed, again.changed))
        assert _state(store) == ("2", "1", "1,2", "done", False), (drop, clean.mutations[drop], _state(store))
    with capsys.disabled():
        print(f"\nrollback {how}: {n} lost replies, each retried: {n} end states = one rollback "
              f"({sum(f for _, f, _ in outcomes)} first tries failed, "
              f"{sum(not c for _, _, c in outcomes)} retries said 'nothing changed')")


def test_plain_rollback_is_one_more_step_and_bad_targets(registry):
    from spf_lib.errors import SpfError

    store = _three_champions()
    store[NAME]["versions"]["4"] = {}
    registry["client"] = FakeClient(store)
    assert rollback(NAME, retry=ONE_SHOT).restored == "2"
    assert rollback(NAME, retry=ONE_SHOT).restored == "1"  # the documented default: each run one step back
    store2 = copy.deepcopy(_three_champions())
    store2[NAME]["versions"]["4"] = {}
    registry["client"] = FakeClient(store2)
    with pytest.raises(SpfError, match="version 4 of 'retry-model' was never champion before version 3"):
        rollback(NAME, to=4, retry=ONE_SHOT)
    with pytest.raises(SpfError, match="a model version number"):
        rollback(NAME, to="latest", retry=ONE_SHOT)
    with pytest.raises(SpfError, match="give 1-200 characters"):
        rollback(NAME, idempotency_key="", retry=ONE_SHOT)
    r = rollback(NAME, to="1", idempotency_key="k1", retry=ONE_SHOT)  # two steps at once
    assert (r.restored, r.demoted, r.changed) == ("1", "3", True) and _state(store2)[:3] == ("1", None, "1")
    again = rollback(NAME, to="1", idempotency_key="k1", retry=ONE_SHOT)
    assert not again.changed and "already done" in again.message
