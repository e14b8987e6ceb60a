"""Register a trained adapter as a new MLflow model version with full lineage; new versions become `challenger`.

LoRA-format adapters use MLflow's own ``mlflow.diffusers`` flavor (adapter safetensors + base-model reference; its
pyfunc loads base + adapter and returns PNG bytes). Adapters that need our loader — the identity methods', and SPF's
with its learned target-token rows, which that pyfunc would not load — are logged as a models-from-code pyfunc (no
pickle) that calls ``spf_lib.methods.load_adapter`` on the base pipeline.

The operation is idempotent on a content key that every call has, with or without a ``kfp_run_id``: the hash of
the adapter's files, the metrics, the lineage and the model name (or an explicit ``idempotency_key``). It is stored
as the version tag ``spf.registration_key`` in the same request that creates the version, so a retry after a lost
reply (KFP retrying a step, an operator re-running the command) finds that version instead of creating another.
The MLflow run it logs into is found by the same key, and every run we open is ended, FINISHED or FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from spf_lib.errors import SpfError
from spf_lib.io import sha256_json, sha256_tree
from spf_lib.registry import lineage_keys as lk
from spf_lib.registry.gate import CHALLENGER
from spf_lib.registry.metrics import EVAL_PREFIX, Metrics, eval_set_lineage, parse_metrics
from spf_lib.registry.scrub import looks_secret, scrub
from spf_lib.registry.session import (
    RetryPolicy,
    active_experiment,
    end_pipeline_run,
    mlflow_session,
    redact_uri,
    resolve_experiment_id,
    with_retries,
)
from spf_lib.settings import Settings

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...] = ()
    created: bool = True  # False when an earlier attempt with the same registration key had already registered it
    seconds: float = field(default=0.0, compare=False)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "aliases": list(self.aliases),
                "created": self.created, "model_uri": self.model_uri}


def register_model(
    adapter_dir: str | Path,
    base_model: str,
    *,
    metrics: dict | None,
    lineage: dict,
    model_name: str | None = None,
    eval_dir: str | Path | None = None,
    run_id: str | None = None,
    settings: Settings | None = None,
    retry: RetryPolicy | None = None,
    idempotency_key: str | None = None,
    gate_metrics: tuple[str, ...] | list[str] = (),
) -> RegisteredVersion:
    """Log ``adapter_dir`` (on ``base_model``) with lineage + metrics, register it and give it ``challenger``.

    The version's tags are the lineage plus ``metric.<name>`` for what a promotion gate reads (the default rules',
    ``gate_metrics`` and the card's headline metrics); every metric is a metric of the linked run, where the gate
    finds any other one (``metrics.version_metrics``).
    """
    from spf_lib.methods import read_adapter_info

    t0 = time.perf_counter()
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise SpfError(f"--adapter {adapter_dir}: not a folder")
    info = read_adapter_info(adapter_dir)
    # adapter_info.json travels with the model artifacts unchanged; its keys may say "token" (placeholder tokens)
    if leaked := [k for k, v in info.items() if looks_secret(str(v))]:
        raise SpfError(f"{adapter_dir}/adapter_info.json: {', '.join(leaked)} look like credentials; remove them")
    eval_dir = Path(eval_dir) if eval_dir else None
    if eval_dir is not None and not eval_dir.is_dir():
        raise SpfError(f"eval_dir {eval_dir}: not a folder")
    if metrics is None and eval_dir is not None and (eval_dir / "metrics.json").is_file():
        metrics = _read_json(eval_dir / "metrics.json")
    parsed = parse_metrics(metrics or {}, source="metrics")
    adapter_hash = sha256_tree(adapter_dir)
    extra_tags = _check_metrics(metrics or {}, parsed, adapter_dir, adapter_hash)
    lineage = {**eval_set_lineage(metrics or {}), **(lineage or {})}
    settings = settings or Settings.from_env()
    name = _check_name(model_name or settings.model_name)
    base_ref = _base_reference(base_model)
    tags = lk.complete(lineage, base_model=base_ref, method=str(info.get("method", "unknown")))
    if idempotency_key is not None and (not idempotency_key.strip() or len(idempotency_key) > 200
                                        or "'" in idempotency_key):
        raise SpfError(f"--idempotency-key {idempotency_key!r}: give 1-200 characters without quotes")
    key = idempotency_key or sha256_json({"name": name, "adapter": adapter_hash, "tags": tags,
                                          "metrics": parsed.as_tags(), "format": str(info.get("format", ""))})
    extra_tags = {**extra_tags, KEY_TAG: key, ADAPTER_HASH_TAG: adapter_hash}
    with mlflow_session(settings) as s:
        target = redact_uri(s.tracking_uri)
        rv = with_retries(
            f"register {name}",
            lambda: _register_once(adapter_dir, info, base_ref, parsed, tags, name, eval_dir, run_id, s,
                                   key=key, extra_tags=extra_tags, gate_metrics=tuple(gate_metrics)),
            target=target, policy=retry,
        )
    rv = RegisteredVersion(rv.name, rv.version, rv.run_id, rv.aliases, rv.created, time.perf_counter() - t0)
    log.info("registered %s version %s (run %s) in %.1f s", name, rv.version, rv.run_id, rv.seconds)
    return rv


def _register_once(adapter_dir: Path, info: dict, base_ref: str, metrics: Metrics, tags: dict[str, str],
                   name: str, eval_dir: Path | None, run_id: str | None, settings: Settings, *, key: str,
                   extra_tags: dict[str, str], gate_metrics: tuple[str, ...] = ()) -> RegisteredVersion:
    import mlflow

    client = mlflow.MlflowClient()
    kfp_run_id = tags.get("kfp_run_id", lk.UNKNOWN)
    if existing := find_existing_version(client, name, key, kfp_run_id):
        aliases = tuple(existing.aliases)
        if not aliases and not _was_promoted(existing):  # an earlier attempt died before the alias: finish it
            client.set_registered_model_alias(name, CHALLENGER, existing.version)
            aliases = (CHALLENGER,)
        _end_owned_run(client, existing.tags.get("spf.run_id") or existing.run_id, "FINISHED")
        log.info("%s: already registered as version %s (same registration key); not creating another",
                 name, existing.version)
        return RegisteredVersion(name, str(existing.version), existing.run_id or "", aliases, created=False)

    exp_id = resolve_experiment_id(settings)
    run_id, owned = _open_run(client, exp_id, run_id, kfp_run_id, key)
    try:
        version_tags = {**tags, **metrics.subset(tagged_metrics(gate_metrics)).as_tags(), **extra_tags,
                        "spf.adapter_format": str(info.get("format", "")), "spf.run_id": run_id}
        _log_run_data(client, run_id, tags, metrics, info)
        from spf_lib.registry.card import log_model_card

        description = log_model_card(client, run_id, name=name, tags=tags, metrics=metrics, eval_dir=eval_dir)
        with active_experiment(client.get_run(run_id).info.experiment_id):  # an injected run may live elsewhere
            model_uri = _log_adapter_model(adapter_dir, info, base_ref, run_id, logged_model_name(tags))
        mv = mlflow.register_model(model_uri, name, tags=version_tags, await_registration_for=60)
        mv = _one_version(client, name, key, mv)
        client.update_model_version(name, mv.version, description=description)
        client.set_tag(run_id, "mlflow.note.content", description)  # the run page's Description
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        if owned:  # best effort: the retry reuses (and finishes) this run; if the server is gone it will
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
        raise
    branch = _pipeline_branch(client, run_id)
    if branch is not None:  # the pipeline's run for this method: registering is its last step
        end_pipeline_run(branch)
    elif owned:
        client.set_terminated(run_id, "FINISHED")
    return RegisteredVersion(name, str(mv.version), run_id, (CHALLENGER,))


def tagged_metrics(gate_metrics: tuple[str, ...] = ()) -> set[str]:
    """Metric names kept as version tags: what the default gate and ``gate_metrics`` read, and the headline."""
    from spf_lib.registry.card import HEADLINE
    from spf_lib.registry.gate import default_rules

    return {r.metric for r in default_rules()} | set(gate_metrics) | set(HEADLINE)


def logged_model_name(tags: dict[str, str]) -> str:
    """``<method>-data-<rev[:8]>``: what the LoggedModel is, readable in MLflow's model list (no / : . % quotes)."""
    import re

    method = re.sub(r"[^A-Za-z0-9_-]+", "-", tags.get("method", "adapter")) or "adapter"
    rev = tags.get("data_rev", lk.UNKNOWN)
    rev = re.sub(r"[^A-Za-z0-9_-]+", "-", rev)[:8] if lk.is_real(rev) else ""
    return f"{method}-data-{rev}" if rev else f"{method}-adapter"


