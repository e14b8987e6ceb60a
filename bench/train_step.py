"""Step time and peak memory: LoRA step vs SPF stage-2 step (without and with L_enhanced), side by side.

Each variant runs in its own subprocess so its peak memory is its own (CUDA: torch.cuda.max_memory_allocated over
the timed steps; CPU: the step's own memory = peak RSS sampled during the timed steps above the resident weights and
optimizer state before them, so activations are what is compared, not the ~600 MB of libraries; and, exact, the peak
of torch's own allocations in one profiled step, which the ratio uses). Model ``tiny`` (default on
CPU) uses the project's tiny SD; ``sd15`` (default on CUDA), ``sdxl`` and ``sd3`` are the published architectures
(spf_lib.models.architectures) with random weights (speed and memory do not depend on the weights), built directly in
bf16 when mixed_precision=bf16.

Options: model=tiny|sd15|sdxl|sd3 (config= is the same option), width_divisor=N (sdxl, sd3: every width / N, depths
kept), steps=N (timed; rounded up to whole periods of every variant's L_preserve schedule),
warmup=N, batch=N, resolution=N, mixed_precision=no|bf16,
capture=PATTERN[,PATTERN], checkpointing=0|1, interleave=0|1,
variants=lora,spf-no-enh,spf-default-no-enh,spf-rawtext-no-enh,spf-quarter-no-enh,spf-run7-no-enh,spf-beside-no-enh,
spf-split-no-enh,spf (spf, with the world's CLIP: tiny only).
Goals (issues 4, 15): SPF stage-2 step ≤ 1.4× LoRA step time, step memory ≤ 1.15× LoRA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "lora": {"method": "lora"},
    # the paper's dual path (issue 4's goal): our L_preserve (one more forward/backward) and L_out switched off
    "spf-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "use_preserve": False, "use_out": False,
                                            "target_tokens": False}},
    # the default preset without a CLIP (L_enh is then off): dual path + L_out + target-token rows + L_preserve on
    # spf.preserve_frac of each batch
    "spf-default-no-enh": {"method": "spf", "spf": {"use_enhanced": False}},
    # the default with L_preserve on a quarter of the samples instead of an eighth (issue 15, sixth round)
    "spf-quarter-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "preserve_frac": 0.25}},
    # Run 7's default (issue 15, third session): no target-token rows, L_preserve on every sample
    "spf-run7-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "target_tokens": False,
                                                  "preserve_frac": 1.0, "preserve_schedule": "beside"}},
    # the default until issue 15's ninth round: L_text on the raw attention maps (text_without_target off)
    "spf-rawtext-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "text_without_target": False}},
    # issue 15's sixth-round default: the preserved eighth runs L_preserve BESIDE the response path
    "spf-beside-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "preserve_schedule": "beside"}},
    # each batch split between the response path and L_preserve (spf.preserve_schedule=split)
    "spf-split-no-enh": {"method": "spf", "spf": {"use_enhanced": False, "preserve_schedule": "split"}},
    # the default preset with the world's CLIP configured (tiny only: L_enh decodes x̂0 for every sample)
    "spf": {"method": "spf", "spf": {"enh_max_timestep": 1000}, "clip": True},
}
# the CLIP variant uses the world's 64-px CLIP: only the tiny model decodes images it was made for
NO_CLIP_VARIANTS = [v for v in VARIANTS if not VARIANTS[v].get("clip")]
ROOT = Path(__file__).resolve().parents[1]


def _trainer(variant: str, opts: dict):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from _train_helpers import make_dataset

    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import Trainer

    tmp = Path(opts["tmp"])
    data = make_dataset(tmp / f"data-{opts['resolution']}", n=4, size=opts["resolution"])
    cuda = torch.cuda.is_available()
    pipe = None
    if opts["config"] != "tiny":  # a published architecture, random init, built in code (no download)
        from spf_lib.models.architectures import build_architecture

        kw = {"dtype": torch.bfloat16} if opts["mixed_precision"] == "bf16" else {}
        if opts.get("width_divisor", 1) != 1:
            kw["width_divisor"] = opts["width_divisor"]
        pipe = build_architecture(opts["config"], **kw)
    model = str(tmp / "tiny-sd") if pipe is None else f"{opts['config']}-random"
    v = VARIANTS[variant]
    spf = {"stage1_steps": 0, **v.get("spf", {})}
    if v.get("clip"):
        spf["image_embedder"] = str(ROOT / "assets" / "world" / "clip")
    if opts.get("capture"):
        spf["capture_layers"] = opts["capture"].split(",")
    cfg = TrainConfig.build(
        "bench", method=v["method"], base_model=model, data_dir=str(data), output_dir=str(tmp / f"out-{variant}"),
        steps=10_000, resolution=opts["resolution"], batch_size=opts["batch"], mixed_precision=opts["mixed_precision"],
        gradient_checkpointing=bool(opts["checkpointing"]), device="cuda" if cuda else "cpu", spf=spf,
        validation={"enabled": False}, lr=1e-5,
    )
    tr = Trainer(cfg, pipe=pipe)
    for _ in range(opts["warmup"]):
        tr.train_step()
    return tr


def _timed_step(tr) -> float:
    """CUDA: wall time (synchronised). CPU: the step's CPU time with one torch thread, because wall time on a machine
    shared with other jobs measures the neighbours more than the step."""
    import time

    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr.train_step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    torch.set_num_threads(1)
    # this thread's CPU time: with one torch thread the step runs here, and the memory child's RSS sampler (another
    # thread, polling every 2 ms) is not counted — process time counted it, +20-35 % on every step
    t0 = time.thread_time()
    tr.train_step()
    return time.thread_time() - t0


def _child_memory(variant: str, opts: dict, out_json: str) -> None:
    """One variant alone in this process: its peak memory (and its own step times)."""
    import resource

    import torch

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    import gc
    import threading

    tr = _trainer(variant, opts)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    rss0 = rss_mb()
    # the step's own memory (activations, gradients, transient buffers) on CPU: RSS sampled during the steps, above
    # the resident baseline of weights + optimizer state; the parent sets MALLOC_MMAP_THRESHOLD_ so freed
    # activation buffers go back to the OS and the baseline does not already hold the last step's peak
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            stop.wait(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        times = [_timed_step(tr) for _ in range(opts["steps"])]
    finally:
        stop.set()
        th.join()
    alloc = None if cuda else _allocated_step_peak_mb(tr, Path(out_json).with_suffix(".timeline.json"))
    res = {"variant": variant, "alone_median_s": sorted(times)[len(times) // 2],
           "alone_mean_s": sum(times) / len(times), "alone_times_s": times, "step_peak_alloc_mb": alloc,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_growth_mb": rss_mb() - rss0,
           "step_peak_mb": peak[0] - rss0, "baseline_rss_mb": rss0,
           "device": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda:
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(out_json).write_text(json.dumps(res))


def _allocated_step_peak_mb(tr, path: Path) -> float | None:
    """CPU: the peak of torch's own allocations during one more step, above where the step starts (torch.profiler
    memory timeline: every allocation and free in order, so the peak is exact and repeatable, where RSS sampled
    every few ms missed short peaks — 1.07x and 1.20x for the same code in two runs). None if the profiler cannot."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            tr.train_step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - an optional, more exact figure; the RSS one stays
        return None
    total = [sum(row) for row in sizes]
    return (max(total) - total[0]) / 2**20


