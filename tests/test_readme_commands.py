"""The README's quickstart and registry commands, typed in order in a fresh folder, each exit 0.

The commands are read from README.md, so editing the README changes what this test runs. Two substitutions keep it
small: `make demo` is `make setup` (this interpreter's .venv, linked in) + `spf demo`, and every `spf demo` gets tiny
sizes and a gate that a model trained for one step can pass (the demo's own gate rightly refuses such a model; the
commands after it need a champion). `make test` is not run (this is a test). `spf ui` is started, must answer HTTP on
its URL, and must stop cleanly on Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from _ui_helpers import free_port, run_ui_until_ctrl_c

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Quickstart", "## What a run leaves behind")
TINY = ["--steps", "1", "--images", "4", "--eval-prompts", "1", "--eval-seeds", "1"]


def readme_commands(text: str) -> list[str]:
    """Commands of the bash blocks in the named sections (up to the next ## or ### heading), comments dropped."""
    out = []
    for title in SECTIONS:
        start = text.index(title)
        nxt = re.search(r"^#{2,3} ", text[start + len(title):], flags=re.M)
        body = text[start: start + len(title) + (nxt.start() if nxt else len(text))]
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            for line in block.splitlines():
                cmd = re.sub(r"(^|\s)#.*$", "", line).strip()
                if cmd:
                    out.append(cmd)
    return out


def _run_ui(argv: list[str], env: dict, cwd: Path) -> None:
    port = free_port()
    rc, out = run_ui_until_ctrl_c(argv, env, cwd, port)
    assert rc == 0, out
    assert f"http://127.0.0.1:{port}" in out and "stopped" in out


def test_readme_commands_run_in_order_in_a_fresh_folder(tmp_path):
    commands = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands[0] == "make demo" and any(c.startswith("spf lineage") for c in commands)
    work = tmp_path / "fresh"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "tiny-gate.json").write_text(json.dumps({"rules": [{"metric": "pollution", "better": "lower",
                                                                "bound": 1.0}]}))
    env = {k: v for k, v in os.environ.items() if k not in ("SPF_HOME", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.prefix, "bin").resolve())
    ran = []
    for cmd in commands:
        if cmd == "make test":
            continue
        argv = shlex.split(cmd)
        if cmd == "make demo":
            argv = [".venv/bin/spf", "demo"]
        if cmd == "source .venv/bin/activate":
            env["PATH"] = f"{work / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
            ran.append(cmd)
            continue
        if len(argv) >= 2 and argv[0].endswith("spf") and argv[1] == "demo":
            argv += [*TINY, "--rules", "tiny-gate.json"]
            if len(ran) > 1:  # the second run only needs a new version; one branch is enough
                argv += ["--baseline-method", ""]
        if argv[0] == "spf":
            exe = Path(env["PATH"].split(os.pathsep)[0]) / "spf"
            assert exe.is_file(), f"{cmd!r}: `spf` is not on PATH yet (the README must activate .venv first)"
        if argv[:2] == ["spf", "ui"]:
            _run_ui(argv, env, work)
            ran.append(cmd)
            continue
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"{cmd!r} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        ran.append(cmd)
        if argv[1:2] == ["demo"] and len(ran) == 1:
            assert "comparison picture:" in r.stdout and "spf ui" in r.stdout
    assert any(c.startswith("spf rollback") for c in ran) and any(c.startswith("spf ui") for c in ran)
    assert (work / ".spf" / "mlflow.db").is_file() and not (work / "mlruns").exists()
