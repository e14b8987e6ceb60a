"""LPIPS and FID, only from backbones the user configures as ONNX files (no such weights ship in any package here).

Contracts of the ONNX files (documented in docs/internals.md):

- LPIPS (``EvalConfig.lpips_model``): two inputs, each NCHW float32 RGB in [-1, 1] (the lpips package's
  convention); one output holding one distance per image (any shape with N elements).
- FID (``EvalConfig.fid_model``): one input NCHW float32 RGB in [0, 1] (an Inception-v3 pool3 export for the
  standard FID); one output (N, D) of features. FID is computed between the original and tuned base-prompt images.
  With fewer images than feature dimensions the covariance is rank-deficient: FID from a few dozen images is a
  relative number for comparing models on the same eval set, not comparable with published FIDs.

Images are resized (bicubic) to the input size when the model's input has a fixed spatial size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from spf_lib.eval.evalset import EvalItem


class OnnxImageModel:
    def __init__(self, path: str | Path, what: str) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{what} model {p}: file does not exist")
        self.sess = ort.InferenceSession(str(p), providers=ort.get_available_providers())
        self.inputs = self.sess.get_inputs()
        shape = self.inputs[0].shape
        self.size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None

    def tensor(self, images: list[Any], lo: float) -> np.ndarray:
        from PIL import Image

        arrs = []
        for im in images:
            im = im.convert("RGB")
            if self.size and im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32) / 255.0
            arrs.append(a * 2 - 1 if lo < 0 else a)
        return np.transpose(np.stack(arrs), (0, 3, 1, 2)).astype(np.float32)


def lpips_distances(model: OnnxImageModel, a: list[Any], b: list[Any]) -> list[float]:
    if len(model.inputs) < 2:
        raise ValueError("LPIPS model must take two image inputs")
    out = []
    for x, y in zip(a, b):  # one pair per call: works with fixed and dynamic batch sizes alike
        d = model.sess.run(None, {model.inputs[0].name: model.tensor([x], -1), model.inputs[1].name:
                                  model.tensor([y], -1)})[0]
        out.append(float(np.asarray(d).reshape(-1)[0]))
    return out


def frechet_distance(fa: np.ndarray, fb: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    ca, cb = np.atleast_2d(ca), np.atleast_2d(cb)
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(ca.shape[0]) * 1e-6
        covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = np.real(covmean)
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean), 0.0))


def fid_features(model: OnnxImageModel, images: list[Any]) -> np.ndarray:
    feats = [np.asarray(model.sess.run(None, {model.inputs[0].name: model.tensor([im], 0)})[0]).reshape(-1)
             for im in images]
    return np.stack(feats).astype(np.float64)


def lpips_fid(state: Any, base: list[EvalItem], orig: dict, tuned: dict, cfg: Any) -> None:
    """Fill ``lpips`` / ``fid`` (and the lpips pollution drift) or mark them unavailable with the reason."""
    a, b = [orig[i.key] for i in base], [tuned[i.key] for i in base]
    if not cfg.lpips_model:
        state.mark_unavailable(["lpips"], "no LPIPS model configured (lpips_model: an ONNX file)")
        state.drifts["lpips"] = None
    else:
        try:
            t0 = time.perf_counter()
            d = lpips_distances(OnnxImageModel(cfg.lpips_model, "LPIPS"), a, b)
            state.time("lpips", time.perf_counter() - t0, 2 * len(base))
            for it, v in zip(base, d):
                state.pairs.setdefault(it.key, {})["lpips"] = v
            state.metrics["lpips"] = float(np.mean(d))
            state.drifts["lpips"] = float(np.clip(state.metrics["lpips"], 0.0, 1.0))
        except Exception as e:  # noqa: BLE001 - any backbone failure is reported as unavailable
            state.mark_unavailable(["lpips"], f"LPIPS model {cfg.lpips_model}: {type(e).__name__}: {str(e)[:200]}")
            state.drifts["lpips"] = None
    if not cfg.fid_model:
        state.mark_unavailable(["fid"], "no FID feature model configured (fid_model: an ONNX file)")
    elif len(base) < 2:
        state.mark_unavailable(["fid"], "FID needs at least 2 base-prompt images per model")
    else:
        try:
            t0 = time.perf_counter()
            m = OnnxImageModel(cfg.fid_model, "FID")
            state.metrics["fid"] = frechet_distance(fid_features(m, a), fid_features(m, b))
            state.time("fid", time.perf_counter() - t0, 2 * len(base))
        except Exception as e:  # noqa: BLE001 - any backbone failure is reported as unavailable
            state.mark_unavailable(["fid"], f"FID model {cfg.fid_model}: {type(e).__name__}: {str(e)[:200]}")
