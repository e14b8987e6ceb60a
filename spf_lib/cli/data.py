"""`spf data ...` subcommands: synth (demo world), prepare (faces + captions + QA), pull (DVC at a revision)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spf_lib.errors import SpfError

app = typer.Typer(no_args_is_help=True, help="data commands")


@app.command("prepare")
def prepare(
    input_dir: Annotated[Path, typer.Option("--input", help="folder of images with captions")],
    output_dir: Annotated[Path, typer.Option("--output", help="prepare output folder (replaced atomically)")],
    config: Annotated[Path | None, typer.Option("--config", help="PrepareConfig fields as YAML or JSON")] = None,
    target_phrase: Annotated[str | None, typer.Option("--target-phrase", help="caption phrase being taught")] = None,
    size: Annotated[int | None, typer.Option("--size", help="aligned crop side in pixels (default 512)")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="processes (0 = all cores)")] = None,
) -> None:
    """Detect, align and crop faces, check captions, validate the manifest with Great Expectations."""
    from spf_lib.data.config import PrepareConfig
    from spf_lib.settings import quiet_third_parties

    quiet_third_parties()
    data = PrepareConfig.from_file(config).to_dict() if config else {}
    overrides = {"target_phrase": target_phrase, "size": size, "workers": workers}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = PrepareConfig.from_dict(data, source=str(config) if config else "command line")

    from spf_lib.data.prepare import prepare_dataset

    r = prepare_dataset(input_dir, output_dir, cfg)
    reasons = ", ".join(f"{k}={v}" for k, v in r.rejected_by_reason.items()) or "none"
    typer.echo(f"prepared {r.n_input} inputs: {r.n_kept} kept, {r.n_rejected} rejected ({reasons}); "
               f"QA {'passed' if r.qa_passed else 'FAILED'}")
    typer.echo(f"manifest: {r.manifest_path}")
    typer.echo(f"report:   {r.report_path}")


@app.command("pull")
def pull(
    repo: Annotated[str, typer.Option("--repo", help="git URL or path of the DVC-tracked data repo")],
    rev: Annotated[str, typer.Option("--rev", help="git revision (commit, tag, branch)")],
    output_dir: Annotated[Path, typer.Option("--output", help="where the `data` folder's content goes")],
    remote: Annotated[str | None, typer.Option("--remote", help="DVC remote name (default: the repo's)")] = None,
) -> None:
    """Fetch the DVC-tracked `data` folder at a git revision (endpoint/credentials from env or DVC config)."""
    from spf_lib.data.dvc_io import pull_data
    from spf_lib.settings import quiet_third_parties

    quiet_third_parties()
    ref = pull_data(repo, rev, output_dir, remote=remote)
    typer.echo(f"pulled data at rev {ref.rev} (dvc md5 {ref.data_hash}) into {ref.path}")


@app.command("synth")
def synth(
    output_dir: Annotated[Path, typer.Option("--output", help="folder for images/ and captions.jsonl (default: "
                                             "data, the folder data.dvc tracks)")] = Path("data"),
    n: Annotated[int | None, typer.Option("--n", help="number of images (default: the demo's)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="same seed -> byte-identical files")] = None,
) -> None:
    """Generate the demo's portrait set (the small world's fine-tuning set), byte-identical for the same n/seed.

    With the defaults it is exactly what the top-level data.dvc tracks: `spf data synth && dvc status` is clean.
    """
    from spf_lib.demo import DEMO_DATA_SEED, DEMO_IMAGES, synth_demo_data

    n = DEMO_IMAGES if n is None else n
    if n < 1:
        raise SpfError(f"--n {n}: must be at least 1")
    path = synth_demo_data(output_dir, n=n, seed=DEMO_DATA_SEED if seed is None else seed)
    typer.echo(f"wrote {n} synthetic portraits to {path}")
    from spf_lib.data.dvc_versioning import cache_if_tracked

    try:
        md5 = cache_if_tracked(path)  # data/ beside data.dvc: same bytes -> DVC cache; `dvc status` is clean
    except SpfError as e:  # written as asked, but not what the .dvc file records: say so, it is not a failure
        typer.echo(f"note: {e}", err=True)
        return
    if md5:
        typer.echo(f"{path}: matches {path.name}.dvc (dvc md5 {md5}); stored in the DVC cache")


@app.command("add")
def add(
    folder: Annotated[Path, typer.Argument(help="folder of portraits with captions (captions.jsonl/.csv/.txt)")],
    repo: Annotated[Path | None, typer.Option("--repo", help="git repo to hold it as data/ (default: the one "
                                              "around the current directory, else a new one here)")] = None,
    remote: Annotated[str | None, typer.Option("--remote", help="DVC remote URL (folder, s3://...); default: the "
                                               "repo's, else .spf/dvc-remote in the repo")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="commit message")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="PrepareConfig (caption rules) as YAML/JSON")] = None,
    git_push: Annotated[bool, typer.Option("--git-push", help="also git push the commit to origin "
                                           "(a cluster reads the revision from there)")] = False,
    origin: Annotated[str | None, typer.Option("--origin", help="git URL to set as origin (if none) and push "
                                               "to")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the data_rev (for DATA_REV=$(...))")] = False,
) -> None:
    """Check a folder like `prepare` does, version it with DVC as data/, push it, commit, print the data_rev."""
    from spf_lib.data.config import PrepareConfig
    from spf_lib.data.dvc_versioning import PrecheckFailed, add_data
    from spf_lib.settings import quiet_third_parties

    quiet_third_parties()
    cfg = PrepareConfig.from_file(config) if config else None
    try:
        r = add_data(folder, repo, remote_url=remote, message=message, git_push=git_push, origin=origin,
                     check_config=cfg)
    except PrecheckFailed as e:
        for line in e.problems:
            typer.echo(f"  {line}", err=True)
        raise
    if quiet:
        typer.echo(r.rev)
        return
    state = "committed" if r.committed else "unchanged (already this revision)"
    typer.echo(f"data: {r.n_files} files, dvc md5 {r.data_hash}, pushed to {r.remote}; {state}")
    typer.echo(f"data_rev={r.rev}")
    typer.echo(f"next: spf pipeline run --data-repo {r.data_repo} --rev {r.rev} --base-model MODEL")
