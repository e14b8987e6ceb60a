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
    """Task output goes to the log file (minus known third-party noise); the terminal gets progress.

    kfp's runner reads each task's output in text mode, so every tqdm refresh (``\\r``) arrives here as a line of
    its own. The terminal sees the runner's task started/finished lines and our progress bars (training steps with
    loss and ETA, image generation, data preparation): redrawn in place on a terminal, one line every
    ``THROTTLE_S`` (and at 100%) when the output is a file or a pipe.
    """

    ECHO = re.compile(
        r"^\S.* - \w+ - (Running pipeline|Executing task|Task .* finished with status|Pipeline .* finished)")
    PROGRESS = re.compile(r"^\s*(?P<desc>[^:|]{1,40}):\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<rest>.*)$")
    #: progress bars that are not a stage's work (library loading)
    QUIET_BARS = re.compile(r"^(Loading|Fetching|Downloading)")
    #: third-party lines that say nothing about this run (never written to the log)
    NOISE = re.compile(
        r"Skipping registering function .* because it"  # Great Expectations, ~150 lines per prepare
        r"|requires torchvision \(not installed\); falling back to"  # transformers' image processors, harmless
        r"|No LoRA keys associated to CLIPTextModel found"  # diffusers: our adapters have no text-encoder part
        r"|FutureWarning: `torch_dtype` is deprecated"  # raised inside diffusers' own loaders (ours pass dtype=)
    )
    THROTTLE_S = 10.0
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, log_file: io.TextIOBase, terminal: io.TextIOBase) -> None:
        import time

        self.log_file, self.terminal, self._line = log_file, terminal, ""
        self._tty = bool(getattr(terminal, "isatty", lambda: False)())
        self._bar_open = False
        self._last: dict[str, float] = {}
        self._clock = time.monotonic

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if self.NOISE.search(line):
                continue
            self.log_file.write(line + "\n")
            plain = self.ANSI.sub("", line)
            if self.ECHO.match(plain):
                self._end_bar()
                self.terminal.write(line + "\n")
                self.terminal.flush()
            elif (m := self.PROGRESS.match(plain)) and not self.QUIET_BARS.match(m["desc"].strip()):
                self._progress(m["desc"].strip(), int(m["pct"]), m["rest"].strip())
        return len(text)

    def _progress(self, desc: str, pct: int, rest: str) -> None:
        shown = f"    {desc}: {pct:3d}% {rest}"
        if self._tty:
            self.terminal.write("\r" + shown[:160] + "\x1b[K")
            self._bar_open = True
        else:
            now = self._clock()
            if pct < 100 and now - self._last.get(desc, -1e9) < self.THROTTLE_S:
                return
            self._last[desc] = now
            self.terminal.write(shown + "\n")
        self.terminal.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.terminal.write("\n")
            self._bar_open = False

    def flush(self) -> None:
        self.log_file.flush()

    def close_bar(self) -> None:
        self._end_bar()
        self.terminal.flush()


def run_local(params: dict, pipeline_root: str | Path, log_path: str | Path | None = None) -> dict:
    """Run ``portrait_pipeline`` locally and return its outputs (registration and metrics decoded from JSON).

    ``use_venv=False``: tasks run in this interpreter's environment, where spf_lib is installed; the venv mode
    would pip-install kfp per task, which fails offline. With ``log_path`` the tasks' own output (kfp's executor
    dumps, progress bars, library logs) goes to that file; the runner's task started/finished lines stay on stderr.
    A failed task raises ``SpfError`` with the end of its log.
    """
    import contextlib

    from kfp import local

    from pipelines.portrait import LOCAL_RETRIES, build_pipeline, pipeline_version
    from spf_lib.errors import SpfError

    # Retries (with minutes of backoff) are for preemptible cluster nodes; a local failure should stop at once.
    portrait_pipeline = build_pipeline(LOCAL_RETRIES)

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
            stream.close_bar()
            log_file.close()
    out = dict(task.outputs)
    out["registration"] = json.loads(out["registration"])
    out["metrics"] = json.loads(out["metrics"])
    return out
