"""prepare_dataset on real faces: layout, manifest contents, captions, QA outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spf_lib.data.config import PrepareConfig
from spf_lib.data.prepare import prepare_dataset
from spf_lib.errors import SpfError
from tests._data_helpers import read_rejected, two_portraits


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = two_portraits(tmp_path_factory.mktemp("in"))
    out = tmp_path_factory.mktemp("work") / "out"
    result = prepare_dataset(root, out, PrepareConfig(size=128, workers=1))
    return root, out, result


def test_layout_and_counts(prepared):
    _root, out, result = prepared
    assert result.n_input == 2 and result.n_kept == 2 and result.n_rejected == 0
    assert result.qa_passed and result.qa_failed == []
    for rel in ("manifest.parquet", "rejected.csv", "qa/summary.json", "qa/report.html", "qa/data_docs/index.html",
                "prepare_summary.json"):
        assert (out / rel).is_file(), rel
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["n_input"] == 2 and summary["qa_passed"] is True
    assert summary["config"]["size"] == 128
    assert read_rejected(out) == {}
    docs = list((out / "qa" / "data_docs" / "validations").rglob("*.html"))
    assert docs, "GX validation page missing"


def test_manifest_rows(prepared):
    root, out, _ = prepared
    df = pd.read_parquet(out / "manifest.parquet").set_index("source_path")
    assert sorted(df.index) == ["images/astronaut.png", "images/grace.jpg"]
    assert df["id"].is_unique
    for src, row in df.iterrows():
        crop = out / row["crop_path"]
        with Image.open(crop) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= row["img_w"] and 0 <= y0 < y1 <= row["img_h"]
        assert len(row["landmarks"]) == 5
        # the landmarks of a real face lie inside (or at the edge of) its detection box
        pts = np.array(row["landmarks"].tolist())
        assert (pts[:, 0] >= x0 - 5).all() and (pts[:, 0] <= x1 + 5).all()
        assert row["det_score"] > 0 and row["blur"] > 20
        import hashlib

        assert row["sha256"] == hashlib.sha256((root / src).read_bytes()).hexdigest()
    grace = df.loc["images/grace.jpg"]
    assert grace["caption"] == "a photo of a woman, navy uniform, dark background, Wearing Round Glasses"
    assert grace["target_phrase"] == "Wearing Round Glasses"
    assert list(grace["base_phrases"]) == ["a photo of a woman", "navy uniform", "dark background"]
    assert grace["caption_source"] == "sidecar"
    astro = df.loc["images/astronaut.png"]
    assert pd.isna(astro["target_phrase"])
    assert list(astro["base_phrases"]) == ["a photo of a woman", "short hair", "spacesuit", "flag background"]
    assert astro["caption_source"] == "jsonl:1"


def test_crop_is_aligned_face(prepared):
    """The aligned crop of the astronaut is itself detectable as one face, roughly centred (FFHQ-style chip)."""
    from spf_lib.data.faces import FaceModels

    _, out, _ = prepared
    df = pd.read_parquet(out / "manifest.parquet").set_index("source_path")
    chip = np.asarray(Image.open(out / df.loc["images/astronaut.png", "crop_path"]).convert("RGB"))
    rects, _, _ = FaceModels.get().detector.run(chip, 1, 0.0)
    assert len(rects) == 1
    cx = (rects[0].left() + rects[0].right()) / 2
    assert abs(cx - 64) < 16


def test_require_target_rejects_and_qa_fails(tmp_path):
    root = two_portraits(tmp_path / "in")
    cfg = PrepareConfig(size=64, workers=1, require_target=True, min_kept=2)
    with pytest.raises(SpfError, match=r"QA failed.*expect_table_row_count_to_be_between"):
        prepare_dataset(root, tmp_path / "out", cfg)
    # the failed run still leaves a complete, inspectable folder
    assert read_rejected(tmp_path / "out")["images/astronaut.png"][0] == "missing_target_phrase"
    summary = json.loads((tmp_path / "out" / "qa" / "summary.json").read_text())
    assert summary["qa_passed"] is False and summary["n_kept"] == 1


def test_output_inside_input_refused(tmp_path):
    root = two_portraits(tmp_path / "in")
    with pytest.raises(SpfError, match="must not be inside"):
        prepare_dataset(root, root / "out")


def test_cli_synth_is_wired(tmp_path, capsys):
    """Until the world engineer's synth_dataset lands the command fails with one clear line; afterwards it works."""
    import importlib.util

    from tests._data_helpers import run_cli

    code = run_cli(["data", "synth", "--output", str(tmp_path / "s"), "--n", "2", "--seed", "1"])
    if importlib.util.find_spec("spf_lib.data.synth") is None:
        assert code == 2 and "synth_dataset is not available" in capsys.readouterr().err
    else:
        assert code == 0 and (tmp_path / "s" / "captions.jsonl").is_file()


def test_cli_prepare_bad_config_one_line(tmp_path, capsys):
    from tests._data_helpers import run_cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("prepare:\n  size: 64\n  min_blurr: 3\n")
    code = run_cli(["data", "prepare", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == 2 and "min_blurr" in err and err.count("\n") == 1
