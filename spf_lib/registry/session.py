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
    # 0: MLflow's HTTP layer retries every method, POST included, so a lost reply to model-versions/create or
    # runs/create would be sent again and make a second version/run. Whole operations are retried by
    # ``with_retries`` instead, and those look their earlier work up first (issue 19).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
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

    if settings.tracking_uri.startswith("sqlite:"):
        settings.home.mkdir(parents=True, exist_ok=True)
    saved = mlflow_state(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", *_HTTP_DEFAULTS))
    for k, v in _HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    try:
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
        yield settings
    finally:
        restore_mlflow_state(saved)


def mlflow_state(env_keys: tuple[str, ...]) -> tuple[dict[str, str | None], tuple]:
    """The caller's MLflow targets: ``env_keys`` of ``os.environ`` and MLflow's tracking/registry URI globals —
    ``mlflow.set_tracking_uri`` writes both, so restoring one without the other leaves MLflow pointed elsewhere.
    Does not import MLflow (an unimported MLflow holds no state)."""
    import sys

    env = {k: os.environ.get(k) for k in env_keys}
    if "mlflow" not in sys.modules:
        return env, (None, None)
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    return env, (trk_utils._tracking_uri, reg_utils._registry_uri)


def restore_mlflow_state(saved: tuple[dict[str, str | None], tuple]) -> None:
    """Put back what ``mlflow_state`` saved."""
    import sys

    env, uris = saved
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as reg_utils
        from mlflow.tracking._tracking_service import utils as trk_utils

        trk_utils._tracking_uri, reg_utils._registry_uri = uris


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
        if EXPERIMENT_KIND_TAG not in exp.tags:  # created by an older version or by hand
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = settings.artifact_root.as_uri() if is_local_store(settings.tracking_uri) else None
    try:
        return client.create_experiment(settings.experiment_name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        exp = client.get_experiment_by_name(settings.experiment_name)
        if exp is None:
            raise
        return exp.experiment_id


# -- one MLflow run per pipeline run -----------------------------------------------------------------------------

#: Opens MLflow 3's classic runs view for our experiments; without it the UI guesses "GenAI" and shows Traces.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
KFP_RUN_TAG = "kfp_run_id"
BRANCH_TAG = "spf.branch"
PIPELINE_BRANCH = "pipeline"  # the parent run's branch value; children carry their branch (by default the method)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a child under its parent


@dataclass(frozen=True)
class PipelineRun:
    """The MLflow run of one pipeline run (``branch=None``) or of one branch of it (a child run).

    ``client`` is an ``MlflowClient`` pointed at the right store while the ``pipeline_run`` block is open.
    """

    run_id: str
    experiment_id: str
    kfp_run_id: str
    branch: str | None
    parent_run_id: str | None
    client: object

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


@contextlib.contextmanager
def pipeline_run(kfp_run_id: str, run_name: str | None = None, *, branch: str | None = None,
                 settings: Settings | None = None, retry: RetryPolicy | None = None) -> Iterator[PipelineRun]:
    """The MLflow run of pipeline run ``kfp_run_id``, found by tag or created (idempotent; safe under parallel tasks).

    ``branch=None`` gives the parent run (named ``run_name``, the KFP run's name); ``branch="spf"`` gives that
    branch's child run (train, evaluate and register of one method log there; its model version links to it).
    Retried pods and parallel branches get the same runs back. Any component or stage can attach evidence::

        from spf_lib.registry.session import pipeline_run
        with pipeline_run(kfp_run_id, "spf-portrait-2026-...") as run:
            run.log_artifact("comparison.png", artifact_path="comparison")

    The block leaves the caller's MLflow URIs as they were (see ``mlflow_session``).
    """
    from spf_lib.registry.lineage_keys import is_real

    if not is_real(kfp_run_id):
        raise SpfError(f"kfp_run_id {kfp_run_id!r}: not a real pipeline run id (a placeholder was not substituted)")
    with mlflow_session(settings) as s:
        yield with_retries(f"MLflow run of pipeline run {kfp_run_id}",
                           lambda: open_pipeline_run(kfp_run_id, run_name, branch=branch, settings=s),
                           target=redact_uri(s.tracking_uri), policy=retry)


def open_pipeline_run(kfp_run_id: str, run_name: str | None = None, *, branch: str | None = None,
                      settings: Settings | None = None) -> PipelineRun:
    """``pipeline_run`` without the session/retry wrapper: for code already inside ``mlflow_session``."""
    import mlflow

    client = mlflow.MlflowClient()
    exp_id = resolve_experiment_id(settings or Settings.from_env())
    parent = _find_or_create(client, exp_id, kfp_run_id, PIPELINE_BRANCH,
                             run_name or f"pipeline-{kfp_run_id[:8]}", {}, rename=bool(run_name))
    if branch is None:
        return PipelineRun(parent, exp_id, kfp_run_id, None, None, client)
    if branch == PIPELINE_BRANCH or not branch.strip():
        raise SpfError(f"branch {branch!r}: give a method or task name (not empty, not {PIPELINE_BRANCH!r})")
    child = _find_or_create(client, exp_id, kfp_run_id, branch, branch, {PARENT_TAG: parent}, rename=False)
    return PipelineRun(child, exp_id, kfp_run_id, branch, parent, client)


def _find_or_create(client, exp_id: str, kfp_run_id: str, branch: str, name: str, extra: dict[str, str],
                    *, rename: bool) -> str:
    """The oldest live run tagged (kfp_run_id, branch); two tasks racing to create it keep the oldest and delete
    their own duplicate, so every task ends up logging into the same run."""
    filt = f"tags.{KFP_RUN_TAG} = '{_q(kfp_run_id)}' and tags.`{BRANCH_TAG}` = '{_q(branch)}'"

    def oldest():
        runs = client.search_runs([exp_id], filt, max_results=50)
        return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)) if runs else None

    found = oldest()
    if found is None:
        mine = client.create_run(exp_id, run_name=name,
                                 tags={KFP_RUN_TAG: kfp_run_id, BRANCH_TAG: branch, **extra}).info.run_id
        found = oldest()
        if found is None:  # a store that does not see its own write yet: ours is the only one
            return mine
        if found.info.run_id != mine:
            client.delete_run(mine)
            log.info("pipeline run %s/%s: another task created it first; using %s", kfp_run_id, branch,
                     found.info.run_id)
        return found.info.run_id
    if rename and found.info.run_name != name:
        client.update_run(found.info.run_id, name=name)
    return found.info.run_id


