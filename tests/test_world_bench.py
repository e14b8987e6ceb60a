"""`spf bench fidelity` end to end on toy models (slow: trains 7 variants for 2 steps each)."""

from __future__ import annotations

import pytest

from spf_lib.errors import SpfError
from tests._world_helpers import tiny_pretrain


def test_unknown_variant_is_one_clear_error(tmp_path):
    import bench.fidelity as fid

    with pytest.raises(SpfError, match="unknown variant 'ewma'"):
        fid.run({"variants": "naive,ewma", "workdir": str(tmp_path)})


def test_bad_configuration_is_one_clear_error(tmp_path):
    import bench.fidelity as fid

    with pytest.raises(SpfError, match="captions never name"):
        fid.run({"configs": "hair=red:1:2", "workdir": str(tmp_path)})
    with pytest.raises(SpfError, match="background='purple'"):
        fid.run({"configs": "background=purple:1:2", "workdir": str(tmp_path)})


def test_frontier_interpolation():
    import math

    import bench.frontier_report as rep

    path = [(0.0, 0.0), (0.1, 0.2), (0.3, 0.6), (0.25, 0.5)]  # (pollution, target) by step
    assert rep.pollution_at_target(path, 0.4) == pytest.approx(0.2, abs=0.01)   # halfway along the 2nd segment
    assert math.isnan(rep.pollution_at_target(path, 0.7))                      # never reached
    assert rep.target_at_pollution(path, 0.1) == pytest.approx(0.2, abs=0.01)
    assert rep.target_at_pollution(path, 0.26) == pytest.approx(0.52, abs=0.02)  # on the 2nd segment, not the last point


def test_sfcm_gap_figures_read_the_curves():
    """Both w/o-SFCM figures come from the curves: at the lower final pollution, and at SPF's own final pollution."""
    import bench.frontier_report as rep

    def run(variant: str, seed: int, curve: list[tuple[float, float]]) -> dict:
        return {"config": {"name": "A"}, "seed": seed, "variant": variant, "train_s": 1.0,
                "curve": [{"attr_drift": p, "target_rate": t, "target_leak": 0.0} for p, t in curve]}

    runs = [run("spf", 0, [(0, 0), (0.02, 0.1), (0.06, 0.9), (0.05, 1.0)]),
            run("spf w/o SFCM", 0, [(0, 0), (0.045, 0.5), (0.03, 0.4)]),  # ends lower: 0.03 < 0.05
            run("spf", 1, [(0, 0), (0.04, 0.5)]),
            run("spf w/o SFCM", 1, [(0, 0), (0.02, 0.6), (0.08, 0.7)])]  # learns more, for more pollution
    per, _ = rep.summarise(runs, ["spf", "spf w/o SFCM"])
    eq, at_full = per["spf w/o SFCM"]["sfcm_gap"], per["spf w/o SFCM"]["sfcm_gap_at_full"]
    # seed 0 at 0.03: SPF's curve there (on its way to 0.06) is at 0.1 + 0.8/4 ≈ 0.3, the ablation's best 0.4 (its
    # end); at SPF's 0.05 the ablation's best is 0.5 (the checkpoint at 0.045): 1.0 − 0.5
    assert eq[0] == pytest.approx(0.3 - 0.4, abs=0.03) and at_full[0] == pytest.approx(0.5, abs=0.01)
    # seed 1 at 0.04 (both): SPF 0.5, the ablation 0.6 + 0.1/3 on its way to 0.08
    assert eq[1] == pytest.approx(at_full[1]) == pytest.approx(0.5 - 0.633, abs=0.02)


@pytest.mark.slow
def test_fidelity_frontier_quick_on_toy_models(tmp_path, monkeypatch):
    import bench.fidelity as fid
    from spf_lib.world.clip import train_clip
    from spf_lib.world.probes import train_probes

    monkeypatch.setenv("SPF_CACHE", str(tmp_path / "cache"))
    base = tiny_pretrain(tmp_path / "base")
    train_probes(tmp_path / "p", n_images=16, steps=1, batch=4, held_out=4, width=8, threads=1)
    train_clip(tmp_path / "c", n_images=300, steps=1, batch=4, threads=1)
    variants = ["naive", "lora", "spf", "spf w/o SFCM", "spf-paper"]
    opts = {"base": str(base), "probes": str(tmp_path / "p"), "clip": str(tmp_path / "c"), "quick": "1",
            "jobs": "1", "threads": "1", "variants": ",".join(variants), "workdir": str(tmp_path / "w"),
            "plot": str(tmp_path / "frontier.png")}
    res = fid.run(opts)
    assert [r[0] for r in res["rows"]] == variants
    assert all(len(r) == len(res["columns"]) for r in res["rows"])
    runs = res["figures"]["runs"]
    assert len(runs) == len(variants)
    for r in runs:  # step 0 is the original model; checkpoints every 2 of 4 steps
        assert [c["step"] for c in r["curve"]] == [0, 2, 4]
        assert r["curve"][0]["attr_drift"] == 0 and all(0 <= c["target_rate"] <= 1 for c in r["curve"])
    ov = res["figures"]["sfcm_overlap"]["rows"]
    assert {row[0] for row in ov} == set(fid.SFCM_SETTINGS)
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    again = fid.run(opts)  # every run is cached in the workdir
    assert "0 trained now" in again["notes"][-2] or "0 trained now" in " ".join(again["notes"])
    # a run of the method as it was is not reused once the method changes (here: the spf variant's options)
    monkeypatch.setitem(fid.VARIANTS, "spf", ("spf", {"w_out": 0.25}))
    changed = fid.run(opts)
    assert "1 trained now" in " ".join(changed["notes"])


def test_prepared_finetune_set_goes_through_the_data_stage(tmp_path):
    """``-o prepared=1``: the configuration's photos (its own spurious values) at 256 px, then the data stage's
    detection, alignment and crop to 64 px — what `spf demo` trains on."""
    import json

    import pandas as pd
    from PIL import Image

    import bench.fidelity as fid

    cfg = fid.parse_configs("background=blue+expression=neutral:11:321")[0]
    fid._prepared_finetune_set(tmp_path, cfg, 4)
    labels = [json.loads(x) for x in (tmp_path / "photos" / "labels.jsonl").read_text().splitlines()]
    assert {(x["background"], x["expression"]) for x in labels} == {("blue", "neutral")}
    assert Image.open(tmp_path / "photos" / labels[0]["file"]).size == (256, 256)
    df = pd.read_parquet(tmp_path / "ftset" / "manifest.parquet")
    assert 3 <= len(df) <= 4 and "box" in df.columns  # detected faces, at most one photo rejected
    assert all(Image.open(tmp_path / "ftset" / c).size == (64, 64) for c in df["crop_path"])
    assert all(c.endswith(", wearing round glasses") for c in df["caption"])
    summary = json.loads((tmp_path / "ftset" / "prepare_summary.json").read_text())
    assert summary["config"]["padding"] == 0.85  # the demo's framing of the world's faces


def test_every_fidelity_variant_is_a_valid_config():
    """A variant whose options no longer validate (a default changed under it) fails here, not 30 minutes into a
    frontier run."""
    from bench import fidelity as fid

    for name in fid.VARIANTS:
        assert fid.variant_config(name)["method"] in {"naive", "lora", "spf", "celeb-basis", "beyond-inserting"}
