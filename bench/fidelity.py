"""`spf bench fidelity`: the paper's Table 1, reproduced in the small world.

From ONE base model (assets/world/base) and the same seeds, fine-tune naive (full UNet), LoRA, SPF and SPF's
ablations on a set where every glasses image is also red-backgrounded and smiling (captions never say so), then
generate from the original and every tuned model on the same prompts and seeds and score them pairwise with the
world's probes and CLIP (see spf_lib/world/fidelity.py for each metric). All rows are measured side by side in one
run. Options (-o KEY=VALUE): steps, lora_steps, naive_lr, lr, rank, batch, n_ft, n_prompts, n_seeds, infer_steps,
guidance, variants (comma list), base, probes, clip, workdir, threads, jobs (variants trained in parallel
processes; train seconds are then measured under that contention).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from bench.common import opt

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "world"

# name -> (method, spf option overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "naive": ("naive", {}),
    "lora": ("lora", {}),
    "spf": ("spf", {}),
    "spf w/o L_text": ("spf", {"use_text": False}),
    "spf w/o L_fine": ("spf", {"use_fine": False}),
    "spf w/o L_enh": ("spf", {"use_enhanced": False}),
    "spf w/o SFCM": ("spf", {"use_sfcm": False}),
    "spf w/o L_out": ("spf", {"use_out": False}),  # our additions (docs/method.md), each switched off
    "spf w/o L_preserve": ("spf", {"use_preserve": False}),
}
COLUMNS = ["method", "pollution↓", "red-bg Δ↓", "smile Δ↓", "leak Δ↓", "CLIP-I↑", "MAE↓", "target↑", "CLIP-T↑",
           "fidelity↑", "train s"]
KEYS = ["attr_drift", "red_bg_delta", "smile_delta", "target_leak", "clip_i", "pixel_mae", "target_rate", "clip_t",
        "prompt_fidelity"]


def _train_adapter(method: str, spf_over: dict, base: Path, data: Path, out: Path, o: dict) -> Path:
    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import train

    spf = {"image_embedder": str(o["clip"]), **spf_over} if method == "spf" else {}
    cfg = TrainConfig.build(
        "bench fidelity", method=method, base_model=str(base), data_dir=str(data), output_dir=str(out),
        steps=o["lora_steps"], seed=o["seed"], lr=o["lr"], resolution=64, batch_size=o["batch"], device="cpu",
        validation={"enabled": False}, lora={"rank": o["rank"]}, spf=spf, checkpoints_total_limit=1,
    )
    return Path(train(cfg).adapter_dir)


def _train_variant(name: str, data: Path, out: Path, o: dict) -> tuple[str, float]:
    """Train one variant (in a worker process when jobs > 1); returns (what to load, train seconds)."""
    import torch

    from spf_lib.world.finetune import finetune_naive

    torch.set_num_threads(o["threads"])
    method, over = VARIANTS[name]
    t0 = time.perf_counter()
    if method == "naive":
        finetune_naive(o["base"], data, out, steps=o["steps"], lr=o["naive_lr"], batch=o["batch"], seed=o["seed"],
                       threads=o["threads"])
        return str(out / "unet"), time.perf_counter() - t0
    adapter = _train_adapter(method, over, o["base"], data, out, o)
    return str(adapter), time.perf_counter() - t0


def _train_all(names: list[str], data: Path, work: Path, o: dict, jobs: int) -> dict[str, tuple[str, float]]:
    """Variants are independent: with jobs > 1 they train side by side in spawned single-purpose processes."""
    outs = {n: work / n.replace(" ", "_").replace("/", "") for n in names}
    if jobs <= 1:
        return {n: _train_variant(n, data, outs[n], o) for n in names}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
        futs = {n: ex.submit(_train_variant, n, data, outs[n], o) for n in names}
        return {n: f.result() for n, f in futs.items()}


def run(options: dict[str, str]) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from spf_lib.methods import load_adapter
    from spf_lib.world.clip import WorldClip
    from spf_lib.world.fidelity import generate_all, make_plan, score
    from spf_lib.world.finetune import SPURIOUS, make_finetune_set
    from spf_lib.world.probes import Probes

    t_all = time.perf_counter()
    o = {
        "steps": opt(options, "steps", 300), "lora_steps": opt(options, "lora_steps", 300),
        "naive_lr": opt(options, "naive_lr", 2e-4), "lr": opt(options, "lr", 3e-3), "rank": opt(options, "rank", 8),
        "batch": opt(options, "batch", 8), "n_ft": opt(options, "n_ft", 48), "seed": opt(options, "seed", 0),
        "n_prompts": opt(options, "n_prompts", 12), "n_seeds": opt(options, "n_seeds", 4),
        "infer_steps": opt(options, "infer_steps", 20), "guidance": opt(options, "guidance", 4.0),
        "threads": opt(options, "threads", 1), "jobs": opt(options, "jobs", 2),
        "base": Path(opt(options, "base", str(ASSETS / "base"))), "probes": Path(opt(options, "probes", str(ASSETS / "probes"))),
        "clip": Path(opt(options, "clip", str(ASSETS / "clip"))),
    }
    names = [v.strip() for v in opt(options, "variants", ",".join(VARIANTS)).split(",") if v.strip()]
    from spf_lib.errors import SpfError

    for n in names:
        if n not in VARIANTS:
            raise SpfError(f"bench option variants: unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(o["threads"])
    work = Path(opt(options, "workdir", "") or tempfile.mkdtemp(prefix="spf-fidelity-"))
    probes, clip = Probes.load(o["probes"]), WorldClip.load(o["clip"])
    data = make_finetune_set(work / "ftset", n=o["n_ft"], seed=7)
    plan = make_plan(o["n_prompts"], o["n_seeds"], steps=o["infer_steps"], guidance=o["guidance"])
    pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    original = generate_all(pipe, plan)
    rows, figures = [], {"original": score(plan, original, original, probes, clip)}
    rows.append(["original"] + [figures["original"][k] for k in KEYS] + [0.0])
    trained = _train_all(names, data, work, o, o["jobs"])
    for name in names:
        path, train_s = trained[name]
        if VARIANTS[name][0] == "naive":
            tuned_pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
            tuned_pipe.unet = UNet2DConditionModel.from_pretrained(path)
            tuned_pipe.set_progress_bar_config(disable=True)
            tuned = generate_all(tuned_pipe, plan)
            del tuned_pipe
        else:
            handle = load_adapter(pipe, path)
            tuned = generate_all(pipe, plan)
            handle.disable()
            pipe.delete_adapters("spf")
        m = score(plan, original, tuned, probes, clip)
        m["train_s"] = train_s
        figures[name] = m
        rows.append([name] + [m[k] for k in KEYS] + [round(train_s, 1)])
    wall = time.perf_counter() - t_all
    notes = [f"pollution = probe-read base-attribute drift between original and tuned images on the same "
             f"{len(plan.prompts)} base prompts x {len(plan.seeds)} seeds; spurious in the fine-tuning set: {SPURIOUS}",
             f"steps naive={o['steps']} (lr {o['naive_lr']}), LoRA/SPF={o['lora_steps']} (lr {o['lr']}, rank {o['rank']}),"
             f" batch {o['batch']}, {o['n_ft']} fine-tuning images, {o['jobs']} variant(s) trained in parallel; "
             f"whole benchmark wall time {wall:.0f} s"]
    f = figures
    if "naive" in f and "spf" in f:
        pr = f["spf"]["attr_drift"] / max(f["naive"]["attr_drift"], 1e-9)
        tr = f["spf"]["target_rate"] / max(f["naive"]["target_rate"], 1e-9)
        f["ratios"] = {"spf_over_naive_pollution": pr, "spf_over_naive_target_rate": tr}
        notes.append(f"SPF pollution / naive = {pr:.2f} (target ≤ 0.5); SPF target rate / naive = {tr:.2f} (target ≥ 0.9)")
    if "lora" in f and "spf" in f:
        notes.append(f"SPF pollution {f['spf']['attr_drift']:.3f} vs LoRA {f['lora']['attr_drift']:.3f} (target: below)")
    if "spf w/o SFCM" in f and "spf" in f:
        notes.append(f"target rate without SFCM {f['spf w/o SFCM']['target_rate']:.2f} vs SPF {f['spf']['target_rate']:.2f}"
                     " (target: lower)")
    figures["options"] = {k: str(v) for k, v in o.items()}
    figures["wall_s"] = wall
    return {"title": "Fidelity in the small world (Table-1 shape)", "columns": COLUMNS, "rows": rows,
            "figures": figures, "notes": notes}
