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


def local_store_path(uri: str) -> Path | None:
    """The file behind a local sqlite tracking URI (``sqlite:///abs`` or ``sqlite:///rel``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def require_store() -> str:
    """The tracking URI to read from; a local store that does not exist is an error, never silently created.

    WHY: MLflow creates an empty sqlite store on first use, so a command run in the wrong folder (or before the
    demo) would answer "model not in the registry" and leave an empty mlflow.db behind.
    """
    from spf_lib.settings import Settings

    uri = Settings.from_env().tracking_uri
    path = local_store_path(uri)
    if path is not None and not path.is_file():
        raise SpfError(f"no MLflow store at {path}: run `make demo` (or `spf demo`) in this folder first, or point "
                       "MLFLOW_TRACKING_URI (or SPF_HOME) at an existing store")
    return uri


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
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="registrations with the same key "
                                                        "make one version (default: hash of adapter, metrics, "
                                                        "lineage, name)")] = None,
) -> None:
    """Register a trained adapter in MLflow's model registry; the new version becomes `challenger`."""
    from spf_lib.registry import register_model

    lin = {**(_load_json(lineage_file, "--lineage-file") if lineage_file else {}), **_kv(lineage)}
    m = _load_json(metrics, "--metrics") if metrics else None
    rv = register_model(adapter, base_model, metrics=m, lineage=lin, model_name=name, eval_dir=eval_dir,
                       idempotency_key=idempotency_key)
    if as_json:
        typer.echo(json.dumps(rv.to_dict()))
    else:
        state = "registered" if rv.created else "already registered (same registration key)"
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

    require_store()
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


def rollback(
    name: Annotated[str, typer.Argument(help="registered model name")],
    to: Annotated[str | None, typer.Option("--to", metavar="VERSION", help="roll back to this earlier champion "
                                           "(default: the one before the current); run again, it changes nothing")
                  ] = None,
    idempotency_key: Annotated[str | None, typer.Option("--idempotency-key", help="a rollback with a key that was "
                                                        "already used changes nothing (safe to retry)")] = None,
) -> None:
    """Put the previous champion back (the demoted version stays registered). Each plain run is one more step back;
    with --to or --idempotency-key a repeated run is a no-op that says so."""
    from spf_lib.registry import rollback as do_rollback

    require_store()
    typer.echo(do_rollback(name, to=to, idempotency_key=idempotency_key).message)


def lineage(
    model_uri: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION")],
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Print which data, code and run made a model version."""
    from spf_lib.registry import format_lineage
    from spf_lib.registry import lineage as do_lineage

    require_store()
    info = do_lineage(model_uri)
    typer.echo(json.dumps(info, indent=2) if as_json else format_lineage(info))


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to serve on")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind (127.0.0.1 = this machine only)")] = "127.0.0.1",
) -> None:
    """Open MLflow's UI on the store the other `spf` commands use; runs until Ctrl-C."""
    import os
    import subprocess
    import sys
    import time

    from spf_lib.settings import Settings, quiet_third_parties

    uri = Settings.from_env().tracking_uri
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the tracking store is a server already: open {uri}")
        return
    require_store()
    if not _port_free(host, port):
        raise SpfError(f"--port {port}: already in use on {host}; pass another --port")
    quiet_third_parties()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log_path = Settings.from_env().home / "mlflow-ui.log"  # the server's own output (access log, migrations)
    log_file = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
    # its own process group: mlflow server forks uvicorn and job consumers, and Ctrl-C must stop all of them
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,  # noqa: S603
                            stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://{host}:{port}"
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM (kill, systemd, a container stop) both stop the server group. Python installs no Ctrl-C
    # handler when it starts with SIGINT ignored (a background job of a non-interactive shell), so set it here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)
    typer.echo(f"MLflow UI on {uri}: {url}   (Ctrl-C stops it; server log {log_path})")
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children the server left behind
        except ProcessLookupError:
            pass
        typer.echo("MLflow UI stopped")
        return
    finally:
        log_file.close()
    err = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    raise SpfError(f"mlflow server exited with code {proc.returncode}: {err[-1] if err else 'no output'} "
                   f"(log: {log_path})")
