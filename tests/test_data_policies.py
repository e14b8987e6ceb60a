"""Dataset-level policies through the process pool: largest face, exact and near duplicates, determinism."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spf_lib.data.captions import RawCaption, parse_caption
from spf_lib.data.config import PrepareConfig
from spf_lib.data.faces import detect_and_align, hamming, laplacian_variance, phash
from spf_lib.data.images import Rejected
from spf_lib.data.prepare import prepare_dataset
from spf_lib.errors import SpfError
from tests._data_helpers import astronaut, grace_hopper, read_rejected, save_png, side_by_side, write_jsonl

CAP = "a photo of a person, wearing round glasses"


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    root = tmp_path_factory.mktemp("pol") / "ds"
    astro, grace = astronaut(), grace_hopper()
    save_png(astro, root / "a" / "astronaut.png")
    (root / "b").mkdir()
    shutil.copy(root / "a" / "astronaut.png", root / "b" / "astronaut_copy.png")
    Image.fromarray(astro).save(root / "b" / "astronaut_q60.jpg", quality=60)  # same picture, other bytes
    save_png(grace, root / "a" / "grace.png")
    save_png(side_by_side(astro, grace), root / "c" / "both.png")
    save_png(np.ascontiguousarray(grace[:, ::-1]), root / "c" / "grace_mirror.png")
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.*"))]
    write_jsonl(root, {f: CAP for f in files})
    out = root.parent / "out"
    cfg = PrepareConfig(size=96, workers=2, multi_face="largest", dedup_max_distance=6)
    return root, out, prepare_dataset(root, out, cfg)


def test_duplicates_and_largest_face(pooled):
    _, out, result = pooled
    rej = read_rejected(out)
    assert rej["b/astronaut_copy.png"][0] == "duplicate" and "a/astronaut.png" in rej["b/astronaut_copy.png"][1]
    assert rej["b/astronaut_q60.jpg"][0] == "near_duplicate"
    df = pd.read_parquet(out / "manifest.parquet").set_index("source_path")
    assert set(df.index) == {"a/astronaut.png", "a/grace.png", "c/grace_mirror.png"}
    # the canvas holds both faces; "largest" crops Grace Hopper's (216 px, not the astronaut's 88 px), which makes
    # it a near duplicate of a/grace.png (a mirrored face is not)
    assert rej["c/both.png"][0] == "near_duplicate" and "a/grace.png" in rej["c/both.png"][1]
    assert result.n_kept + result.n_rejected == result.n_input == 6
    # only kept crops remain on disk
    assert sorted(p.name for p in (out / "crops").iterdir()) == sorted(f"{i}.png" for i in df["id"])


def test_pool_matches_serial(pooled, tmp_path):
    root, out, _ = pooled
    serial = prepare_dataset(root, tmp_path / "serial",
                             PrepareConfig(size=96, workers=1, multi_face="largest", dedup_max_distance=6))
    a = pd.read_parquet(out / "manifest.parquet").drop(columns=["blur"])
    b = pd.read_parquet(tmp_path / "serial" / "manifest.parquet").drop(columns=["blur"])
    pd.testing.assert_frame_equal(a, b)
    assert serial.rejected_by_reason == pooled[2].rejected_by_reason
    for crop in (out / "crops").iterdir():
        assert crop.read_bytes() == (tmp_path / "serial" / "crops" / crop.name).read_bytes()


def test_multi_face_reject_policy_and_size():
    both = side_by_side(astronaut(), grace_hopper())
    kw = {"size": 64, "padding": 0.6, "upsample": None, "detect_max_side": 1024, "min_face_px": 64, "min_det_score": 0.0}
    with pytest.raises(Rejected) as e:
        detect_and_align(both, multi_face="reject", **kw)
    assert e.value.reason == "multiple_faces"
    face = detect_and_align(both, multi_face="largest", **kw)
    assert face.n_faces == 2 and face.face_px > 150 and face.chip.shape == (64, 64, 3)
    with pytest.raises(Rejected) as e:
        detect_and_align(both, multi_face="largest", **{**kw, "min_face_px": 400})
    assert e.value.reason == "face_too_small"


def test_blur_and_phash_measures():
    g = grace_hopper()
    soft = np.asarray(Image.fromarray(g).resize((128, 150)).resize((512, 600)))
    assert laplacian_variance(g) > 4 * laplacian_variance(soft)
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="JPEG", quality=50)
    jpeg = np.asarray(Image.open(buf).convert("RGB"))
    assert hamming(phash(g), phash(jpeg)) <= 4
    assert hamming(phash(g), phash(astronaut())) > 16


@pytest.mark.parametrize("raw,reason", [
    (None, "missing_caption"), ("   ", "empty_caption"), ("ab", "caption_too_short"), ("x" * 50, "caption_too_long"),
    ("caf\udce9", "caption_not_utf8"), ("a photo, NSFW stuff", "forbidden_word"), ("a photo, red hat", "missing_target_phrase"),
])
def test_caption_rules(raw, reason):
    with pytest.raises(Rejected) as e:
        parse_caption(None if raw is None else RawCaption(raw, "sidecar"), target_phrase="red glasses",
                      min_chars=3, max_chars=40, forbidden=["nsfw"], require_target=True)
    assert e.value.reason == reason


def test_caption_normalisation():
    c = parse_caption(RawCaption("\ufeffa  photo\tof a man ,, RED   glasses,\n blue shirt ,", "jsonl:1"),
                      target_phrase="red glasses", min_chars=3, max_chars=400, forbidden=["nsfwx"],
                      require_target=True)
    assert c.caption == "a photo of a man, RED glasses, blue shirt"
    assert c.target_phrase == "RED glasses" and c.base_phrases == ["a photo of a man", "blue shirt"]


@pytest.mark.parametrize("bad", [{"size": 8}, {"multi_face": "all"}, {"qa_tolerance": 2}, {"sizee": 64},
                                 {"target_phrase": "a, b"}, {"forbidden_words": [""]}])
def test_config_validation_names_field(bad):
    with pytest.raises(SpfError, match=next(iter(bad))):
        PrepareConfig.from_dict(bad)


def test_broken_captions_file_names_line(tmp_path):
    save_png(grace_hopper(), tmp_path / "ds" / "g.png")
    (tmp_path / "ds" / "captions.jsonl").write_text('{"file": "g.png", "caption": "x y z"}\n{not json\n')
    with pytest.raises(SpfError, match=r"captions.jsonl:2: not valid JSON"):
        prepare_dataset(tmp_path / "ds", tmp_path / "out")
    assert not (tmp_path / "out").exists()
