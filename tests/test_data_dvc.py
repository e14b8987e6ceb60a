"""DVC versioning with a local-folder remote: two revisions, pulled at each revision from fresh clones."""

from __future__ import annotations

import json
import shutil

import pytest

from spf_lib.data.dvc_io import DATA_REF_FILE, pull_data
from spf_lib.data.dvc_versioning import track_dataset
from spf_lib.errors import SpfError
from tests._data_helpers import git, make_data_repo, run_cli


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("dvc")
    repo, revs = make_data_repo(base, str(base / "remote"))
    return base, repo, revs


def test_track_makes_two_revisions(data_repo):
    base, repo, revs = data_repo
    (rev1, h1), (rev2, h2) = revs
    assert rev1 != rev2 and h1 != h2 and h1.endswith(".dir")
    assert git(repo, "rev-parse", "HEAD") == rev2
    # the remote was committed before the first data commit: every data revision carries it
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert "storage" in git(repo, "show", f"{first}:.dvc/config")
    assert "data.dvc" not in git(repo, "ls-tree", "--name-only", first)
    # nothing changed -> no new commit
    assert track_dataset(repo, remote_url=str(base / "remote"), message="again") == (rev2, h2)


def test_pull_each_revision_in_fresh_clone(data_repo, tmp_path):
    _base, repo, revs = data_repo
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    for i, (rev, h) in enumerate(revs):
        ref = pull_data(str(clone), rev, tmp_path / f"p{i}")
        assert (ref.rev, ref.data_hash) == (rev, h)
        files = sorted(p.relative_to(ref.path).as_posix() for p in ref.path.rglob("*") if p.is_file())
        expected = {"captions.jsonl", "images/astronaut.png", "images/grace.jpg", "images/grace.jpg.txt"}
        if i == 1:
            expected.add("images/grace_mirror.png")
        assert set(files) == expected | {DATA_REF_FILE}
        assert json.loads((ref.path / DATA_REF_FILE).read_text())["data_hash"] == h
    assert (tmp_path / "p0" / "images" / "grace.jpg").read_bytes() == (repo / "data" / "images" / "grace.jpg").read_bytes()


def test_pull_reads_remote_not_workspace(data_repo, tmp_path):
    """With the repo's own cache gone, data must come from the remote."""
    base, repo, revs = data_repo
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    remote = base / "remote"
    hidden = base / "remote_hidden"
    remote.rename(hidden)
    try:
        with pytest.raises(SpfError, match=r"--repo .* @ "):
            pull_data(str(clone), revs[0][0], tmp_path / "p")
        assert not (tmp_path / "p").exists()
    finally:
        hidden.rename(remote)
    assert pull_data(str(clone), revs[0][0], tmp_path / "p").data_hash == revs[0][1]


def test_cli_pull_errors_are_one_line(data_repo, tmp_path, capsys):
    _, repo, _ = data_repo
    assert run_cli(["data", "pull", "--repo", str(repo), "--rev", "no-such-rev", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --repo") and "no-such-rev" in err and "\n" not in err
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert run_cli(["data", "pull", "--repo", str(repo), "--rev", first, "--output", str(tmp_path / "y")]) == 2
    assert "no data.dvc" in capsys.readouterr().err


def test_track_refuses_missing_folder(tmp_path):
    with pytest.raises(SpfError, match="not a folder"):
        track_dataset(tmp_path, remote_url=str(tmp_path / "r"))
    shutil.rmtree(tmp_path, ignore_errors=True)