def _pipeline_branch(client, run_id: str):
    """The ``PipelineRun`` of ``run_id`` when it is a branch of a pipeline run (``session.pipeline_run``)."""
    from spf_lib.registry.session import BRANCH_TAG, PARENT_TAG, PIPELINE_BRANCH, PipelineRun

    run = client.get_run(run_id)
    t = run.data.tags
    if t.get(BRANCH_TAG) in (None, PIPELINE_BRANCH) or PARENT_TAG not in t:
        return None
    return PipelineRun(run_id, run.info.experiment_id, t.get("kfp_run_id", ""), t[BRANCH_TAG], t[PARENT_TAG],
                       client)


KEY_TAG = "spf.registration_key"
ADAPTER_HASH_TAG = "spf.adapter_hash"
METRICS_ADAPTER_HASH_TAG = "spf.metrics_adapter_hash"


def _one_version(client, name: str, key: str, mv):
    """Keep the oldest version of this registration key. A duplicate exists only if a create request was sent twice
    below us (an HTTP layer that retries POST after a lost reply); it is ours and has no alias yet: delete it."""
    found = sorted(client.search_model_versions(f"name = '{_q(name)}' and tags.`{KEY_TAG}` = '{_q(key)}'"),
                   key=lambda v: int(v.version))
    if len(found) <= 1:
        return mv
    for dup in found[1:]:
        log.warning("%s: version %s duplicates version %s (same registration key); deleting it", name,
                    dup.version, found[0].version)
        client.delete_model_version(name, dup.version)
    return found[0]


