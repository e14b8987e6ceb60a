"""A repository whose committed data.dvc is regenerated data (this project's layout): on a fresh clone, with no data,
no cache and an empty local remote, `committed_data_rev` regenerates data/, checks it against data.dvc, pushes it,
and the pipeline's reader gets that data at HEAD. Nothing is committed by it."""

import shutil
import subprocess
import sys
from functools import partial

import pytest

from spf_lib.data.dvc_io import pull_data
from spf_lib.data.dvc_versioning import committed_data_rev
from spf_lib.demo import synth_demo_data
from spf_lib.errors import SpfError
from tests._data_helpers import git

regenerate = partial(synth_demo_data, n=4, seed=3)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The project as committed: .dvc/config with a relative local remote, data.dvc, data/ git-ignored."""
    repo = tmp_path_factory.mktemp("up") / "project"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]  # the venv's dvc, whatever PATH says
    for args in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "remote", "add", "-d", "storage",
                                                                 ".spf/dvc-remote"]):
        subprocess.run(args, cwd=repo, check=True, capture_output=True)
    regenerate(repo / "data")
    subprocess.run([*dvc, "add", "-q", "data"], cwd=repo, check=True, capture_output=True)
    (repo / ".gitignore").write_text("/data\n/.spf/\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data")
    return repo


@pytest.fixture()
def clone(upstream, tmp_path):
    path = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream), str(path))
    return path


def test_fresh_clone_regenerates_pushes_and_reads_at_head(clone, tmp_path):
    assert not (clone / "data").exists() and not (clone / ".spf").exists()
    rev, md5 = committed_data_rev(clone, regenerate=regenerate)
    assert rev == git(clone, "rev-parse", "HEAD") and md5.endswith(".dir")
    assert git(clone, "status", "--porcelain") == ""  # nothing for the user to commit
    # the data at that commit now comes from the clone's own local remote, without the workspace or cache
    shutil.rmtree(clone / "data")
    shutil.rmtree(clone / ".dvc" / "cache")
    ref = pull_data(str(clone), rev, tmp_path / "pulled")
    assert ref.data_hash == md5 and len(list((ref.path / "images").iterdir())) == 4
    # and a second call finds everything in place
    assert committed_data_rev(clone, regenerate=None) == (rev, md5)


def test_generator_that_drifted_is_named(clone):
    with pytest.raises(SpfError, match="does not match .*data.dvc"):
        committed_data_rev(clone, regenerate=partial(synth_demo_data, n=4, seed=4))


def test_uncommitted_data_dvc_is_refused(clone):
    (clone / "data.dvc").write_text((clone / "data.dvc").read_text().replace("nfiles", "nfiles_"))
    with pytest.raises(SpfError, match="uncommitted changes"):
        committed_data_rev(clone, regenerate=regenerate)


def test_not_a_data_checkout_is_none(tmp_path):
    assert committed_data_rev(tmp_path) is None


def test_a_cluster_reads_the_same_rev_from_its_own_store(upstream, clone, tmp_path, monkeypatch):
    """SPF_DVC_REMOTE_URL (the spf-config ConfigMap on a cluster) replaces the committed laptop-folder remote."""
    rev, md5 = committed_data_rev(clone, regenerate=regenerate)  # pushes into clone/.spf/dvc-remote
    assert not (upstream / ".spf" / "dvc-remote").exists()
    shutil.rmtree(upstream / ".dvc" / "cache", ignore_errors=True)
    monkeypatch.setenv("SPF_DVC_REMOTE_URL", str(clone / ".spf" / "dvc-remote"))
    ref = pull_data(str(upstream), rev, tmp_path / "pulled")
    assert ref.data_hash == md5


def test_spf_data_synth_leaves_dvc_status_clean(clone, capsys):
    """`spf data synth` regenerates data/ byte for byte and fills the DVC cache, so `dvc status` has nothing to say;
    a different set is written as asked, with a note that it is not what data.dvc records."""
    from dvc.repo import Repo

    from tests._data_helpers import run_cli

    assert run_cli(["data", "synth", "--output", str(clone / "data"), "--n", "4", "--seed", "3"]) == 0
    assert "matches data.dvc" in capsys.readouterr().out
    with Repo(str(clone)) as repo:
        assert repo.status() == {}
    assert git(clone, "status", "--porcelain") == ""
    assert run_cli(["data", "synth", "--output", str(clone / "data"), "--n", "4", "--seed", "5"]) == 0
    assert "note: " in capsys.readouterr().err
    with Repo(str(clone)) as repo:
        assert repo.status() != {}
