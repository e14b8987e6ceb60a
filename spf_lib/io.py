"""Atomic writes: nothing half-written is ever visible under its final name, and nothing we did not write is lost.

A folder output is built in a temporary sibling (same filesystem, so the final rename is atomic), checked by the
caller inside the block, and only then swapped in. The swap never removes a folder the project did not write: a
folder counts as ours when it holds the marker file ``.spf-output`` (written into every folder built here) or one of
the files the caller names (outputs written before the marker existed). Temporary names carry host and pid, so a
later run can tell a dead writer's leftovers from a live writer's work and sweep them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER = ".spf-output"
#: Files that mark a folder written by spf before the marker existed (models, adapters, prepare/eval outputs, pulls).
KNOWN_OUTPUT_FILES = ("model_index.json", "adapter_info.json", "prepare_summary.json", "metrics.json", "state.json",
                      "world_clip.json", "naive_info.json", "probes.json", ".spf_data_ref.json")
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
# .NAME.tmp-HOST-PID-RAND  and  .NAME.old-HOST-PID-RAND
_TEMP_RE = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]+(?:\.[A-Za-z0-9]+)?$")


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _temp_name(final: Path, kind: str = "tmp") -> Path:
    return final.with_name(f".{final.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(folder: str | Path, *, all_temps: bool = False) -> list[Path]:
    """Remove temporaries left by writers that died (same host, pid gone). ``all_temps``: also every other
    dot-``*.tmp`` entry, for callers that hold the folder's lock (so no other writer can be mid-save)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        live = bool(m and m["host"] == _HOST and _pid_alive(int(m["pid"])))
        stale = bool(m and m["host"] == _HOST and not live)
        if not stale and not live and all_temps and p.name.startswith(".") and (p.name.endswith(".tmp") or ".tmp." in p.name
                                                                    or ".tmp-" in p.name or ".old-" in p.name):
            stale = True
        if not stale:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.info("removed %d leftover temporary file(s)/folder(s) of interrupted writes in %s", len(removed), folder)
    return removed


def check_output_target(final: str | Path, *, owned_if: Iterable[str] = (), flag: str = "output") -> Path:
    """Fail early (before any work) if ``final`` cannot be replaced safely: a plain file, a mount point, a
    non-empty folder we did not write, or a parent we cannot write to."""
    from spf_lib.errors import SpfError

    final = Path(final)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise SpfError(f"{flag} {final}: exists and is not a folder; refusing to replace it")
    if final.exists() and os.path.ismount(final):
        raise SpfError(f"{flag} {final}: is a mount point and cannot be replaced atomically; give a folder inside it")
    if final.is_dir() and not is_ours(final, owned_if):
        raise SpfError(f"{flag} {final}: folder is not empty and was not written by spf (no {MARKER}); "
                       "give a new or empty folder")
    probe = final.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SpfError(f"{flag} {final}: {probe} is not a folder")
    try:  # os.access says yes to root on a read-only or special filesystem: really try
        import tempfile

        os.rmdir(tempfile.mkdtemp(prefix=".spf-probe-", dir=probe))
    except OSError as e:
        raise SpfError(f"{flag} {final}: cannot write in {probe} ({e.strerror or e})") from None
    return final


def is_ours(folder: Path, owned_if: Iterable[str] = ()) -> bool:
    """Empty, or holding our marker (or one of ``owned_if``): safe to replace as a whole."""
    try:
        if not any(folder.iterdir()):
            return True
    except OSError:
        return False
    return any((folder / n).exists() for n in (MARKER, *KNOWN_OUTPUT_FILES, *owned_if))


def _mkdir_parent(final: Path, flag: str) -> None:
    from spf_lib.errors import SpfError

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpfError(f"{flag} {final}: cannot create {final.parent} ({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    _mkdir_parent(final, "file")
    tmp = _temp_name(final)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, owned_if: Iterable[str] = (), flag: str = "output",
               marker: dict[str, Any] | None = None, write_marker: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; if the block succeeds it replaces ``final`` (old content removed only
    then). Anything the caller must check (QA, a validation) belongs inside the block: an exception there leaves
    ``final`` exactly as it was. Refuses (SpfError, before the block runs) to replace what spf did not write.
    ``write_marker=False``: the folder carries its own mark (one of ``owned_if``), e.g. pulled data."""
    from spf_lib.errors import SpfError

    final = Path(final)
    owned_if = tuple(owned_if)
    check_output_target(final, owned_if=owned_if, flag=flag)
    _mkdir_parent(final, flag)
    sweep_stale_temps(final.parent)
    tmp = _temp_name(final)
    try:
        tmp.mkdir(mode=0o777)  # mode & ~umask, like any folder the user makes (mkdtemp would force 0700)
    except OSError as e:
        raise SpfError(f"{flag} {final}: cannot write in {final.parent} ({e.strerror or e})") from None
    try:
        yield tmp
        if write_marker:
            (tmp / MARKER).write_text(json.dumps({"written_by": "spf", **(marker or {})}, sort_keys=True) + "\n",
                                      encoding="utf-8")
        check_output_target(final, owned_if=owned_if, flag=flag)  # something may have appeared meanwhile
        if final.exists():
            old = _temp_name(final, "old")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def output_lock(folder: str | Path, *, what: str, inside: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder for the block; a second writer gets one SpfError line.

    ``inside``: the lock file lives in the folder (it persists across runs); otherwise it sits beside the folder
    (for folders replaced as a whole) and is removed on release, so nothing stays outside the output. An OS lock
    (``flock``) dies with its process, so a killed run never leaves a stale lock. After locking we check that the
    path still names the file we locked: a holder that unlinked it on release cannot hand the lock to two others.
    """
    import fcntl

    from spf_lib.errors import SpfError

    folder = Path(folder)
    lock_path = folder / ".spf.lock" if inside else folder.with_name(f".{folder.name}.lock")
    _mkdir_parent(lock_path, what)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise SpfError(f"{what} {folder}: cannot create the lock {lock_path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpfError(f"{what} {folder}: another spf process is writing it (lock {lock_path}); wait for it to "
                           "finish or choose another folder") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it between our open and our lock: take the new file
    try:
        yield lock_path
    finally:
        if not inside:
            with contextlib.suppress(OSError):
                lock_path.unlink()
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(folder: str | Path, *, skip: Iterable[str] = (MARKER,)) -> str:
    """Content hash of a folder (relative names + bytes, sorted): the identity of an adapter across copies."""
    root = Path(folder)
    skip = set(skip)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.name not in skip):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_json_object(path: str | Path, *, label: str | None = None, expect: str = "a JSON object") -> dict:
    """Parse a JSON file that must hold an object; bad content is one SpfError naming ``label`` (default: the path)."""
    from spf_lib.errors import SpfError

    prefix = label or str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpfError(f"{prefix}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise SpfError(f"{prefix}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSON") from None
    except OSError as e:
        raise SpfError(f"{prefix}: cannot read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise SpfError(f"{prefix}: expected {expect}")
    return data
