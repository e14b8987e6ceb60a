"""`spf bench fidelity`: pollution-vs-target frontiers in the small world (the paper's Table 1, read as curves).

A method that learns less pollutes less, so one step count cannot tell a better method from a weaker one. Each method
is trained ONCE per (spurious-correlation configuration, training seed), and its checkpoints are evaluated along the
way (every ``every`` steps, on fewer prompts than a final evaluation): each run gives a curve of (target rate,
pollution) points, starting at the original model. From the curves: SPF's pollution at LoRA's and naive's final
target rate (interpolated along SPF's curve), SPF's target rate at LoRA's final pollution, the highest target rate
each method reaches within the step budget (× naive's), and the w/o-SFCM ablation's target at equal pollution — each
per run, then mean ± sd over configurations × seeds. Also the SFCM's overlap with the rendered glasses mask per layer
resolution (this SFCM vs issue 9's), on the final SPF adapter of every run. A PNG plot of the curves is written.

Options (-o KEY=VALUE): variants (comma list of VARIANTS), seeds (training seeds, comma list), configs (spurious
configurations: ``ATTR=VALUE+ATTR=VALUE:FT_SEED:EVAL_SEED`` joined by ``;``), steps, every, naive_lr, lr, rank, batch,
n_ft, n_prompts, n_seeds (prompts × seeds per checkpoint), infer_steps, guidance, base, probes, clip, workdir (runs
are cached there: a rerun with the same workdir only trains what is missing), plot (PNG path), threads, jobs
(runs trained side by side in processes), quick=1 (CI-sized smoke run: a few steps, tiny evaluation).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
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
    "spf split": ("spf", {"preserve_split": True}),
    "spf w/o SFCM": ("spf", {"use_sfcm": False}),
    "spf w/o L_text": ("spf", {"use_text": False}),
    "spf w/o L_fine": ("spf", {"use_fine": False}),
    "spf w/o L_enh": ("spf", {"use_enhanced": False}),
    "spf w/o L_out": ("spf", {"use_out": False}),
    "spf w/o L_preserve": ("spf", {"use_preserve": False}),
    "spf issue-9 SFCM": ("spf", {"sfcm_norm": "quantile", "sfcm_gate_pool": "max"}),
    "spf-paper": ("spf", {"preset": "spf-paper"}),
    "spf-paper w/o SFCM": ("spf", {"preset": "spf-paper", "use_sfcm": False}),
    "spf lr×1": ("spf", {"lr_scale": 1.0}),  # the default until issue 15's second round: LoRA's lr
}
DEFAULT_VARIANTS = ["naive", "lora", "spf", "spf split", "spf w/o SFCM", "spf-paper"]
DEFAULT_CONFIGS = "background=red+expression=smiling:7:123;background=blue+expression=neutral:11:321"
# the two SFCM settings whose overlap with the rendered glasses is reported
SFCM_SETTINGS = {"robust (now)": {"sfcm_norm": "robust"},
                 "quantile+max (issue 9)": {"sfcm_norm": "quantile", "sfcm_gate_pool": "max"}}
COLUMNS = ["method", "runs", "pollution @ LoRA's target (× LoRA)", "pollution @ naive's target (× naive)",
           "target @ LoRA's pollution", "best target (× naive)", "final pollution", "final target", "final leak Δ",
           "final target − leak", "train s"]


@dataclass(frozen=True)
class SpuriousConfig:
    name: str
    spurious: dict[str, str]
    ft_seed: int
    eval_seed: int

    def to_dict(self) -> dict:
        return {"name": self.name, "spurious": self.spurious, "ft_seed": self.ft_seed, "eval_seed": self.eval_seed}


def parse_configs(text: str) -> list[SpuriousConfig]:
    """``ATTR=VALUE+ATTR=VALUE:FT_SEED:EVAL_SEED;...`` → configurations named A, B, C…; one clear error if bad."""
    from spf_lib.errors import SpfError
    from spf_lib.world.attributes import CHOICES
    from spf_lib.world.finetune import CAPTION_ATTRIBUTES

    out = []
    for i, part in enumerate(p.strip() for p in text.split(";") if p.strip()):
        fields = part.split(":")
        if len(fields) != 3:
            raise SpfError(f"bench option configs: {part!r}: expected ATTR=VALUE+ATTR=VALUE:FT_SEED:EVAL_SEED")
        spurious = {}
        for kv in fields[0].split("+"):
            k, _, v = kv.partition("=")
            k, v = k.strip(), v.strip()
            if k not in CHOICES or k == "person" or k in CAPTION_ATTRIBUTES:
                unnamed = [a for a in CHOICES if a not in CAPTION_ATTRIBUTES and a != "person"]
                raise SpfError(f"bench option configs: spurious attribute {k!r}: expected one the captions never name "
                               f"({', '.join(unnamed)})")
            if v not in CHOICES[k]:
                raise SpfError(f"bench option configs: {k}={v!r}: expected one of {', '.join(CHOICES[k])}")
            spurious[k] = v
        try:
            ft_seed, eval_seed = int(fields[1]), int(fields[2])
        except ValueError:
            raise SpfError(f"bench option configs: {part!r}: seeds must be integers") from None
        out.append(SpuriousConfig(chr(ord("A") + i), spurious, ft_seed, eval_seed))
    if not out:
        raise SpfError("bench option configs: no configuration given")
    return out


# -- curves ---------------------------------------------------------------------------------------------------------
def _dense(points: list[tuple[float, float]], k: int = 64) -> list[tuple[float, float]]:
    """The piecewise-linear path through (pollution, target) points in step order, sampled densely."""
    out = [points[0]]
    for (p0, t0), (p1, t1) in zip(points, points[1:]):
        out += [(p0 + (p1 - p0) * a / k, t0 + (t1 - t0) * a / k) for a in range(1, k + 1)]
    return out


def pollution_at_target(points: list[tuple[float, float]], target: float) -> float:
    """Lowest pollution anywhere on the path (checkpoints joined by straight lines) where the target rate is at
    least ``target``; NaN if the path never gets there."""
    ok = [p for p, t in _dense(points) if t >= target - 1e-9]
    return min(ok) if ok else math.nan


def target_at_pollution(points: list[tuple[float, float]], pollution: float) -> float:
    """Highest target rate anywhere on the path while pollution is at most ``pollution``."""
    ok = [t for p, t in _dense(points) if p <= pollution + 1e-9]
    return max(ok) if ok else math.nan


def _mean_sd(xs: list[float]) -> tuple[float, float, int]:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    if not v:
        return math.nan, math.nan, 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd, len(v)


def _fmt(xs: list[float], digits: int = 3) -> str:
    m, sd, n = _mean_sd(xs)
    if n == 0:
        return "not reached"
    miss = f" ({len(xs) - n} not reached)" if n < len(xs) else ""
    return f"{m:.{digits}f} ± {sd:.{digits}f}{miss}"


# -- one run: train with checkpoints, evaluate each ------------------------------------------------------------------
def _run_one(cfg_d: dict, seed: int, name: str, o: dict, out_json: str) -> dict:
    """Train ``name`` once at ``seed`` on configuration ``cfg_d``; evaluate every ``every`` steps (worker process)."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from spf_lib.methods import load_adapter
    from spf_lib.settings import quiet_third_parties
    from spf_lib.world.clip import WorldClip
    from spf_lib.world.fidelity import Generated, generate_all, make_plan, score
    from spf_lib.world.probes import Probes

    quiet_third_parties()
    torch.set_num_threads(o["threads"])
    cfg = SpuriousConfig(**{k: cfg_d[k] for k in ("name", "spurious", "ft_seed", "eval_seed")})
    work = Path(o["workdir"]) / cfg.name
    data = work / "ftset"
    probes, clip = Probes.load(o["probes"]), WorldClip.load(o["clip"])
    plan = make_plan(o["n_prompts"], o["n_seeds"], seed=cfg.eval_seed, steps=o["infer_steps"], guidance=o["guidance"])
    orig_np = np.load(work / "original.npz")
    original = Generated(torch.from_numpy(orig_np["base"]), torch.from_numpy(orig_np["target"]))
    eval_pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
    eval_pipe.set_progress_bar_config(disable=True)
    curve = [{"step": 0, **score(plan, original, original, probes, clip, cfg.spurious)}]
    eval_s = 0.0

    def evaluate(step: int, pipe) -> None:
        nonlocal eval_s
        t0 = time.perf_counter()
        tuned = generate_all(pipe, plan)
        curve.append({"step": step, **score(plan, original, tuned, probes, clip, cfg.spurious)})
        eval_s += time.perf_counter() - t0

    method, over = VARIANTS[name]
    t_all = time.perf_counter()
    overlap = None
    if method == "naive":
        from spf_lib.world.finetune import finetune_naive

        def on_step(step: int, pipe) -> None:
            if step % o["every"] == 0 or step == o["steps"]:
                evaluate(step, pipe)

        finetune_naive(o["base"], data, Path(o["tmp"]) / "naive", steps=o["steps"], lr=o["naive_lr"],
                       batch=o["batch"], seed=seed, threads=o["threads"], on_step=on_step)
    else:
        from spf_lib.train.config import TrainConfig
        from spf_lib.train.run import Trainer

        spf = {"image_embedder": str(o["clip"]), **over} if method == "spf" else {}
        tcfg = TrainConfig.build(
            "bench fidelity", method=method, base_model=str(o["base"]), data_dir=str(data),
            output_dir=str(Path(o["tmp"]) / "out"), steps=o["steps"], seed=seed, lr=o["lr"], resolution=64,
            batch_size=o["batch"], device="cpu", validation={"enabled": False}, lora={"rank": o["rank"]}, spf=spf)
        tr = Trainer(tcfg)
        for step in range(1, o["steps"] + 1):
            tr.train_step()
            if step % o["every"] == 0 or step == o["steps"]:
                adapter = tr.save_adapter()
                handle = load_adapter(eval_pipe, adapter)
                try:
                    evaluate(step, eval_pipe)
                finally:
                    handle.disable()
                    eval_pipe.delete_adapters("spf")
        if method == "spf" and tr.method.o.use_sfcm:
            from spf_lib.world.fidelity import sfcm_overlap

            overlap = sfcm_overlap(tr, cfg.ft_seed, cfg.spurious, SFCM_SETTINGS, n=o["overlap_n"])
    total = time.perf_counter() - t_all
    res = {"config": cfg.to_dict(), "seed": seed, "variant": name, "curve": curve, "train_s": total - eval_s,
           "eval_s": eval_s, "sfcm_overlap": overlap, "key": o["run_key"], "variant_config": variant_config(name)}
    Path(out_json).write_text(json.dumps(res))
    return res


