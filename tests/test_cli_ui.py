"""`spf ui` stops its MLflow server group on Ctrl-C even when it was started with SIGINT ignored (a background job
of a non-interactive shell: Python then installs no KeyboardInterrupt handler, and the command used to run forever)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_stops_the_ui_started_with_sigint_ignored(tmp_path):
    (tmp_path / ".spf").mkdir()
    (tmp_path / ".spf" / "mlflow.db").touch()  # an empty sqlite file: the server creates its tables
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SPF_HOME", "MLFLOW_TRACKING_URI")}
    spf = str(Path(sys.executable).with_name("spf"))
    proc = subprocess.Popen([spf, "ui", "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # noqa: PLW1509
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "spf ui did not answer within 300 s"
            time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "MLflow UI stopped" in out, out
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
