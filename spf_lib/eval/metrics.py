"""All scores of one evaluation, from the original and tuned images of the eval set.

Each metric family is computed by its own function and timed; a family whose backbone is missing adds its names to
``unavailable`` with the reason and sets them to None, so metrics.json always has the same keys.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spf_lib.eval import pollution as pol
from spf_lib.eval.evalset import EvalItem

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class MetricState:
    """What the metric families fill in."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # item key → per-pair scores
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # family → {seconds, images}
    drifts: dict[str, float | None] = field(default_factory=dict)

    def mark_unavailable(self, names: list[str], reason: str) -> None:
        for n in names:
            self.metrics[n] = None
            self.unavailable[n] = reason

    def time(self, family: str, seconds: float, images: int) -> None:
        self.timings[family] = {"seconds": seconds, "images": images,
                                "images_per_s": images / seconds if seconds > 0 else float("inf")}


def structural(state: MetricState, base: list[EvalItem], target: list[EvalItem], orig: dict, tuned: dict) -> None:
    """SSIM, pixel MAE and the difference heatmaps' inputs for every pair (no backbone needed)."""
    t0 = time.perf_counter()
    for it in base + target:
        row = state.pairs.setdefault(it.key, {})
        row["ssim"] = pol.ssim(orig[it.key], tuned[it.key])
        row["pixel_mae"] = pol.pixel_mae(orig[it.key], tuned[it.key])
    state.time("ssim+pixel", time.perf_counter() - t0, 2 * len(base + target))
    state.metrics["ssim"] = pol.mean_or_none([state.pairs[i.key]["ssim"] for i in base])
    state.metrics["pixel_mae"] = pol.mean_or_none([state.pairs[i.key]["pixel_mae"] for i in base])
    state.metrics["ssim_target"] = pol.mean_or_none([state.pairs[i.key]["ssim"] for i in target])
    state.drifts["ssim"] = None if state.metrics["ssim"] is None else 1.0 - state.metrics["ssim"]
    state.drifts["pixel"] = state.metrics["pixel_mae"]


REF_NAMES = ["id_ref_sim", "id_ref_sim_original", "id_ref_gain", "id_ref_face_rate"]


def identity(state: MetricState, base: list[EvalItem], target: list[EvalItem], orig: dict, tuned: dict,
             encoder: str, reference_dir: Path | None, *, trigger: str | None = None, min_size: int = 0,
             fallback_box: float = 0.0) -> None:
    """ID similarity original vs tuned (base and target prompts) and, with reference photos, tuned vs reference."""
    from spf_lib.eval.faces import FaceAnalyzer

    names = ["id_sim", "id_l2", "id_raw_cos", "id_sim_target", *REF_NAMES]
    try:
        fa = FaceAnalyzer(encoder)
    except Exception as e:  # noqa: BLE001 - dlib/onnxruntime missing or a bad model file → unavailable
        state.mark_unavailable(names, f"face encoder {encoder!r} unavailable: {e}")
        state.drifts["identity"] = None
        return
    t0 = time.perf_counter()
    res_o = {it.key: fa.analyze(orig[it.key]) for it in base + target}
    res_t = {it.key: fa.analyze(tuned[it.key]) for it in base + target}
    state.time("identity", time.perf_counter() - t0, 2 * len(base + target))
    state.metrics["id_encoder_is_dlib"] = 1.0 if encoder == "dlib" else 0.0

    def pair_scores(items: list[EvalItem], suffix: str) -> tuple[list[dict], list[float]]:
        scores, drifts = [], []
        for it in items:
            o, t = res_o[it.key], res_t[it.key]
            row = state.pairs[it.key]
            row["face_original"], row["face_tuned"] = o.embedding is not None, t.embedding is not None
            if o.embedding is None:
                continue  # nothing to preserve
            if t.embedding is None:
                drifts.append(1.0)
                continue
            s = fa.encoder.compare(o.embedding, t.embedding)
            row.update({"id_sim": s["score"], "id_l2": s["l2"], "id_raw_cos": s["raw_cos"]})
            scores.append(s)
            drifts.append(1.0 - s["score"])
        n_o = sum(res_o[i.key].embedding is None for i in items)
        n_t = sum(res_t[i.key].embedding is None for i in items)
        state.metrics[f"id_no_face_original{suffix}"] = float(n_o)
        state.metrics[f"id_no_face_tuned{suffix}"] = float(n_t)
        state.metrics[f"id_face_lost{suffix}"] = float(sum(res_o[i.key].embedding is not None
                                                          and res_t[i.key].embedding is None for i in items))
        state.metrics[f"id_pairs{suffix}"] = float(len(scores))
        return scores, drifts

    base_scores, base_drifts = pair_scores(base, "")
    target_scores, _ = pair_scores(target, "_target")
    if base_scores:
        state.metrics["id_sim"] = float(np.mean([s["score"] for s in base_scores]))
        state.metrics["id_l2"] = float(np.mean([s["l2"] for s in base_scores]))
        state.metrics["id_raw_cos"] = float(np.mean([s["raw_cos"] for s in base_scores]))
    else:
        why = ("no face detected in any original base-prompt image" if not base_drifts else
               "faces were lost in every tuned image (see id_face_lost)")
        state.mark_unavailable(["id_sim", "id_l2", "id_raw_cos"], why)
    if target_scores:
        state.metrics["id_sim_target"] = float(np.mean([s["score"] for s in target_scores]))
    else:
        state.mark_unavailable(["id_sim_target"], "no face pair found on the target prompts")
    state.drifts["identity"] = float(np.mean(base_drifts)) if base_drifts else None
    if not base_drifts:
        state.unavailable.setdefault("pollution_identity", "no face detected in any original base-prompt image")
    _reference(state, fa, target, orig, tuned, reference_dir, trigger, min_size, fallback_box)


