"""`spf bench identity`: teach a person through a trigger word with Celeb Basis, Beyond Inserting and LoRA
(DreamBooth-style), side by side in the small world.

The world has two persons (its ``person`` attribute: Eileen Collins as "young", Grace Hopper as "old"), and the
person probe reads which one an image shows. For EACH person in turn, every method trains on the same renders of that
person (other attributes random) so that "a photo of sks person" should show them; averaging over both persons
cancels the base model's own leaning towards one of them. Columns, all on the same prompts and seeds:
- identity rate: fraction of trigger prompts ("a photo of sks person, <hair>, <shirt>, <background>") whose image
  the person probe reads as the taught person (original model: chance-like, the trigger is an untrained word);
- dlib: face detection rate on the trigger images (64 px, upscaled to 256 for dlib) and the mean ID score of dlib's
  descriptor against the taught person's reference descriptor (the mean over the training renders, 256 px), read
  as the pipeline's evaluation reads them (undetected faces from a centred box; score 0.5 = same-person threshold);
- prompt fidelity: fraction of the attributes a trigger prompt names that the probes read back;
- pollution: fraction of (image, attribute) probe readings that change between the original and the tuned model on
  base prompts that do not contain the trigger;
- trainable parameters and seconds of training per identity (variants train in parallel processes, ``jobs``).
Options (-o KEY=VALUE): steps, lora_steps, cb_lr, bi_lr, lora_lr, rank, batch, n_train, n_prompts, n_seeds,
infer_steps, guidance, persons (comma list of young,old), variants (comma list), seed, threads, jobs, workdir.
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
TRIGGER = "sks"
NAMED = ("hair", "clothing", "background")   # what a trigger prompt names besides the person
FALLBACK_BOX = 0.6   # the demo's EvalConfig.id_fallback_box

# name -> (method, method options)
VARIANTS: dict[str, tuple[str, dict]] = {
    "celeb-basis": ("celeb-basis", {}),
    "celeb-basis torch-init": ("celeb-basis", {"mlp_init": "torch"}),
    "celeb-basis last-output": ("celeb-basis", {"coef_momentum": 0.0}),
    "beyond-inserting": ("beyond-inserting", {}),
    "lora": ("lora", {}),
}
DEFAULT_VARIANTS = ("celeb-basis", "beyond-inserting", "lora")
COLUMNS = ["method", "identity rate↑", "dlib face rate", "dlib ID↑", "prompt fidelity↑", "pollution↓",
           "trained params", "s/identity"]


def make_identity_set(out_dir: Path, person: str, n: int, seed: int, size: int = 256) -> Path:
    """Renders of ONE person (other attributes random) as a prepared-data folder. Captions (LoRA reads them;
    the identity methods use their own templates) put the trigger where the world's subject phrase goes."""
    import pandas as pd

    from spf_lib.data.synth import _png_bytes, synth_records
    from spf_lib.world.finetune import prompt_phrases
    from spf_lib.world.render import render_portrait

    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, attrs, layout in synth_records(n, seed, target_fraction=0.0, fixed={"person": person}):
        rel = f"crops/{person}{i:03d}.png"
        (out_dir / rel).write_bytes(_png_bytes(render_portrait(attrs, size, layout)))
        phrases = prompt_phrases(attrs, ("hair", "clothing", "background", "expression", "skin"))
        rows.append({"id": f"{person}{i:03d}", "crop_path": rel,
                     "caption": ", ".join([f"a photo of {TRIGGER} person", *phrases]),
                     "base_phrases": phrases, "target_phrase": None})
    pd.DataFrame(rows).to_parquet(out_dir / "manifest.parquet", index=False)
    return out_dir


