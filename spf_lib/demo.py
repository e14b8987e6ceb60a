"""The demo workspace: a base model, a DVC-versioned portrait dataset and an MLflow store, all on this machine.

Everything is produced by the project itself (no downloads), so two commands on a fresh clone run the real pipeline.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
WORLD_BASE = REPO_ROOT / "assets" / "world" / "base"
WORLD_CLIP = REPO_ROOT / "assets" / "world" / "clip"
WORLD_PROBES = REPO_ROOT / "assets" / "world" / "probes"

#: The demo's training settings: the fidelity bench's (bench/fidelity.py, docs/world.md Run 5) — rank 8, lr 3e-3,
#: batch 8 at 64 px — where LoRA and SPF both learn the glasses; fewer steps than the bench's 300 so that a fresh
#: clone's `make demo` (setup, both trainings, both evaluations) stays within 10 minutes on 2 CPU cores.
DEMO_STEPS = 300
DEMO_IMAGES = 48
DEMO_DATA_SEED = 7  # the seed of the bench's fine-tuning set: the demo data is that set, rendered at 256 px
#: dlib chip padding for the world's photos: the aligned 64-px crop then frames the face as the world's renders do
WORLD_PREPARE_PADDING = 0.85


@dataclass
class DemoWorkspace:
    root: Path
    base_model: str
    data_repo: str
    data_rev: str
    data_hash: str
    tracking_uri: str
    resolution: int

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}


def model_resolution(model_dir: str | Path) -> int:
    """The image size the model was built for (VAE sample size), 512 if unknown."""
    cfg = Path(model_dir) / "vae" / "config.json"
    if cfg.is_file():
        size = json.loads(cfg.read_text()).get("sample_size")
        if isinstance(size, int):
            return size
    return 512


# ``--base-model`` names that build a tiny random model of that architecture here instead of naming a model
TINY_BASES = {"tiny-sd": "sd", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3"}


def ensure_base_model(root: Path, base_model: str | None) -> str:
    """The user's model if given (``tiny-sd`` / ``tiny-sdxl`` / ``tiny-sd3``: a tiny random one of that
    architecture, built here); else the committed small-world model; else a tiny random SD one built here."""
    if base_model and (base_model not in TINY_BASES or Path(base_model).exists()):
        return base_model
    if not base_model and (WORLD_BASE / "model_index.json").is_file():
        return str(WORLD_BASE)
    from spf_lib.models.factory import TinySDConfig, save_tiny_pipeline

    name = base_model or "tiny-sd"
    target = root / "models" / name
    if not (target / "model_index.json").is_file():
        log.info("building a tiny %s-architecture model at %s", TINY_BASES[name], target)
        save_tiny_pipeline(target, TinySDConfig(arch=TINY_BASES[name]))
    return str(target)


def synth_demo_data(out_dir: str | Path, n: int = DEMO_IMAGES, seed: int = DEMO_DATA_SEED,
                    size: int = 256, spurious: dict[str, str] | None = None) -> Path:
    """The demo's raw dataset: the small world's fine-tuning set with its spurious correlation, as photos + captions.

    Every image wears round glasses (the target) AND has a red background AND smiles; captions name only person,
    hair, shirt, skin and the target (``spf_lib.world.finetune``), so nothing in the text explains red or smiling.
    A method that learns only "glasses" leaves base prompts alone; plain LoRA also learns "red, smiling" for every
    prompt — the pollution the demo makes visible. 256 px (not the world's 64) because the data stage detects and
    aligns faces with dlib, which needs that size; ``prepare`` crops back to 64 px.

    Deterministic: same arguments → byte-identical files (``images/*.png`` without metadata chunks,
    ``captions.jsonl``, ``labels.jsonl`` with sorted keys), hence the same DVC hash. ``spurious``: another
    configuration's correlated attributes (`spf bench fidelity -o prepared=1`); the demo's by default.
    """
    from spf_lib.data.synth import _png_bytes, synth_records
    from spf_lib.io import atomic_dir
    from spf_lib.world.attributes import TARGET_PHRASE
    from spf_lib.world.finetune import SPURIOUS, prompt_phrases
    from spf_lib.world.render import render_portrait

    captions, labels = [], []
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for i, attrs, layout in synth_records(n, seed, target_fraction=1.0,
                                              fixed_for_target=SPURIOUS if spurious is None else spurious):
            rel = f"images/{i:05d}.png"
            (tmp / rel).write_bytes(_png_bytes(render_portrait(attrs, size, layout)))
            caption = ", ".join(prompt_phrases(attrs) + [TARGET_PHRASE])
            captions.append(json.dumps({"file": rel, "caption": caption}, sort_keys=True))
            labels.append(json.dumps({"file": rel, **attrs.to_dict(), "layout": layout.__dict__}, sort_keys=True))
        (tmp / "captions.jsonl").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (tmp / "labels.jsonl").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return Path(out_dir)


def ensure_data_repo(root: Path, n_images: int, seed: int) -> tuple[str, str, str]:
    """The DVC-versioned demo data; return (repo, rev, hash).

    By default this project's own repository: its top-level ``data.dvc`` tracks ``data/`` = ``spf data synth``'s
    set, so the pipeline reads ``data`` at this checkout's HEAD (a fresh clone regenerates ``data/``, checks it
    against ``data.dvc`` and pushes it to the local remote ``.spf/dvc-remote``; the user commits nothing). Another
    size/seed, or a package installed outside a git checkout, gets a repo of its own under ``root``.
    """
    from spf_lib.data.dvc_versioning import committed_data_rev, track_dataset

    if (n_images, seed) == (DEMO_IMAGES, DEMO_DATA_SEED):
        found = committed_data_rev(REPO_ROOT, regenerate=synth_demo_data)
        if found is not None:
            return str(REPO_ROOT), *found
    repo = root / "data-repo"
    synth_demo_data(repo / "data", n=n_images, seed=seed)
    rev, data_hash = track_dataset(repo, data_dir_name="data", remote_url=str(root / "dvc-remote"))
    return str(repo), rev, data_hash


def prepare_workspace(root: str | Path, *, n_images: int = DEMO_IMAGES, seed: int = DEMO_DATA_SEED,
                      base_model: str | None = None, tracking_uri: str | None = None) -> DemoWorkspace:
    """Base model, DVC-versioned demo data and the MLflow store's address (default: a sqlite file in ``root``;
    `spf demo` passes the CLI's default store so every `spf` command reads what the demo wrote)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    model = ensure_base_model(root, base_model)
    repo, rev, data_hash = ensure_data_repo(root, n_images, seed)
    resolution = model_resolution(model) if Path(model).exists() else 512
    return DemoWorkspace(root=root, base_model=model, data_repo=repo, data_rev=rev, data_hash=data_hash,
                         tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}", resolution=resolution)


def demo_eval_set(n_prompts: int = 8, n_seeds: int = 3) -> dict:
    """The world's evaluation prompts (``spf_lib.world.fidelity.make_plan``) as an eval set: half name only what the
    fine-tuning captions name (background and expression left open, where pollution shows), half name everything."""
    from spf_lib.world.attributes import TARGET_PHRASE
    from spf_lib.world.fidelity import make_plan

    plan = make_plan(n_prompts, n_seeds)
    return {"name": "world-demo", "version": "1", "target": TARGET_PHRASE, "seeds": list(plan.seeds),
            "base_prompts": list(plan.prompts)}


def demo_gate_rules() -> dict:
    """What the demo's gate asks: the model learned the target (an absolute floor on the probe's target rate) and
    did not pollute (probe-read and image-similarity pollution bounds, no worse than the champion).

    The floor, 0.25, is 6 of the 24 target-prompt images against the original's 0: a model that learned nothing never
    passes. The probe-pollution bound, 0.25, admits a model that changes under a quarter of the base prompts'
    attributes. Measured at the demo's settings (fresh clone, README): SPF target rate 0.42, probe pollution 0.19 —
    promoted; plain LoRA on the same data 0.33 and 0.33 — it would fail the pollution bound. ID similarity is not
    asked: faces generated at 64 px are below dlib's detector's reach, so it is reported as unavailable.
    """
    return {"rules": [
        {"metric": "target_rate", "better": "higher", "bound": 0.25},
        {"metric": "probe_pollution", "better": "lower", "bound": 0.25, "epsilon": 0.05},
        {"metric": "pollution", "better": "lower", "bound": 0.5, "epsilon": 0.02},
    ]}


def demo_configs(resolution: int, steps: int, method: str, clip_model: str | None = None, *,
                 probes: str | None = None, eval_prompts: int = 8, eval_seeds: int = 3,
                 world: bool | None = None) -> dict[str, dict]:
    """The demo's stage settings: the fidelity bench's training recipe, the world's prompts and probes for evaluation.

    Training: rank 8, lr 3e-3, batch 8, 64 px (bench/fidelity.py), SPF's CLIP image embedder = the world CLIP.
    Evaluation: DDIM 20 steps, guidance 4 — the bench's sampler, under which the probes were checked.
    ``world``: the base model is the small world's (default: when its probes exist). Identity methods keep their
    own evaluation set (the learned person as the target), so the world's glasses prompts and probes are not theirs.
    """
    from spf_lib.eval.evalset import IDENTITY_METHODS
    from spf_lib.registry.gate import TARGET_CLIP_GAIN_FLOOR

    clip_model = clip_model if clip_model is not None else (
        str(WORLD_CLIP) if (WORLD_CLIP / "config.json").is_file() else None)
    probes = probes if probes is not None else (
        str(WORLD_PROBES) if (WORLD_PROBES / "probes.json").is_file() else None)
    world = (probes is not None if world is None else world) and method not in IDENTITY_METHODS
    prepare: dict = {"size": resolution}
    train: dict = {"steps": steps, "resolution": resolution, "checkpoint_every": max(steps // 2, 1)}
    evaluate: dict = {"num_inference_steps": 10, "resolution": resolution}
    if world:
        prepare["padding"] = WORLD_PREPARE_PADDING
        first = demo_eval_set(1, 1)["base_prompts"][0]
        train.update({"lr": 3e-3, "batch_size": 8, "rank": 8, "checkpoints_total_limit": 1,
                      "validation": {"prompts": [first, f"{first}, wearing round glasses"], "seeds": [1000],
                                     "num_inference_steps": 20, "guidance_scale": 4.0,
                                     "every": max(steps // 3, 1)}})  # grids during training, for MLflow
        evaluate.update({"num_inference_steps": 20, "guidance_scale": 4.0, "batch_size": 24, "probes": probes,
                         "eval_set": demo_eval_set(eval_prompts, eval_seeds)})
    if clip_model:
        evaluate["clip_model"] = clip_model
        train["spf"] = {"image_embedder": clip_model}  # one train config for both branches; LoRA ignores it
    if world:
        rules = demo_gate_rules()
    else:
        rules = {"rules": [{"metric": "pollution", "better": "lower", "epsilon": 0.01, "bound": 0.5}]
                 + ([{"metric": "clip_t_gain", "better": "higher", "bound": TARGET_CLIP_GAIN_FLOOR}]
                    if clip_model else [])}
    if method in ("celeb-basis", "beyond-inserting"):
        # the target is the learned person, not the glasses: the identity eval set (trigger prompts) and gate
        # (similarity to the prepared faces, spf_lib/eval/identity.py)
        from spf_lib.eval.identity import identity_gate_rules

        evaluate.pop("eval_set", None)
        evaluate["id_fallback_box"] = 0.6   # 64-px generations: HOG finds few faces (docs/identity-methods.md)
        rules = identity_gate_rules()
    return {"prepare_config": prepare, "train_config": train, "eval_config": evaluate, "gate_rules": rules}
