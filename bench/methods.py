"""`spf bench methods`: trainable parameters, step time and time per identity of every training method, side by side.

All methods run in ONE process on the same base model and the same data through the shared loop's ``Trainer``, so
the ratios are comparable. Celeb Basis uses the real dlib face encoder on the world renderer's faces. "s/identity"
is setup (face encoding, basis, tokens) + ``identity_steps`` x median step time (Celeb Basis trains ~400 steps per
identity in the official code); it is a measured-per-step estimate, not a full run. ``size=sd15`` builds an SD-1.5-
sized model from its config (random weights; timing only) and is refused without CUDA.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import opt, time_fn

METHODS = ("lora", "spf", "celeb-basis", "beyond-inserting")


def _dataset(root: Path, n: int, size: int) -> Path:
    """World-renderer faces as a prepared-data folder (crops = the rendered images, one identity)."""
    import json

    import pandas as pd

    from spf_lib.data.synth import synth_dataset

    src = synth_dataset(root / "raw", n=n, seed=0, size=size)
    rows = []
    for line in (src / "captions.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append({"crop_path": str(Path("raw") / r["file"]), "caption": r["caption"],
                     "base_phrases": [r["caption"]], "target_phrase": None})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def _model(root: Path, size: str) -> Path:
    from spf_lib.models.factory import TinySDConfig, save_tiny_pipeline

    if size == "tiny":
        return save_tiny_pipeline(root / "model")
    cfg = TinySDConfig(resolution=512, unet_channels=(320, 640, 1280, 1280), layers_per_block=2,
                       attention_head_dim=8, cross_attention_dim=768, vae_channels=(128, 256, 512, 512),
                       text_hidden=768, text_layers=12, text_heads=12)
    return save_tiny_pipeline(root / "model-sd15", cfg)


def _measure(method: str, model: Path, data: Path, out: Path, res: int, repeat: int, device: str) -> dict:
    from spf_lib.train.config import TrainConfig
    from spf_lib.train.run import Trainer

    cfg = TrainConfig.build("bench", method=method, base_model=str(model), data_dir=str(data),
                            output_dir=str(out / method), steps=repeat + 2, resolution=res, device=device,
                            lr=1e-4, validation={"enabled": False})
    t0 = time.perf_counter()
    tr = Trainer(cfg)
    setup_s = time.perf_counter() - t0
    step = time_fn(tr.train_step, warmup=1, repeat=repeat)
    kept = {"celeb-basis": lambda: 2 * tr.method.mlp.k,
            "beyond-inserting": lambda: 2 * tr.method.n_stages * int(tr.method.module.v_star.numel())}
    trainable = sum(p.numel() for p in tr.params)
    return {"params": trainable, "kept": kept.get(method, lambda: trainable)(), "setup_s": setup_s,
            "step_s": step["median_s"]}


def run(options: dict[str, str]) -> dict:
    import torch

    from spf_lib.errors import SpfError

    size = opt(options, "size", "tiny")
    if size not in ("tiny", "sd15"):
        raise SpfError(f"bench option size={size!r}: expected tiny or sd15")
    if size == "sd15" and not torch.cuda.is_available():
        raise SpfError("bench option size=sd15: needs CUDA (no GPU here); run with size=tiny")
    repeat = opt(options, "repeat", 3)
    id_steps = opt(options, "identity_steps", 400)
    methods = [m for m in opt(options, "methods", ",".join(METHODS), str).split(",") if m]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = 64 if size == "tiny" else 512
    rows, figures, notes = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(root, size)
        data = _dataset(root / "data", n=2, size=256)
        for m in methods:
            try:
                r = _measure(m, model, data, root / "out", res, repeat, device)
            except SpfError as e:
                notes.append(f"{m}: not measured ({e})")
                continue
            per_id = r["setup_s"] + id_steps * r["step_s"]
            figures[m] = {**r, "s_per_identity": per_id}
            rows.append([m, r["params"], r["kept"], r["step_s"], r["setup_s"], per_id])
    base = figures.get("lora", {}).get("step_s")
    for row in rows:
        row.append(row[3] / base if base else float("nan"))
    notes += [f"size={size} on {device}, resolution {res}, batch 1, median of {repeat} steps after 1 warm-up",
              f"s/identity = setup + {id_steps} x step (identity_steps option)",
              "kept/identity: numbers stored per identity (Celeb Basis: 2k coefficients; Beyond Inserting: S (K,V) "
              "token pairs; LoRA/SPF: all adapter weights)"]
    return {"title": f"Training methods side by side ({size})",
            "columns": ["method", "trainable params", "kept/identity", "step s", "setup s", "s/identity",
                        "step / lora step"],
            "rows": rows, "figures": figures, "notes": notes}
