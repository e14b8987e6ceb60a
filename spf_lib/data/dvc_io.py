"""DVC I/O: read the `data` folder at a git revision, and version a folder as `data` with a remote.

Endpoints and credentials never appear in code: an S3 endpoint comes from the repo's DVC config, from
``remote_config`` passed by the caller (who reads it from configuration) or from ``SPF_DVC_ENDPOINT_URL``; keys come
from the standard AWS_* environment variables or ``.dvc/config.local``, read by DVC/boto itself.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError, install_log_redaction, redact_text

log = logging.getLogger(__name__)

DATA_OUT = "data"
DATA_REF_FILE = ".spf_data_ref.json"  # beside the pulled files; prepare reads it into its lineage


@dataclass(frozen=True)
class DataRef:
    rev: str  # full git commit sha the revision resolved to
    data_hash: str  # DVC md5 of the `data` output (from data.dvc at that rev), e.g. "0f3e...dir"
    path: Path  # local folder holding the content of `data`


def _quiet_dvc() -> None:
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _rebind_dvc_console() -> None:
    """``import dvc`` binds DVC's console handlers to the sys.stdout / sys.stderr of that moment. A process that
    swaps its streams later (pytest's capture, a notebook, a KFP launcher) leaves them writing to a closed file, and
    DVC turns that logging error into a LoggingException that replaces the real error. Point them at today's
    streams before each call into DVC."""
    import sys

    for name in ("dvc", "dvc_objects", "dvc_data"):
        for h in logging.getLogger(name).handlers:
            if type(h).__name__ == "LoggerHandler" and isinstance(h, logging.StreamHandler):
                want = sys.stderr if h.level >= logging.WARNING else sys.stdout
                if h.stream is not want:
                    with h.lock:  # not setStream(): it flushes the old stream, which may be the closed one
                        h.stream = want


def _scrubbed(fn):
    """Nothing that leaves the DVC layer carries a credential. A DVC remote URL (``.dvc/config``, ``remote_config``,
    ``$SPF_DVC_REMOTE_URL``) or a git remote may hold ``user:password@``, and DVC, fsspec, aiohttp and git put the
    URL into their exceptions and log lines (fsspec logs every request URL at DEBUG). So: log records are redacted
    at creation (``install_log_redaction``); an SpfError's message is redacted and its chained cause is cut when the
    cause's text holds a credential; any other exception whose traceback text holds one becomes a one-line SpfError
    with the credential removed (raising the original would print it in the KFP task log)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import traceback

        install_log_redaction()
        _rebind_dvc_console()
        try:
            return fn(*args, **kwargs)
        except SpfError as e:
            text = str(e)
            if redact_text(text) != text:
                e.args = (redact_text(text), *e.args[1:])
            chained = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
            if chained is not None:
                chain = "".join(traceback.format_exception(chained))
                if redact_text(chain) != chain:
                    e.__cause__, e.__context__, e.__suppress_context__ = None, None, True
            raise
        except Exception as e:
            chain = "".join(traceback.format_exception(e))
            if redact_text(chain) == chain:
                raise
            raise SpfError(redact_text(f"{fn.__name__}: {type(e).__name__}: {_one_line(e)}")) from None

    return wrapper


def _remote_config_from_env(remote_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """``SPF_DVC_REMOTE_URL`` / ``SPF_DVC_ENDPOINT_URL`` override the URL / endpoint of the remote in use: a cluster
    reads the same revision from its own store (the committed default remote is a laptop folder, and
    ``.dvc/config.local`` never travels with a clone)."""
    for env, key in (("SPF_DVC_REMOTE_URL", "url"), ("SPF_DVC_ENDPOINT_URL", "endpointurl")):
        value = os.environ.get(env, "").strip()
        if value and not (remote_config or {}).get(key):
            remote_config = {**(remote_config or {}), key: value}
    return remote_config


def data_hash_from_dvcfile(text: str, source: str) -> tuple[str, int | None]:
    """(md5, nfiles) of the single `data` output described by a .dvc file's YAML text."""
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
        out = next(o for o in doc.get("outs", []) if o.get("path") == DATA_OUT)
        return str(out["md5"]), out.get("nfiles")
    except (yaml.YAMLError, StopIteration, KeyError, AttributeError, TypeError) as e:
        raise SpfError(f"{source}: no 'outs' entry with path '{DATA_OUT}' and an md5") from e


@_scrubbed
def pull_data(repo: str, rev: str, out_dir: str | Path, *, remote: str | None = None,
              remote_config: dict[str, Any] | None = None) -> DataRef:
    """Copy `data` at ``rev`` of ``repo`` (git URL or path) into ``out_dir``, fetching from the DVC remote.

    A private repository's credentials come from the environment (``git_credentials``), never from ``repo``."""
    _quiet_dvc()
    if not rev or not rev.strip():
        raise SpfError("--rev: a git revision is required (commit, tag or branch)")
    refuse_credentials_in_url(repo, "--repo")
    with git_credentials(repo) as (clone_url, redact):
        return _pull(repo, clone_url, redact, rev, Path(out_dir), remote, _remote_config_from_env(remote_config))


def _pull(repo: str, clone_url: str, redact, rev: str, out_dir: Path, remote: str | None,
          remote_config: dict[str, Any] | None) -> DataRef:
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    from spf_lib.io import atomic_dir, write_json_atomic

    try:
        fs = DVCFileSystem(repo=clone_url, rev=rev, remote=remote, remote_config=remote_config)
        try:
            resolved = fs.repo.get_rev()
            if not fs.exists("data.dvc"):
                raise SpfError(f"--repo {repo} @ {rev}: no data.dvc at this revision")
            md5, nfiles = data_hash_from_dvcfile(fs.read_text("data.dvc"), f"{repo}@{rev}:data.dvc")
            with atomic_dir(out_dir, owned_if=(DATA_REF_FILE,), write_marker=False) as tmp:
                staging = tmp / ".payload"  # fsspec copies a folder's content only into a path that does not exist
                fs.get(DATA_OUT, str(staging), recursive=True)
                for child in staging.iterdir():
                    child.rename(tmp / child.name)
                staging.rmdir()
                got = sum(1 for p in tmp.rglob("*") if p.is_file())
                if nfiles is not None and got != nfiles:
                    raise SpfError(f"{repo}@{rev}: data.dvc says {nfiles} files, fetched {got}")
                write_json_atomic(tmp / DATA_REF_FILE, {"data_rev": resolved, "data_hash": md5, "repo": repo})
        finally:
            fs.close()
    except SpfError:
        raise
    except (DvcException, SCMError) as e:
        raise SpfError(redact(f"--repo {repo} @ {rev}: {type(e).__name__}: {_one_line(e)}")) from None
    except Exception as e:  # dvc_data/fsspec/botocore raise many types: missing objects, network, bad URL
        cause = e.__cause__ or e
        raise SpfError(redact(f"--repo {repo} @ {rev}: cannot read data ({type(e).__name__}: {_one_line(e)}"
                              + (f"; {type(cause).__name__}: {_one_line(cause)}" if cause is not e else "")
                              + ")")) from None
    log.info("pulled %s@%s (%s) into %s", repo, resolved, md5, out_dir)
    return DataRef(rev=resolved, data_hash=md5, path=out_dir)


# ---- private data repositories ----------------------------------------------------------------------------------
# On a cluster the prepare pod gets these from the Kubernetes Secrets named in pipelines/platform.py; the compiled
# pipeline only names the Secrets. The pipeline parameter data_repo, the lineage tags and every message keep the
# plain URL: the token is added to the clone URL in memory and scrubbed from errors.

GIT_TOKEN_ENV = "SPF_GIT_TOKEN"  # HTTPS: a personal/project access token
GIT_USERNAME_ENV = "SPF_GIT_USERNAME"  # HTTPS user for the token (GitHub: any; GitLab: oauth2); default oauth2
GIT_SSH_DIR_ENV = "SPF_GIT_SSH_DIR"  # SSH: a folder with `ssh-privatekey` (kubernetes.io/ssh-auth) and `known_hosts`


def refuse_credentials_in_url(url: str, flag: str) -> None:
    """A password/token inside the URL would be stored by KFP (run parameters) and MLflow (lineage tags)."""
    from urllib.parse import urlsplit

    if "://" in url and urlsplit(url).password:
        raise SpfError(f"{flag}: the URL carries a password or token, which would be stored with the run and the "
                       f"model's lineage; give the URL without it and the token as ${GIT_TOKEN_ENV} (on Kubeflow: "
                       "the spf-git Secret, docs/operations.md)")


@contextlib.contextmanager
def git_credentials(url: str):
    """Yield (URL to clone, redact function). HTTPS + ``$SPF_GIT_TOKEN``: the token goes into the clone URL only.
    SSH + ``$SPF_GIT_SSH_DIR``: ``GIT_SSH_COMMAND`` uses a private copy of the key (a mounted Secret is 0644, which
    ssh refuses) and the Secret's known_hosts, strictly."""
    import shutil
    import tempfile
    from urllib.parse import quote, urlsplit, urlunsplit

    secrets: list[str] = []
    clone_url = url
    token = os.environ.get(GIT_TOKEN_ENV, "").strip()
    parts = urlsplit(url) if "://" in url else None
    if token and parts and parts.scheme in ("http", "https") and not parts.username:
        user = os.environ.get(GIT_USERNAME_ENV, "").strip() or "oauth2"
        clone_url = urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(token, safe='')}@{parts.netloc}"))
        secrets += [token, quote(token, safe="")]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    ssh_dir = Path(os.environ.get(GIT_SSH_DIR_ENV, "")) if os.environ.get(GIT_SSH_DIR_ENV) else None
    key = ssh_dir / "ssh-privatekey" if ssh_dir else None
    is_ssh = (parts is not None and parts.scheme == "ssh") or (parts is None and re.match(r"^[\w.-]+@[\w.-]+:", url))
    if not (key and key.is_file() and is_ssh):
        yield clone_url, redact
        return
    saved = os.environ.get("GIT_SSH_COMMAND")
    tmp = Path(tempfile.mkdtemp(prefix="spf-ssh-"))
    try:
        private = tmp / "id"
        private.touch(mode=0o600)
        private.write_bytes(key.read_bytes())
        known = ssh_dir / "known_hosts"
        if known.is_file():
            host_opts = f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes"
        else:
            log.warning("%s has no known_hosts: the git host's key is accepted unchecked", ssh_dir)
            host_opts = f"-o UserKnownHostsFile={tmp / 'known_hosts'} -o StrictHostKeyChecking=accept-new"
        os.environ["GIT_SSH_COMMAND"] = f"ssh -i {private} -o IdentitiesOnly=yes -o BatchMode=yes {host_opts}"
        yield clone_url, redact
    finally:
        if saved is None:
            os.environ.pop("GIT_SSH_COMMAND", None)
        else:
            os.environ["GIT_SSH_COMMAND"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _git(repo_dir: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SpfError(f"{repo_dir}: git {' '.join(args)} failed: {_one_line(Exception(proc.stderr))}")
    return proc.stdout.strip()


@_scrubbed
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

    _quiet_dvc()
    repo_dir = Path(repo_dir).resolve()
    if data_dir_name != DATA_OUT:
        raise SpfError(f"data_dir_name={data_dir_name!r}: the pipeline reads the output named '{DATA_OUT}'")
    if not (repo_dir / data_dir_name).is_dir():
        raise SpfError(f"{repo_dir / data_dir_name}: not a folder")
    if not (repo_dir / ".git").exists():
        _git(repo_dir, "init", "-q")
    _ensure_git_identity(repo_dir)
    sink = io.StringIO()
    try:
        with _dvc_silenced(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            repo = _dvc_repo(repo_dir)
            with repo:
                _ensure_remote(repo, remote_name, remote_url, None if local_endpoint else endpoint_url)
                if local_endpoint and endpoint_url:
                    with repo.config.edit("local") as conf:
                        conf["remote"][remote_name] = {**conf["remote"].get(remote_name, {}),
                                                       "endpointurl": endpoint_url}
                _git(repo_dir, "add", *[p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore")
                                        if (repo_dir / p).exists()])
                if _git_dirty(repo_dir):
                    _git(repo_dir, "commit", "-q", "-m", f"dvc: remote {remote_name}")
                repo.add(str(repo_dir / data_dir_name))
                _git(repo_dir, "add", f"{data_dir_name}.dvc", *[".gitignore"] * (repo_dir / ".gitignore").exists())
                if _git_dirty(repo_dir):
                    _git(repo_dir, "commit", "-q", "-m", message)
                if push:
                    repo.push(remote=remote_name)
    except DvcException as e:
        raise SpfError(f"{repo_dir}: dvc failed: {_one_line(e)}") from e
    md5, _ = data_hash_from_dvcfile((repo_dir / f"{data_dir_name}.dvc").read_text(), str(repo_dir / "data.dvc"))
    return _git(repo_dir, "rev-parse", "HEAD"), md5


@contextlib.contextmanager
def _dvc_silenced(level_while: int = logging.WARNING):
    """DVC's own loggers print git hints ("To track the changes with git...") that we act on ourselves, and
    dvc_data warns about objects a fresh clone's remote cannot have yet."""
    loggers = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level_while, lg.level))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _ensure_git_identity(repo_dir: Path) -> None:
    """Commits need an author; a pod or a fresh CI machine has none configured."""
    if not _git_config(repo_dir, "user.email"):
        _git(repo_dir, "config", "user.email", "spf@localhost")
        _git(repo_dir, "config", "user.name", "spf")


def _dvc_repo(repo_dir: Path):
    """The DVC repo at ``repo_dir`` (a git repository), initialised on first use."""
    from dvc.repo import Repo

    return Repo.init(str(repo_dir)) if not (repo_dir / ".dvc").is_dir() else Repo(str(repo_dir))


def _git_config(repo_dir: Path, key: str) -> str:
    proc = subprocess.run(["git", "config", key], cwd=repo_dir, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def _git_dirty(repo_dir: Path) -> bool:
    return bool(_git(repo_dir, "diff", "--cached", "--name-only"))


def _ensure_remote(repo, name: str, url: str, endpoint_url: str | None) -> None:
    """Add or update the remote in the committed .dvc/config (URL and endpoint are addresses, not secrets)."""
    with repo.config.edit() as conf:
        entry = dict(conf["remote"].get(name, {}))
        entry["url"] = url
        if endpoint_url:
            entry["endpointurl"] = endpoint_url
        conf["remote"][name] = entry
        conf["core"]["remote"] = name
        conf["core"]["analytics"] = False


def read_data_ref(folder: str | Path) -> dict[str, str]:
    """The lineage a pull left beside the data ({} when the folder was not pulled)."""
    p = Path(folder) / DATA_REF_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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


def _toplevel(path: Path) -> Path | None:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def default_repo_dir(cwd: str | Path = ".") -> Path:
    """The git repository around ``cwd`` (its top level), else ``cwd`` itself (a new repository there)."""
    cwd = Path(cwd).resolve()
    return _toplevel(cwd) or cwd


def _configured_remote(repo) -> tuple[str, str] | None:
    name = repo.config["core"].get("remote")
    if name and name in repo.config["remote"]:
        return name, str(repo.config["remote"][name]["url"])
    return None


def _ensure_gitignored(repo_dir: Path, entry: str) -> None:
    gi = repo_dir / ".gitignore"
    lines = gi.read_text().splitlines() if gi.is_file() else []
    if entry not in lines and entry.rstrip("/") not in lines and f"/{entry}" not in lines:
        gi.write_text("\n".join([*lines, entry]) + "\n")


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


@_scrubbed
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

    _quiet_dvc()
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
    top = _toplevel(repo_dir)
    if top is None:
        _git(repo_dir, "init", "-q")
    elif top != repo_dir:
        raise SpfError(f"--repo {repo_dir}: inside the git repository {top}; pass its top level or another folder")
    _ensure_git_identity(repo_dir)
    sink = io.StringIO()
    try:
        with _dvc_silenced(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            repo = _dvc_repo(repo_dir)
            with repo:
                configured = _configured_remote(repo)
                if remote_url or configured is None:
                    from dvc.config_schema import RelPath

                    # RelPath: DVC stores it relative to .dvc/, so the committed config works in any clone
                    url = remote_url or RelPath(str(repo_dir / LOCAL_REMOTE))
                    name = configured[0] if configured else REMOTE_NAME
                    _ensure_remote(repo, name, url, None)
                    if not remote_url:
                        _ensure_gitignored(repo_dir, f"/{LOCAL_REMOTE.parts[0]}/")
                    configured = _configured_remote(repo)
                name, url = configured
                setup = [p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore")
                         if (repo_dir / p).exists()]
                _git(repo_dir, "add", *setup)
                if _git(repo_dir, "diff", "--cached", "--name-only", "--", *setup):
                    _git(repo_dir, "commit", "-q", "-m", f"dvc: remote {name}", "--", *setup)
                if folder != target:
                    _sync_into(folder, target)
                repo.add(str(target))
                if push:
                    try:
                        repo.push(remote=name)
                    except DvcException as e:
                        raise SpfError(f"dvc push to remote {name!r} ({redact_text(str(url))}) failed: "
                                       f"{_one_line(e)}; data.dvc is updated but NOT committed (fix the remote and "
                                       "run again)") from e
    except DvcException as e:
        raise SpfError(f"{repo_dir}: dvc failed: {_one_line(e)}") from e
    md5, nfiles = data_hash_from_dvcfile((repo_dir / "data.dvc").read_text(), str(repo_dir / "data.dvc"))
    paths = ["data.dvc", ".gitignore"]
    _git(repo_dir, "add", *paths)
    committed = bool(_git(repo_dir, "diff", "--cached", "--name-only", "--", *paths))
    if committed:
        _git(repo_dir, "commit", "-q", "-m", message or f"data: {folder.name} ({nfiles} files, dvc md5 {md5})",
             "--", *paths)
    rev = _git(repo_dir, "rev-parse", "HEAD")
    current = subprocess.run(["git", "-C", str(repo_dir), "remote", "get-url", "origin"], capture_output=True,
                             text=True, check=False).stdout.strip()
    if origin and not current:
        _git(repo_dir, "remote", "add", "origin", origin)
        current = origin
    elif origin and origin != current:
        raise SpfError(f"--origin {origin}: the repo's origin is already {current} (data committed as {rev[:12]}, "
                       "not pushed to git)")
    if origin or git_push:
        if not current:
            raise SpfError(f"{repo_dir}: no git remote 'origin' to push to (give --origin URL)")
        _git(repo_dir, "push", "-q", "origin", "HEAD")
    return AddResult(repo=repo_dir, rev=rev, data_hash=md5, n_files=int(nfiles or 0), committed=committed,
                     remote=redact_text(str(url)), data_repo=redact_text(current) or str(repo_dir))


# ---- the project's own data.dvc (the demo's data repository) -----------------------------------------------------

@_scrubbed
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

    _quiet_dvc()
    repo_dir = Path(repo_dir).resolve()
    dvcfile = repo_dir / "data.dvc"
    if _toplevel(repo_dir) != repo_dir or not (repo_dir / ".dvc").is_dir():
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
    sink = io.StringIO()
    try:
        # ERROR: a fresh clone's pull warns about the (expected) empty remote before we regenerate
        with _dvc_silenced(logging.ERROR), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                Repo(str(repo_dir)) as repo:
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
        raise SpfError(f"{repo_dir}: dvc failed: {_one_line(e)}") from e
    if dvcfile.read_bytes() != before:  # cannot happen when status was clean; never leave data.dvc rewritten
        dvcfile.write_bytes(before)
        raise SpfError(f"{dvcfile}: dvc commit changed it; restored (data/ differs from data.dvc)")
    return _git(repo_dir, "rev-parse", "HEAD"), md5


@_scrubbed
def cache_if_tracked(data_dir: str | Path) -> str | None:
    """After regenerating ``data_dir``: when a ``.dvc`` file beside it tracks it and the new files hash exactly
    to what it records, store them in the DVC cache (so ``dvc status`` is clean and ``dvc push`` has them) without
    touching the ``.dvc`` file. Returns its md5; None when nothing tracks the folder. A mismatch is an error naming
    both: regenerated data that no longer matches its record must be looked at, not silently re-versioned."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    _quiet_dvc()
    data_dir = Path(data_dir).resolve()
    dvcfile = data_dir.with_name(data_dir.name + ".dvc")
    if not dvcfile.is_file() or not (data_dir.parent / ".dvc").is_dir():
        return None
    before = dvcfile.read_bytes()
    md5, _ = data_hash_from_dvcfile(before.decode(), str(dvcfile)) if data_dir.name == DATA_OUT else (None, None)
    sink = io.StringIO()
    try:
        with _dvc_silenced(logging.ERROR), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
                Repo(str(data_dir.parent)) as repo:
            (stage,) = repo.stage.collect(str(dvcfile))
            if any(out.workspace_status() for out in stage.outs):
                raise SpfError(f"{data_dir}: regenerated, but it does not match {dvcfile.name} ({md5}); if the "
                               f"generator changed on purpose, version the new set: dvc add {data_dir.name}")
            repo.commit(str(dvcfile), force=True)
    except DvcException as e:
        raise SpfError(f"{data_dir.parent}: dvc failed: {_one_line(e)}") from e
    if dvcfile.read_bytes() != before:
        dvcfile.write_bytes(before)
        raise SpfError(f"{dvcfile}: dvc commit changed it; restored")
    return md5