def _reference(state: MetricState, fa: Any, target: list[EvalItem], orig: dict, tuned: dict,
               reference_dir: Path | None, trigger: str | None, min_size: int, fallback_box: float = 0.0) -> None:
    """Tuned (and, as the baseline, original) target-prompt images vs the reference person's faces.

    Images smaller than ``min_size`` are upscaled before detection (see spf_lib/eval/identity.py for why).
    ``fallback_box`` > 0: a generation without a detected face is read from a centred box (counted in
    ``id_ref_fallback_rate``); references always need a detected face.
    ``id_ref_gain`` = tuned - original: how much more the trigger prompt shows the person after training.
    """
    if reference_dir is None:
        state.mark_unavailable(REF_NAMES, "no reference_faces_dir configured")
        return
    from PIL import Image

    from spf_lib.eval.identity import reference_files, upscale

    files = reference_files(reference_dir, trigger)
    refs = []
    for p in files:
        with Image.open(p) as im:
            r = fa.analyze(upscale(im, min_size))
        if r.embedding is not None:
            refs.append(r.embedding)
    state.metrics["id_ref_faces"] = float(len(refs))
    state.metrics["id_analysis_min_size"] = float(min_size)
    if not refs:
        state.mark_unavailable(REF_NAMES, f"no face found in the reference faces at {reference_dir} "
                                          f"({len(files)} image files, analysed at >= {min_size} px)")
        return

    fallbacks = {"id_ref_sim": 0, "id_ref_sim_original": 0}

    def sims(images: dict, key: str) -> list[float]:
        out = []
        for it in target:
            r = fa.analyze(upscale(images[it.key], min_size), fallback_box=fallback_box)
            fallbacks[key] += int(r.fallback)
            if r.embedding is not None:
                s = float(np.mean([fa.encoder.compare(r.embedding, ref)["score"] for ref in refs]))
                state.pairs[it.key][key] = s
                out.append(s)
        return out

    tuned_s, orig_s = sims(tuned, "id_ref_sim"), sims(orig, "id_ref_sim_original")
    state.metrics["id_ref_face_rate"] = (len(tuned_s) - fallbacks["id_ref_sim"]) / max(len(target), 1)
    state.metrics["id_ref_fallback_rate"] = fallbacks["id_ref_sim"] / max(len(target), 1)
    if tuned_s:
        state.metrics["id_ref_sim"] = float(np.mean(tuned_s))
    else:
        state.mark_unavailable(["id_ref_sim", "id_ref_gain"], "no face detected in any tuned target-prompt image "
                                                              f"(analysed at >= {min_size} px)")
    if orig_s:
        state.metrics["id_ref_sim_original"] = float(np.mean(orig_s))
    else:
        state.mark_unavailable(["id_ref_sim_original", "id_ref_gain"],
                               "no face detected in any original target-prompt image")
    if tuned_s and orig_s:
        state.metrics["id_ref_gain"] = state.metrics["id_ref_sim"] - state.metrics["id_ref_sim_original"]


