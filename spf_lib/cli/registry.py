"""`spf register | promote | rollback | lineage`: thin wrappers over spf_lib.registry (imported when they run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError


def _kv(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep or not k.strip():
            raise SpfError(f"--lineage {p!r}: expected KEY=VALUE")
        out[k.strip()] = v
    return out


def _load_json(path: Path, flag: str) -> dict:
    from spf_lib.io import read_json_object

    if not path.is_file():
        raise SpfError(f"{flag} {path}: no such file")
    return read_json_object(path, label=f"{flag} {path}")


def register(
    adapter: Annotated[Path, typer.Option("--adapter", help="adapter folder written by `spf train` (adapter/)")],
    base_model: Annotated[str, typer.Option("--base-model", help="local folder, hub id or s3://bucket/prefix")],
    metrics: Annotated[Path | None, typer.Option("--metrics", help="metrics.json from `spf evaluate`")] = None,
    lineage: Annotated[list[str] | None, typer.Option("--lineage", help="KEY=VALUE (repeatable): data_rev, "
                                                      "data_hash, code_rev, kfp_run_id, ...")] = None,
    lineage_file: Annotated[Path | None, typer.Option("--lineage-file", help="JSON object of lineage keys")] = None,
    name: Annotated[str | None, typer.Option("--name", help="registered model name (default SPF_MODEL_NAME)")] = None,
    eval_dir: Annotated[Path | None, typer.Option("--eval-dir", help="evaluate output folder (grid, report)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Register a trained adapter in MLflow's model registry; the new version becomes `challenger`."""
    from spf_lib.registry import register_model

    lin = {**(_load_json(lineage_file, "--lineage-file") if lineage_file else {}), **_kv(lineage)}
    m = _load_json(metrics, "--metrics") if metrics else None
    rv = register_model(adapter, base_model, metrics=m, lineage=lin, model_name=name, eval_dir=eval_dir)
    if as_json:
        typer.echo(json.dumps(rv.to_dict()))
    else:
        state = "registered" if rv.created else "already registered (same kfp_run_id)"
        typer.echo(f"{rv.name} version {rv.version} {state}; aliases: {', '.join(rv.aliases) or 'none'}; "
                   f"run {rv.run_id}")


def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    rules: Annotated[Path | None, typer.Option("--rules", help="YAML/JSON file: {rules: [{metric, better, "
                                               "epsilon, bound}], on_missing: fail|skip}")] = None,
    pollution_max: Annotated[float | None, typer.Option(help="absolute upper bound on pollution")] = None,
    pollution_eps: Annotated[float | None, typer.Option(help="tolerated pollution increase vs champion")] = None,
    clip_eps: Annotated[float | None, typer.Option(help="tolerated CLIP-T decrease vs champion")] = None,
    id_min: Annotated[float | None, typer.Option(help="absolute lower bound on id_sim")] = None,
    on_missing: Annotated[str | None, typer.Option(help="fail | skip: a missing/unavailable metric")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Move `champion` to the challenger if it passes the gate; exit 1 with the failed rule otherwise."""
    from spf_lib.registry import GateRules
    from spf_lib.registry import promote as do_promote
    from spf_lib.registry.promotion import GateFailed

    gate = GateRules.from_file(rules) if rules else GateRules()
    if on_missing is not None:
        gate = GateRules.parse({**gate.model_dump(), "on_missing": on_missing}, source="--on-missing")
    for metric, better, field, value in (("pollution", "lower", "bound", pollution_max),
                                         ("pollution", "lower", "epsilon", pollution_eps),
                                         ("clip_t", "higher", "epsilon", clip_eps),
                                         ("id_sim", "higher", "bound", id_min)):
        if value is not None:
            try:
                gate = gate.with_rule(metric, better=better, **{field: value})
            except ValueError as e:
                raise SpfError(f"--{metric} {field}={value}: {str(e).splitlines()[-1]}") from e
    result = do_promote(name, gate)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    if not result.passed:
        raise GateFailed(result.message)
    if not as_json:
        typer.echo(result.message)


def rollback(name: Annotated[str, typer.Argument(help="registered model name")]) -> None:
    """Put the previous champion back (the demoted version stays registered)."""
    from spf_lib.registry import rollback as do_rollback

    typer.echo(do_rollback(name).message)


def lineage(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Print which data, code and run made a model version."""
    from spf_lib.registry import format_lineage
    from spf_lib.registry import lineage as do_lineage

    info = do_lineage(model_uri)
    typer.echo(json.dumps(info, indent=2) if as_json else format_lineage(info))
