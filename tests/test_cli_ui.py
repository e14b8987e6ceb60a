"""`spf ui` stops its MLflow server group on Ctrl-C even when it was started with SIGINT ignored (a background job
of a non-interactive shell: Python then installs no KeyboardInterrupt handler, and the command used to run forever)."""

from __future__ import annotations

import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from _ui_helpers import free_port, run_ui_until_ctrl_c

pytestmark = pytest.mark.integration


def test_ctrl_c_stops_the_ui_started_with_sigint_ignored(tmp_path):
    (tmp_path / ".spf").mkdir()
    (tmp_path / ".spf" / "mlflow.db").touch()  # an empty sqlite file: the server creates its tables
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SPF_HOME", "MLFLOW_TRACKING_URI")}
    spf = str(Path(sys.executable).with_name("spf"))
    rc, out = run_ui_until_ctrl_c([spf, "ui"], env, tmp_path, port, stop_timeout=120,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert rc == 0 and "MLflow UI stopped" in out, out
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
