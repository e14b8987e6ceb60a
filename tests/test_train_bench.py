"""`spf bench train-step` runs end to end on the tiny config and reports side-by-side ratios (no timing asserts)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_train_step_bench_tiny():
    from bench.train_step import run

    # four of the variants (each is its own process: all eight took ~6 min of CI); every variant's options are
    # checked below without a run
    asked = ["lora", "spf-default-no-enh", "spf-beside-no-enh", "spf"]
    res = run({"config": "tiny", "steps": "2", "warmup": "1", "batch": "4", "variants": ",".join(asked)})
    names = [r[0] for r in res["rows"]]
    assert names == asked
    v = res["figures"]["variants"]
    assert v["lora"]["time_ratio_vs_lora"] == 1.0
    for name in names[1:]:
        assert v[name]["time_ratio_vs_lora"] > 0 and v[name]["mem_ratio_vs_lora"] > 0
    # CPU: the ratio is of the profiler's exact allocation peaks (RSS sampling missed short peaks)
    assert res["columns"][4] == "step_peak_alloc_mb"
    # the default preserves 1/8 of the samples, the empty prompt on half of those: at batch 4 its schedule repeats
    # every 4 steps, so the 2 steps asked for become 4 and the ratio is of means over them
    assert res["figures"]["config"]["steps"] == 4 and len(v["spf"]["alone_times_s"]) == 4
    d = v["spf-default-no-enh"]
    assert d["time_ratio_vs_lora"] == d["mean_s"] / v["lora"]["mean_s"]
    assert all(v[n]["step_peak_alloc_mb"] > 0 for n in names)
    assert v["spf"]["mem_ratio_vs_lora"] == v["spf"]["step_peak_alloc_mb"] / v["lora"]["step_peak_alloc_mb"]


def test_every_variant_is_a_valid_config():
    from bench.train_step import VARIANTS, share_period
    from spf_lib.train.config import SpfOptions

    for name, v in VARIANTS.items():
        if v["method"] == "spf":
            SpfOptions(**{"image_embedder": "x" if v.get("clip") else None, **v["spf"]})
        assert share_period(name, 2) >= 1


def test_bad_option_is_one_line():
    from bench.train_step import run
    from spf_lib.errors import SpfError

    with pytest.raises(SpfError, match="variants"):
        run({"config": "tiny", "variants": "lora,nope"})
