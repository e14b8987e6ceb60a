"""Moving the `champion` alias: promote through the gate, roll back to the previous champion.

Aliases say where things are now; the registered model's tag ``spf.champion_history`` (comma-separated versions)
remembers the order champions had, so rollback can go back more than one step and says exactly what it did.

Safe under retries and concurrency, because MLflow cannot move several aliases in one transaction:
- one promote/rollback per model at a time: a lock that is a registered model ``<name>--spf-lock`` (creating a
  registered model is the one atomic compare-and-set MLflow offers; its tags name the holder, and a holder that
  died on this host, or whose lease expired, is taken over). A tag on the model itself would hide better in
  MLflow's UI, but MLflow has no conditional tag write: two promotes could both "take" it. So the lock stays a
  model that exists only while a command runs, and its description says what it is and that it is safe to ignore;
- every change is planned first (read-only: aliases, history, gate), written as a journal entry
  (``spf.last_op``, state ``pending``), applied with absolute, repeatable writes, and marked ``done``. A command
  that finds a ``pending`` entry (an earlier one died half-way) applies it first, so a retry finishes the earlier
  change instead of doing something else; a retry of the very same call (same token) returns its recorded result.
- a rollback is a relative move ("one step back"), so running the same command again would go one MORE step. A
  rollback that names its target (``to=VERSION``) or carries an ``idempotency_key`` is a no-op when repeated: the
  target already holds ``champion``, or the key is among the last rollbacks recorded in ``spf.rollback_keys``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from spf_lib.errors import SpfError
from spf_lib.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, Check, GateRules, evaluate_gate
from spf_lib.registry.metrics import version_metrics
from spf_lib.registry.session import RetryPolicy, mlflow_session, redact_uri, with_retries
from spf_lib.settings import Settings

log = logging.getLogger(__name__)

HISTORY_TAG = "spf.champion_history"
OP_TAG = "spf.last_op"
ROLLBACK_KEYS_TAG = "spf.rollback_keys"  # JSON [[key, restored, demoted, at], ...], the newest last
ROLLBACK_KEYS_KEPT = 20
LOCK_SUFFIX = "--spf-lock"
LOCK_LEASE_S = float(os.environ.get("SPF_PROMOTE_LOCK_LEASE", "300"))
ADAPTER_HASH_TAG = "spf.adapter_hash"
METRICS_ADAPTER_HASH_TAG = "spf.metrics_adapter_hash"


class GateFailed(SpfError):
    """The challenger did not pass: nothing was changed. Exit code 1 (a verdict, not bad input)."""

    exit_code = 1


@dataclass(frozen=True)
class PromotionResult:
    name: str
    challenger: str | None
    champion_before: str | None
    champion_after: str | None
    passed: bool
    checks: list[Check] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "challenger": self.challenger, "champion_before": self.champion_before,
                "champion_after": self.champion_after, "passed": self.passed, "message": self.message,
                "checks": [c.__dict__ for c in self.checks]}


@dataclass(frozen=True)
class RollbackResult:
    name: str
    restored: str
    demoted: str | None
    message: str
    changed: bool = True  # False: a repeat of a rollback already done (same --to target or idempotency key)


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            return None
        raise


def _require_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            raise SpfError(f"model {name!r}: not in the registry") from e
        raise


def _history(client, name: str) -> list[str]:
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def _version_exists(client, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
        return True
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            return False
        raise


def _delete_alias(client, name: str, alias: str, only_if: str | None = None) -> None:
    """Delete ``alias`` (only while it still points at ``only_if`` when given); absent is fine."""
    from mlflow.exceptions import MlflowException

    if only_if is not None:
        cur = _alias(client, name, alias)
        if cur is None or str(cur.version) != str(only_if):
            return
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code) and "INVALID_PARAMETER_VALUE" not in str(e.error_code):
            raise


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the lock: a registered model whose creation is atomic --------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _lock_is_stale(tags: dict[str, str]) -> str | None:
    """Why the holder can be taken over (it died on this host, or its lease ran out), or None if it holds."""
    host, _, pid = tags.get("spf.lock_owner", "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"its holder (pid {pid} on this host) is gone"
    try:
        if time.time() > float(tags.get("spf.lock_expires", "0")):
            return "its lease expired"
    except ValueError:
        return "its lease is unreadable"
    return None


def _lock_description(name: str, what: str) -> str:
    """What MLflow's UI shows for the lock model (it appears in the model list while a promote/rollback runs)."""
    return (f"Not a model: the lock of one `spf {what}` of {name!r}, in progress since {_now()}. Safe to ignore; "
            "it is deleted when that command ends. If it stays (the command was killed), the next promote/rollback "
            f"of {name!r} takes it over once its holder is gone or its lease (SPF_PROMOTE_LOCK_LEASE, now "
            f"{LOCK_LEASE_S:.0f} s) has run out. Do not delete it while a command runs.")


