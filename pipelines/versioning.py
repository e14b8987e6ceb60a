"""Names and schedules for what we send to Kubeflow: pipeline version names, six-field cron, the data hash.

Kept free of kfp (and fast to import) so the CLI can validate input before it loads the client.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from spf_lib import __version__
from spf_lib.errors import SpfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GitState:
    sha: str  # short sha, or "unknown" outside a git checkout
    dirty: bool


def git_state(repo_dir: str | Path = ".") -> GitState:
    """The checkout's short sha and whether tracked files differ from it (untracked files do not count)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short=12", "HEAD")
    if head.returncode != 0:
        return GitState("unknown", False)
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
    return GitState(head.stdout.strip(), dirty)


def git_head(repo_dir: str | Path = ".") -> str:
    """Full sha of HEAD: an immutable data revision (branch names would make cached data prep stale)."""
    out = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SpfError(f"{repo_dir}: not a git checkout, cannot name the data revision ({out.stderr.strip()})")
    return out.stdout.strip()


def version_name(package: str | Path | None = None, repo_dir: str | Path | None = None) -> str:
    """``<package version>-<git sha>``, plus ``-dirty-<hash of the compiled package>`` for uncommitted code, so two
    different dirty builds never collide and the same build uploads under the same name. The sha is this project's
    checkout (``spf_lib.lineage.code_revision``) unless ``repo_dir`` names another: the current directory may be a
    data repository."""
    if repo_dir is None:
        from spf_lib.lineage import code_revision

        rev = code_revision()
        state = GitState("unknown", False) if rev == "unknown" else GitState(rev[:12], rev.endswith("-dirty"))
    else:
        state = git_state(repo_dir)
    name = f"{__version__}-{state.sha}"
    if state.dirty:
        suffix = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8] if package else "local"
        name += f"-dirty-{suffix}"
    return name


# ---- cron -------------------------------------------------------------------------------------------------------

_FIELDS = (  # name, low, high, names allowed
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day-of-week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}
_ATOM = re.compile(r"^(\*|\?|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


def _value(token: str, low: int, names: tuple[str, ...] | None) -> int:
    if names and token.upper() in names:
        return names.index(token.upper()) + low
    if not token.isdigit():
        raise ValueError(f"{token!r} is not a number")
    return int(token)


def _check_field(text: str, index: int) -> None:
    name, low, high, names = _FIELDS[index]
    where = f"cron field {index + 1} of 6 ({name})"
    for part in text.split(","):
        m = _ATOM.match(part)
        if not m:
            raise SpfError(f"{where}: {part!r} is not a value, range, list or step")
        base, step = m.group(1), m.group(2)
        if base == "?" and name not in ("day-of-month", "day-of-week"):
            raise SpfError(f"{where}: '?' is only allowed in day-of-month and day-of-week")
        if step is not None and int(step) == 0:
            raise SpfError(f"{where}: step '/0' is not allowed")
        if base in ("*", "?"):
            continue
        try:
            bounds = [_value(t, low, names) for t in base.split("-")]
        except ValueError as e:
            raise SpfError(f"{where}: {e}") from None
        for v in bounds:
            if not low <= v <= high:
                raise SpfError(f"{where}: {v} is out of range {low}-{high}")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise SpfError(f"{where}: range {base!r} runs backwards")


def six_field_cron(expr: str) -> str:
    """Kubeflow's scheduler (robfig/cron with seconds) wants six fields, seconds first. Five-field (classic) input
    gets ``0`` seconds prepended, ``@daily``-style descriptors are expanded; every field is range-checked here so a
    typo fails at the command line, naming the field, instead of as a recurring run that never fires."""
    text = " ".join(expr.split())
    if text.lower() in _DESCRIPTORS:
        return _DESCRIPTORS[text.lower()]
    if text.startswith("@"):
        raise SpfError(f"cron: unknown descriptor {text!r} (use one of {', '.join(sorted(_DESCRIPTORS))})")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise SpfError(f"cron: {expr!r} has {len(fields)} fields; give 5 (min hour dom month dow) or 6 (sec first)")
    for i, field in enumerate(fields):
        _check_field(field, i)
    return " ".join(fields)


# ---- data hash ----------------------------------------------------------------------------------------------------

def dvc_data_hash(dvc_file: str | Path) -> str:
    """The md5 DVC recorded for the data output (``outs[0].md5`` of ``data.dvc``; a folder's ends in ``.dir``)."""
    import yaml

    path = Path(dvc_file)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpfError(f"{path}: not found (run `dvc add data` first)") from None
    except yaml.YAMLError as e:
        raise SpfError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    outs = doc.get("outs") if isinstance(doc, dict) else None
    if not outs or not isinstance(outs, list) or not isinstance(outs[0], dict) or not outs[0].get("md5"):
        raise SpfError(f"{path}: field 'outs[0].md5' is missing")
    return str(outs[0]["md5"])
