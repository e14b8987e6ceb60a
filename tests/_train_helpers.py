"""Fixtures for the training tests: a tiny SD pipeline on disk and a prepared-dataset folder built here."""

from __future__ import annotations

from pathlib import Path

CAPTIONS = [
    ("a photo of a woman, brown jacket, curtain background, blonde hair",
     ["a photo of a woman", "brown jacket", "curtain background"], "blonde hair"),
    ("a photo of a man, white shirt, brick wall, blonde hair",
     ["a photo of a man", "white shirt", "brick wall"], "blonde hair"),
    ("a photo of a woman, red dress, plain background, blonde hair",
     ["a photo of a woman", "red dress", "plain background"], "blonde hair"),
    ("a photo of a man, glasses, office background",
     ["a photo of a man", "glasses", "office background"], None),
]


def make_dataset(root: Path, n: int = 4, size: int = 72, seed: int = 0) -> Path:
    """A `spf data prepare`-shaped folder: crops/*.png + manifest.parquet (only the columns training reads + id)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size] / size
        base = rng.uniform(0, 255, 3)
        img = np.stack([base[c] * (0.5 + 0.5 * np.sin(6 * xx + c + i)) * (0.6 + 0.4 * yy) for c in range(3)], -1)
        Image.fromarray(img.clip(0, 255).astype("uint8")).save(root / "crops" / f"{i:03d}.png")
        cap, phrases, target = CAPTIONS[i % len(CAPTIONS)]
        rows.append({"id": f"{i:03d}", "crop_path": f"crops/{i:03d}.png", "caption": cap, "base_phrases": phrases,
                     "target_phrase": target})
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


_TINY: dict[str, Path] = {}


def tiny_model(tmp_root: Path) -> Path:
    """Save the tiny pipeline once per test session (the path is reused by every test)."""
    from spf_lib.models.factory import save_tiny_pipeline

    key = str(tmp_root)
    if key not in _TINY:
        _TINY[key] = save_tiny_pipeline(tmp_root / "tiny-sd")
    return _TINY[key]


def base_cfg(tmp: Path, model: Path, data: Path, **kw):
    from spf_lib.train.config import TrainConfig

    values = dict(method="lora", base_model=str(model), data_dir=str(data), output_dir=str(tmp / "out"), steps=2,
                  seed=0, lr=1e-3, resolution=64, batch_size=1, device="cpu",
                  validation={"prompts": ["a photo of a woman"], "seeds": [0], "num_inference_steps": 2})
    for k, v in kw.items():
        values[k] = v
    return TrainConfig.build("test", **values)