def end_pipeline_run(run: PipelineRun, status: str = "FINISHED") -> None:
    """End a branch run, and its parent once no sibling is still running (the last branch to finish closes it)."""
    run.client.set_terminated(run.run_id, status)
    if run.parent_run_id is None:
        return
    siblings = run.client.search_runs(
        [run.experiment_id], f"tags.`{PARENT_TAG}` = '{_q(run.parent_run_id)}' and attributes.status = 'RUNNING'",
        max_results=1)
    if not siblings:
        run.client.set_terminated(run.parent_run_id, status)


def _q(text: str) -> str:
    return text.replace("'", "\\'")


def end_branch_run(run_id: str, status: str = "FAILED", settings: Settings | None = None) -> None:
    """Mark a pipeline branch run ended (and its parent after the last branch). Other runs are left alone, and so
    is a lost server: a failure being reported must not be masked by a second one."""
    try:
        with mlflow_session(settings):
            import mlflow

            client = mlflow.MlflowClient()
            run = client.get_run(run_id)
            t = run.data.tags
            if t.get(BRANCH_TAG) not in (None, PIPELINE_BRANCH) and PARENT_TAG in t:
                end_pipeline_run(PipelineRun(run_id, run.info.experiment_id, t.get(KFP_RUN_TAG, ""), t[BRANCH_TAG],
                                             t[PARENT_TAG], client), status)
    except Exception as e:  # noqa: BLE001
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, str(e).splitlines()[0][:200])


# -- links into MLflow's UI ----------------------------------------------------------------------------------------

#: MLflow 3.17's UI picks its view from this query parameter (then the browser's last choice), default "genai"
#: (Traces); the experiment tag above is what it reads where the GenAI/Model-training switch is off.
CLASSIC_VIEW = "workflowType=machine_learning"


def ui_url(base: str, *, experiment_id: str | None = None, run_id: str | None = None,
           model: str | None = None, version: str | None = None) -> str:
    """A link that opens MLflow's classic (model training) view: experiment, run, or model version page."""
    base = redact_uri(base.rstrip("/"))
    if model and version:
        return f"{base}/#/models/{model}/versions/{version}?{CLASSIC_VIEW}"
    if experiment_id and run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"
    if experiment_id:
        return f"{base}/#/experiments/{experiment_id}?{CLASSIC_VIEW}"
    return f"{base}/#/experiments?{CLASSIC_VIEW}"
