"""Lineage: which data, code, pipeline and run made an artifact. Keys are listed in docs/internals.md."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from spf_lib.io import sha256_json

LINEAGE_KEYS = (
    "data_rev", "data_hash", "code_rev", "pipeline_name", "pipeline_version", "kfp_run_id", "method",
    "config_hash", "base_model",
)


def code_revision() -> str:
    """``SPF_CODE_REV`` (baked into the component image), else this project's own git checkout's HEAD.

    Only a checkout whose top level IS the project counts: a package installed in a venv that happens to sit inside
    some other repository must not report that repository's sha. ``-dirty`` marks uncommitted tracked changes.
    """
    if env := os.environ.get("SPF_CODE_REV", "").strip():
        return env
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        lines = out.stdout.split()
        if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root or len(lines[1]) != 40:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return lines[1] + ("-dirty" if dirty else "")


def config_hash(config: dict) -> str:
    return sha256_json(config)[:16]


def make_lineage(**values: str | None) -> dict[str, str]:
    """A lineage dict with every known key present (``unknown`` where a stage had nothing to say)."""
    unknown = set(values) - set(LINEAGE_KEYS)
    if unknown:
        raise ValueError(f"unknown lineage keys: {sorted(unknown)}")
    return {k: str(values.get(k) or "unknown") for k in LINEAGE_KEYS}
