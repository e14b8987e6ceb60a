"""`spf demo`: the whole pipeline locally on embedded defaults."""

from __future__ import annotations

from spf_lib.errors import SpfError


def demo() -> None:
    """Run the full pipeline (data → train → evaluate → register) under kfp's local runner."""
    raise SpfError("spf demo is not wired yet")
