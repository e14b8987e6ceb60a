"""The part of an aligned crop that lies outside the photo: dlib paints it black, we fill it the way FFHQ does.

Black wedges are in every crop of a face near the border or tilted, and nowhere in what the base model draws, so a
fine-tune learns them with the target (the demo's tuned images showed black blotches before this fill).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spf_lib.data.config import PrepareConfig
from spf_lib.data.faces import FaceModels, aligned_chip
from spf_lib.errors import SpfError
from tests._data_helpers import astronaut

SIZE, PADDING = 128, 0.85


def _shape(rgb: np.ndarray):
    import dlib

    models = FaceModels.get()
    rects = models.detector(rgb, 1)
    assert rects, "the test photo must have a detectable face"
    return models.predictor(rgb, max(rects, key=lambda r: r.area()))


@pytest.fixture(scope="module")
def edge_photo() -> np.ndarray:
    """The astronaut turned 20° and cut so that her face sits at the photo's top-left corner."""
    turned = np.asarray(Image.fromarray(astronaut()).rotate(20, resample=Image.Resampling.BICUBIC, expand=True,
                                                            fillcolor=(120, 130, 140)))
    shape = _shape(turned)
    box = shape.rect
    return np.ascontiguousarray(turned[max(0, box.top() - 20):, max(0, box.left() - 20):])


def _outside(rgb: np.ndarray, shape) -> np.ndarray:
    """Which chip pixels dlib maps outside the photo: the black of dlib's chip of an all-white photo."""
    import dlib

    white = np.full_like(rgb, 255)
    return dlib.get_face_chip(white, shape, size=SIZE, padding=PADDING).max(-1) < 128


def test_crop_past_the_border_is_filled_not_black(edge_photo):
    import dlib

    shape = _shape(edge_photo)
    outside = _outside(edge_photo, shape)
    assert outside.mean() > 0.05, "the test must reach past the photo"
    black = dlib.get_face_chip(edge_photo, shape, size=SIZE, padding=PADDING)
    filled = aligned_chip(edge_photo, shape, size=SIZE, padding=PADDING)
    assert (black[outside] == 0).all()
    # nothing near black where the photo ends: the padding is the photo's reflection faded towards its median
    assert (filled[outside].max(-1) < 10).mean() < 0.02
    median = np.median(edge_photo.reshape(-1, 3), axis=0)
    assert np.abs(filled[outside].mean(0) - median).max() < np.abs(black[outside].mean(0) - median).max() / 2
    # inside the photo (a pixel off the seam, where dlib's bilinear mixes in its black) the crop is dlib's own
    from scipy.ndimage import binary_dilation

    inside = ~binary_dilation(outside, iterations=2)
    assert np.abs(filled[inside].astype(int) - black[inside].astype(int)).max() <= 1


def test_crop_inside_the_photo_is_dlibs_chip():
    import dlib

    rgb = astronaut()
    shape = _shape(rgb)
    assert not _outside(rgb, shape).any()
    assert np.array_equal(aligned_chip(rgb, shape, size=SIZE, padding=0.3),
                          dlib.get_face_chip(rgb, shape, size=SIZE, padding=0.3))


def test_black_fill_keeps_dlibs_chip(edge_photo):
    import dlib

    shape = _shape(edge_photo)
    assert np.array_equal(aligned_chip(edge_photo, shape, size=SIZE, padding=PADDING, fill="black"),
                          dlib.get_face_chip(edge_photo, shape, size=SIZE, padding=PADDING))


def test_unknown_fill_names_the_field():
    with pytest.raises(SpfError, match=r"PrepareConfig.fill='grey': must be one of \('reflect', 'black'\)"):
        PrepareConfig(fill="grey")


def test_padding_fades_from_the_reflection_to_the_median():
    from spf_lib.data.faces import _filled_region

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo[:, :40] //= 4  # a dark half, so median and reflection differ
    region = _filled_region(photo, -40, -30, 80, 60, blur_sigma=2.0)
    assert region.shape == (90, 120, 3)
    assert np.array_equal(region[30:, 40:], photo)  # the photo itself is untouched
    median = np.median(photo.reshape(-1, 3), axis=0)
    assert np.abs(region[0, 0].astype(float) - median).max() <= 1  # the far corner is the median
    # next to the photo the padding still follows its reflection (the dark half), not the median
    near = region[30:, 38].astype(float)
    assert np.abs(near - photo[:, 2]).mean() < np.abs(near - median).mean()
    # half-way out it is blurred, not a sharp mirror image: FFHQ blurs the padding so it reads as background
    half_way = np.diff(region[13:18, 40:].astype(float), axis=1).std()
    assert half_way < 0.25 * np.diff(photo[:, 40:].astype(float), axis=1).std()


def test_padding_is_blurred_as_if_the_whole_window_were():
    """The blur runs on strips along the padded sides only; in the padding it must equal the whole window's blur."""
    from scipy.ndimage import gaussian_filter

    from spf_lib.data.faces import _blur_outside

    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (70, 90, 3)).astype(np.float32)
    pads = ((12, 5), (0, 20))  # top, bottom; left, right
    whole = gaussian_filter(img, sigma=(3.0, 3.0, 0))
    strips = _blur_outside(img, pads, 3.0)
    outside = np.zeros(img.shape[:2], bool)
    outside[:12], outside[-5:], outside[:, -20:] = True, True, True
    assert np.array_equal(strips[outside], whole[outside])
    assert np.array_equal(strips[~outside], img[~outside])  # the photo is not blurred
