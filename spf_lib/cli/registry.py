"""`spf register | promote | rollback | lineage`."""

from __future__ import annotations

from spf_lib.errors import SpfError


def register() -> None:
    """Register a trained adapter in MLflow's model registry."""
    raise SpfError("spf register is not wired yet")


def promote() -> None:
    """Move the champion alias to the challenger if it passes the gate."""
    raise SpfError("spf promote is not wired yet")


def rollback() -> None:
    """Put the previous champion back."""
    raise SpfError("spf rollback is not wired yet")


def lineage() -> None:
    """Print which data, code and run made a model version."""
    raise SpfError("spf lineage is not wired yet")
