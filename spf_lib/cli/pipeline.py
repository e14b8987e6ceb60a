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
        if not k.strip():
            raise SpfError(f"--param {kv!r}: expected KEY=VALUE")
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


@app.command("compile")
def compile_cmd(
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the pipeline YAML")] = Path(
        "spf-portrait-pipeline.yaml"),
    version: Annotated[str | None, typer.Option(help="pipeline version (default: package version + git sha)")] = None,
    image: Annotated[str | None, typer.Option(
        "--image", help="component image REPO[:TAG] (GPU steps get TAG-cuda); default: "
        "ghcr.io/spf-portrait/spf:<version>-g<git sha>, see `spf pipeline image`")] = None,
) -> None:
    """Compile the pipeline to a KFP IR YAML file."""
    cpu_image, gpu_image = _compile(output, version, image)
    typer.echo(f"wrote {output}" + (f" (images {cpu_image}, {gpu_image})" if image else ""))


def _compile(output: Path, version: str | None, image: str | None) -> tuple[str | None, str | None]:
    from components._common import image_pair

    cpu_image, gpu_image = image_pair(image) if image else (None, None)  # a bad --image fails before compiling
    from pipelines.portrait import compile_pipeline
    from spf_lib.io import atomic_path

    with atomic_path(output) as tmp:
        compiled = tmp.with_suffix(".yaml")
        compile_pipeline(str(compiled), version=version)
        if image:
            _retarget(compiled, cpu_image, gpu_image)
        compiled.replace(tmp)
    return cpu_image, gpu_image


def _retarget(package: Path, cpu_image: str, gpu_image: str) -> None:
    """Rewrite the executors' images in a compiled package (YAML: the pipeline spec, then the platform spec)."""
    import yaml

    from components._common import retarget_images

    spec, *rest = list(yaml.safe_load_all(package.read_text()))
    if not retarget_images(spec, cpu_image, gpu_image):
        raise SpfError(f"{package}: no executor uses the project image; nothing to retarget")
    package.write_text(yaml.safe_dump_all([spec, *rest], sort_keys=False))


@app.command("image")
def image_cmd(
    image: Annotated[str | None, typer.Option("--image", help="REPO[:TAG] to expand (default: ours)")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="print only the GPU (-cuda) image")] = False,
    cpu: Annotated[bool, typer.Option("--cpu", help="print only the CPU image")] = False,
) -> None:
    """Print the component images a compile would use (for `docker build -t "$(spf pipeline image --cpu)"`)."""
    from components._common import image_pair

    cpu_image, gpu_image = image_pair(image)
    if cpu or gpu:
        typer.echo(gpu_image if gpu else cpu_image)
    else:
        typer.echo(f"{cpu_image}\n{gpu_image}")


@app.command("run")
def run_cmd(
    data_repo: Annotated[str, typer.Option(help="git repo (path or URL) holding data.dvc")],
    base_model: Annotated[str, typer.Option(help="local folder, hub id or s3:// prefix")],
    data_rev: Annotated[str, typer.Option("--rev", "--data-rev", help="git revision of the data repo (the "
                                          "data_rev `spf data add` printed)")] = "HEAD",
    method: Annotated[str, typer.Option(help="lora | spf | celeb-basis | beyond-inserting")] = "spf",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="extra pipeline parameter KEY=VALUE")] = None,
    pipeline_root: Annotated[Path, typer.Option(help="where local task outputs go")] = Path(".spf/pipeline-root"),
) -> None:
    """Run the pipeline on this machine with kfp's local SubprocessRunner."""
    from pipelines.local import run_local
    from spf_lib.methods import METHODS

    if method not in METHODS:
        raise SpfError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    params = _checked({"data_repo": data_repo, "base_model": base_model, "data_rev": data_rev, "method": method,
                       **parse_params(param)})
    out = run_local(params, pipeline_root)
    typer.echo(json.dumps(out, indent=2, default=str))

# ======================================================================================================================
# Kubeflow server commands (upload / submit / schedule / retrain-if-changed). `pipelines.client` (which imports kfp)
# is imported inside each command, never at module level.
# ======================================================================================================================

_A = Annotated

_HostOpt = _A[str | None, typer.Option("--host", envvar="KF_PIPELINES_ENDPOINT",
                                       help="KFP API URL; omit to use the current kube context")]
