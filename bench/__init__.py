"""Benchmarks: one module per `spf bench NAME`, each exposing ``run(options) -> dict`` (see spf_lib/cli/bench.py)."""
