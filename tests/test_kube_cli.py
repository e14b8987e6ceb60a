"""`spf pipeline upload|submit|schedule|retrain-if-changed` end to end against a recording KFP API."""

import json
import subprocess
import sys

import pytest

from spf_lib.cli.main import main
from tests._kube_helpers import API, REPO, FakeKfp, compile_to, tiny_pipeline


@pytest.fixture()
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok")
    with FakeKfp() as s:
        yield s


def _run(argv, capsys) -> dict:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_upload_submit_schedule(server, tmp_path, capsys):
    pkg = tmp_path / "p.yaml"
    compile_to(tiny_pipeline, pkg)
    up = _run(["pipeline", "upload", "--package", str(pkg), "--version", "v1", "--host", server.host], capsys)
    assert up["version"] == "v1" and up["version_id"].startswith("version-")
    run = _run(["pipeline", "submit", "--pipeline", "spf-portrait", "--host", server.host,
                "-p", "accelerator_count=2", "-p", 'node_selector={"pool": "l4"}', "-p", "data_rev=abc"],
               capsys)
    body = server.calls("POST", f"{API}/runs")[0]["json"]
    assert run["run_id"].startswith("run-")
    assert body["runtime_config"]["parameters"] == {"accelerator_count": 2, "node_selector": {"pool": "l4"},
                                                    "data_rev": "abc"}
    sched = _run(["pipeline", "schedule", "--cron", "0 4 * * *", "--host", server.host], capsys)
    assert sched["cron"] == "0 0 4 * * *"
    rr = server.calls("POST", f"{API}/recurringruns")[0]["json"]
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * *" and rr["max_concurrency"] == 1
    assert {r["headers"]["authorization"] for r in server.requests} == {"Bearer tok"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["pipeline", "schedule", "--cron", "0 0 * * 9"], "day-of-week"),
     (["pipeline", "submit", "--pipeline", "x", "-p", "novalue"], "--param 'novalue'"),
     (["pipeline", "upload", "--package", "/nonexistent.yaml"], "/nonexistent.yaml: pipeline package not found")],
)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_import_does_not_load_kfp():
    code = "import sys, spf_lib.cli.main; print('kfp' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
