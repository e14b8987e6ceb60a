"""Helpers shared by benchmarks: timing and peak memory measured the same way everywhere."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 5) -> dict[str, float]:
    """Median and min wall time of ``fn`` (seconds) after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB). For per-variant peaks run each variant in a subprocess."""
    gc.collect()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def opt(options: dict[str, str], key: str, default, cast=None):
    """Read a typed benchmark option, naming the bad value if it does not parse."""
    from spf_lib.errors import SpfError

    if key not in options:
        return default
    cast = cast or type(default)
    try:
        if cast is bool:
            return options[key].lower() in ("1", "true", "yes", "on")
        return cast(options[key])
    except ValueError as e:
        raise SpfError(f"bench option {key}={options[key]!r}: expected {cast.__name__}") from e