_NsOpt = _A[str | None, typer.Option("--namespace", help="Kubeflow profile namespace (multi-user)")]
_TokenOpt = _A[str | None, typer.Option("--token", envvar="KF_PIPELINES_TOKEN", show_envvar=True,
                                        help="bearer token (e.g. `kubectl create token`); not echoed")]
_SaTokenOpt = _A[str | None, typer.Option("--sa-token-path", help="projected service-account token file (in-cluster)")]
_CtxOpt = _A[str | None, typer.Option("--kube-context", help="kubeconfig context when --host is omitted")]
_ParamOpt = _A[list[str] | None, typer.Option("--param", "-p",
                                              help="pipeline parameter k=v (v parsed as JSON if it can)")]
_ExpOpt = _A[str, typer.Option("--experiment", help="KFP experiment")]


_DataRepoOpt = _A[str | None, typer.Option("--data-repo", help="git URL of the data repo (data.dvc at its top)")]
_RevOpt = _A[str | None, typer.Option("--rev", "--data-rev", help="its git revision (a commit sha)")]
_BaseOpt = _A[str | None, typer.Option("--base-model", help="hub id, s3:// prefix or a path the pods can read")]
_MethodOpt = _A[str | None, typer.Option("--method", help="lora | spf | celeb-basis | beyond-inserting")]


def _named_params(data_repo, data_rev, base_model, method) -> dict[str, object]:
    """The options `spf pipeline run` has, as pipeline parameters (they override the same key given with -p)."""
    if method is not None:
        from spf_lib.methods import METHODS

        if method not in METHODS:
            raise SpfError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    named = {"data_repo": data_repo, "data_rev": data_rev, "base_model": base_model, "method": method}
    return {k: v for k, v in named.items() if v is not None}


def _checked(params: dict[str, object]) -> dict[str, object]:
    """Refuse a token inside data_repo before it is stored as a run parameter (and later as lineage)."""
    from spf_lib.data.dvc_guard import refuse_credentials_in_url

    if isinstance(params.get("data_repo"), str):
        refuse_credentials_in_url(params["data_repo"], "data_repo")
    return params


def _connect(host, namespace, token, sa_token_path, kube_context):
    from pipelines.client import connect

    return connect(host, namespace=namespace, token=token, sa_token_path=sa_token_path, kube_context=kube_context)


@app.command("upload")
def upload_cmd(
    package: _A[Path | None, typer.Option("--package", help="compiled pipeline YAML (default: compile this "
                                          "checkout now)")] = None,
    image: _A[str | None, typer.Option("--image", help="with no --package: component image REPO[:TAG]")] = None,
    name: _A[str, typer.Option("--name", help="pipeline name on the server")] = "spf-portrait",
    version: _A[str | None, typer.Option("--version",
                                         help="default: <package version>-<git sha>[-dirty-<hash>]")] = None,
    description: _A[str, typer.Option("--description")] = "",
    host: _HostOpt = None, namespace: _NsOpt = None, token: _TokenOpt = None, sa_token_path: _SaTokenOpt = None,
    kube_context: _CtxOpt = None,
) -> None:
    """Upload a compiled pipeline as a new version (creating the pipeline on first upload)."""
    import tempfile

    from pipelines.client import server_errors, upload
    from pipelines.versioning import version_name

    with tempfile.TemporaryDirectory(prefix="spf-upload-") as tmp:
        if package is None:
            package = Path(tmp) / "spf-portrait.yaml"
            _compile(package, None, image)
        elif image:
            raise SpfError("--image: only without --package (the package already names its images)")
        if not package.is_file():
            raise SpfError(f"{package}: pipeline package not found (compile it first: spf pipeline compile)")
        version = version or version_name(package)
        with server_errors(host):
            ref = upload(_connect(host, namespace, token, sa_token_path, kube_context), package, name, version,
                         description)
    typer.echo(json.dumps({"pipeline_id": ref.pipeline_id, "version_id": ref.version_id, "version": version}))


