"""Server-side failures of `spf pipeline upload|submit|schedule|retrain-if-changed` end in ONE line, exit 2.

Against the recording KFP API (tests/_kube_helpers.FakeKfp) answering 401 or 5xx, and against a closed port.
"""

import socket
import subprocess

import pytest

from spf_lib.cli.main import main
from tests._kube_helpers import API, FakeKfp, compile_to, tiny_pipeline


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "spf.yaml"
    compile_to(tiny_pipeline, path)
    return path


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp keeps a context file under ~/.config/kfp
    monkeypatch.setenv("SPF_HOME", str(tmp_path / ".spf"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "good")
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "data-repo"
    repo.mkdir()
    (repo / "data.dvc").write_text("outs:\n- md5: " + "1" * 32 + ".dir\n  path: data\n")
    for args in (["init", "-q"], ["add", "data.dvc"],
                 ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    return repo


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(package, repo) -> dict[str, list[str]]:
    return {
        "upload": ["pipeline", "upload", "--package", str(package), "--version", "v1"],
        "submit": ["pipeline", "submit", "--package", str(package), "-p", "data_rev=abc"],
        "schedule": ["pipeline", "schedule", "--cron", "@daily"],
        "retrain-if-changed": ["pipeline", "retrain-if-changed", "--dvc-file", str(repo / "data.dvc"),
                               "--package", str(package)],
    }


def one_line_failure(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    return err


NAMES = ["upload", "submit", "schedule", "retrain-if-changed"]


@pytest.mark.parametrize("name", NAMES)
def test_unreachable_host(name, env, package, capsys):
    host = f"http://127.0.0.1:{closed_port()}"
    err = one_line_failure([*commands(package, env)[name], "--host", host], capsys)
    assert f"{host}: cannot reach Kubeflow Pipelines (Connection refused)" in err


@pytest.mark.parametrize("name", NAMES)
def test_wrong_token(name, env, package, capsys, monkeypatch):
    with FakeKfp() as server:
        server.required_token = "good"
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "stale")
        err = one_line_failure([*commands(package, env)[name], "--host", server.host], capsys)
        assert f"{server.host}: authentication refused (HTTP 401" in err and "KF_PIPELINES_TOKEN" in err
        assert "stale" not in err  # the token itself is never echoed
        assert len(server.requests) == 1  # no retry loop on the health probe


@pytest.mark.parametrize(("name", "failing"), [
    ("upload", ("POST", f"{API}/pipelines")),
    ("submit", ("POST", f"{API}/runs")),
    ("schedule", ("GET", f"{API}/pipelines")),
    ("retrain-if-changed", ("POST", f"{API}/experiments")),
])
@pytest.mark.parametrize("status", [503, 404])
def test_server_error_answer(name, failing, status, env, package, capsys):
    with FakeKfp() as server:
        server.fail[failing] = status
        err = one_line_failure([*commands(package, env)[name], "--host", server.host], capsys)
        assert f"{server.host}: Kubeflow Pipelines answered HTTP {status}" in err
        assert f"injected failure for {failing[0]} {failing[1]}" in err


def test_unreachable_tracking_server_in_retrain(env, package, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("SPF_REGISTRY_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    err = one_line_failure(commands(package, env)["retrain-if-changed"], capsys)
    assert "MLflow tracking server http://127.0.0.1:" in err and "unreachable" in err
