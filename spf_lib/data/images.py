"""Safe image loading: every way an input file can be bad becomes a named rejection, never a crash.

The header is inspected before any pixel is decoded, so a decompression bomb costs a few bytes of reading, not
gigabytes of memory. All accepted images come out as 8-bit RGB, upright (EXIF orientation applied).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class Rejected(Exception):
    """An input that must not go on; ``reason`` is a stable machine-readable code, ``detail`` is for people."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class LoadedImage:
    rgb: np.ndarray  # HxWx3 uint8
    original_mode: str
    exif_rotated: bool


def load_rgb(path: Path, *, max_pixels: int, max_file_bytes: int) -> LoadedImage:
    """Open ``path`` defensively and return upright 8-bit RGB pixels, or raise `Rejected`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    size = path.stat().st_size
    if size == 0:
        raise Rejected("empty_file", "0 bytes")
    if size > max_file_bytes:
        raise Rejected("file_too_large", f"{size} bytes > {max_file_bytes}")
    with warnings.catch_warnings():
        # Pillow warns between its MAX_IMAGE_PIXELS and twice that and raises above; our own limit (checked from
        # the header, before decoding) is the one that decides, with a detail naming the size.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise Rejected("decompression_bomb", f"{w}x{h} = {w * h / 1e6:.1f} MP > {max_pixels / 1e6:.0f} MP")
                if w == 0 or h == 0:
                    raise Rejected("not_an_image", f"zero-sized image {w}x{h}")
                im.load()
                mode = im.mode
                upright = ImageOps.exif_transpose(im)
                rotated = upright is not im and _orientation(im) not in (None, 1)
                rgb = to_rgb8(upright)
        except Rejected:
            raise
        except UnidentifiedImageError as e:
            raise Rejected("not_an_image", "not a decodable image") from e
        except Image.DecompressionBombError as e:
            raise Rejected("decompression_bomb", f"{str(e).split(',')[0]} (Pillow limit)") from e
        except OSError as e:
            msg = str(e)
            reason = "truncated_image" if "truncated" in msg or "broken data stream" in msg else "unreadable_image"
            raise Rejected(reason, msg[:200]) from e
        except (ValueError, SyntaxError, EOFError, MemoryError) as e:  # malformed chunks, odd codecs
            raise Rejected("unreadable_image", f"{type(e).__name__}: {str(e)[:200]}") from e
    return LoadedImage(rgb=rgb, original_mode=mode, exif_rotated=rotated)


def _orientation(im) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good image
        return None


def to_rgb8(im) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8. 16-bit is scaled (not clipped); transparency is flattened onto white."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.int64)
        top = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        grey = np.clip(arr * 255 // max(top, 1), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        grey = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