def _was_promoted(version) -> bool:
    """A version that was champion once and lost the alias (rollback) must not become challenger again."""
    return "spf.promoted_at" in (version.tags or {})


def _end_owned_run(client, run_id: str | None, status: str) -> None:
    """End a register run an earlier attempt left RUNNING (runs injected by a platform are not ours to end)."""
    if not run_id:
        return
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return
    if run.info.status == "RUNNING" and run.data.tags.get("spf.stage") == "register":
        client.set_terminated(run_id, status)


def _check_metrics(raw: dict, parsed: Metrics, adapter_dir: Path, adapter_hash: str) -> dict[str, str]:
    """Gate metrics must be plain numbers in their possible range, and metrics that name the adapter they were
    computed for must name this one. Returns the version tag recording that adapter."""
    from spf_lib.registry.gate import METRIC_RANGES, out_of_range

    for k in METRIC_RANGES:
        if isinstance(raw.get(k), (list, dict)):
            raise SpfError(f"metrics: {k!r} = {raw[k]!r} is not a number or null")
    for k, v in parsed.values.items():
        if v is not None and (bad := out_of_range(k, v)):
            raise SpfError(f"metrics: {bad}")
    evaluated = raw.get("adapter") if isinstance(raw.get("adapter"), dict) else {}
    said = evaluated.get("hash")
    if said is None:
        return {}
    if said != adapter_hash:
        raise SpfError(f"metrics were computed for adapter {str(said)[:12]}… ({evaluated.get('dir', '?')}), not for "
                       f"{adapter_dir} ({adapter_hash[:12]}…); evaluate this adapter or pass its own metrics")
    return {METRICS_ADAPTER_HASH_TAG: str(said)}


