"""`spf bench identity` on the committed small world, at toy settings (slow: 3 trainings of 2 steps)."""

from __future__ import annotations

import pytest

from spf_lib.errors import SpfError


def test_unknown_variant_or_person_is_one_clear_error(tmp_path):
    import bench.identity as bi

    with pytest.raises(SpfError, match="unknown variant 'dreambooth'"):
        bi.run({"variants": "lora,dreambooth", "workdir": str(tmp_path)})
    with pytest.raises(SpfError, match="unknown person 'child'"):
        bi.run({"persons": "old,child", "workdir": str(tmp_path)})


def test_identity_set_is_one_person_with_the_trigger_in_captions(tmp_path):
    import pandas as pd

    from bench.identity import TRIGGER, make_identity_set

    d = make_identity_set(tmp_path / "set", "old", n=3, seed=0, size=64)
    df = pd.read_parquet(d / "manifest.parquet")
    assert len(df) == 3 and all(c.startswith(f"a photo of {TRIGGER} person, ") for c in df["caption"])
    assert all((d / p).is_file() for p in df["crop_path"])


@pytest.mark.slow
def test_identity_bench_runs_the_three_methods(tmp_path):
    import bench.identity as bi

    res = bi.run({"steps": "2", "lora_steps": "2", "n_train": "2", "n_prompts": "1", "n_seeds": "1",
                  "infer_steps": "2", "persons": "old", "jobs": "1", "threads": "1", "workdir": str(tmp_path)})
    names = [r[0] for r in res["rows"]]
    assert names == ["original", *bi.DEFAULT_VARIANTS]
    assert all(len(r) == len(res["columns"]) for r in res["rows"])
    f = res["figures"]
    assert f["original"]["pollution"] == 0
    # Celeb Basis only adds token rows a base prompt never reaches: base prompts are untouched by construction
    assert f["celeb-basis"]["pollution"] == 0
    assert f["celeb-basis"]["params"] > 0 and f["lora"]["params"] > 0
    assert all(0 <= f[n]["identity_rate"] <= 1 for n in names)
