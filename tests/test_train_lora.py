"""LoRA end to end through the shared loop: output folder contract, adapter loadable, config errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _train_helpers import base_cfg, make_dataset, tiny_model

from spf_lib.errors import SpfError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_lora")
    return tiny_model(root), make_dataset(root / "data")


@pytest.fixture(scope="module")
def lora_run(env, tmp_path_factory):
    from spf_lib.train.run import train

    model, data = env
    tmp = tmp_path_factory.mktemp("run")
    cfg = base_cfg(tmp, model, data, steps=3, lr=5e-2)
    return cfg, train(cfg)


def test_output_folder_contract(lora_run):
    cfg, res = lora_run
    out = Path(cfg.output_dir)
    assert res.steps == 3 and len(res.losses) == 3 and res.final_loss == res.losses[-1]
    assert (out / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    info = json.loads((out / "adapter" / "adapter_info.json").read_text())
    assert info["method"] == "lora" and info["format"] == "lora" and info["config_hash"] == res.config_hash
    assert json.loads((out / "train_config.json").read_text())["steps"] == 3
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["losses"] == res.losses and summary["mlflow_run_id"] is None
    assert Path(res.samples[-1]).is_file() and res.checkpoints[-1].endswith("step-000003")


def test_adapter_loads_and_switches_same_pipeline(lora_run, env):
    import torch

    from spf_lib.methods import load_adapter
    from spf_lib.models.loading import load_pipeline

    _, res = lora_run
    model, _ = env

    def gen(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe("a photo of a woman", num_inference_steps=2, height=64, width=64, generator=g,
                    output_type="np").images

    pipe = load_pipeline(str(model))
    before = gen(pipe)
    handle = load_adapter(pipe, res.adapter_dir)
    tuned = gen(pipe)
    handle.disable()
    off = gen(pipe)
    assert (off == before).all(), "adapter disabled must give the base model's output exactly"
    assert abs(tuned - before).max() > 1e-4, "the trained adapter must change the output"


def test_bad_config_names_field(env, tmp_path):
    model, data = env
    with pytest.raises(SpfError, match=r"lora.rank=0"):
        base_cfg(tmp_path, model, data, lora={"rank": 0})
    with pytest.raises(SpfError, match=r"mixed_precision='fp8'"):
        base_cfg(tmp_path, model, data, mixed_precision="fp8")
    with pytest.raises(SpfError, match=r"spf.stage1_steps=9 exceeds steps=2"):
        base_cfg(tmp_path, model, data, method="spf", spf={"stage1_steps": 9})


def test_bad_manifest_is_one_line(env, tmp_path):
    import pandas as pd

    from spf_lib.train.run import train

    model, _ = env
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.DataFrame([{"crop_path": "crops/x.png", "caption": "a", "base_phrases": [], "target_phrase": None}]).to_parquet(
        bad / "manifest.parquet")
    with pytest.raises(SpfError, match=r"crop_path='crops/x.png' does not exist"):
        train(base_cfg(tmp_path, model, bad))


def test_cli_config_file_and_error(env, tmp_path, capsys):
    from spf_lib.cli.main import main

    model, data = env
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"base_model": str(model), "data_dir": str(data), "output_dir": str(tmp_path / "o"),
                                    "steps": 1, "resolution": 64, "device": "cpu", "validation": {"enabled": False}}))
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(cfg_file), "--steps", "0"])
    assert e.value.code == 2 and "steps=0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(cfg_file), "--method", "lora"])
    assert e.value.code in (0, None)
    assert (tmp_path / "o" / "adapter" / "adapter_info.json").is_file()


def test_bf16_keeps_lora_fp32_and_grad_accum(env, tmp_path):
    import torch

    from spf_lib.train.run import Trainer

    model, data = env
    tr = Trainer(base_cfg(tmp_path, model, data, method="spf", mixed_precision="bf16", grad_accum=2, steps=2, spf={"stage1_steps": 0},
                          validation={"enabled": False}))
    assert all(p.dtype == torch.float32 for p in tr.params)
    assert base_cfg(tmp_path, model, data, method="spf", steps=5).spf.stage1_steps == 0  # default: align at once
    assert base_cfg(tmp_path, model, data, method="spf", steps=5, spf={"stage1_steps": None}).spf.stage1_steps == 2  # None: half
    frozen = [p for n, p in tr.ctx.unet.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    logs = tr.train_step()
    assert tr.step == 1 and torch.isfinite(torch.tensor(logs["loss"])) and "loss_text" in logs
    assert tr.source.indices(0, 1) != tr.source.indices(0, 0)  # accumulation sees different examples