def clip_scores(state: MetricState, base: list[EvalItem], target: list[EvalItem], orig: dict, tuned: dict,
                scorer: Any | None, reason: str | None, text_fn: Any = None) -> None:
    """CLIP-T on target prompts (tuned and original, and the gain) and CLIP-I original vs tuned.

    ``text_fn`` maps a prompt to the text CLIP scores (identity methods: the class noun in place of the trigger).
    """
    names = ["clip_t", "clip_t_original", "clip_t_gain", "clip_i", "clip_i_target"]
    if scorer is None:
        state.mark_unavailable(names, reason or "no CLIP model")
        state.drifts["clip_i"] = None
        return
    t0 = time.perf_counter()
    texts = [text_fn(i.prompt) if text_fn else i.prompt for i in target]
    # cosines of identical images come out as 1.0000001 in float32: clip to the range the registry checks
    ct_t = np.clip(scorer.clip_t([tuned[i.key] for i in target], texts), -1.0, 1.0)
    ct_o = np.clip(scorer.clip_t([orig[i.key] for i in target], texts), -1.0, 1.0)
    state.time("clip_t", time.perf_counter() - t0, 2 * len(target))
    t0 = time.perf_counter()
    ci = np.clip(scorer.clip_i([orig[i.key] for i in base + target], [tuned[i.key] for i in base + target]), -1.0, 1.0)
    state.time("clip_i", time.perf_counter() - t0, 2 * len(base + target))
    for it, a, b in zip(target, ct_t, ct_o):
        state.pairs[it.key].update({"clip_t": a, "clip_t_original": b})
    for it, c in zip(base + target, ci):
        state.pairs[it.key]["clip_i"] = c
    state.metrics["clip_t"] = float(np.mean(ct_t))
    state.metrics["clip_t_original"] = float(np.mean(ct_o))
    state.metrics["clip_t_gain"] = state.metrics["clip_t"] - state.metrics["clip_t_original"]
    state.metrics["clip_i"] = float(np.mean(ci[:len(base)]))
    state.metrics["clip_i_target"] = float(np.mean(ci[len(base):]))
    state.drifts["clip_i"] = float(np.clip(1.0 - state.metrics["clip_i"], 0.0, 1.0))


def combine_pollution(state: MetricState, weights: dict[str, float]) -> dict[str, Any]:
    """Write ``pollution`` and ``pollution_<component>`` and return the detail block for metrics.json."""
    for comp in weights:
        state.drifts.setdefault(comp, None)
        state.metrics[f"pollution_{comp}"] = state.drifts[comp]
        if state.drifts[comp] is None:
            state.unavailable.setdefault(f"pollution_{comp}", state.unavailable.get(
                {"identity": "id_sim", "clip_i": "clip_i", "lpips": "lpips", "ssim": "ssim",
                 "pixel": "pixel_mae"}[comp], "not computed"))
    value, used = pol.combine(state.drifts, weights)
    state.metrics["pollution"] = value
    if value is None:
        state.unavailable["pollution"] = "no pollution component available"
    return {"formula": pol.POLLUTION_FORMULA, "weights": weights, "weights_used": used,
            "components": {k: state.drifts.get(k) for k in weights}}
