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
    """The git revision of this project's code: ``SPF_CODE_REV`` (set in the image build) or the checkout's HEAD."""
    if os.environ.get("SPF_CODE_REV"):
        return os.environ["SPF_CODE_REV"]
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(config: dict) -> str:
    return sha256_json(config)[:16]


def make_lineage(**values: str | None) -> dict[str, str]:
    """A lineage dict with every known key present (``unknown`` where a stage had nothing to say)."""
    unknown = set(values) - set(LINEAGE_KEYS)
    if unknown:
        raise ValueError(f"unknown lineage keys: {sorted(unknown)}")
    return {k: str(values.get(k) or "unknown") for k in LINEAGE_KEYS}
