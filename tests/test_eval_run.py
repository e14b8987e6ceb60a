"""evaluate() end to end on the tiny model: the same pipeline with the adapter off/on, metrics.json, the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from spf_lib.errors import SpfError
from spf_lib.eval.run import kfp_metrics, load_metrics
from tests._eval_helpers import (
    SMALL_EVAL_SET,
    eval_config,
    evaluated,
    lora_adapter,
    shared_root,
    tiny_base,
    tiny_clip,
)


@pytest.fixture(scope="module")
def identical(tmp_path_factory):
    """A zero LoRA (B = 0): the tuned model IS the original. Run through the CLI with a config file."""
    from spf_lib.cli.main import main

    root = shared_root(tmp_path_factory)
    base = tiny_base(root)
    adapter = lora_adapter(base, root / "adapter-0-cli", 0.0)
    cfg = root / "eval.yaml"
    cfg.write_text(yaml.safe_dump({"eval_set": SMALL_EVAL_SET, "num_inference_steps": 2, "resolution": 32,
                                   "progress": False, "log_mlflow": False,
                                   "allow_untrained_backbones": True}))  # test only: tiny random CLIP
    out = root / "eval-identical"
    with pytest.raises(SystemExit) as done:  # typer ends a successful command with exit code 0
        main(["evaluate", "--base", str(base), "--adapter", str(adapter), "--output", str(out), "--config",
              str(cfg), "--clip-model", str(tiny_clip(tmp_path_factory))])
    assert done.value.code in (0, None)
    return out


def test_identical_models_give_zero_pollution(identical):
    m = load_metrics(identical)
    assert m["pollution"] == pytest.approx(0.0, abs=1e-6)  # float32 CLIP cosine of equal embeddings is 1 - 1e-8
    assert m["ssim"] == pytest.approx(1.0) and m["pixel_mae"] == 0.0
    assert m["clip_i"] == pytest.approx(1.0, abs=1e-5)  # original and tuned images are the same pixels
    assert m["pollution_clip_i"] == pytest.approx(0.0, abs=1e-5)
    assert m["pollution_detail"]["weights_used"].keys() >= {"ssim", "pixel", "clip_i"}


def test_metrics_json_layout(identical):
    m = load_metrics(identical)
    for key in ("pollution", "id_sim", "clip_t", "clip_t_original", "clip_t_gain", "clip_i", "ssim", "pixel_mae",
                "lpips", "fid", "pollution_identity", "pollution_ssim", "pollution_pixel", "n_base_pairs"):
        assert key in m
        assert m[key] is None or isinstance(m[key], float)
        assert (m[key] is None) == (key in m["unavailable"]), key
    assert m["eval_set"]["name"] == "test-tiny" and len(m["eval_set"]["hash"]) == 64
    assert "no face" in m["unavailable"]["id_sim"]  # tiny random models draw no faces: reported, not faked
    assert "LPIPS" in m["unavailable"]["lpips"]
    assert isinstance(m["clip_t"], float)  # CLIP code path ran (tiny CLIP explicitly allowed)
    assert m["n_base_pairs"] == 2.0 and m["n_target_pairs"] == 2.0
    flat = kfp_metrics(m)
    assert all(isinstance(v, float) for v in flat.values()) and "unavailable" not in flat and "lpips" not in flat
    pairs = json.loads((identical / "pairs.json").read_text())
    assert set(pairs) == {"base_00_s0", "base_00_s1", "target_00_s0", "target_00_s1"}
    for kind in ("original", "tuned", "diff"):
        assert sorted(p.name for p in (identical / "images" / kind).iterdir()) == sorted(f"{k}.png" for k in pairs)
    page = (identical / "report.html").read_text()  # text only: the PNGs above, linked relatively
    assert "data:image" not in page and all(f"src='images/tuned/{k}.png'" in page for k in pairs)


def test_seeds_differ_and_are_reproducible(identical):
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(identical / "images" / "original" / "base_00_s0.png"))
    b = np.asarray(Image.open(identical / "images" / "original" / "base_00_s1.png"))
    t = np.asarray(Image.open(identical / "images" / "tuned" / "base_00_s0.png"))
    assert np.abs(a.astype(int) - b).mean() > 1  # different seeds, different images
    assert (a == t).all()


@pytest.mark.slow  # two more evaluations (~30 s on a busy 2-core machine)
def test_pollution_grows_with_the_adapter_perturbation(tmp_path_factory, identical):
    small = evaluated(tmp_path_factory, 0.05).metrics
    large = evaluated(tmp_path_factory, 0.5).metrics
    assert 0.0 < small["pollution"] < large["pollution"] <= 1.0
    assert small["ssim"] > large["ssim"] and small["pixel_mae"] < large["pixel_mae"]
    assert load_metrics(identical)["pollution"] < 1e-6


def test_untrained_clip_is_refused_without_the_test_flag(tmp_path_factory):
    from spf_lib.eval.clip_score import BackboneUnavailable, load_clip

    with pytest.raises(BackboneUnavailable, match="untrained"):
        load_clip(str(tiny_clip(tmp_path_factory)))
    with pytest.raises(BackboneUnavailable, match="no CLIP model configured"):
        load_clip(None)
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        load_clip("./no/such/clip")


def test_bad_inputs_fail_before_loading_models(tmp_path, tmp_path_factory):
    from spf_lib.eval.config import EvalConfig
    from spf_lib.eval.run import evaluate

    base = tiny_base(shared_root(tmp_path_factory))
    with pytest.raises(SpfError, match="folder does not exist"):
        evaluate(eval_config(tmp_path / "o", tmp_path / "nope", base))
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_info.json").write_text("{bad json")
    with pytest.raises(SpfError, match="adapter_info.json: not valid JSON"):
        evaluate(eval_config(tmp_path / "o", tmp_path / "ad", base))
    assert not (tmp_path / "o").exists()
    keep = tmp_path / "busy"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    adapter = lora_adapter(base, tmp_path / "ad0", 0.0)
    with pytest.raises(SpfError, match="not empty"):
        evaluate(eval_config(keep, adapter, base))
    assert (keep / "precious.txt").read_text() == "x"
    with pytest.raises(SpfError, match=r"pollution_weights: unknown component 'fid'"):
        EvalConfig(base_model="b", adapter_dir="a", output_dir="o", pollution_weights={"fid": 1})
    with pytest.raises(SpfError, match=r"num_inference_steps=0"):
        EvalConfig(base_model="b", adapter_dir="a", output_dir="o", num_inference_steps=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: b\nadapter_dir: a\noutput_dir: o\nstepz: 3\n")
    with pytest.raises(SpfError, match="unknown field"):
        EvalConfig.from_file(cfg)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from spf_lib.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--base", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--adapter" in err and "\n" not in err