def _prepare_config(cfg: SpuriousConfig, o: dict) -> None:
    """The configuration's fine-tuning set and the original model's images (once; every run reads them)."""
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from spf_lib.world.fidelity import generate_all, make_plan
    from spf_lib.world.finetune import make_finetune_set

    work = Path(o["workdir"]) / cfg.name
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "config.json"
    want = {**cfg.to_dict(), "n_ft": o["n_ft"], "n_prompts": o["n_prompts"], "n_seeds": o["n_seeds"],
            "infer_steps": o["infer_steps"], "guidance": o["guidance"], "base": str(o["base"])}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and (work / "original.npz").is_file():
        return
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_finetune_set(work / "ftset", n=o["n_ft"], seed=cfg.ft_seed, spurious=cfg.spurious)
    plan = make_plan(o["n_prompts"], o["n_seeds"], seed=cfg.eval_seed, steps=o["infer_steps"], guidance=o["guidance"])
    pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    g = generate_all(pipe, plan)
    np.savez(work / "original.npz", base=g.base.numpy(), target=g.target.numpy())
    stamp.write_text(json.dumps(want))


def variant_config(name: str) -> dict:
    """What a variant trains with, as resolved now (method + every SPF option after presets): part of the cache key,
    so a change of the method's defaults retrains instead of reusing a run of the old method."""
    method, over = VARIANTS[name]
    if method != "spf":
        return {"method": method}
    from spf_lib.train.config import SpfOptions

    return {"method": method, "spf": SpfOptions(**{"image_embedder": "world-clip", **over}).model_dump(mode="json")}


