"""Run `spf ui` as a user does: start it, wait until MLflow's UI answers, press Ctrl-C, collect what it printed."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ui_until_ctrl_c(argv: list[str], env: dict, cwd: Path, port: int, preexec_fn=None,
                        stop_timeout: float = 180) -> tuple[int, str]:
    """(exit code, output) of ``argv --port PORT`` after SIGINT, sent once the UI answered HTTP 200."""
    proc = subprocess.Popen([*argv, "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn)  # noqa: PLW1509
    try:
        deadline = time.monotonic() + 300  # a loaded CI machine starts MLflow's server slowly
        while True:
            assert proc.poll() is None, f"spf ui exited early: {proc.stdout.read() if proc.stdout else ''}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "spf ui did not answer within 300 s"
            time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=stop_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out
