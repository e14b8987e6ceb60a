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
                     extra_face_min_score: float = 0.5, fill: str = "reflect") -> Face:
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
    chip, blur_chip = aligned_chips(rgb, shape, sizes=(size, BLUR_SIZE), padding=padding, fill=fill)
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


def aligned_chip(rgb: np.ndarray, shape: object, *, size: int, padding: float, fill: str = "reflect") -> np.ndarray:
    """One chip of `aligned_chips`."""
    return aligned_chips(rgb, shape, sizes=(size,), padding=padding, fill=fill)[0]


def aligned_chips(rgb: np.ndarray, shape: object, *, sizes: tuple[int, ...], padding: float,
                  fill: str = "reflect") -> list[np.ndarray]:
    """dlib's aligned face chip at each of ``sizes``, with the part that lies outside the photo filled FFHQ-style.

    `dlib.get_face_chip` paints that part black. A face near the border, tilted, or cropped with generous padding then
    carries black wedges into every training crop; the base model never drew them, so a fine-tune learns them as part
    of the target (the SPF control map released them as a response, and the demo's tuned images showed black
    blotches). FFHQ's alignment pads by reflection, blurs the padding more the further it lies from the photo and fades
    it towards the median colour of the photo's part of the crop; `fill="reflect"` does the same, so pixels inside the
    photo are dlib's own. `fill="black"` keeps dlib's chip (for reproducing crops made before this fill existed).
    The chips share one filled window (the blur, its costly part, runs once): the chip's rectangle in the photo
    depends on the padding only, not on the size.
    """
    import dlib

    if fill == "black":
        return [dlib.get_face_chip(rgb, shape, size=size, padding=padding) for size in sizes]
    dets = [dlib.get_face_chip_details(shape, size=size, padding=padding) for size in sizes]
    r = dets[0].rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    # the chip is r turned by its angle about its centre: its half-diagonal (+2 px for interpolation) bounds it
    ext = float(np.hypot(r.width(), r.height())) / 2.0 + 2.0
    x0, y0 = int(np.floor(cx - ext)), int(np.floor(cy - ext))
    x1, y1 = int(np.ceil(cx + ext)) + 1, int(np.ceil(cy + ext)) + 1
    region = _filled_region(rgb, x0, y0, x1, y1, blur_sigma=0.02 * max(r.width(), r.height()))
    moved = dlib.drectangle(r.left() - x0, r.top() - y0, r.right() - x0, r.bottom() - y0)
    return [dlib.extract_image_chip(region, dlib.chip_details(moved, dlib.chip_dims(d.rows, d.cols), d.angle))
            for d in dets]


def _filled_region(rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int, *, blur_sigma: float) -> np.ndarray:
    """rgb[y0:y1, x0:x1] where the window may reach past the photo: the outside is reflected, blurred, faded."""
    h, w = rgb.shape[:2]
    inner = rgb[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    pads = (max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))
    if not any(p for pair in pads for p in pair):
        return np.ascontiguousarray(inner)
    img = np.pad(inner.astype(np.float32), (*pads, (0, 0)), mode="reflect")
    ih, iw = inner.shape[:2]

    def outside(n: int, lo: int, hi: int, length: int) -> np.ndarray:
        """How far each index lies outside [lo, lo + length), as a fraction of that side's padding."""
        i = np.arange(n, dtype=np.float32)
        before = np.clip((lo - i) / max(lo, 1), 0.0, 1.0)
        after = np.clip((i - (lo + length - 1)) / max(hi, 1), 0.0, 1.0)
        return np.maximum(before, after)

    m = np.maximum(outside(img.shape[0], pads[0][0], pads[0][1], ih)[:, None],
                   outside(img.shape[1], pads[1][0], pads[1][1], iw)[None, :])[..., None]
    img += (_blur_outside(img, pads, blur_sigma) - img) * np.clip(3.0 * m, 0.0, 1.0)
    img += (np.median(inner.reshape(-1, inner.shape[-1]), axis=0).astype(np.float32) - img) * m
    return np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


def _blur_outside(img: np.ndarray, pads: tuple[tuple[int, int], ...], sigma: float) -> np.ndarray:
    """``img`` Gaussian-blurred where it lies in ``pads`` (the padding strips), as if the whole window were blurred.

    Only the padding is blended with the blur, and a photo's crop is mostly inside the photo: each padded side is
    blurred as a strip reaching the kernel's radius inwards, which gives the same values there at a fraction of the
    cost (a 1024-px photo's window: half the time of the whole stage).
    """
    from scipy.ndimage import gaussian_filter

    out = img.copy()
    radius = int(4.0 * sigma + 0.5)  # gaussian_filter's default truncate=4
    (top, bottom), (left, right) = pads
    h, w = img.shape[:2]
    if top:
        out[:top] = gaussian_filter(img[:top + radius], sigma=(sigma, sigma, 0))[:top]
    if bottom:
        out[h - bottom:] = gaussian_filter(img[max(0, h - bottom - radius):], sigma=(sigma, sigma, 0))[-bottom:]
    if left:
        out[:, :left] = gaussian_filter(img[:, :left + radius], sigma=(sigma, sigma, 0))[:, :left]
    if right:
        out[:, w - right:] = gaussian_filter(img[:, max(0, w - right - radius):], sigma=(sigma, sigma, 0))[:, -right:]
    return out


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