def _acquire(client, name: str, token: str, what: str) -> None:
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    for _ in range(3):
        tags = {"spf.lock_token": token, "spf.lock_owner": f"{socket.gethostname()}:{os.getpid()}",
                "spf.lock_what": what, "spf.lock_for": name, "spf.lock_since": _now(),
                "spf.lock_expires": f"{time.time() + LOCK_LEASE_S:.0f}"}
        try:
            client.create_registered_model(lock, tags=tags, description=_lock_description(name, what))
            return
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        try:
            held = client.get_registered_model(lock).tags
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
                continue  # released meanwhile: try again
            raise
        if held.get("spf.lock_token") == token:
            return  # our own earlier attempt created it and its reply was lost
        stale = _lock_is_stale(held)
        if stale is None:
            raise SpfError(f"model {name!r}: another {held.get('spf.lock_what', 'promote/rollback')} is in progress "
                           f"({held.get('spf.lock_owner', '?')} since {held.get('spf.lock_since', '?')}); "
                           "run it again when that one has finished")
        log.warning("model %s: taking over the promotion lock (%s)", name, stale)
        _release(client, name, held.get("spf.lock_token", ""))
    raise SpfError(f"model {name!r}: could not take the promotion lock {lock!r}; run it again")


def _release(client, name: str, token: str) -> None:
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    try:
        if client.get_registered_model(lock).tags.get("spf.lock_token") != token:
            return  # taken over (our lease ran out): not ours to delete
        client.delete_registered_model(lock)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise


@contextlib.contextmanager
def _locked(client, name: str, token: str, what: str) -> Iterator[None]:
    _acquire(client, name, token, what)
    ok = False
    try:
        yield
        ok = True
    finally:
        try:
            _release(client, name, token)
        except Exception:  # noqa: BLE001 - the retry (same token) or the next command (stale holder) frees it
            if ok:
                raise
            log.warning("model %s: could not release the promotion lock now; it is freed on the next attempt", name)


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
        _delete_alias(client, name, PREVIOUS)
    if op["op"] == "promote":
        client.set_model_version_tag(name, op["champion"], "spf.promoted_at", op["at"])
        client.set_model_version_tag(name, op["champion"], "spf.gate", op.get("gate", "")[:5000])
        _delete_alias(client, name, CHALLENGER, only_if=op["champion"])
    elif op.get("demoted") and _version_exists(client, name, op["demoted"]):
        client.set_model_version_tag(name, op["demoted"], "spf.rolled_back_at", op["at"])


def _commit(client, name: str, op: dict) -> None:
    _write_op(client, name, {**op, "state": "pending"})
    _apply(client, name, op)
    _write_op(client, name, {**op, "state": "done"})


def _finish_pending(client, name: str) -> dict | None:
    """Apply a change an earlier command planned but did not finish; return the last op (done) or None."""
    op = _last_op(client, name)
    if op and op.get("state") == "pending":
        log.warning("model %s: finishing an interrupted %s (champion -> version %s) first", name, op.get("op"),
                    op.get("champion"))
        _apply(client, name, op)
        op = {**op, "state": "done"}
        _write_op(client, name, op)
    return op


def _check_champion_exists(name: str, champ, history: list[str]) -> None:
    """A champion alias is removed when its version is deleted: with a history that says there was one, that is an
    error to fix, not a model without champion (a worse challenger would become "first champion")."""
    if champ is None and history:
        raise SpfError(f"model {name!r}: no version holds '{CHAMPION}' although version {history[-1]} was champion "
                       f"({HISTORY_TAG}); it was deleted or the alias removed. `spf rollback {name}` restores the "
                       "champion before it")


# -- promote --------------------------------------------------------------------------------------------------------

