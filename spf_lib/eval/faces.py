"""Identity similarity: detect and align the face, embed it with a pluggable encoder, score on a documented scale.

Detection and alignment always use dlib (HOG detector + 5-point landmarks from ``face_recognition_models``, CC0);
the encoder that turns the aligned chip into an identity vector is pluggable:

- ``dlib`` (default, ships in a package): 128-d ResNet descriptor. Its descriptors are not zero-centred, so the raw
  cosine is 0.79-0.88 between DIFFERENT people and is not comparable with ArcFace numbers. dlib's own decision rule
  is Euclidean distance < 0.6 = same person, so we report the calibrated score
  ``id_score = clip(1 - L2 / (2 * 0.6), 0, 1)``: 1 = identical descriptor, 0.5 = exactly at dlib's same-person
  threshold, 0 = distance >= 1.2. Raw L2 and raw cosine are reported beside it.
- an ONNX file (ArcFace / CosFace exported with 112x112 RGB input, (x - 127.5) / 127.5, NCHW): score = cosine of
  L2-normalised embeddings, clipped to [0, 1]; this is the scale papers report as "ID".

A face that cannot be found is never an exception: the caller counts it and reports it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

DLIB_SAME_PERSON_L2 = 0.6


def face_models_dir() -> Path:
    """Locate the shipped dlib models without importing face_recognition_models (it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SpfError("face models: package face-recognition-models is not installed (pip install "
                       "face-recognition-models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class FaceEncoder(Protocol):
    """An identity encoder working on aligned face chips."""

    name: str
    chip_size: int
    chip_padding: float

    def embed(self, chip: np.ndarray) -> np.ndarray:
        """``chip``: HxWx3 uint8 RGB aligned face → 1-d embedding."""

    def compare(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        """Return ``{"score": [0, 1] with 1 = same embedding, ...raw values}``."""


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class DlibEncoder:
    name = "dlib-resnet-128"
    chip_size = 150
    chip_padding = 0.25
    scale = f"clip(1 - L2/{2 * DLIB_SAME_PERSON_L2}, 0, 1); 0.5 = dlib same-person threshold L2={DLIB_SAME_PERSON_L2}"

    def __init__(self) -> None:
        import dlib

        path = face_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
        if not path.is_file():
            raise SpfError(f"face models: {path} is missing")
        self._net = dlib.face_recognition_model_v1(str(path))

    def embed(self, chip: np.ndarray) -> np.ndarray:
        return np.asarray(self._net.compute_face_descriptor(np.ascontiguousarray(chip)), dtype=np.float64)

    def compare(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        l2 = float(np.linalg.norm(a - b))
        score = float(np.clip(1.0 - l2 / (2 * DLIB_SAME_PERSON_L2), 0.0, 1.0))
        return {"score": score, "l2": l2, "raw_cos": _cos(a, b)}


class OnnxEncoder:
    """ArcFace/CosFace-style ONNX model run with onnxruntime (optional dependency)."""

    scale = "clip(cosine of L2-normalised embeddings, 0, 1) (ArcFace-style)"

    def __init__(self, path: str | Path, chip_padding: float = 0.1) -> None:
        p = Path(path)
        if not p.is_file():
            raise SpfError(f"face encoder {p}: ONNX file does not exist")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise SpfError("face encoder: an ONNX file needs onnxruntime (pip install 'spf-portrait[onnx]')") from e
        try:
            self._sess = ort.InferenceSession(str(p), providers=ort.get_available_providers())
        except Exception as e:
            raise SpfError(f"face encoder {p}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from e
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        shape = inp.shape
        size = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 112
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise SpfError(f"face encoder {p}: expected an NCHW RGB input, got shape {shape}")
        self.chip_size = int(size)
        self.chip_padding = chip_padding
        self.name = f"onnx:{p.name}"

    def embed(self, chip: np.ndarray) -> np.ndarray:
        x = (chip.astype(np.float32) - 127.5) / 127.5
        x = np.transpose(x, (2, 0, 1))[None]
        y = self._sess.run(None, {self._input: x})[0]
        return np.asarray(y, dtype=np.float64).reshape(-1)

    def compare(self, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        c = _cos(a, b)
        return {"score": float(np.clip(c, 0.0, 1.0)), "raw_cos": c, "l2": float(np.linalg.norm(
            a / (np.linalg.norm(a) or 1) - b / (np.linalg.norm(b) or 1)))}


def make_encoder(spec: str) -> FaceEncoder:
    if spec == "dlib":
        return DlibEncoder()
    if spec.lower().endswith(".onnx"):
        return OnnxEncoder(spec)
    raise SpfError(f"face_encoder={spec!r}: expected 'dlib' or a path to an .onnx file")


@dataclass
class FaceResult:
    embedding: np.ndarray | None
    box: tuple[int, int, int, int] | None = None
    reason: str | None = None  # why there is no embedding
    fallback: bool = False     # no face was detected; the embedding comes from the centred fallback box


class FaceAnalyzer:
    """dlib HOG detection + 5-point alignment, then the encoder. Picks the largest face of an image."""

    def __init__(self, encoder: FaceEncoder | str = "dlib") -> None:
        import dlib

        self.encoder = make_encoder(encoder) if isinstance(encoder, str) else encoder
        models = face_models_dir()
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))

    def analyze(self, image: Any, fallback_box: float = 0.0) -> FaceResult:
        """``fallback_box`` > 0: when nothing is detected, treat a centred square of that fraction of the short side
        as the face box (landmarks and alignment as usual) and flag the result; for centre-framed portraits too
        small or soft for HOG (see docs/identity-methods.md). 0 = no face, no embedding."""
        import dlib

        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image,
                                              dtype=np.uint8))
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            return FaceResult(None, reason=f"not an RGB image (shape {rgb.shape})")
        # HOG finds faces of ~80 px and up: upsample small images once so 256-px generations still work.
        upsample = 1 if min(rgb.shape[:2]) < 400 else 0
        dets = self._detector(rgb, upsample)
        if len(dets) == 0 and fallback_box <= 0:
            return FaceResult(None, reason="no face detected")
        if len(dets) == 0:
            h, w = rgb.shape[:2]
            side = int(min(h, w) * min(fallback_box, 1.0))
            x0, y0 = (w - side) // 2, (h - side) // 2
            det = dlib.rectangle(x0, y0, x0 + side, y0 + side)
        else:
            det = max(dets, key=lambda r: r.width() * r.height())
        shape = self._shape(rgb, det)
        chip = dlib.get_face_chip(rgb, shape, size=self.encoder.chip_size, padding=self.encoder.chip_padding)
        emb = self.encoder.embed(np.asarray(chip))
        return FaceResult(emb, box=(det.left(), det.top(), det.right(), det.bottom()), fallback=len(dets) == 0)

    def compare_images(self, a: Any, b: Any) -> dict[str, Any]:
        """Score two images; ``score`` is None (with ``reason``) when a face is missing."""
        ra, rb = self.analyze(a), self.analyze(b)
        if ra.embedding is None or rb.embedding is None:
            which = "first" if ra.embedding is None else "second"
            return {"score": None, "reason": f"{which} image: {(ra if ra.embedding is None else rb).reason}",
                    "face_a": ra.embedding is not None, "face_b": rb.embedding is not None}
        return {**self.encoder.compare(ra.embedding, rb.embedding), "face_a": True, "face_b": True}
