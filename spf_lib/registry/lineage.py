"""`spf lineage MODEL_URI`: which data, which code, which run made this model version."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from spf_lib.errors import SpfError
from spf_lib.registry.lineage_keys import KEYS
from spf_lib.registry.metrics import version_metrics
from spf_lib.registry.session import RetryPolicy, mlflow_session, redact_uri, with_retries
from spf_lib.settings import Settings

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    m = _URI.match(uri.strip())
    if not m:
        raise SpfError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def lineage(model_uri: str, *, settings: Settings | None = None, retry: RetryPolicy | None = None) -> dict:
    """Resolve ``model_uri`` and return its lineage, metrics, run and aliases as a plain dict."""
    name, alias, version = parse_model_uri(model_uri)
    with mlflow_session(settings) as s:
        return with_retries(f"lineage {model_uri}", lambda: _lineage_once(model_uri, name, alias, version),
                            target=redact_uri(s.tracking_uri), policy=retry)


def _lineage_once(uri: str, name: str, alias: str | None, version: str | None) -> dict:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "INVALID_PARAMETER_VALUE" in str(e.error_code):
            raise SpfError(f"{uri}: not found in the registry ({str(e).splitlines()[0][:160]})") from e
        raise
    tags = dict(mv.tags)
    metrics = version_metrics(client, mv)
    run_info: dict = {"run_id": mv.run_id}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            run_info.update(experiment_id=run.info.experiment_id, status=run.info.status,
                            run_name=run.info.run_name, metrics=dict(run.data.metrics))
        except MlflowException:
            run_info["status"] = "run not found"
    return {
        "model_uri": uri,
        "name": name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases),
        "source": mv.source,
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "lineage": {k: tags.get(k, "unknown") for k in KEYS},
        "extra_lineage": {k: v for k, v in tags.items() if k not in KEYS and not k.startswith(("metric.", "spf.",
                                                                                                "mlflow."))},
        "metrics": metrics.values,
        "unavailable": metrics.unavailable,
        "run": run_info,
        "promotion": {k: v for k, v in tags.items() if k in ("spf.promoted_at", "spf.gate", "spf.rolled_back_at")},
    }


def format_lineage(info: dict) -> str:
    """Plain text for a terminal: one ``key: value`` per line, lineage first."""
    head = (f"{info['model_uri']} -> {info['name']} version {info['version']}"
            f" (aliases: {', '.join(info['aliases']) or 'none'}; created {info['created']})")
    lines = [head]
    lines += [f"  {k:<17} {v}" for k, v in info["lineage"].items()]
    lines += [f"  {k:<17} {v}" for k, v in sorted(info["extra_lineage"].items())]
    run = info["run"]
    lines.append(f"  {'run':<17} {run.get('run_id')} (experiment {run.get('experiment_id', '?')}, "
                 f"{run.get('status', '?')})")
    for k, v in sorted(info["metrics"].items()):
        shown = f"{v:.6g}" if v is not None else f"unavailable: {info['unavailable'].get(k, 'no value')}"
        lines.append(f"  {'metric ' + k:<17} {shown}")
    for k, v in sorted(info["promotion"].items()):
        lines.append(f"  {k:<17} {v}")
    return "\n".join(lines)
