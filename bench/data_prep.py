"""Prepare-stage throughput (images/s) on 512-px portraits, one process vs all cores, measured side by side.

Portraits are built from the two real public-domain faces that ship in packages (skimage astronaut, matplotlib's
Grace Hopper), shifted, scaled, mirrored and colour-jittered so no two inputs are the same file. The face stage
(load, detect, landmarks, align, crop, blur, pHash, PNG write) is timed on its own and the whole stage (plus
dedupe, manifest, Great Expectations and Data Docs, a fixed cost per run) end to end.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import opt


def make_portraits(root: Path, n: int, side: int = 512, seed: int = 0) -> None:
    import json

    import matplotlib
    from PIL import Image, ImageEnhance
    from skimage import data

    rng = np.random.default_rng(seed)
    grace = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    faces = [Image.fromarray(data.astronaut()), grace]
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            img = faces[i % 2]
            w, h = img.size
            s = rng.uniform(0.8, 0.95)
            cw, ch = int(w * s), int(h * s)
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            im = img.crop((x, y, x + cw, y + ch)).resize((side, side), Image.Resampling.BILINEAR)
            if rng.random() < 0.5:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
            name = f"images/p{i:04d}.jpg"
            im.save(root / name, quality=90)
            f.write(json.dumps({"file": name, "caption": "a photo of a person, wearing round glasses"}) + "\n")


def _cpu_s() -> float:
    """CPU seconds of this process plus its reaped children (pool workers are reaped when the pool closes)."""
    import resource

    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime


def _face_stage(root: Path, cfg, work: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the face stage alone."""
    from spf_lib.data.inputs import discover
    from spf_lib.data.prepare import run_all

    items, _ = discover(root)
    crops = work / f"crops-{cfg.workers}-{cfg.fill}"
    crops.mkdir()
    c0, t0 = _cpu_s(), time.perf_counter()
    results = run_all(items, cfg, crops)
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    assert len(results) == len(items)
    return dt, cpu


def run(options: dict[str, str]) -> dict:
    from spf_lib.data.config import PrepareConfig
    from spf_lib.data.prepare import prepare_dataset
    from spf_lib.settings import quiet_third_parties

    quiet_third_parties()
    n = opt(options, "n", 64)
    load0 = os.getloadavg()[0]
    size = opt(options, "size", 512)
    cores = os.cpu_count() or 1
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="spf-bench-data-") as tmp:
        work = Path(tmp)
        root = work / "ds"
        make_portraits(root, n)
        # the last row: dlib's black fill, beside the default FFHQ-style fill (what filling crops costs)
        for workers, fill in [(w, "reflect") for w in sorted({1, cores})] + [(1, "black")]:
            cfg = PrepareConfig(size=size, workers=workers, dedup_max_distance=-1, fill=fill)
            dt, cpu = _face_stage(root, cfg, work)
            # pool workers are children of the forkserver, not of this process: their CPU is not visible here
            cpu_ms = round(1000 * cpu / n, 1) if workers == 1 else "n/a"
            tag = "" if fill == "reflect" else f", fill {fill}"
            rows.append([f"face stage, {workers} process(es){tag}", n, round(dt, 2), round(n / dt, 2), cpu_ms])
            figures[f"face_stage_img_per_s_{workers}w{tag and '_' + fill}"] = round(n / dt, 2)
            if workers == 1:
                figures[f"face_stage_cpu_ms_per_img_1w{tag and '_' + fill}"] = cpu_ms
        t0 = time.perf_counter()
        res = prepare_dataset(root, work / "out", PrepareConfig(size=size, workers=cores))
        dt = time.perf_counter() - t0
        rows.append([f"end to end (GX + docs), {cores} process(es)", n, round(dt, 2), round(n / dt, 2), ""])
        figures["end_to_end_img_per_s"] = round(n / dt, 2)
        figures["kept"] = res.n_kept
    one, many = figures.get("face_stage_img_per_s_1w"), figures.get(f"face_stage_img_per_s_{cores}w")
    notes = [(f"{n} JPEG portraits 512x512, crops {size}px, {cores} cores (os.cpu_count), machine shared: "
             f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end"),
             "pool start (forkserver + dlib model load per worker) is inside the timed face stage",
             "end to end adds a fixed ~5-15 s: Great Expectations import and validation, Data Docs, parquet"]
    cpu1 = figures.get("face_stage_cpu_ms_per_img_1w")
    if cpu1:
        figures["idle_machine_projection_img_per_s"] = round(cores * 1000 / cpu1, 1)
        notes.append(f"CPU cost {cpu1} ms/image -> on {cores} idle cores the face stage could reach "
                     f"~{cores * 1000 / cpu1:.0f} images/s (wall figures above depend on the other tenants)")
    if one and many and cores > 1:
        figures["speedup"] = round(many / one, 2)
        notes.append(f"speed-up {cores} processes vs 1: {many / one:.2f}x")
    return {"title": "spf data prepare throughput", "columns": ["variant", "images", "seconds", "images/s", "CPU ms/image"],
            "rows": rows, "figures": figures, "notes": notes}
