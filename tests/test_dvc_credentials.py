"""Credentials inside DVC/git: a DVC remote URL with ``user:password@`` (committed in .dvc/config, or given as a
remote) reaches DVC, fsspec and aiohttp, which put it into their exceptions and log lines. Real failing calls on
loopback (nothing listening): the password must be absent from the exception (and its traceback), every log record,
everything printed, and whatever the prepare component leaves in KFP's pipeline root."""

from __future__ import annotations

import logging
import subprocess
import traceback

import pytest

from spf_lib.data.dvc_io import pull_data
from spf_lib.data.dvc_versioning import add_data, track_dataset
from spf_lib.errors import SpfError
from tests._data_helpers import free_port, two_portraits

PASSWORD = "Sup3r-S3cret-PW-19"


@pytest.fixture(scope="module")
def leaky_repo(tmp_path_factory):
    """A data repo whose committed DVC remote is http://alice:PASSWORD@127.0.0.1:PORT/dvc (nothing listens there),
    and a fresh clone of it: reading `data` must go to that remote."""
    base = tmp_path_factory.mktemp("leaky")
    port = free_port()
    repo = base / "repo"
    two_portraits(repo / "data")
    rev, _ = track_dataset(repo, remote_url=f"http://alice:{PASSWORD}@127.0.0.1:{port}/dvc", push=False)
    assert PASSWORD in (repo / ".dvc" / "config").read_text()  # the user's mistake the test is about
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    return clone, rev, port


def _assert_clean(exc: BaseException, caplog, capfd) -> str:
    text = "".join(traceback.format_exception(exc))
    assert PASSWORD not in text
    assert caplog.records, "DVC/fsspec logged nothing: the log check would prove nothing"
    for record in caplog.records:
        assert PASSWORD not in record.getMessage(), record.name
    assert PASSWORD not in caplog.text  # formatted, tracebacks included
    out, err = capfd.readouterr()
    assert PASSWORD not in out and PASSWORD not in err
    return str(exc)


def test_pull_from_a_remote_with_a_password(leaky_repo, tmp_path, caplog, capfd):
    clone, rev, port = leaky_repo
    caplog.set_level(logging.DEBUG)  # fsspec logs every request URL at DEBUG
    with pytest.raises(SpfError) as e:
        pull_data(str(clone), rev, tmp_path / "out")
    msg = _assert_clean(e.value, caplog, capfd)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg  # still says where it tried
    assert any(f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)  # the URL was logged, redacted
    assert not (tmp_path / "out").exists()


def test_push_to_a_remote_with_a_password(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    folder = two_portraits(tmp_path / "portraits")
    port = free_port()
    with pytest.raises(SpfError) as e:
        add_data(folder, tmp_path / "repo", remote_url=f"https://bob:{PASSWORD}@127.0.0.1:{port}/store")
    msg = _assert_clean(e.value, caplog, capfd)
    assert msg.startswith("dvc push to remote 'storage' (https://***@127.0.0.1:") and "NOT committed" in msg


def test_git_push_to_an_origin_with_a_password(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    folder = two_portraits(tmp_path / "portraits")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin",
                    f"http://carol:{PASSWORD}@127.0.0.1:{free_port()}/data.git"], check=True)
    with pytest.raises(SpfError) as e:
        add_data(folder, repo, git_push=True, remote_url=str(tmp_path / "store"))
    assert "git push" in _assert_clean(e.value, caplog, capfd)


@pytest.mark.slow
def test_prepare_component_task_log_and_metadata(leaky_repo, tmp_path, monkeypatch, capfd):
    """The prepare component in its own process (kfp.local): its task log (the subprocess's stdout/stderr, which
    the runner relays) and every file it leaves under the pipeline root."""
    import kfp.local

    from components.prepare import prepare_data

    clone, rev, port = leaky_repo
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with pytest.raises(RuntimeError):
        prepare_data(data_repo=str(clone), data_rev=rev, prepare_config={})
    out, err = capfd.readouterr()
    log = out + err
    assert f"127.0.0.1:{port}" in log and "cannot read data" in log  # the task log says what failed ...
    assert PASSWORD not in log  # ... without the password
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:
        assert PASSWORD.encode() not in p.read_bytes(), p


def test_dvc_console_handlers_follow_todays_streams(capsys):
    """``import dvc`` binds its console handlers to the streams of that moment; once those are closed (pytest's
    capture of an earlier test, a notebook cell), DVC's first log line raised LoggingException in place of the
    real error. Every call into the DVC layer re-points them first."""
    import io

    import dvc  # noqa: F401  (binds the handlers)

    from spf_lib.data import dvc_guard

    handlers = [h for h in logging.getLogger("dvc_data").handlers if type(h).__name__ == "LoggerHandler"]
    assert handlers
    closed = io.StringIO()
    closed.close()
    for h in handlers:
        h.stream = closed

    @dvc_guard.scrubbed
    def transfer():
        logging.getLogger("dvc_data").error("failed to transfer '%s'", "md5/00/abc")

    transfer()
    assert "failed to transfer 'md5/00/abc'" in capsys.readouterr().err
