"""Talking to a Kubeflow Pipelines API server: upload versions, submit runs, schedule, retrain when data changed.

Every function takes a ``kfp.Client`` (see ``connect``) so the same code serves the CLI, notebooks and tests.
Request bodies are the ``kfp_server_api`` v2beta1 models; where ``kfp.Client`` cannot express what we need
(a recurring run that follows the newest pipeline version: a version reference with no version id), we build the
model ourselves and call the generated API with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kfp
import kfp_server_api
from kfp import compiler

from pipelines.versioning import dvc_data_hash, git_head, six_field_cron
from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

TOKEN_ENV = "KF_PIPELINES_TOKEN"
DEFAULT_EXPERIMENT = "spf-portrait"
CHAMPION_ALIAS = "champion"
DATA_HASH_TAG = "data_hash"


class _Client(kfp.Client):
    """kfp's client, except that the health probe it sends on start-up is tried once: kfp retries it five times
    with 5 s sleeps and logs a traceback each time, which turns a wrong token into half a minute of noise."""

    def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:  # noqa: ARG002 - kfp's signature
        return self._healthz_api.healthz_service_get_healthz()


def _short(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _api_message(e: kfp_server_api.ApiException) -> str:
    """The server's own words from an error body (KFP answers JSON with ``error``/``message``), else the reason."""
    body = e.body.decode("utf-8", "replace") if isinstance(e.body, bytes) else (e.body or "")
    try:
        doc = json.loads(body)
        text = (doc.get("message") or doc.get("error")) if isinstance(doc, dict) else None
    except ValueError:
        text = None
    if not text and body and not body.lstrip().startswith("<"):  # an HTML login page says nothing useful
        text = body
    return _short(text or e.reason or "")


