"""Face detection (dlib HOG), 5-point landmarks, FFHQ-style aligned crops, blur and perceptual-hash scores.

dlib and the face-recognition-models files are loaded once per process (`FaceModels.get`), because the worker
processes of the prepare stage each handle many images.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spf_lib.data.images import Rejected
from spf_lib.errors import SpfError

log = logging.getLogger(__name__)

BLUR_SIZE = 256  # blur is measured on a chip of fixed size so thresholds do not depend on config.size
_MODELS: FaceModels | None = None


def models_dir() -> Path:
    """The `models/` folder of face-recognition-models, found by path (importing it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SpfError("face-recognition-models is not installed: pip install face-recognition-models")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass
class FaceModels:
    detector: object
    predictor: object

    @classmethod
    def get(cls) -> FaceModels:
        global _MODELS
        if _MODELS is None:
            import dlib

            path = models_dir() / "shape_predictor_5_face_landmarks.dat"
            if not path.is_file():
                raise SpfError(f"{path}: 5-point landmark model missing from face-recognition-models")
            _MODELS = cls(detector=dlib.get_frontal_face_detector(), predictor=dlib.shape_predictor(str(path)))
        return _MODELS


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels, clipped to the image
    landmarks: list[tuple[int, int]]  # 5 points in source pixels
    det_score: float
    face_px: int  # shorter side of the unclipped detection box, source pixels
    n_faces: int
    chip: np.ndarray  # size x size x 3 uint8, aligned
    blur: float  # Laplacian variance of the grey BLUR_SIZE chip
    phash: int  # 64-bit DCT perceptual hash of the aligned chip


def detect_and_align(rgb: np.ndarray, *, size: int, padding: float, upsample: int | None, detect_max_side: int,
                     multi_face: str, min_face_px: int, min_det_score: float,
                     extra_face_min_score: float = 0.5) -> Face:
    """Find the face to keep and crop it; policies that reject raise `Rejected` with their reason."""
    import dlib

    models = FaceModels.get()
    h, w = rgb.shape[:2]
    scale = min(1.0, detect_max_side / max(h, w))
    small = rgb if scale == 1.0 else _resize(rgb, (round(w * scale), round(h * scale)))
    ups = upsample if upsample is not None else (1 if min(small.shape[:2]) < 400 else 0)
    rects, scores, _ = models.detector.run(small, ups, 0.0)
    if not rects:
        raise Rejected("no_face", f"dlib HOG found no face (upsample={ups})")
    found = list(zip(rects, scores, strict=True))
    # Weak HOG hits on clothing or background are common; they do not make a second face.
    confident = [d for d in found if d[1] >= extra_face_min_score] or [max(found, key=lambda rs: rs[1])]
    dets = sorted(confident, key=lambda rs: -rs[0].width() * rs[0].height())
    if len(dets) > 1 and multi_face == "reject":
        raise Rejected("multiple_faces", f"{len(dets)} faces and multi_face=reject")
    rect, score = dets[0]
    full = dlib.rectangle(round(rect.left() / scale), round(rect.top() / scale),
                          round(rect.right() / scale), round(rect.bottom() / scale))
    side = min(full.width(), full.height())
    if side < min_face_px:
        raise Rejected("face_too_small", f"face {side}px < min_face_px={min_face_px}")
    if score < min_det_score:
        raise Rejected("low_det_score", f"score {score:.3f} < min_det_score={min_det_score}")
    shape = models.predictor(rgb, full)
    chip = dlib.get_face_chip(rgb, shape, size=size, padding=padding)
    blur_chip = chip if size == BLUR_SIZE else dlib.get_face_chip(rgb, shape, size=BLUR_SIZE, padding=padding)
    box = (max(0, full.left()), max(0, full.top()), min(w, full.right() + 1), min(h, full.bottom() + 1))
    return Face(
        box=box,
        landmarks=[(p.x, p.y) for p in shape.parts()],
        det_score=float(score),
        face_px=int(side),
        n_faces=len(dets),
        chip=np.ascontiguousarray(chip),
        blur=laplacian_variance(blur_chip),
        phash=phash(chip),
    )


def _resize(rgb: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize(wh, Image.Resampling.BILINEAR))


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def laplacian_variance(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: low when edges are soft (out of focus, upscaled, motion)."""
    g = grey(rgb.astype(np.float64))
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def phash(rgb: np.ndarray) -> int:
    """DCT perceptual hash (32x32 grey -> low 8x8 frequencies vs their median), robust to resizing and JPEG."""
    from PIL import Image
    from scipy.fft import dctn

    small = np.asarray(Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = dctn(small, norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
