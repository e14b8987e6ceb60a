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
(runs trained side by side in processes), quick=1 (CI-sized smoke run: a few steps, tiny evaluation), prepared=1
(each configuration's fine-tuning set rendered at 256 px and run through the data stage's face detection, alignment
and crop to 64 px, as `spf demo` trains on, instead of rendered at 64 px; its cells are named "A-prepared", … and
report no SFCM overlap, since the rendered glasses masks do not follow the alignment).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import opt
from bench.frontier_report import COLUMNS, fmt, overlap_table, plot, summarise

if TYPE_CHECKING:
    from spf_lib.data.config import PrepareConfig

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "world"

# name -> (method, spf option overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "naive": ("naive", {}),
    "lora": ("lora", {}),
    "spf": ("spf", {}),
    "spf split": ("spf", {"preserve_schedule": "split"}),
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
    "spf w/o target tokens": ("spf", {"target_tokens": False}),
    "spf L_preserve on every sample": ("spf", {"preserve_frac": 1.0, "preserve_schedule": "beside"}),
    # the default until issue 15's seventh round: the preserved eighth runs L_preserve beside the response path
    "spf L_preserve beside": ("spf", {"preserve_schedule": "beside"}),
    "spf L_preserve 1/4": ("spf", {"preserve_frac": 0.25}),
    "spf L_preserve 1/2": ("spf", {"preserve_frac": 0.5}),
    # the default's share, all of it on the empty prompt (classifier-free guidance's unconditional branch)
    "spf L_preserve uncond": ("spf", {"preserve_uncond_frac": 1.0}),
    # Run 7's default (issue 15, third session): no target tokens, L_preserve on every sample
    "spf run 7": ("spf", {"target_tokens": False, "preserve_frac": 1.0, "preserve_schedule": "beside"}),
    # the default until issue 15's ninth round: L_text on the raw attention maps (Runs 10-11)
    "spf raw L_text": ("spf", {"text_without_target": False}),
    # a control: the target-token rows with LoRA's loss alone (every SPF loss and the SFCM off, LoRA's lr)
    "lora + target tokens": ("spf", {"target_tokens": True, "use_text": False, "use_fine": False, "use_out": False,
                                     "use_enhanced": False, "use_preserve": False, "use_sfcm": False,
                                     "lr_scale": 1.0}),
}
DEFAULT_VARIANTS = ["naive", "lora", "spf", "spf w/o target tokens", "spf w/o SFCM", "spf-paper"]
DEFAULT_CONFIGS = "background=red+expression=smiling:7:123;background=blue+expression=neutral:11:321"
# SPF behaviour no option names (part of the cache key, so a run of older code is not reused): issue 15's sixth
# round spread L_preserve's share evenly over the run (was stochastic rounding) and encodes frozen texts separately
SPF_CODE = "r6: even shares, frozen texts encoded apart"
# the SFCM settings whose overlap with the rendered glasses is reported
SFCM_SETTINGS = {"robust, blur 1, phrase share (now)": {"sfcm_norm": "robust", "sfcm_blur": 1,
                                                        "sfcm_phrase_share": True},
                 "robust, blur 1, phrase sum (Runs 13-14)": {"sfcm_norm": "robust", "sfcm_blur": 1,
                                                             "sfcm_phrase_share": False},
                 "robust, no blur (Runs 10-12)": {"sfcm_norm": "robust", "sfcm_blur": 0, "sfcm_phrase_share": False},
                 "quantile+max (issue 9)": {"sfcm_norm": "quantile", "sfcm_gate_pool": "max", "sfcm_blur": 0}}


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
        if method == "spf" and tr.method.o.use_sfcm and not o["prepared"]:
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
    if o["prepared"]:  # only then: the stamps of rendered sets written before the option existed stay valid
        want["prepared"] = _world_prepare_config().to_dict()  # crops made otherwise are another fine-tuning set
    if stamp.is_file() and json.loads(stamp.read_text()) == want and (work / "original.npz").is_file():
        return
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if o["prepared"]:
        _prepared_finetune_set(work, cfg, o["n_ft"])
    else:
        make_finetune_set(work / "ftset", n=o["n_ft"], seed=cfg.ft_seed, spurious=cfg.spurious)
    plan = make_plan(o["n_prompts"], o["n_seeds"], seed=cfg.eval_seed, steps=o["infer_steps"], guidance=o["guidance"])
    pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    g = generate_all(pipe, plan)
    np.savez(work / "original.npz", base=g.base.numpy(), target=g.target.numpy())
    stamp.write_text(json.dumps(want))


def _prepared_finetune_set(work: Path, cfg: SpuriousConfig, n: int) -> None:
    """The fine-tuning set as `spf demo` trains on it: photos at 256 px through `prepare_dataset` (dlib detection,
    5-point alignment, crop to 64 px) — faces zoomed and slightly rotated, a few images rejected. The demo caught on
    such crops what the rendered set could not (issue 15, tenth round)."""
    from spf_lib.data.prepare import prepare_dataset
    from spf_lib.demo import synth_demo_data

    raw = synth_demo_data(work / "photos", n=n, seed=cfg.ft_seed, spurious=cfg.spurious)
    res = prepare_dataset(raw, work / "ftset", _world_prepare_config())
    log.info("fidelity frontier: %s prepared: %d of %d photos kept", cfg.name, res.n_kept, res.n_input)


def _world_prepare_config() -> PrepareConfig:
    """The data stage's settings for the world's photos, as `spf demo` prepares them (64 px, the demo's padding)."""
    from spf_lib.data.config import PrepareConfig
    from spf_lib.demo import WORLD_PREPARE_PADDING

    return PrepareConfig(size=64, padding=WORLD_PREPARE_PADDING)


def variant_config(name: str) -> dict:
    """What a variant trains with, as resolved now (method + every SPF option after presets): part of the cache key,
    so a change of the method's defaults retrains instead of reusing a run of the old method."""
    method, over = VARIANTS[name]
    if method != "spf":
        return {"method": method}
    from spf_lib.train.config import SpfOptions

    o = SpfOptions(**{"image_embedder": "world-clip", **over})
    out = {"method": method, "spf": o.model_dump(mode="json")}
    out["code"] = SPF_CODE
    return out


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
        "clip": Path(get("clip", str(ASSETS / "clip"), str)), "prepared": get("prepared", False, bool),
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
    if o["prepared"]:
        configs = [replace(c, name=f"{c.name}-prepared") for c in configs]
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
        notes.append(f"SPF minus w/o-SFCM target rate at equal pollution (the lower of the two final pollutions): "
                     f"{fmt(gaps)} (goal: > 0)")
        at_full = per["spf w/o SFCM"]["sfcm_gap_at_full"]
        notes.append(f"SPF's final target minus w/o-SFCM's best target at no more pollution than SPF's final: "
                     f"{fmt(at_full)}, positive in {sum(g > 0 for g in at_full)} of {len(at_full)} cells (goal: > 0)")
    return {"title": "Fidelity frontier in the small world (pollution vs target rate along training)",
            "columns": COLUMNS, "rows": rows,
            "figures": {"per_variant": per, "sfcm_overlap": {"columns": ["setting", "layer", "IoU", "precision",
                                                                         "recall", "M in glasses", "M outside",
                                                                         "runs"], "rows": ov},
                        "runs": runs, "options": {k: str(v) for k, v in o.items()}, "wall_s": wall, "plot": str(png)},
            "notes": notes}
