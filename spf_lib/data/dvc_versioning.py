"""Version a folder as `data` of a git+DVC repository with a remote, so that a pipeline can read it at a commit.

Three ways in: ``track_dataset`` (a repository the caller laid out), ``add_data`` (`spf data add`: a folder of
portraits, checked like prepare first) and ``committed_data_rev`` (the project's own data.dvc, for the demo); and
``cache_if_tracked`` after regenerating a tracked folder. The invariant they share: no commit names data that its
remote lacks, and a data.dvc is never left rewritten behind the user's back. Reading is ``spf_lib.data.dvc_io``.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.data.dvc_guard import dvc_silenced, one_line, quiet_dvc, refuse_credentials_in_url, scrubbed
from spf_lib.data.dvc_io import DATA_OUT, data_hash_from_dvcfile
from spf_lib.data.dvc_repo import (
    configured_remote,
    default_repo_dir,
    dvc_repo,
    ensure_git_identity,
    ensure_gitignored,
    ensure_remote,
    git,
    git_dirty,
    toplevel,
)
from spf_lib.errors import SpfError, redact_text


@scrubbed
def track_dataset(repo_dir: str | Path, data_dir_name: str = DATA_OUT, *, remote_url: str,
                  remote_name: str = "storage", endpoint_url: str | None = None,
                  message: str = "data: update", push: bool = True,
                  local_endpoint: bool = False) -> tuple[str, str]:
    """Version ``repo_dir/data`` with DVC and push it; return (git commit sha, data md5).

    The remote is configured and committed before the first data commit, so every data revision in history knows
    its remote (a remote added later, e.g. only in config.local, breaks reading old revisions).
    ``local_endpoint=True`` keeps the S3 endpoint out of git (``.dvc/config.local``): readers then supply it from
    their own configuration (``remote_config`` or ``SPF_DVC_ENDPOINT_URL``).
    """
    from dvc.exceptions import DvcException

    quiet_dvc()
    repo_dir = Path(repo_dir).resolve()
    if data_dir_name != DATA_OUT:
        raise SpfError(f"data_dir_name={data_dir_name!r}: the pipeline reads the output named '{DATA_OUT}'")
    if not (repo_dir / data_dir_name).is_dir():
        raise SpfError(f"{repo_dir / data_dir_name}: not a folder")
    if not (repo_dir / ".git").exists():
        git(repo_dir, "init", "-q")
    ensure_git_identity(repo_dir)
    try:
        with dvc_silenced():
            repo = dvc_repo(repo_dir)
            with repo:
                ensure_remote(repo, remote_name, remote_url, None if local_endpoint else endpoint_url)
                if local_endpoint and endpoint_url:
                    with repo.config.edit("local") as conf:
                        conf["remote"][remote_name] = {**conf["remote"].get(remote_name, {}),
                                                       "endpointurl": endpoint_url}
                git(repo_dir, "add", *[p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore")
                                       if (repo_dir / p).exists()])
                if git_dirty(repo_dir):
                    git(repo_dir, "commit", "-q", "-m", f"dvc: remote {remote_name}")
                repo.add(str(repo_dir / data_dir_name))
                git(repo_dir, "add", f"{data_dir_name}.dvc", *[".gitignore"] * (repo_dir / ".gitignore").exists())
                if git_dirty(repo_dir):
                    git(repo_dir, "commit", "-q", "-m", message)
                if push:
                    repo.push(remote=remote_name)
    except DvcException as e:
        raise SpfError(f"{repo_dir}: dvc failed: {one_line(e)}") from e
    md5, _ = data_hash_from_dvcfile((repo_dir / f"{data_dir_name}.dvc").read_text(), str(repo_dir / "data.dvc"))
    return git(repo_dir, "rev-parse", "HEAD"), md5


# ---- `spf data add`: a folder of portraits -> a data revision the pipeline can run ------------------------------

REMOTE_NAME = "storage"
LOCAL_REMOTE = Path(".spf") / "dvc-remote"  # under the repo root; git-ignored; no server needed


@dataclass(frozen=True)
class AddResult:
    repo: Path  # the git+DVC repository now holding `data` (data.dvc at its top)
    rev: str  # full sha of the commit that holds this data.dvc: the pipeline's data_rev
    data_hash: str  # DVC md5 of `data`
    n_files: int
    committed: bool  # False when the data was already that revision's (nothing to commit)
    remote: str  # where the data was pushed (DVC remote URL)
    data_repo: str  # what to pass as data_repo: the git remote `origin` when there is one, else the repo path


class PrecheckFailed(SpfError):
    """Inputs the prepare stage would reject; ``problems`` holds one line per bad input."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


def _sync_into(folder: Path, target: Path) -> None:
    """Make ``target`` a copy of ``folder`` (dotfiles left out: lineage stamps, editor files), swapped in whole."""
    import shutil

    staging = target.with_name(f".{target.name}.spf-new")
    old = target.with_name(f".{target.name}.spf-old")
    for p in (staging, old):
        if p.exists():
            shutil.rmtree(p)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(".*"), symlinks=False)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)


