"""`spf data add FOLDER`: the prepare stage's fast checks first, then data/ under DVC, pushed, committed; the rev it
prints is what the pipeline reads. Bad input stops it before any commit or push."""

from __future__ import annotations

import json
import shutil

import pytest

from spf_lib.data.dvc_io import DATA_REF_FILE, pull_data
from tests._data_helpers import free_port, git, run_cli, two_portraits


@pytest.fixture()
def portraits(tmp_path):
    return two_portraits(tmp_path / "my-portraits")


def _add(capsys, *argv) -> tuple[int, str, str]:
    code = run_cli(["data", "add", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _rev(out: str) -> str:
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("data_rev="))


def test_add_to_a_new_repo_then_read_it_back_from_the_remote(portraits, tmp_path, capsys):
    repo = tmp_path / "data-repo"
    code, out, err = _add(capsys, portraits, "--repo", repo)
    assert code == 0, err
    rev = _rev(out)
    assert git(repo, "rev-parse", "HEAD") == rev and git(repo, "status", "--porcelain") == ""
    assert f"--data-repo {repo} --rev {rev}" in out  # the next command, ready to paste
    # the remote went into git before the data, relative, so any clone of the repo finds it
    assert "url = ../.spf/dvc-remote" in git(repo, "show", f"{rev}~1:.dvc/config")
    assert "data.dvc" not in git(repo, "ls-tree", "--name-only", f"{rev}~1")
    # the data comes back from the remote alone (the workspace copy and the DVC cache are gone)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    ref = pull_data(str(repo), rev, tmp_path / "pulled")
    got = sorted(p.relative_to(ref.path).as_posix() for p in ref.path.rglob("*") if p.is_file())
    assert got == sorted([DATA_REF_FILE, "captions.jsonl", "images/astronaut.png", "images/grace.jpg",
                          "images/grace.jpg.txt"])
    assert (ref.path / "images" / "grace.jpg").read_bytes() == (portraits / "images" / "grace.jpg").read_bytes()


def test_same_folder_again_is_the_same_rev_and_a_change_is_a_new_one(portraits, tmp_path, capsys):
    repo = tmp_path / "data-repo"
    rev1 = _rev(_add(capsys, portraits, "--repo", repo)[1])
    code, out, _ = _add(capsys, portraits, "--repo", repo)
    assert code == 0 and _rev(out) == rev1 and "unchanged" in out
    assert _add(capsys, portraits, "--repo", repo, "-q")[1] == f"{rev1}\n"  # DATA_REV=$(spf data add ... -q)
    (portraits / "images" / "grace.jpg.txt").write_text("a photo of a woman, navy uniform, smiling")
    code, out, _ = _add(capsys, portraits, "--repo", repo, "-m", "recaption grace")
    rev2 = _rev(out)
    assert code == 0 and rev2 != rev1 and git(repo, "log", "-1", "--format=%s") == "recaption grace"
    assert git(repo, "diff", "--name-only", rev1, rev2).split() == ["data.dvc"]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda root: (root / "images" / "broken.png").write_bytes(b"not a png"), "images/broken.png: not_an_image"),
    (lambda root: (root / "images" / "grace.jpg.txt").write_text("x"), "images/grace.jpg: caption_too_short"),
    (lambda root: (root / "captions.jsonl").write_text('{"file": "../../etc/passwd", "caption": "a person"}\n'),
     "../../etc/passwd: path_outside_root"),
])
def test_bad_input_stops_before_any_commit_or_push(portraits, tmp_path, capsys, damage, reason):
    repo = tmp_path / "data-repo"
    assert _add(capsys, portraits, "--repo", repo)[0] == 0
    head = git(repo, "rev-parse", "HEAD")
    remote_files = sorted((repo / ".spf" / "dvc-remote").rglob("*"))
    dvcfile = (repo / "data.dvc").read_text()
    damage(portraits)
    code, out, err = _add(capsys, portraits, "--repo", repo)
    lines = err.strip().splitlines()
    assert code == 2 and "data_rev" not in out
    assert any(reason in line for line in lines[:-1]), err  # one line per bad input, naming file and reason
    assert lines[-1].startswith("error: ") and "nothing was committed or pushed" in lines[-1]
    assert "Traceback" not in err
    assert git(repo, "rev-parse", "HEAD") == head and (repo / "data.dvc").read_text() == dvcfile
    assert sorted((repo / ".spf" / "dvc-remote").rglob("*")) == remote_files


def test_bad_folder_never_creates_a_repo(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _add(capsys, tmp_path / "empty", "--repo", tmp_path / "repo")
    assert code == 2 and "no images found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "repo").exists()


@pytest.mark.integration
def test_add_with_an_s3_remote(portraits, tmp_path, capsys, monkeypatch):
    """A real S3 endpoint (moto on loopback); the endpoint comes from the environment, not from git."""
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        boto3.client("s3").create_bucket(Bucket="portraits")
        repo = tmp_path / "data-repo"
        code, out, err = _add(capsys, portraits, "--repo", repo, "--remote", "s3://portraits/dvc")
        assert code == 0, err
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="portraits")["Contents"]]
        assert len(keys) == 5 and any(k.endswith(".dir") for k in keys)  # 4 files + the directory manifest
        assert endpoint not in (repo / ".dvc" / "config").read_text()
        shutil.rmtree(repo / ".dvc" / "cache")
        ref = pull_data(str(repo), _rev(out), tmp_path / "pulled")
        assert json.loads((ref.path / DATA_REF_FILE).read_text())["data_rev"] == _rev(out)
    finally:
        server.stop()


def test_origin_is_set_and_pushed_to(portraits, tmp_path, capsys):
    """--origin URL: the commit lands where a cluster clones from, and the next command names that URL."""
    bare = tmp_path / "portraits.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    repo = tmp_path / "data-repo"
    code, out, err = _add(capsys, portraits, "--repo", repo, "--origin", bare)
    assert code == 0, err
    rev = _rev(out)
    assert git(bare, "rev-parse", "HEAD") == rev
    assert f"--data-repo {bare} --rev {rev}" in out