def _run_key(o: dict) -> dict:
    return {k: str(o[k]) for k in ("steps", "every", "naive_lr", "lr", "rank", "batch", "n_ft", "n_prompts",
                                    "n_seeds", "infer_steps", "guidance", "base", "probes", "clip", "overlap_n")}


def _worker(args: tuple) -> dict:
    cfg_d, seed, name, o, out_json = args
    with tempfile.TemporaryDirectory(prefix="spf-frontier-") as tmp:
        return _run_one(cfg_d, seed, name, {**o, "tmp": tmp}, out_json)


def _train_all(jobs_list: list[tuple], jobs: int) -> list[dict]:
    if jobs <= 1:
        return [_worker(a) for a in jobs_list]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(_worker, jobs_list))


# -- summary --------------------------------------------------------------------------------------------------------
def summarise(runs: list[dict], names: list[str]) -> tuple[dict, list[list]]:
    """Per (configuration, seed): every frontier figure against that cell's naive and LoRA; then mean ± sd."""
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for r in runs:
        cells.setdefault((r["config"]["name"], r["seed"]), {})[r["variant"]] = r
    per: dict[str, dict[str, list]] = {n: {} for n in names}

    def add(n: str, key: str, v: float) -> None:
        per[n].setdefault(key, []).append(v)

    def pts(r: dict) -> list[tuple[float, float]]:
        return [(c["attr_drift"], c["target_rate"]) for c in r["curve"]]

    for (_cname, _seed), vs in sorted(cells.items()):
        lora, naive = vs.get("lora"), vs.get("naive")
        for n, r in vs.items():
            final = r["curve"][-1]
            add(n, "final_pollution", final["attr_drift"])
            add(n, "final_target", final["target_rate"])
            add(n, "final_leak", final["target_leak"])
            # how much of the target rate answers the text: glasses on target prompts beyond those that appear on
            # base prompts anyway (an unconditional "glasses on everyone" scores a high target rate and a high leak)
            add(n, "final_cond_target", final["target_rate"] - final["target_leak"])
            add(n, "train_s", r["train_s"])
            best = max(c["target_rate"] for c in r["curve"])
            if naive:
                t_n, p_n = naive["curve"][-1]["target_rate"], naive["curve"][-1]["attr_drift"]
                add(n, "best_target_x_naive", best / max(t_n, 1e-9))
                add(n, "pol_at_naive_target_x_naive", pollution_at_target(pts(r), t_n) / max(p_n, 1e-9))
            if lora:
                t_l, p_l = lora["curve"][-1]["target_rate"], lora["curve"][-1]["attr_drift"]
                add(n, "pol_at_lora_target_x_lora", pollution_at_target(pts(r), t_l) / max(p_l, 1e-9))
                add(n, "target_at_lora_pollution", target_at_pollution(pts(r), p_l))
        for full, ablated in (("spf", "spf w/o SFCM"), ("spf-paper", "spf-paper w/o SFCM")):
            if full in vs and ablated in vs:
                p_eq = min(vs[full]["curve"][-1]["attr_drift"], vs[ablated]["curve"][-1]["attr_drift"])
                add(ablated, "sfcm_gap", target_at_pollution(pts(vs[full]), p_eq)
                    - target_at_pollution(pts(vs[ablated]), p_eq))
    rows = []
    for n in names:
        d = per[n]
        if not d:
            continue
        rows.append([n, len(d.get("final_target", [])), _fmt(d.get("pol_at_lora_target_x_lora", [])),
                     _fmt(d.get("pol_at_naive_target_x_naive", [])), _fmt(d.get("target_at_lora_pollution", [])),
                     _fmt(d.get("best_target_x_naive", [])), _fmt(d["final_pollution"]), _fmt(d["final_target"]),
                     _fmt(d["final_leak"]), _fmt(d["final_cond_target"]), _fmt(d["train_s"], 0)])
    return per, rows


