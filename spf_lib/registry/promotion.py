"""Moving the `champion` alias: promote through the gate, roll back to the previous champion.

Aliases say where things are now; the registered model's tag ``spf.champion_history`` (comma-separated versions)
remembers the order champions had, so rollback can go back more than one step and says exactly what it did.
Writes are ordered so that an interrupted promotion, run again, finishes instead of doing something else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from spf_lib.errors import SpfError
from spf_lib.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, Check, GateRules, evaluate_gate
from spf_lib.registry.metrics import Metrics
from spf_lib.registry.session import RetryPolicy, mlflow_session, redact_uri, with_retries
from spf_lib.settings import Settings

log = logging.getLogger(__name__)

HISTORY_TAG = "spf.champion_history"


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


def promote(model_name: str, rules: GateRules | None = None, *, settings: Settings | None = None,
            retry: RetryPolicy | None = None, raise_on_fail: bool = False) -> PromotionResult:
    """Run the gate on `challenger` vs `champion`; on pass move `champion`, keep the old one as `previous-champion`."""
    rules = rules or GateRules()
    with mlflow_session(settings) as s:
        result = with_retries(f"promote {model_name}", lambda: _promote_once(model_name, rules),
                              target=redact_uri(s.tracking_uri), policy=retry)
    log.info("%s", result.message)
    if raise_on_fail and not result.passed:
        raise GateFailed(result.message)
    return result


def _promote_once(name: str, rules: GateRules) -> PromotionResult:
    import mlflow

    client = mlflow.MlflowClient()
    _require_model(client, name)
    chal = _alias(client, name, CHALLENGER)
    champ = _alias(client, name, CHAMPION)
    if chal is None:
        raise SpfError(f"model {name!r}: no version has the alias '{CHALLENGER}' (register one first)")
    cv, pv = str(chal.version), (str(champ.version) if champ else None)
    if cv == pv:  # an interrupted earlier promotion got as far as moving champion: finish it
        client.delete_registered_model_alias(name, CHALLENGER)
        return PromotionResult(name, cv, pv, pv, True, [], f"{name}: version {cv} is already champion")
    verdict = evaluate_gate(rules, Metrics.from_tags(chal.tags), Metrics.from_tags(champ.tags) if champ else None)
    if not verdict.passed:
        failed = "; ".join(c.reason for c in verdict.failed)
        return PromotionResult(name, cv, pv, pv, False, verdict.checks,
                               f"{name}: gate failed for version {cv} (champion stays {pv or 'none'}): {failed}")
    history = _history(client, name)
    if pv is not None:
        client.set_registered_model_alias(name, PREVIOUS, pv)
    if not history or history[-1] != cv:
        if pv is not None and (not history or history[-1] != pv):
            history.append(pv)  # the champion was set outside us: keep it in the chain
        history.append(cv)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-50:]))
    client.set_model_version_tag(name, cv, "spf.promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    client.set_model_version_tag(name, cv, "spf.gate", "; ".join(c.reason for c in verdict.checks)[:5000])
    client.set_registered_model_alias(name, CHAMPION, cv)
    client.delete_registered_model_alias(name, CHALLENGER)
    was = f"; version {pv} is now '{PREVIOUS}'" if pv else " (first champion)"
    return PromotionResult(name, cv, pv, cv, True, verdict.checks, f"{name}: version {cv} promoted to champion{was}")


def rollback(model_name: str, *, settings: Settings | None = None,
             retry: RetryPolicy | None = None) -> RollbackResult:
    """Give `champion` back to the previous champion; the demoted version loses the alias but stays registered."""
    with mlflow_session(settings) as s:
        result = with_retries(f"rollback {model_name}", lambda: _rollback_once(model_name),
                              target=redact_uri(s.tracking_uri), policy=retry)
    log.info("%s", result.message)
    return result


def _rollback_once(name: str) -> RollbackResult:
    import mlflow

    client = mlflow.MlflowClient()
    _require_model(client, name)
    champ = _alias(client, name, CHAMPION)
    prev = _alias(client, name, PREVIOUS)
    cur = str(champ.version) if champ else None
    history = _history(client, name)
    if cur is not None and history and history[-1] == cur:
        history.pop()
    target = str(prev.version) if prev else (history[-1] if history else None)
    if target is None or target == cur:
        raise SpfError(f"model {name!r}: no previous champion to roll back to (champion is {cur or 'none'})")
    while history and history[-1] != target:
        history.pop()
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history) if history else target)
    client.set_registered_model_alias(name, CHAMPION, target)
    if cur is not None:
        client.set_model_version_tag(name, cur, "spf.rolled_back_at", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime()))
    before = history[-2] if len(history) >= 2 else None
    if before:
        client.set_registered_model_alias(name, PREVIOUS, before)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
    msg = (f"{name}: champion rolled back from version {cur} to version {target}"
           + (f"; '{PREVIOUS}' is now version {before}" if before else f"; no older champion left as '{PREVIOUS}'"))
    return RollbackResult(name, target, cur, msg)