def _prompts(n: int, seed: int) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(trigger prompts, base prompts, attributes each names); a base prompt names a person, a trigger prompt
    puts the trigger in its place."""
    import numpy as np

    from spf_lib.world.attributes import sample_attributes
    from spf_lib.world.finetune import prompt_phrases

    rng = np.random.default_rng(seed)
    trig, base, named = [], [], []
    for _ in range(n):
        a = sample_attributes(rng)
        rest = prompt_phrases(a, NAMED)
        trig.append(", ".join([f"a photo of {TRIGGER} person", *rest]))
        base.append(", ".join(prompt_phrases(a, ("person", *NAMED))))
        named.append({k: getattr(a, k) for k in NAMED})
    return trig, base, named


def _train(name: str, person: str, data: Path, out: Path, o: dict) -> tuple[str, float, int]:
    """Train one variant for one person (in a worker process when jobs > 1): (adapter dir, seconds, params)."""
    import json

    import torch

    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import train

    torch.set_num_threads(o["threads"])
    method, over = VARIANTS[name]
    kw: dict = {"validation": {"enabled": False}, "checkpoints_total_limit": 1}
    if method == "celeb-basis":
        kw.update(celeb_basis={"face_encoder": "dlib", "trigger": TRIGGER, **over}, lr=o["cb_lr"], steps=o["steps"])
    elif method == "beyond-inserting":
        kw.update(beyond_inserting={"trigger": TRIGGER, **over}, lr=o["bi_lr"], steps=o["steps"])
    else:
        kw.update(lora={"rank": o["rank"]}, lr=o["lora_lr"], steps=o["lora_steps"])
    cfg = TrainConfig.build("bench identity", method=method, base_model=str(o["base"]), data_dir=str(data),
                            output_dir=str(out), seed=o["seed"], resolution=64, batch_size=o["batch"], device="cpu",
                            **kw)
    t0 = time.perf_counter()
    res = train(cfg)
    secs = time.perf_counter() - t0
    info = json.loads((Path(res.adapter_dir) / "adapter_info.json").read_text())
    params = info.get("trainable_params")
    if params is None:   # LoRA: count the saved adapter tensors
        from safetensors import safe_open

        params = 0
        for f in Path(res.adapter_dir).glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                params += sum(_numel(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (safe_open is no dict)
    return str(res.adapter_dir), secs, int(params)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _dlib_scores(images, ref):
    """(detection rate, mean ID score to ``ref``) of 64-px generations upscaled to 256, as the pipeline's
    evaluation reads them: undetected faces from the centred fallback box (FALLBACK_BOX), the evaluation's scale
    clip(1 - L2/1.2, 0, 1) (0.5 = dlib's same-person threshold)."""
    import numpy as np
    from PIL import Image

    from spf_lib.eval.faces import FaceAnalyzer

    fa = FaceAnalyzer("dlib")
    arr = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).astype("uint8")
    scores, detected = [], 0
    for a in arr:
        r = fa.analyze(Image.fromarray(a).resize((256, 256), Image.Resampling.BICUBIC), fallback_box=FALLBACK_BOX)
        if r.embedding is not None:
            detected += not r.fallback
            scores.append(fa.encoder.compare(np.asarray(r.embedding), ref)["score"])
    return detected / max(len(arr), 1), (float(np.mean(scores)) if scores else float("nan"))


def _reference_descriptor(data: Path):
    import numpy as np
    import pandas as pd
    from PIL import Image

    from spf_lib.eval.faces import FaceAnalyzer

    fa = FaceAnalyzer("dlib")
    embs = []
    for p in pd.read_parquet(data / "manifest.parquet")["crop_path"]:
        with Image.open(data / p) as im:
            r = fa.analyze(im.convert("RGB"))
        if r.embedding is not None:
            embs.append(np.asarray(r.embedding, dtype=np.float64))
    return np.mean(embs, axis=0)


