"""`spf evaluate`."""

from __future__ import annotations

from spf_lib.errors import SpfError


def evaluate() -> None:
    """Evaluate a tuned adapter against its base model."""
    raise SpfError("spf evaluate is not wired yet")