def find_existing_version(client, name: str, key: str, kfp_run_id: str = lk.UNKNOWN):
    """The version an earlier attempt with the same registration key made (or, for versions registered before the
    key existed, the same real kfp_run_id), or None."""
    from mlflow.exceptions import MlflowException

    filters = [f"name = '{_q(name)}' and tags.`{KEY_TAG}` = '{_q(key)}'"]
    if lk.is_real(kfp_run_id):
        filters.append(f"name = '{_q(name)}' and tags.kfp_run_id = '{_q(kfp_run_id)}'")
    for filt in filters:
        try:
            found = client.search_model_versions(filt)
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
                return None
            raise
        if found:
            first = min(found, key=lambda v: int(v.version))
            return client.get_model_version(name, first.version)  # search results may omit aliases
    return None


def _open_run(client, exp_id: str, run_id: str | None, kfp_run_id: str, key: str) -> tuple[str, bool]:
    """(run id, whether we own its lifecycle). An injected run (argument or MLFLOW_RUN_ID) is the platform's."""
    injected = run_id or os.environ.get("MLFLOW_RUN_ID")
    if injected:
        client.get_run(injected)  # fail early and clearly if it does not exist
        return injected, False
    # a retry of the same registration reuses the run the first attempt created
    runs = client.search_runs([exp_id], f"tags.`{KEY_TAG}` = '{_q(key)}' and tags.`spf.stage` = 'register'",
                              max_results=1)
    if runs:
        return runs[0].info.run_id, True
    run = client.create_run(exp_id, run_name=f"register-{kfp_run_id}" if lk.is_real(kfp_run_id) else None,
                            tags={"spf.stage": "register", "kfp_run_id": kfp_run_id, KEY_TAG: key})
    runs = client.search_runs([exp_id], f"tags.`{KEY_TAG}` = '{_q(key)}' and tags.`spf.stage` = 'register'",
                              max_results=20)
    oldest = min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)) if runs else run
    for dup in runs:  # a create sent twice below us: keep one run, delete the copies
        if dup.info.run_id != oldest.info.run_id:
            client.delete_run(dup.info.run_id)
    return oldest.info.run_id, True


def _log_run_data(client, run_id: str, tags: dict[str, str], metrics: Metrics, info: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    run = client.get_run(run_id)
    existing = run.data.params
    params = {"adapter_format": str(info.get("format", "")), "method": tags["method"],
              "base_model": tags["base_model"], "config_hash": tags["config_hash"]}
    params, _ = scrub(params)
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.values.items()
                 if v is not None and f"{EVAL_PREFIX}{k}" not in run.data.metrics],  # the evaluation's are there
        params=[Param(k, v) for k, v in params.items() if k not in existing],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


def _log_adapter_model(adapter_dir: Path, info: dict, base_ref: str, run_id: str, name: str = MODEL_ARTIFACT) -> str:
    from spf_lib.registry import flavors

    # mlflow.diffusers' pyfunc loads only the LoRA: SPF's target-token rows need our loader (docs/method.md)
    if info.get("format") == "lora" and not info.get("target_tokens"):
        return flavors.log_lora(adapter_dir, base_ref, run_id, name)
    return flavors.log_identity(adapter_dir, base_ref, run_id, name)


def _base_reference(base_model: str) -> str:
    """A local folder becomes absolute (so the model loads from any cwd); hub ids and s3:// stay as given."""
    if not base_model or not base_model.strip():
        raise SpfError("--base-model: empty; give a local folder, a hub id or s3://bucket/prefix")
    if looks_secret(base_model):  # it would be written verbatim into the MLmodel file
        raise SpfError("--base-model: the reference contains credentials; pass them through the environment")
    if base_model.startswith("s3://"):
        return base_model
    from spf_lib.models.loading import resolve_model_ref

    return resolve_model_ref(base_model)


def _check_name(name: str) -> str:
    if not name or not name.strip() or any(c in name for c in "/@'\"") or name != name.strip():
        raise SpfError(f"model name {name!r}: must be non-empty without / @ quotes or surrounding spaces")
    return name


def _read_json(path: Path) -> dict:
    from spf_lib.io import read_json_object

    return read_json_object(path, expect="a JSON object of metric name -> number")


def _q(text: str) -> str:
    return text.replace("'", "\\'")