@app.command("submit")
def submit_cmd(
    package: _A[Path | None, typer.Option("--package", help="run this compiled YAML directly")] = None,
    pipeline: _A[str | None, typer.Option("--pipeline", help="or run an uploaded pipeline by name")] = None,
    version: _A[str | None, typer.Option("--version", help="pipeline version (default: newest)")] = None,
    experiment: _ExpOpt = "spf-portrait",
    param: _ParamOpt = None,
    data_repo: _DataRepoOpt = None, data_rev: _RevOpt = None, base_model: _BaseOpt = None, method: _MethodOpt = None,
    run_name: _A[str | None, typer.Option("--run-name")] = None,
    service_account: _A[str | None, typer.Option("--service-account")] = None,
    host: _HostOpt = None, namespace: _NsOpt = None, token: _TokenOpt = None, sa_token_path: _SaTokenOpt = None,
    kube_context: _CtxOpt = None,
) -> None:
    """Start one run on Kubeflow (the same --data-repo/--rev/--base-model/--method as `spf pipeline run`)."""
    from pipelines.client import server_errors, submit

    params = _checked({**parse_params(param), **_named_params(data_repo, data_rev, base_model, method)})
    with server_errors(host):
        run_id = submit(_connect(host, namespace, token, sa_token_path, kube_context), params=params,
                        package=package, pipeline=pipeline, version=version, experiment=experiment,
                        run_name=run_name, namespace=namespace, service_account=service_account)
    typer.echo(json.dumps({"run_id": run_id}))


@app.command("schedule")
def schedule_cmd(
    cron: _A[str, typer.Option("--cron", help="5 or 6 fields (seconds first) or @daily/@hourly/...")],
    pipeline: _A[str, typer.Option("--pipeline", help="uploaded pipeline name")] = "spf-portrait",
    version: _A[str | None, typer.Option("--version", help="pin a version (default: follow the newest)")] = None,
    job_name: _A[str | None, typer.Option("--job-name")] = None,
    experiment: _ExpOpt = "spf-portrait",
    param: _ParamOpt = None,
    replace: _A[bool, typer.Option("--replace", help="replace a recurring run of the same name")] = False,
    service_account: _A[str | None, typer.Option("--service-account")] = None,
    host: _HostOpt = None, namespace: _NsOpt = None, token: _TokenOpt = None, sa_token_path: _SaTokenOpt = None,
    kube_context: _CtxOpt = None,
) -> None:
    """Create a recurring run (max one at a time, no catch-up)."""
    from pipelines.client import schedule, server_errors
    from pipelines.versioning import six_field_cron

    cron6 = six_field_cron(cron)  # fail on a bad field before connecting
    params = _checked(parse_params(param))
    with server_errors(host):
        rid = schedule(_connect(host, namespace, token, sa_token_path, kube_context), pipeline=pipeline,
                       cron=cron6, job_name=job_name, params=params, version=version, experiment=experiment,
                       namespace=namespace, service_account=service_account, replace=replace)
    typer.echo(json.dumps({"recurring_run_id": rid, "cron": cron6}))


@app.command("retrain-if-changed")
def retrain_if_changed_cmd(
    dvc_file: _A[Path, typer.Option("--dvc-file", help="the data's .dvc file")] = Path("data.dvc"),
    model_name: _A[str | None, typer.Option("--model-name", help="registered model (default: $SPF_MODEL_NAME)")] = None,
    package: _A[Path | None, typer.Option("--package", help="run this compiled YAML directly")] = None,
    pipeline: _A[str | None, typer.Option("--pipeline", help="or run an uploaded pipeline by name")] = None,
    version: _A[str | None, typer.Option("--version")] = None,
    experiment: _ExpOpt = "spf-portrait",
    param: _ParamOpt = None,
    host: _HostOpt = None, namespace: _NsOpt = None, token: _TokenOpt = None, sa_token_path: _SaTokenOpt = None,
    kube_context: _CtxOpt = None,
) -> None:
    """Submit a run only if data.dvc differs from the data hash on the current champion model."""
    from pipelines.client import retrain_if_changed, server_errors
    from spf_lib.settings import Settings, quiet_third_parties

    quiet_third_parties()
    settings = Settings.from_env()
    if package is None and pipeline is None:
        pipeline = "spf-portrait"
    with server_errors(host):
        decision = retrain_if_changed(
            lambda: _connect(host, namespace, token, sa_token_path, kube_context),
            dvc_file=dvc_file, model_name=model_name or settings.model_name, tracking_uri=settings.tracking_uri,
            params=parse_params(param), package=package, pipeline=pipeline, version=version, experiment=experiment,
            namespace=namespace,
        )
    typer.echo(json.dumps(decision.__dict__))
