"""A deterministic portrait renderer: real public-domain faces composited into drawn, labelled scenes.

WHY real faces: the data stage runs dlib's HOG face detector and face descriptors on every image; a purely drawn
face is not a face to them. The two faces that ship in packages (NASA's Eileen Collins in
``skimage.data.astronaut()`` and Grace Hopper in matplotlib's sample data) are warped by eye position onto a drawn
scene (background, hair, neck, shirt, mouth, skin tone, optional round glasses), so every attribute but identity is
drawn and therefore known exactly. Same attributes + same jitter → the same pixels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from spf_lib.errors import SpfError
from spf_lib.world.attributes import Attributes

HAIR_RGB = {"blonde": (226, 196, 112), "black": (28, 24, 24), "brown": (105, 66, 36), "red": (176, 62, 30),
            "grey": (160, 160, 164)}
CLOTHING_RGB = {"white": (236, 236, 232), "black": (30, 30, 36), "blue": (40, 80, 200), "green": (40, 150, 60),
                "orange": (240, 130, 30)}
BACKGROUND_RGB = {"red": (200, 40, 40), "blue": (70, 120, 220), "green": (80, 180, 90), "yellow": (235, 210, 70),
                  "curtain": (120, 40, 110), "brick": (170, 80, 50)}
SKIN_RGB = {"pale": (236, 200, 178), "tan": (196, 142, 100), "dark": (118, 78, 54)}


@dataclass(frozen=True)
class FaceSource:
    """A shipped photo and its landmarks (measured once with dlib's 5-point predictor, stored as constants)."""

    name: str
    left_eye: tuple[float, float]  # image-left eye centre
    right_eye: tuple[float, float]
    nose: tuple[float, float]


SOURCES: dict[str, FaceSource] = {
    "young": FaceSource("astronaut", (203.5, 102.0), (246.5, 104.5), (224.0, 135.0)),
    "old": FaceSource("grace_hopper", (222.0, 195.5), (306.5, 188.5), (272.0, 252.0)),
}


@functools.cache
def load_source(name: str) -> Image.Image:
    """The shipped photo as an RGB image (cached: both are read from installed packages, never downloaded)."""
    if name == "astronaut":
        import skimage.data

        return Image.fromarray(skimage.data.astronaut()).convert("RGB")
    if name == "grace_hopper":
        from pathlib import Path

        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if not path.exists():
            raise SpfError(f"{path}: matplotlib's sample image is missing; reinstall matplotlib")
        with Image.open(path) as im:
            return im.convert("RGB")
    raise SpfError(f"face source {name!r}: expected astronaut or grace_hopper")


@dataclass(frozen=True)
class Layout:
    """Geometry jitter of one portrait, as fractions of the image size (drawn from the seed, recorded with labels)."""

    eye_x: float = 0.5
    eye_y: float = 0.42
    eye_dist: float = 0.19
    flip: bool = False
    brightness: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Layout:
        return cls(
            eye_x=float(rng.uniform(0.45, 0.55)),
            eye_y=float(rng.uniform(0.38, 0.45)),
            eye_dist=float(rng.uniform(0.16, 0.21)),
            flip=bool(rng.integers(2)),
            brightness=float(rng.uniform(0.92, 1.08)),
        )


def _background(kind: str, s: int) -> Image.Image:
    base = np.array(BACKGROUND_RGB[kind], dtype=np.float32)
    y = np.linspace(1.08, 0.9, s, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(base * y, (s, s, 3)).copy()
    if kind == "curtain":  # vertical folds
        x = np.arange(s, dtype=np.float32)
        img *= (0.75 + 0.25 * np.cos(x / s * 2 * np.pi * 7))[None, :, None]
    elif kind == "brick":  # mortar lines
        row = max(2, s // 12)
        yy, xx = np.mgrid[0:s, 0:s]
        offset = (yy // row % 2) * (row // 1)
        mortar = (yy % row < max(1, row // 8)) | ((xx + offset) % (2 * row) < max(1, row // 8))
        img[mortar] = (200, 190, 180)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _warp_face(src: FaceSource, s: int, ex: float, ey: float, ed: float, flip: bool) -> Image.Image:
    """Warp the source photo so its eye midpoint lands on (ex, ey) with eye distance ed (canvas pixels)."""
    photo = load_source(src.name)
    (lx, ly), (rx, ry) = src.left_eye, src.right_eye
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    k = float(np.hypot(rx - lx, ry - ly)) / ed  # source pixels per canvas pixel
    sx = -k if flip else k
    # PIL's affine maps output (x, y) to input (a*x + b*y + c, d*x + e*y + f).
    coeffs = (sx, 0.0, mx - sx * ex, 0.0, k, my - k * ey)
    return photo.transform((s, s), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def render_portrait(attrs: Attributes, size: int = 256, layout: Layout | None = None) -> Image.Image:
    """Render one portrait. Pure function of (attrs, size, layout): no hidden randomness."""
    if size < 32:
        raise SpfError(f"size={size}: portraits need at least 32 pixels")
    layout = layout or Layout()
    ss = 2 if size <= 512 else 1  # supersampling for smooth drawn edges
    s = size * ss
    ed = layout.eye_dist * s
    ex, ey = layout.eye_x * s, layout.eye_y * s
    src = SOURCES[attrs.person]
    chin = ey + 1.75 * ed

    canvas = _background(attrs.background, s)
    draw = ImageDraw.Draw(canvas)
    hair = HAIR_RGB[attrs.hair]
    skin = SKIN_RGB[attrs.skin]
    # Hair mass behind the head, then neck and shirt.
    _ellipse(draw, ex, ey - 0.1 * ed, 1.55 * ed, 1.55 * ed, hair)
    draw.rectangle((ex - 1.55 * ed, ey - 0.1 * ed, ex + 1.55 * ed, chin + 0.2 * ed), fill=hair)
    draw.rectangle((ex - 0.55 * ed, chin - 0.6 * ed, ex + 0.55 * ed, chin + 0.9 * ed), fill=skin)
    shirt = CLOTHING_RGB[attrs.clothing]
    draw.rounded_rectangle((ex - 2.7 * ed, chin + 0.7 * ed, ex + 2.7 * ed, s + ed), radius=int(1.1 * ed), fill=shirt)
    draw.polygon([(ex - 0.5 * ed, chin + 0.7 * ed), (ex + 0.5 * ed, chin + 0.7 * ed), (ex, chin + 1.3 * ed)], fill=skin)

    # The real face, recoloured to the skin tone, inside a feathered ellipse.
    face = _warp_face(src, s, ex, ey, ed, layout.flip)
    fa = np.asarray(face, dtype=np.float32)
    mask = Image.new("L", (s, s), 0)
    _ellipse(ImageDraw.Draw(mask), ex, ey + 0.55 * ed, 1.05 * ed, 1.22 * ed, 255)
    mask = mask.filter(ImageFilter.GaussianBlur(0.08 * ed))
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    inner = m[..., 0] > 0.9
    mean = fa[inner].mean(axis=0) if inner.any() else np.full(3, 128.0)
    fa = fa * (np.array(skin, dtype=np.float32) / np.maximum(mean, 1.0) * 0.9)
    out = np.asarray(canvas, dtype=np.float32) * (1 - m) + fa * m
    canvas = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)

    # Mouth: cover the photo's own mouth with skin, draw the labelled expression.
    nose_dy = (src.nose[1] - (src.left_eye[1] + src.right_eye[1]) / 2) / np.hypot(
        src.right_eye[0] - src.left_eye[0], src.right_eye[1] - src.left_eye[1])
    my = ey + (nose_dy + 0.3) * ed
    patch = Image.new("L", (s, s), 0)
    _ellipse(ImageDraw.Draw(patch), ex, my, 0.55 * ed, 0.26 * ed, 255)
    patch = patch.filter(ImageFilter.GaussianBlur(0.06 * ed))
    canvas.paste(Image.new("RGB", (s, s), tuple(int(c * 0.9) for c in skin)), (0, 0), patch)
    lip = (150, 40, 50)
    w = max(1, int(0.07 * ed))
    if attrs.expression == "smiling":
        draw.chord((ex - 0.4 * ed, my - 0.2 * ed, ex + 0.4 * ed, my + 0.2 * ed), 0, 180, fill=(250, 250, 245),
                   outline=lip, width=w)
    else:
        draw.line((ex - 0.3 * ed, my, ex + 0.3 * ed, my), fill=lip, width=w)

    if attrs.glasses:
        _draw_glasses(draw, ex, ey, ed)

    if layout.brightness != 1.0:
        arr = np.asarray(canvas, dtype=np.float32) * layout.brightness
        canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if ss != 1:
        canvas = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return canvas


def glasses_mask(layout: Layout | None = None, size: int = 256) -> np.ndarray:
    """Where ``render_portrait`` draws the target for this layout: frame coverage in [0, 1], (size, size) float32.

    The world knows where its glasses are, so a method's idea of the target region (SPF's SFCM) can be scored.
    """
    layout = layout or Layout()
    ss = 2 if size <= 512 else 1
    s = size * ss
    ed = layout.eye_dist * s
    mask = Image.new("L", (s, s), 0)
    _draw_glasses(ImageDraw.Draw(mask), layout.eye_x * s, layout.eye_y * s, ed, frame=255)
    if ss != 1:
        mask = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _draw_glasses(draw: ImageDraw.ImageDraw, ex: float, ey: float, ed: float, frame=(20, 20, 20)) -> None:
    """Round, thick, dark frames: a target that no base image shows (Hopper's own glasses are thin and angular)."""
    r = 0.4 * ed
    w = max(2, int(0.14 * ed))
    for cx in (ex - 0.5 * ed, ex + 0.5 * ed):
        draw.ellipse((cx - r, ey - r, cx + r, ey + r), outline=frame, width=w)
    draw.line((ex - 0.5 * ed + r, ey, ex + 0.5 * ed - r, ey), fill=frame, width=w)
    draw.line((ex - 0.5 * ed - r, ey - 0.1 * ed, ex - 1.05 * ed, ey - 0.2 * ed), fill=frame, width=w)
    draw.line((ex + 0.5 * ed + r, ey - 0.1 * ed, ex + 1.05 * ed, ey - 0.2 * ed), fill=frame, width=w)