def run(options: dict[str, str]) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from spf_lib.errors import SpfError
    from spf_lib.methods import load_adapter
    from spf_lib.world.attributes import BASE_ATTRIBUTES, CHOICES
    from spf_lib.world.fidelity import generate, named_fidelity
    from spf_lib.world.probes import Probes

    t_all = time.perf_counter()
    o = {
        "steps": opt(options, "steps", 300), "lora_steps": opt(options, "lora_steps", 300),
        "cb_lr": opt(options, "cb_lr", 5e-3), "bi_lr": opt(options, "bi_lr", 5e-3),
        "lora_lr": opt(options, "lora_lr", 1e-3), "rank": opt(options, "rank", 8), "batch": opt(options, "batch", 2),
        "n_train": opt(options, "n_train", 8), "n_prompts": opt(options, "n_prompts", 8),
        "n_seeds": opt(options, "n_seeds", 3), "infer_steps": opt(options, "infer_steps", 20),
        "guidance": opt(options, "guidance", 4.0), "seed": opt(options, "seed", 0),
        "threads": opt(options, "threads", 1), "jobs": opt(options, "jobs", 2),
        "base": Path(opt(options, "base", str(ASSETS / "base"))),
        "probes": Path(opt(options, "probes", str(ASSETS / "probes"))),
    }
    persons = [p.strip() for p in opt(options, "persons", "young,old").split(",") if p.strip()]
    names = [v.strip() for v in opt(options, "variants", ",".join(DEFAULT_VARIANTS)).split(",") if v.strip()]
    for p in persons:
        if p not in CHOICES["person"]:
            raise SpfError(f"bench option persons: unknown person {p!r}; known: {', '.join(CHOICES['person'])}")
    for n in names:
        if n not in VARIANTS:
            raise SpfError(f"bench option variants: unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(o["threads"])
    work = Path(opt(options, "workdir", "") or tempfile.mkdtemp(prefix="spf-identity-"))
    probes = Probes.load(o["probes"])
    trig, base, named = _prompts(o["n_prompts"], seed=321)
    seeds = list(range(2000, 2000 + o["n_seeds"]))
    tp = [p for p in trig for _ in seeds]
    bp = [p for p in base for _ in seeds]
    nm = [x for x in named for _ in seeds]
    ss = [s for _ in trig for s in seeds]
    pipe = StableDiffusionPipeline.from_pretrained(str(o["base"]), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    gen = lambda prompts: generate(pipe, prompts, ss, o["infer_steps"], o["guidance"])  # noqa: E731
    orig_trig, orig_base = gen(tp), gen(bp)
    po = probes.predict(orig_base)
    sets = {p: make_identity_set(work / f"set-{p}", p, o["n_train"], seed=o["seed"] * 100 + i)
            for i, p in enumerate(persons)}
    refs = {p: _reference_descriptor(d) for p, d in sets.items()}
    jobs = [(n, p) for p in persons for n in names]
    t_train = time.perf_counter()
    if o["jobs"] <= 1:
        trained = {(n, p): _train(n, p, sets[p], work / f"{n.replace(' ', '_')}-{p}", o) for n, p in jobs}
    else:
        with ProcessPoolExecutor(max_workers=o["jobs"], mp_context=multiprocessing.get_context("spawn")) as ex:
            futs = {(n, p): ex.submit(_train, n, p, sets[p], work / f"{n.replace(' ', '_')}-{p}", o) for n, p in jobs}
            trained = {k: f.result() for k, f in futs.items()}
    train_wall = time.perf_counter() - t_train

    def scores(trig_imgs, base_imgs, person):
        pt = probes.predict(trig_imgs)
        pb = probes.predict(base_imgs)
        det, dlib_id = _dlib_scores(trig_imgs, refs[person])
        return {"identity_rate": float(np.mean(pt["person"] == CHOICES["person"].index(person))),
                "dlib_face_rate": det, "dlib_id": dlib_id, "prompt_fidelity": named_fidelity(pt, nm),
                "pollution": float(np.mean([np.mean(po[a] != pb[a]) for a in BASE_ATTRIBUTES]))}

    per: dict[str, dict[str, dict]] = {"original": {p: scores(orig_trig, orig_base, p) for p in persons}}
    for (n, p), (adapter, secs, params) in trained.items():
        handle = load_adapter(pipe, adapter)
        text = [handle.prompt(t) for t in tp]
        s = scores(gen(text), gen([handle.prompt(b) for b in bp]), p)
        handle.disable()
        if VARIANTS[n][0] == "lora":
            pipe.delete_adapters(handle.adapter_name)
        per.setdefault(n, {})[p] = {**s, "train_s": secs, "params": params}
    rows, figures = [], {"per_person": per}
    keys = ["identity_rate", "dlib_face_rate", "dlib_id", "prompt_fidelity", "pollution"]
    for n in ["original", *names]:
        avg = {k: float(np.nanmean([per[n][p][k] for p in persons])) for k in keys}
        avg["params"] = per[n][persons[0]].get("params", 0)
        avg["s_per_identity"] = float(np.mean([per[n][p].get("train_s", 0.0) for p in persons]))
        figures[n] = avg
        rows.append([n, *[avg[k] for k in keys], avg["params"], round(avg["s_per_identity"], 1)])
    wall = time.perf_counter() - t_all
    figures["options"] = {k: str(v) for k, v in o.items()} | {"persons": persons}
    figures["wall_s"], figures["train_wall_s"] = wall, train_wall
    notes = [
        f"averaged over the persons {persons}, each taught separately through '{TRIGGER}' from {o['n_train']} "
        f"renders; {len(tp)} trigger + {len(bp)} base images per model ({o['n_prompts']} prompts x {o['n_seeds']} "
        f"seeds, {o['infer_steps']} steps, guidance {o['guidance']})",
        f"steps: identity methods {o['steps']} (lr Celeb Basis {o['cb_lr']}, Beyond Inserting {o['bi_lr']}), LoRA "
        f"{o['lora_steps']} (lr {o['lora_lr']}, rank {o['rank']}), batch {o['batch']}; {o['jobs']} trainings in "
        f"parallel (s/identity measured under that contention); whole benchmark wall time {wall:.0f} s",
        "identity rate = person probe reads the taught person; dlib = HOG detection rate on 64-px generations "
        "upscaled to 256, and the mean ID score (clip(1 - L2/1.2, 0, 1), 0.5 = dlib's same-person threshold) to "
        f"the taught person's mean descriptor, undetected faces read from a centred {FALLBACK_BOX} box",
    ]
    return {"title": "Identity through a trigger word in the small world", "columns": COLUMNS, "rows": rows,
            "figures": figures, "notes": notes}
