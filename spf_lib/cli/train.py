"""`spf train`."""

from __future__ import annotations

from spf_lib.errors import SpfError


def train() -> None:
    """Fine-tune a base model with one of the training methods."""
    raise SpfError("spf train is not wired yet")