@scrubbed
def add_data(folder: str | Path, repo_dir: str | Path | None = None, *, remote_url: str | None = None,
             message: str | None = None, push: bool = True, git_push: bool = False, origin: str | None = None,
             check_config: Any = None) -> AddResult:
    """Check ``folder`` like the prepare stage, make it ``data/`` of a git+DVC repo, push it, commit data.dvc.

    Order matters: the checks run before anything is touched; the DVC remote is committed before the first data
    commit (every data revision must know its remote); the data is pushed BEFORE data.dvc is committed, so no
    commit ever names data that its remote lacks. ``remote_url`` (a folder, ``s3://...``) replaces the default
    remote; without one and without a configured remote, a local folder ``.spf/dvc-remote`` in the repo is used
    (enough for `spf pipeline run`; a cluster needs a remote it can reach). Only data.dvc, .gitignore and the DVC
    config are committed, whatever else the working tree holds. ``origin`` (a git URL) becomes the repo's
    ``origin`` when it has none; with it or ``git_push`` the commit is pushed there, where a cluster can read it.
    """
    from dvc.exceptions import DvcException

    from spf_lib.data.precheck import precheck

    quiet_dvc()
    folder = Path(folder).resolve()
    repo_dir = Path(repo_dir).resolve() if repo_dir else default_repo_dir()
    target = repo_dir / DATA_OUT
    if folder != target and (folder == repo_dir or folder in repo_dir.parents):
        raise SpfError(f"{folder}: the data folder must not contain the repository {repo_dir}")
    if origin:
        refuse_credentials_in_url(origin, "--origin")
    checked = precheck(folder, check_config)
    if checked.problems:
        raise PrecheckFailed(f"{folder}: {len(checked.problems)} of {checked.n_inputs} inputs would be rejected by "
                             "prepare; nothing was committed or pushed", checked.problems)

    repo_dir.mkdir(parents=True, exist_ok=True)
    top = toplevel(repo_dir)
    if top is None:
        git(repo_dir, "init", "-q")
    elif top != repo_dir:
        raise SpfError(f"--repo {repo_dir}: inside the git repository {top}; pass its top level or another folder")
    ensure_git_identity(repo_dir)
    try:
        with dvc_silenced():
            repo = dvc_repo(repo_dir)
            with repo:
                configured = configured_remote(repo)
                if remote_url or configured is None:
                    from dvc.config_schema import RelPath

                    # RelPath: DVC stores it relative to .dvc/, so the committed config works in any clone
                    url = remote_url or RelPath(str(repo_dir / LOCAL_REMOTE))
                    name = configured[0] if configured else REMOTE_NAME
                    ensure_remote(repo, name, url, None)
                    if not remote_url:
                        ensure_gitignored(repo_dir, f"/{LOCAL_REMOTE.parts[0]}/")
                    configured = configured_remote(repo)
                name, url = configured
                setup = [p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore")
                         if (repo_dir / p).exists()]
                git(repo_dir, "add", *setup)
                if git(repo_dir, "diff", "--cached", "--name-only", "--", *setup):
                    git(repo_dir, "commit", "-q", "-m", f"dvc: remote {name}", "--", *setup)
                if folder != target:
                    _sync_into(folder, target)
                repo.add(str(target))
                if push:
                    try:
                        repo.push(remote=name)
                    except DvcException as e:
                        raise SpfError(f"dvc push to remote {name!r} ({redact_text(str(url))}) failed: "
                                       f"{one_line(e)}; data.dvc is updated but NOT committed (fix the remote and "
                                       "run again)") from e
    except DvcException as e:
        raise SpfError(f"{repo_dir}: dvc failed: {one_line(e)}") from e
    md5, nfiles = data_hash_from_dvcfile((repo_dir / "data.dvc").read_text(), str(repo_dir / "data.dvc"))
    paths = ["data.dvc", ".gitignore"]
    git(repo_dir, "add", *paths)
    committed = bool(git(repo_dir, "diff", "--cached", "--name-only", "--", *paths))
    if committed:
        git(repo_dir, "commit", "-q", "-m", message or f"data: {folder.name} ({nfiles} files, dvc md5 {md5})",
            "--", *paths)
    rev = git(repo_dir, "rev-parse", "HEAD")
    current = subprocess.run(["git", "-C", str(repo_dir), "remote", "get-url", "origin"], capture_output=True,
                             text=True, check=False).stdout.strip()
    if origin and not current:
        git(repo_dir, "remote", "add", "origin", origin)
        current = origin
    elif origin and origin != current:
        raise SpfError(f"--origin {origin}: the repo's origin is already {current} (data committed as {rev[:12]}, "
                       "not pushed to git)")
    if origin or git_push:
        if not current:
            raise SpfError(f"{repo_dir}: no git remote 'origin' to push to (give --origin URL)")
        git(repo_dir, "push", "-q", "origin", "HEAD")
    return AddResult(repo=repo_dir, rev=rev, data_hash=md5, n_files=int(nfiles or 0), committed=committed,
                     remote=redact_text(str(url)), data_repo=redact_text(current) or str(repo_dir))


