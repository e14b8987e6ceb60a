"""`spf pipeline ...`: compile the KFP pipeline, run it locally, and (on a cluster) upload/submit/schedule.

kfp is imported lazily inside each command from the top-level ``pipelines`` package; ``spf_lib`` itself never
imports kfp.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError

app = typer.Typer(no_args_is_help=True, help="Compile, run locally, upload, submit and schedule the KFP pipeline.")


def parse_params(pairs: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` pairs to pipeline parameters (VALUE parsed as JSON when it is valid JSON)."""
    out: dict[str, object] = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise SpfError(f"--param {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        try:
            out[k.strip()] = json.loads(v) if v[:1] in "[{0123456789-tfn\"" else v
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command("compile")
def compile_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the pipeline YAML")] = Path(
        "spf-portrait-pipeline.yaml"),
    version: Annotated[str | None, typer.Option(help="pipeline version (default: package version + git sha)")] = None,
) -> None:
    """Compile the pipeline to a KFP IR YAML file."""
    from pipelines.portrait import compile_pipeline

    from spf_lib.io import atomic_path

    with atomic_path(output) as tmp:
        compile_pipeline(str(tmp.with_suffix(".yaml")), version=version)
        tmp.with_suffix(".yaml").replace(tmp)
    typer.echo(f"wrote {output}")


@app.command("run")
def run_cmd(
    data_repo: Annotated[str, typer.Option(help="git repo (path or URL) holding data.dvc")],
    base_model: Annotated[str, typer.Option(help="local folder, hub id or s3:// prefix")],
    data_rev: Annotated[str, typer.Option(help="git revision of the data repo")] = "HEAD",
    method: Annotated[str, typer.Option(help="lora | spf | celeb-basis | beyond-inserting")] = "spf",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="extra pipeline parameter KEY=VALUE")] = None,
    pipeline_root: Annotated[Path, typer.Option(help="where local task outputs go")] = Path(".spf/pipeline-root"),
) -> None:
    """Run the pipeline on this machine with kfp's local SubprocessRunner."""
    from pipelines.local import run_local

    from spf_lib.methods import METHODS

    if method not in METHODS:
        raise SpfError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    params = {"data_repo": data_repo, "base_model": base_model, "data_rev": data_rev, "method": method,
              **parse_params(param)}
    out = run_local(params, pipeline_root)
    typer.echo(json.dumps(out, indent=2, default=str))
