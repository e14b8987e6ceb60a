"""`spf bench fidelity` end to end on toy models (slow: trains 7 variants for 2 steps each)."""

from __future__ import annotations

import pytest

from spf_lib.errors import SpfError
from tests._world_helpers import tiny_pretrain


def test_unknown_variant_is_one_clear_error(tmp_path):
    import bench.fidelity as fid

    with pytest.raises(SpfError, match="unknown variant 'ewma'"):
        fid.run({"variants": "naive,ewma", "workdir": str(tmp_path)})


@pytest.mark.slow
def test_fidelity_bench_runs_every_variant_on_toy_models(tmp_path, monkeypatch):
    import bench.fidelity as fid
    from spf_lib.world.clip import train_clip
    from spf_lib.world.probes import train_probes

    monkeypatch.setenv("SPF_CACHE", str(tmp_path / "cache"))
    base = tiny_pretrain(tmp_path / "base")
    train_probes(tmp_path / "p", n_images=16, steps=1, batch=4, held_out=4, width=8, threads=1)
    train_clip(tmp_path / "c", n_images=300, steps=1, batch=4, threads=1)
    res = fid.run({"base": str(base), "probes": str(tmp_path / "p"), "clip": str(tmp_path / "c"), "steps": "2",
                   "lora_steps": "2", "n_ft": "4", "n_prompts": "2", "n_seeds": "1", "infer_steps": "2",
                   "batch": "2", "threads": "1", "workdir": str(tmp_path / "w")})
    names = [r[0] for r in res["rows"]]
    assert names == ["original", *fid.VARIANTS]
    assert all(len(r) == len(res["columns"]) for r in res["rows"])
    assert res["figures"]["original"]["attr_drift"] == 0
    assert all(0 <= res["figures"][n]["target_rate"] <= 1 for n in fid.VARIANTS)
