"""Attribute-probe metrics: read the target and every base attribute back from original and tuned images.

WHY: image similarity (CLIP-I, SSIM) says "something changed" but not what; CLIP-T on a small CLIP is a weak
target signal. Where a probe exists for the domain (the small world's, `spf_lib/world/probes.py`), it answers the
two questions the method is about in counts:
- ``target_rate``: fraction of target-prompt images the target probe reads as showing the target (tuned model);
  ``target_rate_original`` the same for the original, ``target_gain`` their difference — did it learn?
- ``probe_pollution``: fraction of (base-prompt image, base attribute) pairs whose reading changed between original
  and tuned — what else moved?
- ``target_leak``: rise of the target's rate on base prompts (the target where nobody asked for it);
- ``red_bg_delta`` / ``smile_delta``: rise of the small world's spurious attributes on base prompts that leave
  background / expression open.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from spf_lib.eval.evalset import EvalItem

NAMES = ["target_rate", "target_rate_original", "target_gain", "probe_pollution", "target_leak", "red_bg_delta",
         "smile_delta"]


def _tensor(images: list[Any]):
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def probe_scores(state, base: list[EvalItem], target: list[EvalItem], orig: dict, tuned: dict,
                 probes_dir: str | None) -> None:
    """Fill the probe metrics into ``state`` (a ``MetricState``); no probes configured → nothing is added."""
    if not probes_dir:
        return
    from spf_lib.world.attributes import BASE_ATTRIBUTES, CHOICES
    from spf_lib.world.probes import Probes

    t0 = time.perf_counter()
    probes = Probes.load(probes_dir)
    m = state.metrics
    if target:
        gt = probes.predict(_tensor([tuned[i.key] for i in target]))["glasses"]
        go = probes.predict(_tensor([orig[i.key] for i in target]))["glasses"]
        m["target_rate"] = float(np.mean(gt == 1))
        m["target_rate_original"] = float(np.mean(go == 1))
        m["target_gain"] = m["target_rate"] - m["target_rate_original"]
        for it, a, b in zip(target, gt, go):
            state.pairs[it.key].update({"target_probe": int(a), "target_probe_original": int(b)})
    if base:
        po = probes.predict(_tensor([orig[i.key] for i in base]))
        pt = probes.predict(_tensor([tuned[i.key] for i in base]))
        m["probe_pollution"] = float(np.mean([np.mean(po[a] != pt[a]) for a in BASE_ATTRIBUTES]))
        m["target_leak"] = float(np.mean(pt["glasses"] == 1) - np.mean(po["glasses"] == 1))
        for it, j in zip(base, range(len(base))):
            state.pairs[it.key]["attributes_changed"] = int(sum(po[a][j] != pt[a][j] for a in BASE_ATTRIBUTES))

        def rise(attr: str, value: str, open_mask: np.ndarray) -> float | None:
            if not open_mask.any():
                return None
            cls = CHOICES[attr].index(value)
            return float(np.mean(pt[attr][open_mask] == cls) - np.mean(po[attr][open_mask] == cls))

        text = [i.prompt.lower() for i in base]
        m["red_bg_delta"] = rise("background", "red", np.array(["background" not in t for t in text]))
        m["smile_delta"] = rise("expression", "smiling",
                                np.array(["smiling" not in t and "expression" not in t for t in text]))
        for k in ("red_bg_delta", "smile_delta"):
            if m[k] is None:
                state.unavailable[k] = "every base prompt names this attribute"
    state.time("probes", time.perf_counter() - t0, 2 * (len(base) + len(target)))