# ---- the project's own data.dvc (the demo's data repository) -----------------------------------------------------

@scrubbed
def committed_data_rev(repo_dir: str | Path, regenerate: Any = None) -> tuple[str, str] | None:
    """(HEAD sha, md5) once the default DVC remote holds the data that HEAD's ``data.dvc`` names; None when
    ``repo_dir`` is not the top of a git checkout with a committed ``data.dvc`` (the caller then makes its own repo).

    The pipeline reads data at a commit, never from the working tree, so nothing needs committing by the user: on a
    fresh clone ``data/`` is missing and the local remote empty; the data comes from the remote when it has it
    (``dvc pull``), else from ``regenerate(data_dir)`` (a deterministic generator, e.g. ``spf data synth``), which
    must reproduce ``data.dvc`` exactly, and is then pushed. A ``data.dvc`` that differs from HEAD's (uncommitted)
    is refused: the run would read other data than the user sees.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    quiet_dvc()
    repo_dir = Path(repo_dir).resolve()
    dvcfile = repo_dir / "data.dvc"
    if toplevel(repo_dir) != repo_dir or not (repo_dir / ".dvc").is_dir():
        return None
    at_head = subprocess.run(["git", "-C", str(repo_dir), "cat-file", "-e", "HEAD:data.dvc"], capture_output=True,
                             check=False)
    if at_head.returncode != 0:
        return None
    if subprocess.run(["git", "-C", str(repo_dir), "diff", "--quiet", "HEAD", "--", "data.dvc"],
                      check=False).returncode != 0:
        raise SpfError(f"{dvcfile}: has uncommitted changes; the pipeline reads data at a commit: commit it "
                       "(spf data add does) or restore it (git checkout data.dvc)")
    before = dvcfile.read_bytes()
    md5, _ = data_hash_from_dvcfile(before.decode(), str(dvcfile))
    try:
        # ERROR: a fresh clone's pull warns about the (expected) empty remote before we regenerate
        with dvc_silenced(logging.ERROR), Repo(str(repo_dir)) as repo:
            data = repo_dir / DATA_OUT

            def differs() -> bool:  # workspace vs data.dvc; a cache without the objects is not a difference
                (stage,) = repo.stage.collect(str(dvcfile))
                return any(out.workspace_status() for out in stage.outs)

            if differs() and not data.exists():
                import shutil

                try:
                    repo.pull(targets=[str(dvcfile)])
                except DvcException:
                    if regenerate is None:
                        raise
                if differs() and regenerate is not None:
                    shutil.rmtree(data, ignore_errors=True)  # what a failed pull left; there was no data/ before
                    regenerate(data)
            if differs():
                raise SpfError(f"{data}: does not match {dvcfile} (dvc md5 {md5}); restore it (dvc pull / "
                               "spf data synth) or version the new data (spf data add)")
            repo.commit(str(dvcfile), force=True)  # workspace -> cache (data.dvc keeps its bytes: same hash)
            repo.push(targets=[str(dvcfile)])
    except DvcException as e:
        raise SpfError(f"{repo_dir}: dvc failed: {one_line(e)}") from e
    if dvcfile.read_bytes() != before:  # cannot happen when status was clean; never leave data.dvc rewritten
        dvcfile.write_bytes(before)
        raise SpfError(f"{dvcfile}: dvc commit changed it; restored (data/ differs from data.dvc)")
    return git(repo_dir, "rev-parse", "HEAD"), md5


@scrubbed
def cache_if_tracked(data_dir: str | Path) -> str | None:
    """After regenerating ``data_dir``: when a ``.dvc`` file beside it tracks it and the new files hash exactly
    to what it records, store them in the DVC cache (so ``dvc status`` is clean and ``dvc push`` has them) without
    touching the ``.dvc`` file. Returns its md5; None when nothing tracks the folder. A mismatch is an error naming
    both: regenerated data that no longer matches its record must be looked at, not silently re-versioned."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    quiet_dvc()
    data_dir = Path(data_dir).resolve()
    dvcfile = data_dir.with_name(data_dir.name + ".dvc")
    if not dvcfile.is_file() or not (data_dir.parent / ".dvc").is_dir():
        return None
    before = dvcfile.read_bytes()
    md5, _ = data_hash_from_dvcfile(before.decode(), str(dvcfile)) if data_dir.name == DATA_OUT else (None, None)
    try:
        with dvc_silenced(logging.ERROR), Repo(str(data_dir.parent)) as repo:
            (stage,) = repo.stage.collect(str(dvcfile))
            if any(out.workspace_status() for out in stage.outs):
                raise SpfError(f"{data_dir}: regenerated, but it does not match {dvcfile.name} ({md5}); if the "
                               f"generator changed on purpose, version the new set: dvc add {data_dir.name}")
            repo.commit(str(dvcfile), force=True)
    except DvcException as e:
        raise SpfError(f"{data_dir.parent}: dvc failed: {one_line(e)}") from e
    if dvcfile.read_bytes() != before:
        dvcfile.write_bytes(before)
        raise SpfError(f"{dvcfile}: dvc commit changed it; restored")
    return md5
