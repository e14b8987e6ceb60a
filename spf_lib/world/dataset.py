"""The world as arrays: rendered portraits + their attributes, and caption variants for training.

WHY phrase dropout: prompts in use name only some attributes ("a photo of a young woman, blonde hair"). A model
trained only on full captions never learns what to draw for an unnamed attribute, and pollution (an unnamed
attribute drifting toward what the fine-tuning set happened to show) could not even be measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from spf_lib.world.attributes import TARGET_PHRASE, Attributes

log = logging.getLogger(__name__)

RENDER_VERSION = 2  # bump when render_portrait's pixels change, so cached arrays are not reused


def cache_root() -> Path:
    return Path(os.environ.get("SPF_CACHE", Path.home() / ".cache" / "spf")) / "world"


def render_arrays(
    n: int, seed: int, size: int = 64, *, target_fraction: float = 0.0,
    fixed_for_target: dict[str, str] | None = None, fixed: dict[str, str] | None = None, cache: bool = True,
) -> tuple[np.ndarray, list[Attributes]]:
    """``n`` portraits as uint8 [n, size, size, 3] plus their attributes (cached on disk: rendering is the slow part)."""
    from tqdm import tqdm

    from spf_lib.data.synth import synth_records
    from spf_lib.world.render import render_portrait

    key = json.dumps([RENDER_VERSION, n, seed, size, target_fraction, fixed_for_target, fixed], sort_keys=True)
    path = cache_root() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    records = list(synth_records(n, seed, target_fraction=target_fraction, fixed_for_target=fixed_for_target,
                                 fixed=fixed))
    attrs = [a for _, a, _ in records]
    if cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["images"], attrs
    images = np.stack([np.asarray(render_portrait(a, size, lay)) for _, a, lay in
                       tqdm(records, desc=f"render {n}x{size}px", unit="img", disable=n < 200)])
    if cache:
        from spf_lib.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=images)
    return images, attrs


def caption_variant(attrs: Attributes, rng: np.random.Generator, keep: float = 0.7) -> str:
    """The caption with each base phrase kept with probability ``keep`` (order kept; the target phrase always kept)."""
    phrases = attrs.phrases()
    out = [p for p in phrases if p == TARGET_PHRASE or rng.random() < keep]
    return ", ".join(out)


def to_tensor(images: np.ndarray):
    """uint8 NHWC → float NCHW in [-1, 1] (the SD convention)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x) -> np.ndarray:
    """float NCHW in [-1, 1] → uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
