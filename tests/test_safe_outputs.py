"""Outputs: built beside the target and swapped in only when good; never delete what spf did not write; locked
against a second writer; normal file modes; leftovers of killed runs swept; a failed run keeps the previous output."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import sys
from pathlib import Path

import pytest

from spf_lib.errors import SpfError
from spf_lib.io import MARKER, atomic_dir, atomic_path, output_lock, sweep_stale_temps

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset  # noqa: E402


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_dir_never_replaces_a_folder_spf_did_not_write(tmp_path):
    user = tmp_path / "results"
    user.mkdir()
    (user / "NOTES.txt").write_text("mine")
    with pytest.raises(SpfError, match="not written by spf"):
        with atomic_dir(user) as tmp:
            (tmp / "x").write_text("new")
    assert _tree(user) == {"NOTES.txt": b"mine"}
    assert sorted(os.listdir(tmp_path)) == ["results"]  # no temp, no .old left beside it


def test_atomic_dir_refuses_a_plain_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("a file")
    with pytest.raises(SpfError, match="not a folder"):
        with atomic_dir(f):
            pass
    assert f.read_text() == "a file" and sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_failure_keeps_previous_output_and_success_replaces_it(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (out / MARKER).is_file()
    before = _tree(out)
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("validation failed inside the block")
    assert _tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(_tree(out)) == [MARKER, "b.txt"]


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        with atomic_path(tmp_path / "file.json") as t:
            t.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644


def test_stale_temps_of_dead_writers_are_swept_live_ones_kept(tmp_path):
    import subprocess

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from spf_lib.io import _HOST

    stale = tmp_path / f".out.tmp-{_HOST}-{dead.stdout.strip()}-abcd1234"
    live = tmp_path / f".out.tmp-{_HOST}-{os.getpid()}-abcd1234"
    other = tmp_path / ".not-ours.tmp"
    for p in (stale, live, other):
        p.mkdir()
    assert sweep_stale_temps(tmp_path) == [stale]
    assert live.exists() and other.exists()
    assert set(sweep_stale_temps(tmp_path, all_temps=True)) == {other}  # under a lock: every dot-tmp goes
    assert live.exists()  # still a live writer's (ours)


def _hold(path: str, q, go) -> None:
    try:
        with output_lock(path, what="--output"):
            q.put("held")
            go.wait(10)
        q.put("released")
    except SpfError as e:
        q.put(f"error: {e}")


def test_output_lock_second_writer_gets_one_line(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q, go = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path / "out"), q, go))
    p.start()
    assert q.get(timeout=20) == "held"
    with pytest.raises(SpfError, match="another spf process is writing it") as ei:
        with output_lock(tmp_path / "out", what="--output"):
            pass
    assert "\n" not in str(ei.value)
    go.set()
    assert q.get(timeout=20) == "released"
    p.join(10)
    with output_lock(tmp_path / "out", what="--output"):  # free again once the holder is gone
        pass


def test_lock_beside_a_replaced_folder_leaves_nothing_behind(tmp_path):
    with output_lock(tmp_path / "out", what="--output", inside=False) as lock:
        assert lock.name == ".out.lock" and lock.exists()
    assert os.listdir(tmp_path) == []


# -- prepare: a QA-failing rerun never replaces a good output --------------------------------------------------------

def test_prepare_qa_failing_rerun_keeps_the_good_output(tmp_path):
    from spf_lib.data.config import PrepareConfig
    from spf_lib.data.prepare import prepare_dataset
    from tests._data_helpers import two_portraits

    root = two_portraits(tmp_path / "in")
    out = tmp_path / "work" / "out"
    good = prepare_dataset(root, out, PrepareConfig(size=64, workers=1))
    assert good.qa_passed
    before = _tree(out)
    with pytest.raises(SpfError, match="QA failed for the new output.*previous output.*is kept"):
        prepare_dataset(root, out, PrepareConfig(size=64, workers=1, min_kept=5))
    assert _tree(out) == before
    assert sorted(os.listdir(out.parent)) == ["out"]
    # with nothing good in place, the QA-failing output is put there (its report is the point) ...
    bad_out = tmp_path / "work" / "bad"
    with pytest.raises(SpfError, match="QA failed for"):
        prepare_dataset(root, bad_out, PrepareConfig(size=64, workers=1, min_kept=5))
    assert json.loads((bad_out / "prepare_summary.json").read_text())["qa_passed"] is False
    # ... and training refuses it unless told otherwise
    from spf_lib.train.data import read_manifest

    with pytest.raises(SpfError, match="data QA failed.*--allow-failed-qa"):
        read_manifest(bad_out)
    assert len(read_manifest(bad_out, allow_failed_qa=True)) == 2
    assert len(read_manifest(out)) == 2


def test_prepare_refuses_an_output_holding_user_files(tmp_path):
    from spf_lib.data.prepare import prepare_dataset
    from tests._data_helpers import two_portraits

    root = two_portraits(tmp_path / "in")
    out = tmp_path / "results"
    out.mkdir()
    (out / "NOTES.txt").write_text("keep me")
    with pytest.raises(SpfError, match="not written by spf"):
        prepare_dataset(root, out)
    assert _tree(out) == {"NOTES.txt": b"keep me"}


# -- training: lock, leftovers, resume fallback ------------------------------------------------------------------------

def _stub_train(cfg, out, started, go):
    """Stands in for the training loop: only the lock in ``train()`` is under test (see test docstring)."""
    started.put(os.getpid())
    assert go.wait(10), "the parent never released the winner"
    (Path(out) / "winner").write_text(str(os.getpid()))
    return "trained"


def _run_train(cfg_json, started, go, results):
    import spf_lib.train.run as run
    from spf_lib.train.config import TrainConfig

    run._train_locked = lambda cfg, out: _stub_train(cfg, out, started, go)
    try:
        results.put(("ok", run.train(TrainConfig.model_validate_json(cfg_json))))
    except SpfError as e:
        results.put(("error", str(e)))


def test_two_trainings_on_one_folder_20_trials(tmp_path):
    """The training loop is replaced by a stub that waits until the parent releases it, so each trial holds the
    lock exactly while the second `train()` tries to take it: 20 trials run in seconds and the lock is the only
    thing that decides. A broken lock lets both reach the stub, and the trial fails. A real two-process `spf train`
    race is `test_two_spf_train_processes_on_one_folder` below."""
    ctx = multiprocessing.get_context("fork")
    data = make_dataset(tmp_path / "data", n=2)
    outcomes = []
    for trial in range(20):
        out = tmp_path / f"out{trial}"
        cfg = base_cfg(tmp_path, tmp_path / "no-model-needed", data, output_dir=str(out))
        started, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_run_train, args=(cfg.model_dump_json(), started, go, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        first = results.get(timeout=30)  # the loser answers while the winner waits in the stub
        go.set()
        second = results.get(timeout=30)
        for p in procs:
            p.join(10)
        kinds = sorted([first[0], second[0]])
        outcomes.append(kinds)
        assert kinds == ["error", "ok"], (trial, first, second)
        msg = first[1] if first[0] == "error" else second[1]
        assert "another spf process is writing it" in msg and "\n" not in msg
        assert started.qsize() == 1
    assert outcomes == [["error", "ok"]] * 20
    print(f"\ntwo trainings on one folder: {len(outcomes)} trials, one trained and the other got one line in "
          f"{outcomes.count(['error', 'ok'])}, failures: {len(outcomes) - outcomes.count(['error', 'ok'])}")


def test_train_sweeps_leftovers_and_resume_latest_falls_back(tmp_path, tiny_model_dir, caplog):
    import logging

    from spf_lib.train.run import train

    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "out"
    cfg = base_cfg(tmp_path, tiny_model_dir, data, output_dir=str(out), steps=2, checkpoint_every=1,
                   checkpoints_total_limit=3, validation={"enabled": False})
    train(cfg)
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000001", "step-000002"]
    # a killed save's leftovers, and a corrupt newest checkpoint
    (out / "checkpoints" / ".step-000003.tmp-x").mkdir()
    (out / ".adapter.abcd.tmp").mkdir()
    (ckpts[-1] / "trainable.safetensors").write_bytes(b"\x00" * 10)
    with caplog.at_level(logging.WARNING):
        r = train(cfg.model_copy(update={"steps": 3, "resume": "latest"}))
    assert r.start_step == 1 and r.steps == 3
    assert "resumed from" in caplog.text and "step-000001" in caplog.text
    assert not (out / "checkpoints" / ".step-000003.tmp-x").exists() and not (out / ".adapter.abcd.tmp").exists()
    # a checkpoint beyond the configured steps is refused with one line
    with pytest.raises(SpfError, match="checkpoint is at step 3 but steps=2"):
        train(cfg.model_copy(update={"steps": 2, "resume": "step-000003"}))


def test_train_refuses_qa_failed_data_and_bad_device(tmp_path, tiny_model_dir):
    from spf_lib.train.run import train

    data = make_dataset(tmp_path / "data", n=2)
    (data / "prepare_summary.json").write_text(json.dumps({"qa_passed": False, "qa_failed": ["min_kept"]}))
    cfg = base_cfg(tmp_path, tiny_model_dir, data, validation={"enabled": False})
    with pytest.raises(SpfError, match=r"data QA failed \(min_kept\)"):
        train(cfg)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SpfError, match="device='cuda:7': no CUDA device"):
            train(cfg.model_copy(update={"device": "cuda:7", "allow_failed_qa": True}))
    r = train(cfg.model_copy(update={"allow_failed_qa": True, "steps": 1}))
    assert r.steps == 1


@pytest.mark.slow
def test_two_spf_train_processes_on_one_folder(tmp_path, tiny_model_dir):
    """The real thing once: two `spf train` processes on one --output, started together. One trains; the other
    stops at the lock with one line. (20 cheap trials of the same lock: the stubbed test above.)"""
    import subprocess

    data = make_dataset(tmp_path / "data", n=2)
    argv = [sys.executable, "-m", "spf_lib.cli.main", "train", "--base-model", str(tiny_model_dir), "--data",
            str(data), "--output", str(tmp_path / "out"), "--steps", "4", "--resolution", "64", "--device", "cpu"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    errors = [ln for ln in loser.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "another spf process is writing it" in errors[0] and "Traceback" not in loser
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["steps"] == 4
