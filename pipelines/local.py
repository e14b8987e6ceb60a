"""Run the real pipeline on this machine with kfp's SubprocessRunner (no Docker, no cluster)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import warnings
from pathlib import Path


class _TaskLog(io.TextIOBase):
    """Everything goes to the log file; the runner's own status lines are echoed to the terminal as progress."""

    ECHO = re.compile(r"^\S.* - \w+ - (Running pipeline|Executing task|Task .* finished with status|Pipeline .* finished)")

    def __init__(self, log_file: io.TextIOBase, terminal: io.TextIOBase) -> None:
        self.log_file, self.terminal, self._line = log_file, terminal, ""

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if self.ECHO.match(line):
                self.terminal.write(line + "\n")
                self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


def run_local(params: dict, pipeline_root: str | Path, log_path: str | Path | None = None) -> dict:
    """Run ``portrait_pipeline`` locally and return its outputs (registration and metrics decoded from JSON).

    ``use_venv=False``: tasks run in this interpreter's environment, where spf_lib is installed; the venv mode
    would pip-install kfp per task, which fails offline. With ``log_path`` the tasks' own output (kfp's executor
    dumps, progress bars, library logs) goes to that file; the runner's task started/finished lines stay on stderr.
    A failed task raises ``SpfError`` with the end of its log.
    """
    import contextlib

    from spf_lib.errors import SpfError

    # Retries (with minutes of backoff) are for preemptible cluster nodes; a local failure should stop at once.
    os.environ["SPF_PIPELINE_RETRIES"] = "0"
    from kfp import local

    from pipelines.portrait import pipeline_version, portrait_pipeline

    Path(pipeline_root).mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    params = {"pipeline_version": pipeline_version(), **params}
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    log_file = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
    try:
        stream = _TaskLog(log_file, sys.stdout) if log_file else sys.stdout
        with warnings.catch_warnings(), contextlib.redirect_stdout(stream):
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            task = portrait_pipeline(**params)
    except RuntimeError as e:
        if log_file is None:
            raise
        log_file.flush()
        tail = "".join(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise SpfError(f"pipeline failed: {e}\n--- last lines of {log_path} ---\n{tail}") from e
    finally:
        if log_file:
            log_file.close()
    out = dict(task.outputs)
    out["registration"] = json.loads(out["registration"])
    out["metrics"] = json.loads(out["metrics"])
    return out