def promote(model_name: str, rules: GateRules | None = None, *, settings: Settings | None = None,
            retry: RetryPolicy | None = None, raise_on_fail: bool = False) -> PromotionResult:
    """Run the gate on `challenger` vs `champion`; on pass move `champion`, keep the old one as `previous-champion`."""
    import mlflow

    rules = rules or GateRules()
    token = uuid.uuid4().hex

    def attempt() -> PromotionResult:
        client = mlflow.MlflowClient()
        _require_model(client, model_name)
        with _locked(client, model_name, token, "promote"):
            return _promote_once(client, model_name, rules, token)

    with mlflow_session(settings) as s:
        result = with_retries(f"promote {model_name}", attempt, target=redact_uri(s.tracking_uri), policy=retry)
    log.info("%s", result.message)
    if raise_on_fail and not result.passed:
        raise GateFailed(result.message)
    return result


def _promote_once(client, name: str, rules: GateRules, token: str) -> PromotionResult:
    op = _finish_pending(client, name)
    if op and op.get("token") == token:  # our own earlier attempt got through; its reply was lost
        return PromotionResult(name, op["champion"], op.get("previous"), op["champion"], True, [], op["message"])
    chal = _alias(client, name, CHALLENGER)
    champ = _alias(client, name, CHAMPION)
    history = _history(client, name)
    pv = str(champ.version) if champ else None
    if chal is None:
        if champ is not None and op and op.get("op") == "promote" and op.get("champion") == pv:
            return PromotionResult(name, None, pv, pv, True, [],
                                   f"{name}: version {pv} is already champion (promoted {op.get('at', '')}); "
                                   "no challenger waiting")
        raise SpfError(f"model {name!r}: no version has the alias '{CHALLENGER}' (register one first)")
    cv = str(chal.version)
    if cv == pv:  # champion moved but the challenger alias was not cleared
        _delete_alias(client, name, CHALLENGER, only_if=cv)
        return PromotionResult(name, cv, pv, pv, True, [], f"{name}: version {cv} is already champion")
    _check_champion_exists(name, champ, history)
    checks = _adapter_checks(chal.tags, cv)
    verdict = evaluate_gate(rules, version_metrics(client, chal), version_metrics(client, champ) if champ else None)
    checks = checks + verdict.checks
    failed = [c for c in checks if not c.passed]
    if failed:
        return PromotionResult(name, cv, pv, pv, False, checks, f"{name}: gate failed for version {cv} (champion "
                               f"stays {pv or 'none'}): {'; '.join(c.reason for c in failed)}")
    new_history = list(history)
    if pv is not None and (not new_history or new_history[-1] != pv):
        new_history.append(pv)  # the champion was set outside us: keep it in the chain
    new_history.append(cv)
    was = f"; version {pv} is now '{PREVIOUS}'" if pv else " (first champion)"
    message = f"{name}: version {cv} promoted to champion{was}"
    _commit(client, name, {"op": "promote", "token": token, "champion": cv, "previous": pv, "history": new_history,
                           "at": _now(), "gate": "; ".join(c.reason for c in checks), "message": message})
    return PromotionResult(name, cv, pv, cv, True, checks, message)


def _adapter_checks(tags: dict[str, str], version: str) -> list[Check]:
    """The metrics must be about this adapter: registration records both hashes (metrics.json carries the hash of
    the adapter it evaluated). A mismatch fails; metrics without a hash are reported as unverified."""
    have, said = tags.get(ADAPTER_HASH_TAG), tags.get(METRICS_ADAPTER_HASH_TAG)
    if have and said:
        if have != said:
            return [Check("adapter_hash", False, False, f"metrics of version {version} were computed for adapter "
                          f"{said[:12]}, not for its adapter {have[:12]}")]
        return [Check("adapter_hash", True, False, f"metrics belong to adapter {have[:12]}")]
    return [Check("adapter_hash", True, True, "metrics carry no adapter hash; not verified")]


# -- rollback -------------------------------------------------------------------------------------------------------

def check_idempotency_key(key: str | None) -> None:
    if key is not None and (not key.strip() or len(key) > 200 or "'" in key or '"' in key):
        raise SpfError(f"--idempotency-key {key!r}: give 1-200 characters without quotes")


