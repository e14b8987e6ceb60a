"""Moving the `champion` alias: promote through the gate, roll back to the previous champion.

Aliases say where things are now; the registered model's tag ``spf.champion_history`` (comma-separated versions)
remembers the order champions had, so rollback can go back more than one step and says exactly what it did.

Safe under retries and concurrency, because MLflow cannot move several aliases in one transaction:
- one promote/rollback per model at a time: a lock that is a registered model ``<name>--spf-lock``, whose creation
  is atomic (``spf_lib.registry.promotion_lock`` says why it is a model and not a tag);
- every change is planned first (read-only: aliases, history, gate), written as a journal entry
  (``spf.last_op``, state ``pending``), applied with absolute, repeatable writes, and marked ``done``
  (``spf_lib.registry.champion_state``). A command that finds a ``pending`` entry (an earlier one died half-way)
  applies it first, so a retry finishes the earlier change instead of doing something else; a retry of the very
  same call (same token) returns its recorded result.
- a rollback is a relative move ("one step back"), so running the same command again would go one MORE step. A
  rollback that names its target (``to=VERSION``) or carries an ``idempotency_key`` is a no-op when repeated: the
  target already holds ``champion``, or the key is among the last rollbacks recorded in ``spf.rollback_keys``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field

from spf_lib.errors import SpfError
from spf_lib.registry.champion_state import (
    ROLLBACK_KEYS_TAG,
    champion_history,
    check_champion_exists,
    commit_op,
    delete_alias,
    finish_pending,
    require_model,
    utc_now,
    version_by_alias,
    version_exists,
)
from spf_lib.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, Check, GateRules, evaluate_gate
from spf_lib.registry.metrics import version_metrics
from spf_lib.registry.promotion_lock import locked
from spf_lib.registry.register import ADAPTER_HASH_TAG, METRICS_ADAPTER_HASH_TAG
from spf_lib.registry.session import RetryPolicy, mlflow_session, redact_uri, with_retries
from spf_lib.settings import Settings

log = logging.getLogger(__name__)

ROLLBACK_KEYS_KEPT = 20


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


# -- promote --------------------------------------------------------------------------------------------------------

def promote(model_name: str, rules: GateRules | None = None, *, settings: Settings | None = None,
            retry: RetryPolicy | None = None, raise_on_fail: bool = False) -> PromotionResult:
    """Run the gate on `challenger` vs `champion`; on pass move `champion`, keep the old one as `previous-champion`."""
    import mlflow

    rules = rules or GateRules()
    token = uuid.uuid4().hex

    def attempt() -> PromotionResult:
        client = mlflow.MlflowClient()
        require_model(client, model_name)
        with locked(client, model_name, token, "promote"):
            return _promote_once(client, model_name, rules, token)

    with mlflow_session(settings) as s:
        result = with_retries(f"promote {model_name}", attempt, target=redact_uri(s.tracking_uri), policy=retry)
    log.info("%s", result.message)
    if raise_on_fail and not result.passed:
        raise GateFailed(result.message)
    return result


def _promote_once(client, name: str, rules: GateRules, token: str) -> PromotionResult:
    op = finish_pending(client, name)
    if op and op.get("token") == token:  # our own earlier attempt got through; its reply was lost
        return PromotionResult(name, op["champion"], op.get("previous"), op["champion"], True, [], op["message"])
    chal = version_by_alias(client, name, CHALLENGER)
    champ = version_by_alias(client, name, CHAMPION)
    history = champion_history(client, name)
    pv = str(champ.version) if champ else None
    if chal is None:
        if champ is not None and op and op.get("op") == "promote" and op.get("champion") == pv:
            return PromotionResult(name, None, pv, pv, True, [],
                                   f"{name}: version {pv} is already champion (promoted {op.get('at', '')}); "
                                   "no challenger waiting")
        raise SpfError(f"model {name!r}: no version has the alias '{CHALLENGER}' (register one first)")
    cv = str(chal.version)
    if cv == pv:  # champion moved but the challenger alias was not cleared
        delete_alias(client, name, CHALLENGER, only_if=cv)
        return PromotionResult(name, cv, pv, pv, True, [], f"{name}: version {cv} is already champion")
    check_champion_exists(name, champ, history)
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
    commit_op(client, name, {"op": "promote", "token": token, "champion": cv, "previous": pv, "history": new_history,
                             "at": utc_now(), "gate": "; ".join(c.reason for c in checks), "message": message})
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
        require_model(client, model_name)
        with locked(client, model_name, lock_token, "rollback"):
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
    op = finish_pending(client, name)
    if op and op.get("token") == token:
        return RollbackResult(name, op["champion"], op.get("demoted"), op["message"])
    keys = _rollback_keys(client, name)
    if key is not None:
        for k, restored, demoted, at in keys:
            if k == key:
                return RollbackResult(name, restored, demoted or None, f"{name}: rollback {key!r} was already done "
                                      f"({at}: version {demoted or '?'} -> version {restored}); nothing changed",
                                      changed=False)
    champ = version_by_alias(client, name, CHAMPION)
    history = champion_history(client, name)
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
    if not version_exists(client, name, target):
        raise SpfError(f"model {name!r}: the previous champion, version {target}, no longer exists; nothing changed")
    new_history = chain[:at + 1]
    before = new_history[-2] if len(new_history) >= 2 else None
    gone = "" if champ is not None else " (deleted)"
    message = (f"{name}: champion rolled back from version {cur}{gone} to version {target}"
               + (f"; '{PREVIOUS}' is now version {before}" if before else f"; no older champion left as '{PREVIOUS}'"))
    when = utc_now()
    new_keys = None if key is None else [*keys, [key, target, cur, when]][-ROLLBACK_KEYS_KEPT:]
    commit_op(client, name, {"op": "rollback", "token": token, "champion": target, "previous": before,
                             "history": new_history, "demoted": cur, "at": when, "message": message,
                             "key": key, "keys": new_keys})
    return RollbackResult(name, target, cur, message)