def overlap_table(runs: list[dict]) -> list[list]:
    """SFCM vs rendered glasses, per setting and layer resolution: mean over runs of IoU, precision, recall, mean M
    inside and outside the glasses."""
    acc: dict[tuple[str, int], dict[str, list]] = {}
    for r in runs:
        for setting, per_res in (r.get("sfcm_overlap") or {}).items():
            for res, m in per_res.items():
                d = acc.setdefault((setting, int(res)), {})
                for k, v in m.items():
                    d.setdefault(k, []).append(v)
    rows = []
    for (setting, res), d in sorted(acc.items(), key=lambda x: (x[0][0], -x[0][1])):
        rows.append([setting, f"{res}×{res}"] + [_fmt(d[k]) for k in ("iou", "precision", "recall", "m_in", "m_out")]
                    + [len(d["iou"])])
    return rows


def plot(runs: list[dict], names: list[str], path: Path) -> Path:
    """One panel per configuration: target rate (x) vs pollution (y), thin per seed, thick = mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = sorted({r["config"]["name"] for r in runs})
    fig, axes = plt.subplots(1, len(cfgs), figsize=(6 * len(cfgs), 5), squeeze=False)
    colors = dict(zip(names, plt.cm.tab10.colors))
    for ax, c in zip(axes[0], cfgs):
        desc = next(r["config"] for r in runs if r["config"]["name"] == c)
        for n in names:
            rs = [r for r in runs if r["config"]["name"] == c and r["variant"] == n]
            if not rs:
                continue
            for r in rs:
                ax.plot([p["target_rate"] for p in r["curve"]], [p["attr_drift"] for p in r["curve"]], color=colors[n],
                        alpha=0.25, lw=0.8)
            k = min(len(r["curve"]) for r in rs)
            mt = [sum(r["curve"][i]["target_rate"] for r in rs) / len(rs) for i in range(k)]
            mp = [sum(r["curve"][i]["attr_drift"] for r in rs) / len(rs) for i in range(k)]
            ax.plot(mt, mp, color=colors[n], lw=2.2, marker="o", ms=3, label=f"{n} ({len(rs)} seeds)")
        sp = ", ".join(f"{k}={v}" for k, v in desc["spurious"].items())
        ax.set_title(f"config {c}: spurious {sp}\nft seed {desc['ft_seed']}, eval seed {desc['eval_seed']}", fontsize=9)
        ax.set_xlabel("target rate (glasses probe, target prompts) →")
        ax.set_ylabel("pollution (base-attribute drift, base prompts) ↓")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Pollution vs target rate along training (checkpoints; lower right is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(options: dict[str, str]) -> dict:
    from spf_lib.errors import SpfError

    t_all = time.perf_counter()
    quick = opt(options, "quick", False, bool)
    q = {"steps": 4, "every": 2, "n_ft": 4, "n_prompts": 2, "n_seeds": 1, "infer_steps": 2, "batch": 2,
         "seeds": "0", "overlap_n": 2} if quick else {}

    def get(key, default, cast=None):
        return opt(options, key, q.get(key, default), cast)

    o = {
        "steps": get("steps", 300, int), "every": get("every", 75, int), "naive_lr": get("naive_lr", 2e-4, float),
        "lr": get("lr", 3e-3, float), "rank": get("rank", 8, int), "batch": get("batch", 8, int),
        "n_ft": get("n_ft", 48, int), "n_prompts": get("n_prompts", 6, int), "n_seeds": get("n_seeds", 2, int),
        "infer_steps": get("infer_steps", 20, int), "guidance": get("guidance", 4.0, float),
        "threads": get("threads", 1, int), "jobs": get("jobs", 2, int), "overlap_n": get("overlap_n", 8, int),
        "base": Path(get("base", str(ASSETS / "base"), str)), "probes": Path(get("probes", str(ASSETS / "probes"), str)),
        "clip": Path(get("clip", str(ASSETS / "clip"), str)),
    }
    if o["every"] < 1 or o["steps"] < 1:
        raise SpfError(f"bench options steps={o['steps']} every={o['every']}: both must be ≥ 1")
    names = [v.strip() for v in get("variants", ",".join(DEFAULT_VARIANTS), str).split(",") if v.strip()]
    for n in names:
        if n not in VARIANTS:
            raise SpfError(f"bench option variants: unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    try:
        seeds = [int(s) for s in get("seeds", "0,1,2", str).split(",") if s.strip()]
    except ValueError:
        raise SpfError(f"bench option seeds={options.get('seeds')!r}: expected integers joined by commas") from None
    configs = parse_configs(get("configs", DEFAULT_CONFIGS if not quick else DEFAULT_CONFIGS.split(";")[0], str))
    work = Path(get("workdir", "", str) or tempfile.mkdtemp(prefix="spf-fidelity-"))
    o["workdir"] = str(work)
    for c in configs:
        _prepare_config(c, o)
    key = _run_key(o)
    o["run_key"] = key
    todo, runs = [], []
    # seed-major order: an interrupted run still leaves whole (configuration, seed) cells to summarise
    for seed in seeds:
        for c in configs:
            for n in names:
                path = work / c.name / f"seed{seed}" / (n.replace(" ", "_").replace("/", "") + ".json")
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.is_file():
                    cached = json.loads(path.read_text())
                    if cached.get("key") == key and cached.get("variant_config") == variant_config(n):
                        runs.append(cached)
                        continue
                todo.append((c.to_dict(), seed, n, {**o, "base": str(o["base"]), "probes": str(o["probes"]),
                                                   "clip": str(o["clip"])}, str(path)))
    log.info("fidelity frontier: %d runs cached, %d to train (%d in parallel)", len(runs), len(todo), o["jobs"])
    runs += _train_all(todo, o["jobs"])  # each run's JSON is written by its worker as soon as it is done
    per, rows = summarise(runs, names)
    png = plot(runs, names, Path(get("plot", str(work / "frontier.png"), str)))
    ov = overlap_table(runs)
    wall = time.perf_counter() - t_all
    sp = "; ".join(f"{c.name}: {c.spurious} ft-seed {c.ft_seed} eval-seed {c.eval_seed}" for c in configs)
    notes = [
        f"{len(configs)} configuration(s) × {len(seeds)} training seed(s) {seeds}: {sp}",
        f"{o['steps']} steps (naive lr {o['naive_lr']}; LoRA family lr {o['lr']}, rank {o['rank']}), batch {o['batch']}, "
        f"{o['n_ft']} fine-tuning images; checkpoints every {o['every']} steps, each scored on {o['n_prompts']} prompts "
        f"× {o['n_seeds']} seeds ({o['n_prompts'] * o['n_seeds']} base + as many target images)",
        "per run, against the same cell's naive and LoRA (final checkpoints); mean ± sd over runs; 'not reached' = "
        "the curve never got to that target rate",
        f"plot: {png}",
        f"whole benchmark wall time {wall:.0f} s ({o['jobs']} runs in parallel; {len(todo)} trained now, "
        f"{len(runs) - len(todo)} from the workdir cache)",
    ]
    gaps = per.get("spf w/o SFCM", {}).get("sfcm_gap")
    if gaps:
        notes.append(f"SPF minus w/o-SFCM target rate at equal pollution: {_fmt(gaps)} (goal: > 0)")
    return {"title": "Fidelity frontier in the small world (pollution vs target rate along training)",
            "columns": COLUMNS, "rows": rows,
            "figures": {"per_variant": per, "sfcm_overlap": {"columns": ["setting", "layer", "IoU", "precision",
                                                                         "recall", "M in glasses", "M outside",
                                                                         "runs"], "rows": ov},
                        "runs": runs, "options": {k: str(v) for k, v in o.items()}, "wall_s": wall, "plot": str(png)},
            "notes": notes}
