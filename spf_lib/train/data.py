"""The prepared dataset as training batches.

Batch order is a pure function of (seed, step): epoch e is a permutation drawn from ``seed + e``. That makes resume
exact without saving a data-loader state, and lets two runs (N + N steps vs 2N) see the same images in the same order.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)
MANIFEST = "manifest.parquet"
REQUIRED_COLUMNS = ("crop_path", "caption", "base_phrases", "target_phrase")


@dataclass
class Example:
    crop_path: Path
    caption: str
    base_phrases: list[str]
    target_phrase: str | None

    @property
    def response_text(self) -> str:
        """What the tuned model is fed: the full caption (base + target)."""
        return self.caption

    @property
    def base_text(self) -> str:
        """The caption with the target phrase removed: what the frozen reference path is fed."""
        return strip_phrase(self.caption, self.target_phrase)


def strip_phrase(caption: str, phrase: str | None) -> str:
    """Remove ``phrase`` (case-insensitive) and the separator next to it; the caption is unchanged without one."""
    if not phrase or not phrase.strip():
        return caption
    pat = re.compile(r"\s*(,|\band\b|\bwith\b)?\s*" + re.escape(phrase.strip()), re.IGNORECASE)
    out, n = pat.subn("", caption, count=1)
    if n == 0:
        return caption
    out = re.sub(r"\s*,\s*,", ",", out).strip().strip(",").strip()
    return out or caption


def read_manifest(data_dir: str | Path, *, allow_failed_qa: bool = False) -> list[Example]:
    """The examples of a prepare output. A dataset whose QA failed is refused unless ``allow_failed_qa`` (then
    logged as a warning): training on it silently is how a bad data revision reaches the registry."""
    import pandas as pd

    root = Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        raise SpfError(f"{path}: missing; data_dir must be a `spf data prepare` output folder")
    check_qa(root, allow_failed_qa=allow_failed_qa)
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise SpfError(f"{path}: cannot read parquet ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SpfError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise SpfError(f"{path}: no rows; nothing to train on")
    out: list[Example] = []
    for i, row in enumerate(df.itertuples(index=False)):
        crop = root / str(row.crop_path)
        if not crop.is_file():
            raise SpfError(f"{path}: row {i} crop_path={row.crop_path!r} does not exist under {root}")
        caption = row.caption
        if not isinstance(caption, str) or not caption.strip():
            raise SpfError(f"{path}: row {i} caption={caption!r} is empty")
        phrases = [str(p) for p in (row.base_phrases if row.base_phrases is not None else [])]
        target = row.target_phrase if isinstance(row.target_phrase, str) and row.target_phrase.strip() else None
        out.append(Example(crop, caption.strip(), phrases, target))
    return out


def check_qa(root: Path, *, allow_failed_qa: bool) -> None:
    """Read ``prepare_summary.json`` (absent for data not made by `spf data prepare`, e.g. the small world's sets)."""
    import json

    summary = root / "prepare_summary.json"
    if not summary.is_file():
        return
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpfError(f"{summary}: unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("qa_passed"), bool):
        raise SpfError(f"{summary}: no boolean qa_passed; not a `spf data prepare` summary")
    if data["qa_passed"]:
        return
    failed = ", ".join(map(str, data.get("qa_failed") or [])) or "unknown expectations"
    if not allow_failed_qa:
        raise SpfError(f"{root}: data QA failed ({failed}); fix the data, or pass --allow-failed-qa "
                       "(allow_failed_qa: true) to train on it anyway")
    log.warning("%s: data QA failed (%s); training anyway because allow_failed_qa is set", root, failed)


class BatchSource:
    """Deterministic batches: ``batch(step, micro)`` for optimizer step ``step`` and accumulation index ``micro``."""

    def __init__(self, examples: list[Example], *, resolution: int, batch_size: int, grad_accum: int, seed: int,
                 center_crop: bool = True, random_flip: bool = False) -> None:
        self.examples = examples
        self.resolution = resolution
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self.center_crop = center_crop
        self.random_flip = random_flip
        self._cache: dict[int, Any] = {}
        self._perm: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = {epoch: torch.randperm(len(self.examples), generator=g).tolist()}
        return self._perm[epoch]

    def indices(self, step: int, micro: int) -> list[int]:
        n = len(self.examples)
        start = (step * self.grad_accum + micro) * self.batch_size
        return [self._order((start + k) // n)[(start + k) % n] for k in range(self.batch_size)]

    def _pixels(self, i: int):
        if i not in self._cache:
            self._cache[i] = load_image_tensor(self.examples[i].crop_path, self.resolution, self.center_crop)
        return self._cache[i]

    def batch(self, step: int, micro: int = 0) -> dict[str, Any]:
        import torch

        idx = self.indices(step, micro)
        pix = []
        for k, i in enumerate(idx):
            t = self._pixels(i)
            if self.random_flip and ((self.seed + step * 31 + micro * 7 + k) % 2):
                t = t.flip(-1)
            pix.append(t)
        ex = [self.examples[i] for i in idx]
        return {
            "index": idx,
            "micro_batch": step * self.grad_accum + micro,  # its position in the run (SPF spreads shares over it)
            "pixel_values": torch.stack(pix),
            "caption": [e.response_text for e in ex],
            "base_text": [e.base_text for e in ex],
            "base_phrases": [e.base_phrases for e in ex],
            "target_phrase": [e.target_phrase for e in ex],
        }


def load_image_tensor(path: Path, resolution: int, center_crop: bool = True):
    """RGB image → float tensor (3, R, R) in [-1, 1]; shorter side resized to R, then centre (or top-left) crop."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = ((w - resolution) // 2, (h - resolution) // 2) if center_crop else (0, 0)
            im = im.crop((left, top, left + resolution, top + resolution))
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except OSError as e:
        raise SpfError(f"{path}: cannot read image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