def _child_interleaved(variants: list[str], opts: dict, out_json: str) -> None:
    """All variants in one process, steps interleaved round-robin, so load on a shared machine hits all alike."""
    trainers = {v: _trainer(v, opts) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(opts["steps"]):
        for v, tr in trainers.items():
            times[v].append(_timed_step(tr))
    Path(out_json).write_text(json.dumps({v: {"median_s": sorted(t)[len(t) // 2], "mean_s": sum(t) / len(t),
                                              "min_s": min(t), "times_s": t} for v, t in times.items()}))


def share_period(variant: str, batch: int) -> int:
    """Steps after which a variant's L_preserve schedule repeats (spf.preserve_frac of the samples, the empty
    prompt on preserve_uncond_frac of those, both spread evenly over the run): a step's cost varies within the
    period, so only a mean over whole periods is the variant's step time (a median would pick the cheap steps)."""
    from fractions import Fraction
    from math import lcm

    from spf_lib.train.config import SpfOptions

    v = VARIANTS[variant]
    if v["method"] != "spf":
        return 1
    o = SpfOptions(**{"image_embedder": "x" if v.get("clip") else None, **v.get("spf", {})})
    split = o.preserve_schedule == "split"
    if not o.use_preserve or split:
        return 1 if not split or batch > 1 else 2
    per_step = Fraction(o.preserve_frac).limit_denominator(1024) * batch
    uncond = per_step * Fraction(o.preserve_uncond_frac).limit_denominator(1024)
    return lcm(per_step.denominator, uncond.denominator)


def run(options: dict[str, str]) -> dict:
    from bench.common import opt
    from spf_lib.errors import SpfError
    from spf_lib.models.architectures import ARCHITECTURES

    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    # model= (issue 18's name) and config= (the first one) choose the same thing
    config = opt(options, "model", opt(options, "config", "sd15" if cuda else "tiny", str), str)
    if config not in ("tiny", *ARCHITECTURES):
        raise SpfError(f"bench option model={config!r}: expected tiny or one of {', '.join(ARCHITECTURES)}")
    opts = {
        "width_divisor": opt(options, "width_divisor", 1, int),
        "config": config,
        "steps": opt(options, "steps", 5 if config == "tiny" else 10, int),
        "warmup": opt(options, "warmup", 2 if config == "tiny" else 3, int),
        "batch": opt(options, "batch", 1, int),
        "resolution": opt(options, "resolution", 64 if config == "tiny" else 512, int),
        "mixed_precision": opt(options, "mixed_precision", "bf16" if cuda else "no", str),
        "checkpointing": opt(options, "checkpointing", 0, int),
        "capture": opt(options, "capture", "", str),
    }
    variants = opt(options, "variants", ",".join(VARIANTS if config == "tiny" else NO_CLIP_VARIANTS), str).split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SpfError(f"bench option variants: unknown {bad}; expected {', '.join(VARIANTS)}")
    from math import ceil, lcm

    period = lcm(*(share_period(v, opts["batch"]) for v in variants))
    opts["steps"] = ceil(opts["steps"] / period) * period  # whole periods of every variant's schedule
    with tempfile.TemporaryDirectory(prefix="spf-bench-") as tmp:
        opts["tmp"] = tmp
        if config == "tiny":
            from spf_lib.models.factory import save_tiny_pipeline

            save_tiny_pipeline(Path(tmp) / "tiny-sd")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "MALLOC_MMAP_THRESHOLD_": "65536"}

        def child(*args: str) -> dict:
            out = Path(tmp) / "child.json"
            proc = subprocess.run([sys.executable, "-m", "bench.train_step", *args, json.dumps(opts), str(out)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SpfError(f"bench train-step {args[:2]} failed: {proc.stderr.strip().splitlines()[-1:]}")
            return json.loads(out.read_text())

        results = {v: child("memory", v) for v in variants}
        timing = child("interleaved", ",".join(variants)) if opt(options, "interleave", True, bool) else None
        for v in variants:
            t = timing[v] if timing else {"median_s": results[v]["alone_median_s"],
                                          "mean_s": results[v]["alone_mean_s"], "min_s": None}
            results[v].update(median_s=t["median_s"], mean_s=t["mean_s"], min_s=t["min_s"] or t["median_s"])
    first = next(iter(results.values()))
    mem_key = ("peak_cuda_mb" if "peak_cuda_mb" in first
               else "step_peak_alloc_mb" if all(r.get("step_peak_alloc_mb") for r in results.values())
               else "step_peak_mb")
    base = results.get("lora")
    rows, figures = [], {}
    for v, r in results.items():
        t_ratio = r["mean_s"] / base["mean_s"] if base else None
        m_ratio = r[mem_key] / base[mem_key] if base else None
        rows.append([v, r["mean_s"] * 1000, r["median_s"] * 1000, r["min_s"] * 1000, r[mem_key], r["peak_rss_mb"],
                     t_ratio if t_ratio is not None else "-", m_ratio if m_ratio is not None else "-"])
        figures[v] = {**r, "time_ratio_vs_lora": t_ratio, "mem_ratio_vs_lora": m_ratio}
    dev = next(iter(results.values()))["device"]
    shrunk = f" widths/{opts['width_divisor']}" if opts["width_divisor"] != 1 else ""
    return {
        "title": (f"train step: LoRA vs SPF stage 2 ({config}{shrunk}, {opts['resolution']} px, "
                  f"{opts['mixed_precision']}, {dev})"),
        "columns": ["variant", "mean ms", "median ms", "min ms", mem_key, "process peak RSS MB", "time × LoRA",
                    "mem × LoRA"],
        "rows": rows,
        "figures": {"config": {k: v for k, v in opts.items() if k != "tmp"}, "device": dev, "variants": figures},
        "notes": [
            ("goals: spf-no-enh time × LoRA ≤ 1.4, mem × LoRA ≤ 1.15 (the extra no-grad reference forward alone "
             "costs ~1.33×)"),
            (f"memory column = {mem_key}, each variant alone in its own process (CPU: step_peak_alloc_mb = the peak "
             "of torch's allocations during one profiled step above its start, exact; step_peak_mb = peak RSS "
             "sampled during the timed steps minus the resident weights + optimizer state before them, kept in the "
             "JSON); times = steps interleaved round-robin in one process (interleave=0: each variant's own "
             "process); time × LoRA = ratio of MEANS over "
             f"{opts['steps']} timed steps = whole periods ({period}) of every variant's L_preserve schedule; on CPU "
             "they are the stepping thread's CPU seconds with 1 torch thread"),
            ("spf-no-enh = the paper's dual path (L_text, L_fine, SFCM); spf-default-no-enh adds our L_out, the "
             "target-token rows and L_preserve (base text, or the empty prompt) on spf.preserve_frac of each "
             "batch INSTEAD of the response path, in the same two forward passes = the default preset when no CLIP "
             "is configured (spf-quarter-no-enh: on a quarter); spf-beside-no-enh = the sixth round's default "
             "(L_preserve BESIDE the response path: one more forward/backward per preserved sample); "
             "spf-run7-no-enh = Run 7's default (no token rows, L_preserve beside on every sample); "
             "spf-split-no-enh splits each batch between the response path and L_preserve "
             "(spf.preserve_schedule=split); spf = the default preset with the world's CLIP (L_enhanced decodes "
             "x̂0 through the VAE)"),
        ],
    }


if __name__ == "__main__":
    if sys.argv[1] == "memory":
        _child_memory(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4])
    else:
        _child_interleaved(sys.argv[2].split(","), json.loads(sys.argv[3]), sys.argv[4])
