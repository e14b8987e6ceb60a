"""Pollution components and their combination on real portraits: identical pairs give 0, drift grows with the
perturbation, and every component is bounded and documented."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from spf_lib.eval import metrics as M
from spf_lib.eval import pollution as pol
from spf_lib.eval.config import DEFAULT_POLLUTION_WEIGHTS
from spf_lib.eval.evalset import EvalItem
from tests._eval_helpers import astronaut, grace_hopper

BASE = [EvalItem("base", 0, "a photo of a woman, astronaut uniform", 0),
        EvalItem("base", 1, "a photo of a woman, navy uniform", 0)]


def _photos() -> dict:
    return {BASE[0].key: astronaut(), BASE[1].key: grace_hopper().resize((512, 512))}


def _blend_towards_other(images: dict, alpha: float) -> dict:
    """'Tuned' images drifting towards the other person by ``alpha`` (0 = unchanged)."""
    keys = list(images)
    return {k: Image.blend(images[k], images[keys[1 - n]], alpha) for n, k in enumerate(keys)}


def _pollution(orig: dict, tuned: dict) -> M.MetricState:
    state = M.MetricState()
    M.structural(state, BASE, [], orig, tuned)
    M.identity(state, BASE, [], orig, tuned, "dlib", None)
    M.combine_pollution(state, dict(DEFAULT_POLLUTION_WEIGHTS))
    return state


def test_identical_images_give_zero_pollution_and_maximum_id():
    photos = _photos()
    s = _pollution(photos, dict(photos))
    assert s.metrics["id_sim"] == 1.0
    assert s.metrics["pollution"] == 0.0
    assert s.metrics["pollution_identity"] == 0.0 and s.metrics["pollution_ssim"] == pytest.approx(0.0, abs=1e-12)
    assert "pollution_clip_i" in s.unavailable and s.metrics["pollution_clip_i"] is None


def test_pollution_grows_with_the_perturbation():
    photos = _photos()
    states = [_pollution(photos, _blend_towards_other(photos, a)) for a in (0.0, 0.15, 0.35, 0.6)]
    values = [s.metrics["pollution"] for s in states]
    assert values[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(values)), values
    for comp in ("pollution_identity", "pollution_ssim", "pollution_pixel"):
        comps = [s.metrics[comp] for s in states]
        assert all(b >= a for a, b in itertools.pairwise(comps)), (comp, comps)
    assert states[-1].metrics["id_sim"] < states[1].metrics["id_sim"] <= 1.0


def test_a_lost_face_counts_as_full_identity_drift():
    photos = _photos()
    tuned = dict(photos)
    tuned[BASE[0].key] = Image.new("RGB", (512, 512), (128, 128, 128))
    s = _pollution(photos, tuned)
    assert s.metrics["id_face_lost"] == 1.0 and s.metrics["id_pairs"] == 1.0
    assert s.metrics["pollution_identity"] == pytest.approx(0.5)  # (1.0 lost + 0.0 identical) / 2


def test_no_face_anywhere_makes_identity_unavailable_not_zero():
    blank = {k: Image.new("RGB", (64, 64), (n * 40, 90, 200)) for n, k in enumerate(_photos())}
    s = _pollution(blank, dict(blank))
    assert s.metrics["id_sim"] is None and "no face" in s.unavailable["id_sim"]
    assert s.metrics["pollution_identity"] is None
    assert s.metrics["id_no_face_original"] == 2.0
    assert s.metrics["pollution"] == 0.0  # still combined from the components that exist


def test_combine_uses_only_available_components_with_their_weights():
    value, used = pol.combine({"identity": 0.4, "ssim": 0.2, "clip_i": None, "pixel": 0.1},
                              {"identity": 1.0, "ssim": 1.0, "clip_i": 1.0, "pixel": 0.5, "lpips": 1.0})
    assert used == {"identity": 1.0, "ssim": 1.0, "pixel": 0.5}
    assert value == pytest.approx((0.4 + 0.2 + 0.05) / 2.5)
    assert pol.combine({"ssim": None}, {"ssim": 1.0}) == (None, {})


def test_diff_heatmap_marks_where_images_differ():
    a = Image.new("RGB", (32, 32), (0, 0, 0))
    b = a.copy()
    b.paste((255, 255, 255), (0, 0, 8, 8))
    h = np.asarray(pol.diff_heatmap(a, b)).astype(float)
    assert h[:8, :8].mean() > h[16:, 16:].mean()
    assert pol.ssim(a, a) == pytest.approx(1.0) and pol.pixel_mae(a, b) == pytest.approx(64 / 1024)
