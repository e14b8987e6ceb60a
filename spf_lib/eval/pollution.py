"""Pollution: how much the tuned model changed images it should NOT have changed.

Measured pairwise between the original and the tuned image of the same base prompt (no target attribute) and the
same seed, as SPF-Portrait's preservation metrics are. Every component is a drift in [0, 1], 0 = identical:

- ``identity``: 1 - id_score of the pair (see spf_lib/eval/faces.py for the score scale). A pair whose original
  shows a face and whose tuned image does not counts as drift 1 (the identity is gone); pairs whose original has no
  face are left out (nothing to preserve) and counted.
- ``clip_i``: 1 - CLIP image-image cosine, clipped to [0, 1] (only with a configured CLIP).
- ``ssim``: 1 - SSIM (scikit-image, grayscale, data_range 1), clipped to [0, 1]: structure and layout.
- ``lpips``: LPIPS distance from a configured ONNX LPIPS model, clipped to [0, 1].
- ``pixel``: mean absolute RGB difference in [0, 1]: the plainest drift, weighted half by default because SSIM
  already covers most of it.

Combined: ``pollution = sum_c w_c * drift_c / sum_c w_c`` over the AVAILABLE components (weights from
``EvalConfig.pollution_weights``). Components that are unavailable are left out of both sums and listed, so the
number stays in [0, 1] and a reader sees what it was made of. FID is reported beside it but never combined (it is
unbounded and ill-conditioned with a few dozen images).
"""

from __future__ import annotations

from typing import Any

import numpy as np

POLLUTION_FORMULA = "sum_c w_c * drift_c / sum_c w_c over available components c (drifts in [0,1], 0 = identical)"


def to_float_array(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def ssim(a: Any, b: Any) -> float:
    from skimage.metrics import structural_similarity

    ga, gb = to_float_array(a).mean(-1), to_float_array(b).mean(-1)
    win = min(7, min(ga.shape) - (1 - min(ga.shape) % 2))  # odd window no larger than the image
    return float(structural_similarity(ga, gb, data_range=1.0, win_size=max(win, 3)))


def pixel_mae(a: Any, b: Any) -> float:
    return float(np.abs(to_float_array(a) - to_float_array(b)).mean())


def diff_heatmap(a: Any, b: Any, cmap: str = "magma") -> Any:
    """Per-pixel |a - b| (mean over RGB) rendered with a colour map; scaled to the pair's own maximum so small
    drifts stay visible (the scores, not the colours, are the comparable numbers)."""
    from matplotlib import colormaps
    from PIL import Image

    d = np.abs(to_float_array(a) - to_float_array(b)).mean(-1)
    peak = float(d.max())
    norm = d / peak if peak > 0 else d
    rgb = (colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb)


def combine(drifts: dict[str, float | None], weights: dict[str, float]) -> tuple[float | None, dict[str, float]]:
    """Weighted mean of the available drifts; returns (pollution, the weights actually used)."""
    used = {k: w for k, w in weights.items() if w > 0 and drifts.get(k) is not None}
    if not used:
        return None, {}
    total = sum(used.values())
    return float(sum(w * float(np.clip(drifts[k], 0.0, 1.0)) for k, w in used.items()) / total), used


def mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
