"""The prepare stage: captioned images in, aligned face crops + manifest + QA report out.

Images are independent, so they are processed in a process pool (dlib releases nothing to threads worth having);
dataset-level decisions (exact and near duplicates, QA) run afterwards in the parent, in source-path order, so the
result does not depend on scheduling. The whole output folder is built beside its final name and renamed into place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from spf_lib.data.captions import parse_caption, read_sidecar
from spf_lib.data.config import PrepareConfig, PrepareResult
from spf_lib.data.images import Rejected, load_rgb
from spf_lib.data.inputs import InputItem, discover
from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

from spf_lib.data.dvc_io import DATA_REF_FILE  # written by pull_data; carries data_rev/data_hash into lineage


def process_one(item: InputItem, cfg: PrepareConfig, crops_dir: Path) -> dict[str, Any]:
    """One input -> a manifest row (``{"kept": True, ...}``) or a rejection (``{"kept": False, reason, detail}``)."""
    try:
        return _process(item, cfg, crops_dir)
    except Rejected as r:
        return {"kept": False, "source_path": item.source_path, "reason": r.reason, "detail": r.detail}
    except Exception as e:  # noqa: BLE001 - a bug or an exotic codec must cost one image, not the run
        log.warning("%s: unexpected %s: %s", item.source_path, type(e).__name__, e)
        return {"kept": False, "source_path": item.source_path, "reason": "processing_error",
                "detail": f"{type(e).__name__}: {str(e)[:200]}"}


def _process(item: InputItem, cfg: PrepareConfig, crops_dir: Path) -> dict[str, Any]:
    import hashlib

    from PIL import Image

    from spf_lib.data.faces import detect_and_align

    if item.reject is not None or item.path is None:
        raise Rejected(*(item.reject or ("invalid_path", "")))
    loaded = load_rgb(item.path, max_pixels=cfg.max_pixels, max_file_bytes=cfg.max_file_bytes)
    sha = hashlib.sha256(item.path.read_bytes()).hexdigest()
    raw = read_sidecar(item.path) or item.manifest_caption
    cap = parse_caption(raw, target_phrase=cfg.target_phrase, min_chars=cfg.caption_min_chars,
                        max_chars=cfg.caption_max_chars, forbidden=cfg.forbidden_words,
                        require_target=cfg.require_target) if (raw is not None or cfg.require_caption) else None
    face = detect_and_align(loaded.rgb, size=cfg.size, padding=cfg.padding, upsample=cfg.upsample,
                            detect_max_side=cfg.detect_max_side, multi_face=cfg.multi_face,
                            min_face_px=cfg.min_face_px, min_det_score=cfg.min_det_score,
                            extra_face_min_score=cfg.extra_face_min_score, fill=cfg.fill)
    if face.blur < cfg.min_blur:
        raise Rejected("blurry", f"Laplacian variance {face.blur:.1f} < min_blur={cfg.min_blur}")
    id_ = sha[:16]
    crop_rel = f"crops/{id_}.png"
    tmp = crops_dir / f".{id_}.{os.getpid()}.tmp.png"
    Image.fromarray(face.chip).save(tmp, format="PNG", compress_level=cfg.png_compress_level)
    os.replace(tmp, crops_dir / f"{id_}.png")
    h, w = loaded.rgb.shape[:2]
    x0, y0, x1, y1 = face.box
    return {
        "kept": True, "id": id_, "source_path": item.source_path, "sha256": sha, "crop_path": crop_rel,
        "box": [x0, y0, x1, y1], "landmarks": [list(p) for p in face.landmarks],
        "det_score": face.det_score, "blur": face.blur,
        "caption": cap.caption if cap else None,
        "base_phrases": cap.base_phrases if cap else [],
        "target_phrase": cap.target_phrase if cap else None,
        "caption_source": raw.source if raw else None,
        "img_w": w, "img_h": h, "box_x0": x0, "box_y0": y0, "box_x1": x1, "box_y1": y1,
        "face_px": face.face_px, "n_faces": face.n_faces, "phash": f"{face.phash:016x}",
        "original_mode": loaded.original_mode, "exif_rotated": loaded.exif_rotated,
    }


def _worker_init() -> None:
    from spf_lib.data.faces import FaceModels

    FaceModels.get()


def run_all(items: list[InputItem], cfg: PrepareConfig, crops_dir: Path) -> list[dict[str, Any]]:
    """Process every item, in a pool when there is more than one core and more than a handful of images."""
    from tqdm import tqdm

    n = min(cfg.workers or os.cpu_count() or 1, len(items))
    fn = partial(process_one, cfg=cfg, crops_dir=crops_dir)
    bar = {"total": len(items), "desc": "prepare", "unit": "img", "disable": False, "leave": False}
    if n <= 1 or len(items) < 4:
        return [fn(it) for it in tqdm(items, **bar)]
    methods = multiprocessing.get_all_start_methods()
    # forkserver: no fork of a parent that may hold threads (GX, torch); workers start from a clean interpreter.
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":  # import once in the server, not once per worker
        ctx.set_forkserver_preload(["numpy", "PIL.Image", "dlib", "scipy.fft", "spf_lib.data.prepare",
                                    "spf_lib.data.faces"])
    chunk = max(1, min(16, len(items) // (n * 4)))
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_worker_init) as pool:
            return list(tqdm(pool.map(fn, items, chunksize=chunk), **bar))
    except BrokenProcessPool as e:
        raise SpfError(f"prepare worker process died ({e}); rerun with workers=1 to find the image") from e


def dedupe(rows: list[dict[str, Any]], max_distance: int) -> tuple[list[dict], list[dict]]:
    """Drop exact (sha256) and near (pHash) duplicates; the first in source-path order wins."""
    import numpy as np

    kept: list[dict] = []
    rejected: list[dict] = []
    by_sha: dict[str, str] = {}
    hashes = np.zeros(0, dtype=np.uint64)
    for row in sorted(rows, key=lambda r: r["source_path"]):
        if row["sha256"] in by_sha:
            rejected.append(_dup(row, "duplicate", f"same bytes as {by_sha[row['sha256']]}"))
            continue
        h = np.uint64(int(row["phash"], 16))
        if max_distance >= 0 and len(hashes):
            dist = np.array([int(x).bit_count() for x in np.bitwise_xor(hashes, h)])
            j = int(dist.argmin())
            if dist[j] <= max_distance:
                rejected.append(_dup(row, "near_duplicate",
                                     f"pHash distance {dist[j]} to {kept[j]['source_path']}"))
                continue
        by_sha[row["sha256"]] = row["source_path"]
        hashes = np.append(hashes, h)
        kept.append(row)
    return kept, rejected


def _dup(row: dict, reason: str, detail: str) -> dict:
    return {"kept": False, "source_path": row["source_path"], "reason": reason, "detail": detail,
            "_crop": row["crop_path"]}


def prepare_dataset(input_dir: str | Path, output_dir: str | Path,
                    config: PrepareConfig | None = None) -> PrepareResult:
    """Build the prepare output folder (layout in docs/internals.md); raise SpfError if QA fails beyond tolerance.

    The folder is built and QA'd beside ``output_dir`` and swapped in only afterwards, under a lock: a run that
    fails (bad input, a crash, a kill) leaves the previous output as it was, and a QA-failing run never replaces an
    output whose QA passed (it is discarded; the error names the failed expectations). With nothing good to keep,
    the QA-failing output is put in place so its report can be read (``spf train`` refuses it).
    """
    from spf_lib.data import outputs
    from spf_lib.io import atomic_dir, check_output_target, output_lock, sweep_stale_temps

    cfg = config or PrepareConfig()
    root = Path(input_dir).resolve()
    out = Path(output_dir).resolve()
    if not root.is_dir():
        raise SpfError(f"--input {input_dir}: not a folder")
    if out == root or root in out.parents or out in root.parents:
        raise SpfError(f"--output {output_dir}: must not be inside the input folder or contain it")
    check_output_target(out, owned_if=OWNED_IF, flag="--output")  # before any work
    t0 = time.perf_counter()
    items, ignored = discover(root)
    if not items:
        raise SpfError(f"{root}: no images found (looked for {', '.join(sorted(_suffixes()))} and captions files)")
    log.info("prepare: %d inputs under %s (%d other files ignored)", len(items), root, ignored)
    with output_lock(out, what="--output", inside=False):
        _sweep_own_temps(out)
        sweep_stale_temps(out.parent)
        keep_previous = previous_qa_passed(out)
        with atomic_dir(out, owned_if=OWNED_IF, flag="--output") as tmp:
            crops = tmp / "crops"
            crops.mkdir()
            results = run_all(items, cfg, crops)
            rows = [r for r in results if r["kept"]]
            kept, dups = dedupe(rows, cfg.dedup_max_distance)
            used = {r["crop_path"] for r in kept}
            for d in dups:
                d.pop("_crop")
            for r in rows:  # crops of duplicates (an exact duplicate shares its file with the kept row)
                if r["crop_path"] not in used:
                    (tmp / r["crop_path"]).unlink(missing_ok=True)
            rejected = sorted([r for r in results if not r["kept"]] + dups, key=lambda r: r["source_path"])
            if len(kept) + len(rejected) != len(items):  # the stage's core promise; a bug if it ever breaks
                raise SpfError(f"internal: {len(items)} inputs but {len(kept)} kept + {len(rejected)} rejected")
            seconds = time.perf_counter() - t0
            result = outputs.write_all(tmp, out, root, kept, rejected, cfg, n_input=len(items), ignored=ignored,
                                       seconds=seconds, lineage=_lineage(root))
            if not result.qa_passed and keep_previous:
                raise SpfError(f"QA failed for the new output ({', '.join(result.qa_failed)}; {result.n_kept} of "
                               f"{result.n_input} kept); the previous output at {out}, whose QA passed, is kept")
    if not result.qa_passed:
        raise SpfError(f"QA failed for {out}: {', '.join(result.qa_failed)} (see {out / 'qa' / 'report.html'})")
    return result


OWNED_IF = ("prepare_summary.json", "manifest.parquet")


def previous_qa_passed(out: Path) -> bool:
    """True when ``out`` holds a prepare output whose QA passed (a good output a failing rerun must not replace)."""
    import json

    summary = out / "prepare_summary.json"
    try:
        return bool(json.loads(summary.read_text(encoding="utf-8")).get("qa_passed")) and \
            (out / "manifest.parquet").is_file()
    except (OSError, ValueError, AttributeError):
        return False


def _sweep_own_temps(out: Path) -> None:
    """Under the output lock no other prepare of ``out`` runs, so every temporary of that name is a leftover."""
    import shutil

    for p in out.parent.glob(f".{out.name}.*"):
        if p.name.endswith(".tmp") or ".tmp-" in p.name or ".old-" in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log.info("removed %s (left by an interrupted prepare)", p)


def _suffixes() -> set[str]:
    from spf_lib.data.images import IMAGE_SUFFIXES

    return set(IMAGE_SUFFIXES)


def _lineage(root: Path) -> dict[str, str]:
    import json

    ref = root / DATA_REF_FILE
    if ref.is_file() and not ref.is_symlink():
        try:
            data = json.loads(ref.read_text(encoding="utf-8"))
            return {k: str(data[k]) for k in ("data_rev", "data_hash") if k in data}
        except (OSError, ValueError):
            log.warning("%s: unreadable, lineage left empty", ref)
    return {}