def rollback(model_name: str, *, to: str | int | None = None, idempotency_key: str | None = None,
             settings: Settings | None = None, retry: RetryPolicy | None = None) -> RollbackResult:
    """Give `champion` back to the previous champion (or to ``to``, a version that was champion before); the
    demoted version loses the alias but stays registered.

    A plain rollback is one step back each time it runs. To make a retry safe (a lost reply, a re-run KFP task, an
    operator who is not sure it went through) name the target with ``to`` or pass an ``idempotency_key``: the same
    call again changes nothing and says so (``RollbackResult.changed`` is False).
    """
    import mlflow

    check_idempotency_key(idempotency_key)
    target = None if to is None else str(to).strip()
    if target is not None and not target.isdigit():
        raise SpfError(f"--to {to!r}: a model version number (e.g. 3)")
    token = uuid.uuid4().hex  # this call's journal token: its own retries (a lost reply) find their result
    # a lock left by a call with the same key is that call's (it died, or its reply was lost): a retry takes it
    lock_token = f"key:{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}" if idempotency_key else token

    def attempt() -> RollbackResult:
        client = mlflow.MlflowClient()
        _require_model(client, model_name)
        with _locked(client, model_name, lock_token, "rollback"):
            return _rollback_once(client, model_name, token, target, idempotency_key)

    with mlflow_session(settings) as s:
        result = with_retries(f"rollback {model_name}", attempt, target=redact_uri(s.tracking_uri), policy=retry)
    log.info("%s", result.message)
    return result


def _rollback_keys(client, name: str) -> list[list[str]]:
    raw = client.get_registered_model(name).tags.get(ROLLBACK_KEYS_TAG, "")
    try:
        keys = json.loads(raw) if raw else []
    except ValueError:
        log.warning("model %s: tag %s is not JSON; ignored", name, ROLLBACK_KEYS_TAG)
        return []
    return [k for k in keys if isinstance(k, list) and len(k) == 4] if isinstance(keys, list) else []


def _rollback_once(client, name: str, token: str, to: str | None, key: str | None) -> RollbackResult:
    op = _finish_pending(client, name)
    if op and op.get("token") == token:
        return RollbackResult(name, op["champion"], op.get("demoted"), op["message"])
    keys = _rollback_keys(client, name)
    if key is not None:
        for k, restored, demoted, at in keys:
            if k == key:
                return RollbackResult(name, restored, demoted or None, f"{name}: rollback {key!r} was already done "
                                      f"({at}: version {demoted or '?'} -> version {restored}); nothing changed",
                                      changed=False)
    champ = _alias(client, name, CHAMPION)
    history = _history(client, name)
    cur = str(champ.version) if champ else (history[-1] if history else None)
    if to is not None and cur == to and champ is not None:
        return RollbackResult(name, to, None, f"{name}: version {to} is already champion; nothing changed",
                              changed=False)
    if cur is None:
        raise SpfError(f"model {name!r}: no champion and no champion history; nothing to roll back")
    chain = history if history and history[-1] == cur else [*history, cur]
    if len(chain) < 2:
        raise SpfError(f"model {name!r}: no previous champion to roll back to (champion is {cur})")
    if to is None:
        at = len(chain) - 2
    elif to in chain[:-1]:
        at = max(i for i, v in enumerate(chain[:-1]) if v == to)
    else:
        raise SpfError(f"--to {to}: version {to} of {name!r} was never champion before version {cur} (champion "
                       f"history {', '.join(chain)}); only an earlier champion can be rolled back to (a new version "
                       "goes through `spf promote`)")
    target = chain[at]
    if not _version_exists(client, name, target):
        raise SpfError(f"model {name!r}: the previous champion, version {target}, no longer exists; nothing changed")
    new_history = chain[:at + 1]
    before = new_history[-2] if len(new_history) >= 2 else None
    gone = "" if champ is not None else " (deleted)"
    message = (f"{name}: champion rolled back from version {cur}{gone} to version {target}"
               + (f"; '{PREVIOUS}' is now version {before}" if before else f"; no older champion left as '{PREVIOUS}'"))
    when = _now()
    new_keys = None if key is None else [*keys, [key, target, cur, when]][-ROLLBACK_KEYS_KEPT:]
    _commit(client, name, {"op": "rollback", "token": token, "champion": target, "previous": before,
                           "history": new_history, "demoted": cur, "at": when, "message": message,
                           "key": key, "keys": new_keys})
    return RollbackResult(name, target, cur, message)
