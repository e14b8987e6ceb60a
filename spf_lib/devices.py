"""Device names checked against the machine before any model is loaded, and out-of-memory turned into advice.

``torch.device("cuda:7")`` is accepted on a CPU-only machine and fails deep inside the first ``.to()`` with a
traceback; a job that would run out of memory fails after minutes of loading. Both are one line here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from spf_lib.errors import SpfError

_DEVICE_RE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def check_device(device: str | None, *, field: str = "device") -> str:
    """Return the device to use (None -> cuda if available else cpu); SpfError if this machine lacks it."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = _DEVICE_RE.match(str(device))
    if not m or (m.group(1) != "cuda" and m.group(2) is not None):
        raise SpfError(f"{field}={device!r}: expected cpu, cuda, cuda:N or mps")
    kind, idx = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SpfError(f"{field}={device!r}: no CUDA device on this machine (use 'cpu')")
        n = torch.cuda.device_count()
        if idx is not None and int(idx) >= n:
            raise SpfError(f"{field}={device!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SpfError(f"{field}={device!r}: MPS is not available on this machine (use 'cpu')")
    return str(device)


def is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(exc, MemoryError) or (oom_type and isinstance(exc, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                              or "can't allocate memory" in str(exc).lower())


@contextlib.contextmanager
def oom_as_error(what: str, advice: str) -> Iterator[None]:
    """Inside the block, running out of (GPU or host) memory is one SpfError naming ``what`` and ``advice``."""
    try:
        yield
    except SpfError:
        raise
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        raise SpfError(f"{what}: out of memory ({(str(e).splitlines() or ['MemoryError'])[0][:160]}); {advice}") \
            from None
