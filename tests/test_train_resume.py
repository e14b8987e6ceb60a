"""Resume really restores adapter, optimizer, scheduler, RNG and step; a SIGKILL mid-save loses nothing good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset, tiny_model  # noqa: E402

HERE = Path(__file__).parent
# Stated tolerance for N + N vs 2N: on one CPU the two runs execute the same ops in the same order, so we expect
# bit equality; we allow 1e-6 absolute to stay valid on backends with non-deterministic reductions.
ATOL = 1e-6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return tiny_model(root), make_dataset(root / "data", n=3)


def _cfg(tmp, env, out, **kw):
    model, data = env
    # dropout + flips + SPF stage switch make the run depend on every restored RNG and on the step counter
    values = dict(method="spf", steps=4, lr=2e-2, lr_scheduler="constant_with_warmup", lr_warmup_steps=2,
                  lora={"dropout": 0.1}, random_flip=True, spf={"stage1_steps": 1, "enh_max_timestep": 1000},
                  validation={"enabled": False}, output_dir=str(out))
    values.update(kw)
    return base_cfg(tmp, model, data, **values)


def test_resume_n_plus_n_equals_2n(env, tmp_path):
    import torch
    from safetensors.torch import load_file

    from spf_lib.train.run import train

    straight = train(_cfg(tmp_path, env, tmp_path / "straight", steps=4))
    first = train(_cfg(tmp_path, env, tmp_path / "split", steps=2))
    assert first.steps == 2
    second = train(_cfg(tmp_path, env, tmp_path / "split", steps=4, resume="latest"))
    assert second.start_step == 2 and second.steps == 4
    assert len(second.losses) == 4
    assert torch.allclose(torch.tensor(second.losses), torch.tensor(straight.losses), atol=ATOL, rtol=0)
    a = load_file(str(Path(straight.adapter_dir) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.adapter_dir) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= ATOL, worst
    # and resume is not vacuous: a run that forgets the optimizer state ends elsewhere
    fresh = train(_cfg(tmp_path, env, tmp_path / "fresh", steps=2, seed=1))
    c = load_file(str(Path(fresh.adapter_dir) / "pytorch_lora_weights.safetensors"))
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-4


CHILD = r"""
import json, pathlib, sys, time
sys.path.insert(0, sys.argv[1])
import spf_lib.train.checkpoint as ck
from spf_lib.train.config import TrainConfig
from spf_lib.train.run import train
signal_file = pathlib.Path(sys.argv[3])
orig = ck._write_optimizer
def slow(state, path):
    orig(state, path)
    if path.parent.name.startswith(".step-000002."):
        signal_file.write_text("mid-save")
        time.sleep(600)
ck._write_optimizer = slow
train(TrainConfig.build("child", **json.loads(pathlib.Path(sys.argv[2]).read_text())))
"""


def test_sigkill_mid_save_keeps_last_good_checkpoint(env, tmp_path):
    from spf_lib.train.checkpoint import list_checkpoints
    from spf_lib.train.run import train

    out = tmp_path / "killed"
    cfg = _cfg(tmp_path, env, out, steps=3, checkpoint_every=1, method="lora")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_json_dict()))
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(HERE), str(cfg_file), str(flag)],
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not flag.exists():
        if proc.poll() is not None:
            pytest.fail(f"child ended early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("child never reached the second checkpoint save")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    ckpts = list_checkpoints(out)
    assert [p.name for p in ckpts] == ["step-000001"]
    assert any(p.name.startswith(".step-000002.") for p in (out / "checkpoints").iterdir()), "partial save ignored"
    assert not (out / "adapter").exists()
    resumed = train(cfg.model_copy(update={"resume": "latest"}))
    assert resumed.start_step == 1 and resumed.steps == 3 and len(resumed.losses) == 3


def test_corrupt_checkpoint_is_one_line_error(env, tmp_path):
    from spf_lib.errors import SpfError
    from spf_lib.train.run import train

    out = tmp_path / "corrupt"
    train(_cfg(tmp_path, env, out, steps=1, method="lora"))
    (out / "checkpoints" / "step-000001" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpfError, match=r"step-000001: unreadable checkpoint"):
        train(_cfg(tmp_path, env, out, steps=2, method="lora", resume="latest"))
