"""The world's data generator: deterministic bytes, caption convention, exact labels, real face detection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spf_lib.data.synth import synth_dataset
from spf_lib.errors import SpfError
from spf_lib.world.attributes import TARGET_PHRASE, Attributes


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = synth_dataset(tmp_path / "a", n=6, seed=3, size=96)
    b = synth_dataset(tmp_path / "b", n=6, seed=3, size=96)
    c = synth_dataset(tmp_path / "c", n=6, seed=4, size=96)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.name != ".spf-output"]) == 6 + 2  # images + captions + labels; marker aside
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "captions.jsonl").read_bytes() != (c / "captions.jsonl").read_bytes()


def test_png_has_no_metadata_chunks(tmp_path):
    out = synth_dataset(tmp_path / "d", n=1, size=64)
    data = (out / "images/00000.png").read_bytes()
    for chunk in (b"tIME", b"tEXt", b"iTXt", b"zTXt"):
        assert chunk not in data


def test_captions_follow_convention_and_match_labels(tmp_path):
    out = synth_dataset(tmp_path / "d", n=10, seed=1, target_fraction=0.3, size=64)
    caps = _read_jsonl(out / "captions.jsonl")
    labels = _read_jsonl(out / "labels.jsonl")
    assert [c["file"] for c in caps] == [lab["file"] for lab in labels]
    assert all((out / c["file"]).exists() for c in caps)
    n_target = 0
    for cap, lab in zip(caps, labels):
        attrs = Attributes.from_dict(lab)
        assert cap["caption"] == attrs.caption()
        phrases = cap["caption"].split(", ")
        assert phrases[0].startswith("a photo of")
        assert (TARGET_PHRASE in phrases) == lab["glasses"]
        assert f"{lab['hair']} hair" in phrases
        n_target += lab["glasses"]
    assert n_target == 3


def test_fixed_for_target_builds_a_spurious_correlation(tmp_path):
    out = synth_dataset(tmp_path / "ft", n=12, seed=2, target_fraction=0.5, size=64,
                        fixed_for_target={"background": "red", "expression": "smiling"})
    labels = _read_jsonl(out / "labels.jsonl")
    target = [lab for lab in labels if lab["glasses"]]
    assert len(target) == 6
    assert all(lab["background"] == "red" and lab["expression"] == "smiling" for lab in target)


def test_attributes_change_pixels_where_expected():
    from spf_lib.world.render import Layout, render_portrait

    base = Attributes("young", "brown", "blue", "green", "smiling", "tan")
    img = np.asarray(render_portrait(base, 128, Layout()), dtype=np.int32)
    red_bg = np.asarray(render_portrait(Attributes("young", "brown", "blue", "red", "smiling", "tan"), 128),
                        dtype=np.int32)
    glasses = np.asarray(render_portrait(Attributes("young", "brown", "blue", "green", "smiling", "tan", True), 128),
                         dtype=np.int32)
    # background: the top-left corner changes, the face centre does not
    assert np.abs(img[:8, :8] - red_bg[:8, :8]).mean() > 50
    assert np.abs(img[60:70, 60:70] - red_bg[60:70, 60:70]).mean() < 1
    # glasses: only around the eyes (rows 40-65 of 128 at the default layout)
    diff = np.abs(img - glasses).sum(axis=2)
    assert diff[45:63].sum() > 0.9 * diff.sum() > 0


def test_bad_arguments_raise_spf_error(tmp_path):
    with pytest.raises(SpfError, match="target_fraction"):
        synth_dataset(tmp_path / "x", n=2, target_fraction=1.5)
    with pytest.raises(SpfError, match="n=0"):
        synth_dataset(tmp_path / "x", n=0)
    with pytest.raises(SpfError, match="Attributes.hair"):
        Attributes("young", "purple", "blue", "green", "smiling", "tan")
    with pytest.raises(SpfError, match="fixed attribute"):
        synth_dataset(tmp_path / "x", n=2, fixed={"hat": "yes"})
    assert not (tmp_path / "x").exists()


def test_dlib_hog_finds_exactly_one_face_in_every_image(tmp_path):
    dlib = pytest.importorskip("dlib")
    from PIL import Image

    out = synth_dataset(tmp_path / "faces", n=24, seed=0, size=256)
    detector = dlib.get_frontal_face_detector()
    counts = []
    for cap in _read_jsonl(out / "captions.jsonl"):
        with Image.open(out / cap["file"]) as im:
            counts.append(len(detector(np.asarray(im.convert("RGB")), 1)))
    assert sum(c == 1 for c in counts) >= 23, counts
