"""What promote and rollback read and write in the registry: aliases, the champion history, the change journal.

Aliases say where things are now; the registered model's tag ``spf.champion_history`` (comma-separated versions)
remembers the order champions had. MLflow cannot move several aliases in one transaction, so a change is written as a
journal entry (``spf.last_op``, state ``pending``) first, applied with absolute writes (``commit_op``), then marked
``done``; whoever finds a ``pending`` entry finishes it (``finish_pending``). The why: ``spf_lib.registry.promotion``.
"""

from __future__ import annotations

import json
import logging
import time

from spf_lib.errors import SpfError
from spf_lib.registry.gate import CHALLENGER, CHAMPION, PREVIOUS

log = logging.getLogger(__name__)

HISTORY_TAG = "spf.champion_history"
OP_TAG = "spf.last_op"
ROLLBACK_KEYS_TAG = "spf.rollback_keys"  # JSON [[key, restored, demoted, at], ...], the newest last


def version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            return None
        raise


def require_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            raise SpfError(f"model {name!r}: not in the registry") from e
        raise


def champion_history(client, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def version_exists(client, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
        return True
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            return False
        raise


def delete_alias(client, name: str, alias: str, only_if: str | None = None) -> None:
    """Delete ``alias`` (only while it still points at ``only_if`` when given); absent is fine."""
    from mlflow.exceptions import MlflowException

    if only_if is not None:
        cur = version_by_alias(client, name, alias)
        if cur is None or str(cur.version) != str(only_if):
            return
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code) and "INVALID_PARAMETER_VALUE" not in str(e.error_code):
            raise


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the journal ----------------------------------------------------------------------------------------------------

def _last_op(client, name: str) -> dict | None:
    raw = client.get_registered_model(name).tags.get(OP_TAG)
    if not raw:
        return None
    try:
        op = json.loads(raw)
    except ValueError:
        log.warning("model %s: tag %s is not JSON; ignored", name, OP_TAG)
        return None
    return op if isinstance(op, dict) else None


def _write_op(client, name: str, op: dict) -> None:
    client.set_registered_model_tag(name, OP_TAG, json.dumps(op, sort_keys=True))


def _apply(client, name: str, op: dict) -> None:
    """Bring the registry to the state ``op`` describes. Every write is absolute, so running it twice is harmless."""
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(op["history"][-50:]))
    if op.get("keys") is not None:
        client.set_registered_model_tag(name, ROLLBACK_KEYS_TAG, json.dumps(op["keys"]))
    client.set_registered_model_alias(name, CHAMPION, op["champion"])
    if op.get("previous"):
        client.set_registered_model_alias(name, PREVIOUS, op["previous"])
    else:
        delete_alias(client, name, PREVIOUS)
    if op["op"] == "promote":
        client.set_model_version_tag(name, op["champion"], "spf.promoted_at", op["at"])
        client.set_model_version_tag(name, op["champion"], "spf.gate", op.get("gate", "")[:5000])
        delete_alias(client, name, CHALLENGER, only_if=op["champion"])
    elif op.get("demoted") and version_exists(client, name, op["demoted"]):
        client.set_model_version_tag(name, op["demoted"], "spf.rolled_back_at", op["at"])


def commit_op(client, name: str, op: dict) -> None:
    _write_op(client, name, {**op, "state": "pending"})
    _apply(client, name, op)
    _write_op(client, name, {**op, "state": "done"})


def finish_pending(client, name: str) -> dict | None:
    """Apply a change an earlier command planned but did not finish; return the last op (done) or None."""
    op = _last_op(client, name)
    if op and op.get("state") == "pending":
        log.warning("model %s: finishing an interrupted %s (champion -> version %s) first", name, op.get("op"),
                    op.get("champion"))
        _apply(client, name, op)
        op = {**op, "state": "done"}
        _write_op(client, name, op)
    return op


def check_champion_exists(name: str, champ, history: list[str]) -> None:
    """A champion alias is removed when its version is deleted: with a history that says there was one, that is an
    error to fix, not a model without champion (a worse challenger would become "first champion")."""
    if champ is None and history:
        raise SpfError(f"model {name!r}: no version holds '{CHAMPION}' although version {history[-1]} was champion "
                       f"({HISTORY_TAG}); it was deleted or the alias removed. `spf rollback {name}` restores the "
                       "champion before it")