def _network_reason(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    for marker in ("timed out", "Name or service not known", "certificate verify failed", "Connection refused"):
        if marker in text:
            return marker
    return type(e).__name__


@contextlib.contextmanager
def server_errors(host: str | None) -> Iterator[None]:
    """Turn whatever the KFP client raises (urllib3 connection errors, ``ApiException`` with a status, kube config
    errors) into ONE ``SpfError`` line naming the server and what to check; nothing else reaches the user."""
    import urllib3

    target = host or "the Kubeflow API (no --host: kube context, else http://localhost)"
    try:
        yield
    except SpfError:
        raise
    except kfp_server_api.ApiException as e:
        status = e.status or 0
        if status in (401, 403):
            raise SpfError(f"{target}: authentication refused (HTTP {status} {e.reason}): check --token / "
                           f"${TOKEN_ENV}, or --namespace in multi-user Kubeflow ({_api_message(e)})") from None
        if status == 0:
            raise SpfError(f"{target}: cannot reach Kubeflow Pipelines ({_api_message(e)})") from None
        raise SpfError(f"{target}: Kubeflow Pipelines answered HTTP {status} {e.reason}: {_api_message(e)}") from None
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
        raise SpfError(f"{target}: cannot reach Kubeflow Pipelines ({_network_reason(e)})") from None
    except Exception as e:  # kube config errors, a proxy answering something that is not the KFP API, ...
        raise SpfError(f"{target}: {type(e).__name__}: {_short(str(e)) or 'no details'}") from None


def connect(
    host: str | None = None,
    *,
    namespace: str | None = None,
    token: str | None = None,
    sa_token_path: str | None = None,
    kube_context: str | None = None,
    verify_ssl: bool | None = None,
) -> kfp.Client:
    """A client with the first credentials that apply: an explicit token (or ``$KF_PIPELINES_TOKEN``, e.g. from
    ``kubectl create token`` or an OIDC login), a projected service-account token file (inside a cluster, Kubeflow
    multi-user), else kfp's default: the current kube context (port-forward through the API server's proxy)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    credentials = None
    if sa_token_path and not token:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        if not Path(sa_token_path).is_file():
            raise SpfError(f"{sa_token_path}: service-account token file not found")
        credentials = ServiceAccountTokenVolumeCredentials(path=sa_token_path)
    kwargs: dict[str, Any] = {"host": host, "existing_token": token, "credentials": credentials,
                              "kube_context": kube_context, "verify_ssl": verify_ssl}
    if namespace:
        kwargs["namespace"] = namespace
    import io
    import warnings

    # kfp warns about backend versions on every start and prints (not logs) "Failed to load kube config." before
    # falling back to http://localhost; our error for an unreachable server names that fallback instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        return _Client(**{k: v for k, v in kwargs.items() if v is not None})


def compile_package(pipeline_func: Any, package_path: str | Path) -> Path:
    """Compile a ``@dsl.pipeline`` to YAML (atomically: a failed compile leaves no half file)."""
    from spf_lib.io import atomic_path

    package_path = Path(package_path)
    with atomic_path(package_path) as tmp:
        tmp_yaml = tmp.with_suffix(".yaml")
        compiler.Compiler().compile(pipeline_func, package_path=str(tmp_yaml))
        tmp_yaml.replace(tmp)
    return package_path


def _check_package(package: str | Path) -> Path:
    path = Path(package)
    if not path.is_file():
        raise SpfError(f"{path}: pipeline package not found (compile it first: spf pipeline compile)")
    if path.suffix not in (".yaml", ".yml", ".json", ".zip", ".gz", ".tgz"):
        raise SpfError(f"{path}: pipeline package must be .yaml/.yml/.json/.zip/.tar.gz, got {path.suffix!r}")
    return path


def _name_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


@dataclass(frozen=True)
class PipelineRef:
    pipeline_id: str
    version_id: str | None
    version_name: str | None


def find_pipeline(client: kfp.Client, name: str) -> str | None:
    return client.get_pipeline_id(name)


def find_version(client: kfp.Client, pipeline_id: str, version_name: str) -> str | None:
    resp = client.list_pipeline_versions(pipeline_id, page_size=2, filter=_name_filter("display_name", version_name))
    versions = resp.pipeline_versions or []
    return versions[0].pipeline_version_id if versions else None


def upload(client: kfp.Client, package: str | Path, name: str, version: str, description: str = "") -> PipelineRef:
    """Create the pipeline if needed, then add ``version``. Idempotent: an existing version of that name is reused
    (a version name embeds the git sha, so the same name means the same code)."""
    package = _check_package(package)
    pipeline_id = find_pipeline(client, name)
    if pipeline_id is None:
        body = kfp_server_api.V2beta1Pipeline(display_name=name, description=description or None)
        pipeline_id = client._pipelines_api.pipeline_service_create_pipeline(pipeline=body).pipeline_id
        log.info("created pipeline %s (%s)", name, pipeline_id)
    else:
        existing = find_version(client, pipeline_id, version)
        if existing:
            log.info("pipeline %s already has version %s", name, version)
            return PipelineRef(pipeline_id, existing, version)
    created = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                             description=description or None)
    return PipelineRef(pipeline_id, created.pipeline_version_id, version)


def resolve(client: kfp.Client, name: str, version: str | None) -> PipelineRef:
    """Pipeline id and version id by names; ``version=None`` means the newest version."""
    pipeline_id = find_pipeline(client, name)
    if pipeline_id is None:
        raise SpfError(f"pipeline {name!r} not found on the server (upload it first: spf pipeline upload)")
    if version is None:
        resp = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        versions = resp.pipeline_versions or []
        if not versions:
            raise SpfError(f"pipeline {name!r} has no versions")
        return PipelineRef(pipeline_id, versions[0].pipeline_version_id, versions[0].display_name)
    version_id = find_version(client, pipeline_id, version)
    if version_id is None:
        raise SpfError(f"pipeline {name!r} has no version {version!r}")
    return PipelineRef(pipeline_id, version_id, version)


def submit(
    client: kfp.Client,
    *,
    params: dict[str, Any] | None = None,
    package: str | Path | None = None,
    pipeline: str | None = None,
    version: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
) -> str:
    """One run, from a local package file or from an uploaded pipeline version (newest when ``version`` is None).
    Returns the run id."""
    if (package is None) == (pipeline is None):
        raise SpfError("submit: give exactly one of --package FILE or --pipeline NAME")
    exp = client.create_experiment(experiment, namespace=namespace)
    params = dict(params or {})
    if package is not None:
        package = _check_package(package)
        name = run_name or f"{package.stem}-run"
        run = client.run_pipeline(exp.experiment_id, name, pipeline_package_path=str(package), params=params,
                                  service_account=service_account)
    else:
        ref = resolve(client, pipeline, version)
        name = run_name or f"{pipeline}-{ref.version_name}"
        run = client.run_pipeline(exp.experiment_id, name, pipeline_id=ref.pipeline_id, version_id=ref.version_id,
                                  params=params, service_account=service_account)
    log.info("submitted run %s (%s)", name, run.run_id)
    return run.run_id


def schedule(
    client: kfp.Client,
    *,
    pipeline: str,
    cron: str,
    job_name: str | None = None,
    params: dict[str, Any] | None = None,
    version: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
    service_account: str | None = None,
    replace: bool = False,
) -> str:
    """A recurring run: six-field cron, one run at a time, no backfill of missed slots. Without ``version`` it
    follows the newest pipeline version (the API's version reference carries only the pipeline id), so uploading a
    new version needs no re-scheduling. Returns the recurring run id."""
    cron6 = six_field_cron(cron)
    pipeline_id = find_pipeline(client, pipeline)
    if pipeline_id is None:
        raise SpfError(f"pipeline {pipeline!r} not found on the server (upload it first: spf pipeline upload)")
    version_id = resolve(client, pipeline, version).version_id if version else None
    exp = client.create_experiment(experiment, namespace=namespace)
    job_name = job_name or f"{pipeline}-schedule"
    existing = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=2,
                                          filter=_name_filter("display_name", job_name)).recurring_runs or []
    if existing and not replace:
        raise SpfError(f"recurring run {job_name!r} already exists ({existing[0].recurring_run_id}); "
                       "pass --replace to swap it")
    for old in existing:
        client.delete_recurring_run(old.recurring_run_id)
    body = kfp_server_api.V2beta1RecurringRun(
        display_name=job_name,
        experiment_id=exp.experiment_id,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=pipeline_id, pipeline_version_id=version_id),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=dict(params or {})),
        trigger=kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=cron6)),
        max_concurrency=1,
        no_catchup=True,
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        service_account=service_account,
    )
    created = client._recurring_run_api.recurring_run_service_create_recurring_run(recurring_run=body)
    log.info("scheduled %s (%s) with cron %r", job_name, created.recurring_run_id, cron6)
    return created.recurring_run_id


@dataclass(frozen=True)
class RetrainDecision:
    submitted: bool
    current_hash: str
    champion_hash: str | None
    run_id: str | None = None
    reason: str = ""


def champion_data_hash(model_name: str, tracking_uri: str | None = None) -> str | None:
    """``data_hash`` tag of the model version that holds the ``champion`` alias; None when there is no champion."""
    import dataclasses

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from spf_lib.registry.session import mlflow_session, redact_uri, with_retries
    from spf_lib.settings import Settings

    settings = Settings.from_env()
    if tracking_uri:
        settings = dataclasses.replace(settings, tracking_uri=tracking_uri, registry_uri=None)

    def lookup() -> str | None:
        client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        try:
            mv = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        return (mv.tags or {}).get(DATA_HASH_TAG)

    # MLflow's own client retries for minutes; the session shortens that and with_retries ends in one line.
    # A first look at an empty sqlite store logs its table creation at INFO: not news for this command.
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(max(level, logging.WARNING))
    with contextlib.ExitStack() as stack:
        stack.callback(mlflow_log.setLevel, level)
        stack.enter_context(mlflow_session(settings))
        try:
            return with_retries("retrain-if-changed: champion lookup", lookup,
                                target=redact_uri(settings.tracking_uri))
        except MlflowException as e:
            raise SpfError(f"{redact_uri(settings.tracking_uri)}: MLflow answered {e.error_code}: "
                           f"{_short(e.message)}") from None


def retrain_if_changed(
    client_factory: Any,
    *,
    dvc_file: str | Path,
    model_name: str,
    tracking_uri: str | None = None,
    params: dict[str, Any] | None = None,
    rev_param: str = "data_rev",
    **submit_kwargs: Any,
) -> RetrainDecision:
    """Submit a run only when ``data.dvc`` no longer matches the data the champion was trained on.

    ``client_factory`` is called only when a run is needed, so a no-op check never touches Kubeflow. The run gets
    ``data_rev`` = the commit holding ``data.dvc`` (immutable, so data prep caches correctly) and, unless given,
    ``data_repo`` = that repository's ``origin`` (by default: this project, ``./data.dvc``); a ``data.dvc`` with
    uncommitted changes is refused, because the cluster could not read that revision."""
    dvc_file = Path(dvc_file)
    current = dvc_data_hash(dvc_file)
    champion = champion_data_hash(model_name, tracking_uri)
    if champion == current:
        return RetrainDecision(False, current, champion, reason="champion was trained on this data")
    from pipelines.versioning import git_state

    repo = dvc_file.resolve().parent
    if git_state(repo).dirty:
        import subprocess

        changed = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", dvc_file.name],
                                 capture_output=True, text=True, check=False).stdout.strip()
        if changed:
            raise SpfError(f"{dvc_file}: has uncommitted changes; commit (and dvc push) before retraining")
    run_params = dict(params or {})
    run_params.setdefault(rev_param, git_head(repo))
    import subprocess

    origin = subprocess.run(["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True, text=True,
                            check=False).stdout.strip()
    if origin and "data_repo" not in run_params:  # the cluster clones the repo that holds data.dvc
        from spf_lib.data.dvc_guard import refuse_credentials_in_url

        refuse_credentials_in_url(origin, f"{repo}: git remote 'origin'")
        run_params["data_repo"] = origin
    reason = "no champion yet" if champion is None else f"data changed ({champion} -> {current})"
    run_id = submit(client_factory(), params=run_params, **submit_kwargs)
    return RetrainDecision(True, current, champion, run_id, reason)
