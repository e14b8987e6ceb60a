"""The bad-input corpus of the issue, generated here: every input is kept correctly or rejected with its reason.

One prepare run in-process (workers=1) under an audit hook, so the test also sees every file the stage opened.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from spf_lib.data.config import PrepareConfig
from spf_lib.data.prepare import prepare_dataset
from tests._data_helpers import (
    OpenRecorder,
    astronaut,
    grace_hopper,
    read_rejected,
    resized,
    save_png,
    side_by_side,
    to_jpeg,
    write_jsonl,
)

CAP = "a photo of a woman, short hair, wearing round glasses"

EXPECTED_REJECTED = {
    "images/zero.jpg": "empty_file",
    "images/truncated.jpg": "truncated_image",
    "images/text.jpg": "not_an_image",
    "images/bomb.png": "decompression_bomb",
    "images/rotated_no_exif.jpg": "no_face",
    "images/no_face.png": "no_face",
    "images/two_faces.png": "multiple_faces",
    "images/tiny_face.png": "face_too_small",
    "images/blurry.png": "blurry",
    "images/empty_caption.png": "empty_caption",
    "images/missing_caption.png": "missing_caption",
    "images/non_utf8.png": "caption_not_utf8",
    "images/forbidden.png": "forbidden_word",
    "images/long.png": "caption_too_long",
    "images/link.png": "path_outside_root",
    "../outside/secret.png": "path_outside_root",
    "/etc/hostname": "path_outside_root",
    "images/not_there.png": "missing_file",
}
EXPECTED_KEPT = {"images/cmyk.jpg": "CMYK", "images/gray16.png": "I;16", "images/rgba.png": "RGBA",
                 "images/gray.png": "L", "images/exif_rotated.jpg": "RGB", "images/plain.png": "RGB"}


def build_corpus(base):
    root, outside = base / "ds", base / "outside"
    img = root / "images"
    img.mkdir(parents=True)
    outside.mkdir()
    astro, grace = astronaut(), grace_hopper()
    caps: dict[str, str] = {}
    (img / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(astro).save(buf, format="JPEG", quality=90)
    (img / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "text.jpg").write_text("this is not a picture\n")
    Image.new("1", (10_001, 10_001)).save(img / "bomb.png")  # 100.02 MP, a few KB on disk
    to_jpeg(Image.fromarray(astro).convert("CMYK"), img / "cmyk.jpg", quality=92)
    grey16 = (np.asarray(Image.fromarray(grace).convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(img / "gray16.png")
    Image.fromarray(np.dstack([astro, np.full(astro.shape[:2], 200, np.uint8)]), "RGBA").save(img / "rgba.png")
    Image.fromarray(grace).convert("L").save(img / "gray.png")
    sideways = Image.fromarray(astro).transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...displayed upright: "rotate 90 CW"
    to_jpeg(sideways, img / "exif_rotated.jpg", quality=92, exif=exif.tobytes())
    to_jpeg(sideways, img / "rotated_no_exif.jpg", quality=92)  # control: same pixels, no tag -> no upright face
    from skimage import data

    save_png(data.coffee(), img / "no_face.png")
    save_png(side_by_side(astro, grace), img / "two_faces.png")
    save_png(resized(astro, 256, 256), img / "tiny_face.png")
    Image.fromarray(grace).filter(ImageFilter.GaussianBlur(4)).save(img / "blurry.png")  # out of focus
    save_png(grace, img / "plain.png")
    for name in ("empty_caption", "missing_caption", "non_utf8", "forbidden", "long"):
        save_png(grace if name != "long" else astro, img / f"{name}.png")
    (img / "empty_caption.png.txt").write_text("  \n\t ")
    (img / "non_utf8.txt").write_bytes(b"a photo of a woman, caf\xe9 background")
    save_png(grace, outside / "secret.png")
    os.symlink(outside / "secret.png", img / "link.png")
    for rel in EXPECTED_REJECTED | EXPECTED_KEPT:
        caps.setdefault(rel, CAP)
    caps.pop("images/missing_caption.png")
    caps.pop("images/empty_caption.png")
    caps.pop("images/non_utf8.png")
    caps["images/forbidden.png"] = "a photo of a woman, Confidential badge"
    caps["images/long.png"] = "a photo of a woman, " + "very " * 100 + "long"
    write_jsonl(root, {k: v for k, v in caps.items() if k not in ("images/gray.png", "images/gray16.png")})
    with open(root / "captions.csv", "w", encoding="utf-8") as f:
        f.write("file,caption\n")
        f.write(f'images/gray.png,"{CAP}"\nimages/gray16.png,"{CAP}"\n')
    return root, outside


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    root, outside = build_corpus(base)
    before = {p: p.stat().st_mtime_ns for p in base.rglob("*") if not p.is_symlink()}
    out = base / "work" / "out"
    rec = OpenRecorder.get()
    cfg = PrepareConfig(size=64, workers=1, multi_face="reject", dedup_max_distance=-1, min_kept=1,
                        forbidden_words=["confidential"], caption_max_chars=200)
    rec.reads.clear(), rec.writes.clear()
    rec.active = True
    try:
        result = prepare_dataset(root, out, cfg)
    finally:
        rec.active = False
    return base, root, outside, out, result, before, list(rec.reads), list(rec.writes)


def test_every_input_kept_or_rejected_once(corpus_run):
    _, _, _, out, result, *_ = corpus_run
    rejected = read_rejected(out)
    kept = pd.read_parquet(out / "manifest.parquet")
    assert set(kept["source_path"]).isdisjoint(rejected)
    assert result.n_input == len(EXPECTED_REJECTED) + len(EXPECTED_KEPT) == len(kept) + len(rejected)
    assert result.qa_passed


@pytest.mark.parametrize("source,reason", sorted(EXPECTED_REJECTED.items()))
def test_rejected_with_specific_reason(corpus_run, source, reason):
    out = corpus_run[3]
    rejected = read_rejected(out)
    assert source in rejected, f"{source} not rejected"
    assert rejected[source][0] == reason, rejected[source]


@pytest.mark.parametrize("source,mode", sorted(EXPECTED_KEPT.items()))
def test_format_variants_kept_and_converted(corpus_run, source, mode):
    out = corpus_run[3]
    df = pd.read_parquet(out / "manifest.parquet").set_index("source_path")
    assert source in df.index, read_rejected(out).get(source)
    row = df.loc[source]
    assert row["original_mode"] == mode
    with Image.open(out / row["crop_path"]) as im:
        assert im.mode == "RGB" and im.size == (64, 64)
    assert bool(row["exif_rotated"]) == (source == "images/exif_rotated.jpg")
    if source == "images/exif_rotated.jpg":  # box in upright coordinates: the image is 512 wide after rotation
        assert row["img_w"] == 512 and row["img_h"] == 512


def test_caption_sources_and_details(corpus_run):
    out = corpus_run[3]
    df = pd.read_parquet(out / "manifest.parquet").set_index("source_path")
    assert df.loc["images/gray.png", "caption_source"].startswith("csv:")
    assert df.loc["images/cmyk.jpg", "caption_source"].startswith("jsonl:")
    assert df.loc["images/cmyk.jpg", "target_phrase"] == "wearing round glasses"
    rejected = read_rejected(out)
    assert "MP > 25 MP" in rejected["images/bomb.png"][1]
    assert "confidential" in rejected["images/forbidden.png"][1]


def test_nothing_outside_read_or_written(corpus_run):
    base, _root, outside, out, _, before, reads, writes = corpus_run
    secret = str((outside / "secret.png").resolve())
    touched = [p for p in reads + writes if os.path.realpath(p) == secret or p.startswith(str(outside))]
    assert touched == [], touched
    assert "/etc/hostname" not in reads
    # writes only inside the output folder's parent-side temp, which has become the output folder
    work = str(out.parent)
    stray = [p for p in writes if not os.path.realpath(p).startswith(work) and not p.startswith("/dev/")]
    assert stray == [], stray
    after = {p: p.stat().st_mtime_ns for p in base.rglob("*") if not p.is_symlink() and work not in str(p)}
    assert after == {p: t for p, t in before.items()}, "input files were modified or added"
    assert sorted(os.listdir(out.parent)) == ["out"]  # no temp left beside the output


def test_qa_failure_names_expectation_and_keeps_report(corpus_run):
    _, root, _, out, *_ = corpus_run
    from spf_lib.errors import SpfError

    with pytest.raises(SpfError, match=r"QA failed .*expect_table_row_count_to_be_between\(table\)"):
        prepare_dataset(root, out.parent / "out2", PrepareConfig(size=64, workers=1, min_kept=50))
    assert (out.parent / "out2" / "qa" / "report.html").is_file()
    shutil.rmtree(out.parent / "out2")


def test_crash_midway_leaves_previous_output(corpus_run, monkeypatch):
    """A failure while writing never leaves a half-written output: the old folder stays, no temp remains."""
    _, root, _, out, *_ = corpus_run
    snapshot = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("spf_lib.data.qa.run_qa", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(root, out, PrepareConfig(size=64, workers=1))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == snapshot
    assert sorted(os.listdir(out.parent)) == ["out"]
