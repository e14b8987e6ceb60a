"""The git+DVC repository that versions ``data``: git commands, a commit identity, DVC init, the DVC remote.

Only the writing side (``spf_lib.data.dvc_versioning``) touches a repository on disk; reading goes through
``DVCFileSystem`` at a revision (``spf_lib.data.dvc_io``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from spf_lib.data.dvc_guard import one_line
from spf_lib.errors import SpfError


def git(repo_dir: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo_dir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SpfError(f"{repo_dir}: git {' '.join(args)} failed: {one_line(Exception(proc.stderr))}")
    return proc.stdout.strip()


def _git_config(repo_dir: Path, key: str) -> str:
    proc = subprocess.run(["git", "config", key], cwd=repo_dir, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def git_dirty(repo_dir: Path) -> bool:
    return bool(git(repo_dir, "diff", "--cached", "--name-only"))


def toplevel(path: Path) -> Path | None:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def default_repo_dir(cwd: str | Path = ".") -> Path:
    """The git repository around ``cwd`` (its top level), else ``cwd`` itself (a new repository there)."""
    cwd = Path(cwd).resolve()
    return toplevel(cwd) or cwd


def ensure_git_identity(repo_dir: Path) -> None:
    """Commits need an author; a pod or a fresh CI machine has none configured."""
    if not _git_config(repo_dir, "user.email"):
        git(repo_dir, "config", "user.email", "spf@localhost")
        git(repo_dir, "config", "user.name", "spf")


def ensure_gitignored(repo_dir: Path, entry: str) -> None:
    gi = repo_dir / ".gitignore"
    lines = gi.read_text().splitlines() if gi.is_file() else []
    if entry not in lines and entry.rstrip("/") not in lines and f"/{entry}" not in lines:
        gi.write_text("\n".join([*lines, entry]) + "\n")


def dvc_repo(repo_dir: Path):
    """The DVC repo at ``repo_dir`` (a git repository), initialised on first use."""
    from dvc.repo import Repo

    return Repo.init(str(repo_dir)) if not (repo_dir / ".dvc").is_dir() else Repo(str(repo_dir))


def configured_remote(repo) -> tuple[str, str] | None:
    name = repo.config["core"].get("remote")
    if name and name in repo.config["remote"]:
        return name, str(repo.config["remote"][name]["url"])
    return None


def ensure_remote(repo, name: str, url: str, endpoint_url: str | None) -> None:
    """Add or update the remote in the committed .dvc/config (URL and endpoint are addresses, not secrets)."""
    with repo.config.edit() as conf:
        entry = dict(conf["remote"].get(name, {}))
        entry["url"] = url
        if endpoint_url:
            entry["endpointurl"] = endpoint_url
        conf["remote"][name] = entry
        conf["core"]["remote"] = name
        conf["core"]["analytics"] = False
