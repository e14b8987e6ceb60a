"""A private data repository: the token reaches the prepare task from a Kubernetes Secret (the compiled pipeline
names the Secret, never a value) and the clone (a real git server that wants HTTP Basic auth); it never reaches a
message, the run parameters or the lineage."""

import subprocess
from pathlib import Path

import pytest
import yaml

from spf_lib.data.dvc_io import pull_data
from spf_lib.errors import SpfError
from tests._data_helpers import run_cli, two_portraits
from tests._git_http import PrivateGitServer

TOKEN = "glpat-s3cr3t-T0ken"


def test_compiled_pipeline_names_the_git_secrets_only_for_prepare(tmp_path, monkeypatch):
    from pipelines.portrait import compile_pipeline

    monkeypatch.setenv("SPF_GIT_TOKEN", TOKEN)  # a token in the compiling shell must not leak into the YAML
    text = Path(compile_pipeline(str(tmp_path / "p.yaml"), version="t")).read_text()
    assert TOKEN not in text
    executors = list(yaml.safe_load_all(text))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    prep = executors["exec-prepare-data"]
    (git_env,) = [s for s in prep["secretAsEnv"] if s.get("secretName") == "spf-git"]
    assert git_env["optional"] is True
    assert {k["secretKey"]: k["envVar"] for k in git_env["keyToEnv"]} == {"GIT_TOKEN": "SPF_GIT_TOKEN",
                                                                          "GIT_USERNAME": "SPF_GIT_USERNAME"}
    (ssh,) = prep["secretAsVolume"]
    assert (ssh["secretName"], ssh["mountPath"], ssh["optional"]) == ("spf-git-ssh", "/etc/spf/git-ssh", True)
    for name, ex in executors.items():
        if name != "exec-prepare-data":
            assert "spf-git" not in yaml.safe_dump(ex), name


@pytest.fixture(scope="module")
def private_repo(tmp_path_factory):
    """A data repo made by `spf data add` (remote: an absolute folder, as a shared store would be), served by
    a git host that wants user 'oauth2' + TOKEN."""
    base = tmp_path_factory.mktemp("private")
    repo = base / "srv" / "portraits"
    folder = two_portraits(base / "portraits")
    assert run_cli(["data", "add", str(folder), "--repo", str(repo), "--remote", str(base / "store")]) == 0
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                         check=True).stdout.strip()
    with PrivateGitServer(base / "srv", "oauth2", TOKEN) as server:
        yield f"{server.url}/portraits/.git", rev, server


def test_token_from_env_clones_the_private_repo(private_repo, tmp_path, monkeypatch):
    url, rev, server = private_repo
    monkeypatch.setenv("SPF_GIT_TOKEN", TOKEN)
    ref = pull_data(url, rev, tmp_path / "pulled")
    assert ref.rev == rev and (ref.path / "images" / "grace.jpg").is_file()
    assert TOKEN not in (ref.path / ".spf_data_ref.json").read_text()  # the lineage keeps the plain URL
    assert any(a and a.startswith("Basic ") for a in server.seen_auth)


@pytest.mark.parametrize("token", [None, "wrong-token-123"])
def test_without_the_right_token_one_line_and_no_secret_in_it(private_repo, tmp_path, monkeypatch, token):
    url, rev, _ = private_repo
    if token:
        monkeypatch.setenv("SPF_GIT_TOKEN", token)
    else:
        monkeypatch.delenv("SPF_GIT_TOKEN", raising=False)
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    with pytest.raises(SpfError) as e:
        pull_data(url, rev, tmp_path / "pulled")
    msg = str(e.value)
    assert msg.startswith(f"--repo {url} @ {rev}") and "\n" not in msg
    assert not token or token not in msg
    assert not (tmp_path / "pulled").exists()


@pytest.mark.parametrize("argv", [
    ["pipeline", "submit", "--pipeline", "spf-portrait", "--data-repo", f"https://u:{TOKEN}@git.example.com/p.git"],
    ["pipeline", "schedule", "--cron", "@daily", "-p", f"data_repo=https://u:{TOKEN}@git.example.com/p.git"],
])
def test_credentials_inside_the_url_are_refused(tmp_path, argv, capsys):
    with pytest.raises(SpfError, match="carries a password or token"):
        pull_data(f"https://oauth2:{TOKEN}@git.example.com/portraits.git", "main", tmp_path / "x")
    assert run_cli([*argv, "--host", "http://127.0.0.1:9"]) == 2  # refused before any connection is tried
    err = capsys.readouterr().err
    assert "data_repo: the URL carries a password or token" in err and TOKEN not in err
