"""Where MLflow lives for one registry operation, and how we survive it being briefly away.

MLflow keeps its tracking URI in a process global (and mirrors it into ``MLFLOW_TRACKING_URI``). The pipeline, the
CLI and the tests all call us in-process, so ``mlflow_session`` sets the URIs for the duration of one operation and
puts the previous values back afterwards instead of leaking them into the caller.

MLflow's own HTTP client retries for minutes (7 tries, factor 2) and then fails with a long message. We shorten its
inner retries and wrap whole operations in our own bounded backoff, which works because every operation is
idempotent (see ``register.find_existing_version``), then end with ONE ``SpfError`` naming the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from spf_lib.errors import SpfError
from spf_lib.settings import Settings, quiet_third_parties

log = logging.getLogger(__name__)
T = TypeVar("T")

_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for an unreachable tracking server: delays initial, initial*factor, ... capped at max_delay."""

    attempts: int = 6
    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise SpfError(f"RetryPolicy.attempts={self.attempts}: must be at least 1")
        if self.initial_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise SpfError(f"RetryPolicy={self}: delays must be >= 0 and factor >= 1")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``SPF_REGISTRY_RETRIES`` / ``SPF_REGISTRY_BACKOFF`` tune it without code (e.g. a flaky cluster ingress)."""
        try:
            return cls(
                attempts=int(os.environ.get("SPF_REGISTRY_RETRIES", cls.attempts)),
                initial_delay=float(os.environ.get("SPF_REGISTRY_BACKOFF", cls.initial_delay)),
            )
        except ValueError as e:
            raise SpfError(f"SPF_REGISTRY_RETRIES/SPF_REGISTRY_BACKOFF: not a number ({e})") from e

    def delays(self) -> Iterator[float]:
        d = self.initial_delay
        for _ in range(self.attempts - 1):
            yield min(d, self.max_delay)
            d *= self.factor


def is_unreachable(exc: BaseException) -> bool:
    """True for 'server not there / restarting' failures, which are worth retrying; False for real answers."""
    import requests

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            return True
        msg = str(e)
        if any(s in msg for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                  "Connection aborted", "RemoteDisconnected", "Read timed out")):
            return True
        if any(f"{code} Server Error" in msg or f"status code {code}" in msg for code in (502, 503, 504)):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(what: str, fn: Callable[[], T], *, target: str, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn``; on an unreachable server wait and run it again; finally one ``SpfError`` naming ``target``."""
    policy = policy or RetryPolicy.from_env()
    delays = policy.delays()
    attempt = 1
    while True:
        try:
            return fn()
        except SpfError:
            raise
        except Exception as e:
            if not is_unreachable(e):
                raise
            delay = next(delays, None)
            if delay is None:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise SpfError(
                    f"{what}: MLflow tracking server {target} unreachable after {attempt} attempts ({first})"
                ) from e
            log.warning("%s: tracking server %s unreachable (attempt %d/%d); retrying in %.1f s",
                        what, target, attempt, policy.attempts, delay)
            sleep(delay)
            attempt += 1


def redact_uri(uri: str) -> str:
    """Hide user:password@ in a URI before it appears in a message or a tag."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri


@contextlib.contextmanager
def mlflow_session(settings: Settings | None = None) -> Iterator[Settings]:
    """Point MLflow at ``settings`` (default: from the environment) for the block, then restore the caller's state."""
    quiet_third_parties()
    settings = settings or Settings.from_env()
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    if settings.tracking_uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *_HTTP_DEFAULTS)}
    saved_globals = (trk_utils._tracking_uri, reg_utils._registry_uri)
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    try:
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
        yield settings
    finally:
        trk_utils._tracking_uri, reg_utils._registry_uri = saved_globals
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def active_experiment(experiment_id: str) -> Iterator[None]:
    """Make ``experiment_id`` MLflow's active experiment for the block, then restore the caller's.

    ``Model.log(run_id=...)`` creates its LoggedModel in the *active* experiment, not the run's: without this the
    model lands in experiment 0, whose artifact root for a sqlite store is ``./mlruns`` of the current directory.
    """
    from mlflow.tracking import fluent

    saved = fluent._active_experiment_id
    fluent._active_experiment_id = experiment_id
    try:
        yield
    finally:
        fluent._active_experiment_id = saved


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def resolve_experiment_id(settings: Settings) -> str:
    """``MLFLOW_EXPERIMENT_ID`` when a platform injects it; else our named experiment, created on first use.

    A local store gets an explicit artifact location under SPF_HOME: MLflow's default (``./mlruns`` of whatever
    the current directory is) scatters artifacts wherever the command happened to run.
    """
    import mlflow

    if exp_id := os.environ.get("MLFLOW_EXPERIMENT_ID"):
        if mlflow.MlflowClient().get_experiment(exp_id) is None:
            raise SpfError(f"MLFLOW_EXPERIMENT_ID={exp_id}: no such experiment on {redact_uri(settings.tracking_uri)}")
        return exp_id
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(settings.experiment_name)
    if exp is not None:
        return exp.experiment_id
    location = settings.artifact_root.as_uri() if is_local_store(settings.tracking_uri) else None
    try:
        return client.create_experiment(settings.experiment_name, artifact_location=location)
    except Exception:
        exp = client.get_experiment_by_name(settings.experiment_name)
        if exp is None:
            raise
        return exp.experiment_id
