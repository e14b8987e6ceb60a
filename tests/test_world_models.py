"""World models end to end at toy sizes: pretraining, probes, CLIP, fine-tuning set, naive FT, fidelity scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spf_lib.errors import SpfError
from tests._world_helpers import tiny_pretrain


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    import os

    os.environ.setdefault("SPF_CACHE", str(tmp_path_factory.mktemp("cache")))
    return tiny_pretrain(tmp_path_factory.mktemp("m") / "base")


def test_pretrained_base_is_a_diffusers_pipeline_that_generates(base):
    from diffusers import StableDiffusionPipeline

    from spf_lib.world.fidelity import generate

    summary = json.loads((base / "world_pretrain.json").read_text())
    assert summary["config"]["unet_steps"] == 3 and summary["vae_scaling_factor"] > 0
    assert list(base.glob("unet/*.safetensors")) and not list(base.rglob("*.bin"))
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    a = generate(pipe, ["a photo of a young woman, red hair"] * 2, [1, 1], steps=2, guidance=2.0)
    assert a.shape == (2, 3, 64, 64) and float(a.min()) >= -1 and float(a.max()) <= 1
    assert np.allclose(a[0].numpy(), a[1].numpy(), atol=1e-5)  # same seed, same prompt → same image


def test_pretrain_config_names_bad_values():
    from spf_lib.world.pretrain import PretrainConfig

    with pytest.raises(SpfError, match="keep_phrase"):
        PretrainConfig(keep_phrase=1.5)
    with pytest.raises(SpfError, match="batch"):
        PretrainConfig(batch=0)


def test_probes_train_save_load_predict(tmp_path):
    from spf_lib.world.dataset import render_arrays, to_tensor
    from spf_lib.world.probes import HEADS, Probes, train_probes

    acc = train_probes(tmp_path / "p", n_images=48, steps=3, batch=8, held_out=8, width=8, threads=1)
    assert set(acc) == set(HEADS) and all(0 <= v <= 1 for v in acc.values())
    probes = Probes.load(tmp_path / "p")
    images, _ = render_arrays(4, 0, 64)
    pred = probes.predict(to_tensor(images))
    assert set(pred) == set(HEADS) and all(len(v) == 4 for v in pred.values())
    with pytest.raises(SpfError, match="probes.json"):
        Probes.load(tmp_path)


def test_world_clip_train_save_load(tmp_path):
    from spf_lib.world.clip import WorldClip, train_clip
    from spf_lib.world.dataset import render_arrays, to_tensor

    metrics = train_clip(tmp_path / "c", n_images=300, steps=2, batch=8, threads=1)
    assert 0 <= metrics["target_phrase_accuracy"] <= 1
    clip = WorldClip.load(tmp_path / "c")
    x = to_tensor(render_arrays(2, 0, 64)[0])
    assert np.allclose(clip.clip_i(x, x), 1.0, atol=1e-4)
    assert clip.clip_t(x, ["a photo of a young woman", "red hair"]).shape == (2,)


def test_finetune_set_has_spurious_correlation_and_trainer_layout(tmp_path):
    import pandas as pd

    from spf_lib.world.attributes import TARGET_PHRASE
    from spf_lib.world.finetune import make_finetune_set

    out = make_finetune_set(tmp_path / "ft", n=6)
    df = pd.read_parquet(out / "manifest.parquet")
    assert len(df) == 6 and all((out / p).is_file() for p in df["crop_path"])
    assert all(c.endswith(TARGET_PHRASE) and "background" not in c and "smil" not in c for c in df["caption"])
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert all(lab["glasses"] and lab["background"] == "red" and lab["expression"] == "smiling" for lab in labels)
    from spf_lib.train.data import read_manifest

    ex = read_manifest(out)
    assert ex[0].base_text == ", ".join(ex[0].base_phrases)


def test_naive_finetune_changes_unet_and_fidelity_scores_it(base, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from spf_lib.world.clip import WorldClip, train_clip
    from spf_lib.world.fidelity import generate_all, make_plan, score
    from spf_lib.world.finetune import finetune_naive, make_finetune_set
    from spf_lib.world.probes import Probes, train_probes

    data = make_finetune_set(tmp_path / "ft", n=4)
    out = finetune_naive(base, data, tmp_path / "naive", steps=2, lr=1e-2, batch=2, threads=1)
    tuned_unet = UNet2DConditionModel.from_pretrained(out / "unet")
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(pipe.unet.parameters(), tuned_unet.parameters()))
    assert diff > 0
    train_probes(tmp_path / "p", n_images=16, steps=1, batch=4, held_out=4, width=8, threads=1)
    train_clip(tmp_path / "c", n_images=300, steps=1, batch=4, threads=1)
    probes, clip = Probes.load(tmp_path / "p"), WorldClip.load(tmp_path / "c")
    plan = make_plan(n_prompts=2, n_seeds=1, steps=2)
    original = generate_all(pipe, plan)
    same = score(plan, original, original, probes, clip)
    assert same["attr_drift"] == 0 and same["pixel_mae"] == 0 and same["clip_i"] == pytest.approx(1, abs=1e-4)
    assert same["target_leak"] == 0
    pipe.unet = tuned_unet
    moved = score(plan, original, generate_all(pipe, plan), probes, clip)
    assert moved["pixel_mae"] > 0 and 0 <= moved["target_rate"] <= 1


def test_target_leak_counts_glasses_on_base_prompts_only():
    """leak = glasses rate on the tuned model's BASE-prompt images minus the original's; target images don't count."""
    import numpy as np
    import torch

    from spf_lib.world.attributes import BASE_ATTRIBUTES
    from spf_lib.world.fidelity import Generated, make_plan, score

    class SignProbes:  # reads "glasses" from the image's mean sign, every base attribute as class 0
        def predict(self, x):
            n = x.shape[0]
            return {**{a: np.zeros(n, dtype=int) for a in BASE_ATTRIBUTES},
                    "glasses": (x.mean(dim=(1, 2, 3)) > 0).numpy().astype(int)}

    class FlatClip:
        def clip_i(self, a, b):
            return np.ones(a.shape[0])

        def clip_t(self, x, prompts):
            return np.zeros(x.shape[0])

    plan = make_plan(n_prompts=2, n_seeds=2, steps=1)
    dark = -torch.ones(4, 3, 4, 4)
    bright = dark.clone()
    bright[:3] = 1  # 3 of 4 base images now "wear glasses"
    m = score(plan, Generated(dark, dark), Generated(bright, dark), SignProbes(), FlatClip())
    assert m["target_leak"] == pytest.approx(0.75) and m["target_rate"] == 0 and m["attr_drift"] == 0
    m = score(plan, Generated(dark, dark), Generated(dark, bright), SignProbes(), FlatClip())
    assert m["target_leak"] == 0 and m["target_rate"] == pytest.approx(0.75)
