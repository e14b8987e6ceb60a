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


def ensure_base_model(root: Path, base_model: str | None) -> str:
    """The user's model if given; else the committed small-world model; else a tiny random one built here."""
    if base_model:
        return base_model
    if (WORLD_BASE / "model_index.json").is_file():
        return str(WORLD_BASE)
    from spf_lib.models.factory import save_tiny_pipeline

    target = root / "models" / "tiny-sd"
    if not (target / "model_index.json").is_file():
        log.info("building a tiny Stable-Diffusion-architecture model at %s", target)
        save_tiny_pipeline(target)
    return str(target)


def ensure_data_repo(root: Path, n_images: int, seed: int) -> tuple[str, str, str]:
    """Synthesize the portrait set and version it with DVC (local-folder remote); return (repo, rev, hash)."""
    from spf_lib.data.dvc_io import track_dataset
    from spf_lib.data.synth import synth_dataset

    repo = root / "data-repo"
    synth_dataset(repo / "data", n=n_images, seed=seed)
    rev, data_hash = track_dataset(repo, data_dir_name="data", remote_url=str(root / "dvc-remote"))
    return str(repo), rev, data_hash


def prepare_workspace(root: str | Path, *, n_images: int = 24, seed: int = 0,
                      base_model: str | None = None) -> DemoWorkspace:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    model = ensure_base_model(root, base_model)
    repo, rev, data_hash = ensure_data_repo(root, n_images, seed)
    resolution = model_resolution(model) if Path(model).exists() else 512
    return DemoWorkspace(root=root, base_model=model, data_repo=repo, data_rev=rev, data_hash=data_hash,
                         tracking_uri=f"sqlite:///{root / 'mlflow.db'}", resolution=resolution)


def demo_configs(resolution: int, steps: int, method: str, clip_model: str | None = None) -> dict[str, str]:
    """Small settings so the whole pipeline finishes in minutes on 2 CPU cores.

    The gate judges what the demo can measure: pollution always, CLIP-T when a trained CLIP exists (the small
    world's). Faces generated at 64 px are below dlib's detector's reach, so ID similarity is reported as
    unavailable and left out of the demo's gate (production keeps the registry's default rules).
    """
    clip_model = clip_model if clip_model is not None else (
        str(WORLD_CLIP) if (WORLD_CLIP / "config.json").is_file() else None)
    prepare = {"size": resolution}
    train = {"steps": steps, "resolution": resolution, "checkpoint_every": max(steps // 2, 1)}
    evaluate: dict = {"num_inference_steps": 10, "resolution": resolution}
    rules = [{"metric": "pollution", "better": "lower", "epsilon": 0.01, "bound": 0.5}]
    if clip_model:
        evaluate["clip_model"] = clip_model
        rules.append({"metric": "clip_t", "better": "higher", "epsilon": 0.02})
    return {
        "prepare_config_json": json.dumps(prepare),
        "train_config_json": json.dumps(train),
        "eval_config_json": json.dumps(evaluate),
        "gate_rules_json": json.dumps({"rules": rules}),
    }
