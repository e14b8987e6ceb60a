"""Which files are inputs, and which of them may be read at all.

Inputs are the union of the image files found under the dataset root and the files named by captions.jsonl/csv.
A path that leaves the root (``../``, absolute, or a symlink whose target lies outside) is rejected from its
string and ``lstat`` alone: its bytes are never opened.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from spf_lib.data.captions import RawCaption, read_manifest_captions
from spf_lib.data.images import IMAGE_SUFFIXES


@dataclass
class InputItem:
    source_path: str  # relative to the root, posix; for unsafe manifest entries the string as written
    path: Path | None  # absolute path that is safe to read, or None when pre-rejected
    manifest_caption: RawCaption | None
    reject: tuple[str, str] | None = None  # (reason, detail) decided before any reading


def _inside(root_real: str, target: str) -> bool:
    return target == root_real or target.startswith(root_real.rstrip(os.sep) + os.sep)


def _check_path(root: Path, rel: str) -> tuple[Path | None, tuple[str, str] | None]:
    """Resolve ``rel`` under ``root`` without trusting it; return (safe path, None) or (None, (reason, detail))."""
    if not rel or "\x00" in rel:
        return None, ("invalid_path", "empty path or NUL byte")
    if rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return None, ("path_outside_root", f"absolute path {rel!r}")
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return None, ("path_outside_root", f"{rel!r} escapes the dataset root")
    candidate = root / norm
    root_real = os.path.realpath(root)
    real = os.path.realpath(candidate)  # follows symlinks in every component, only reads link metadata
    if not _inside(root_real, real):
        return None, ("path_outside_root", f"{rel!r} resolves outside the dataset root (symlink)")
    if not os.path.lexists(candidate):
        return None, ("missing_file", f"{rel!r} does not exist")
    if not os.path.isfile(real):
        return None, ("not_a_file", f"{rel!r} is not a regular file")
    return Path(real), None


def discover(root: Path, exclude: Path | None = None) -> tuple[list[InputItem], int]:
    """All inputs under ``root`` (sorted by source path) and the number of non-image files ignored."""
    root = root.resolve()
    captions = read_manifest_captions(root)
    items: dict[str, InputItem] = {}
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or Path(dirpath, d).resolve() != exclude))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                ignored += 1
                continue
            path, reject = _check_path(root, rel)
            items[rel] = InputItem(rel, path, None, reject)
    for written, raw in captions.items():
        path, reject = _check_path(root, written)
        key = posixpath.normpath(written.replace("\\", "/")) if reject is None else written
        if key in items:
            items[key].manifest_caption = raw
        else:
            items[key] = InputItem(key, path, raw, reject)
    return [items[k] for k in sorted(items)], ignored
