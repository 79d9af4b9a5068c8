"""``area_resize``: OpenCV's area average, in two stages only for large images shrunk 3x or more."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.preprocess.arrays import TWO_STAGE_PIXELS, area_resize


def _radiograph_like(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = 0.5 + 0.3 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
    noise = np.random.default_rng(0).normal(0, 0.02, (h, w)).astype(np.float32)
    return np.clip(smooth + noise, 0, 1).astype(np.float32)


def _direct(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def test_small_images_are_resized_as_before():
    image = _radiograph_like(512, 410)
    assert image.size < TWO_STAGE_PIXELS
    np.testing.assert_array_equal(area_resize(image, (41, 51)), _direct(image, (41, 51)))


def test_large_image_with_a_small_factor_is_resized_as_before():
    image = _radiograph_like(1100, 1000)
    assert image.size >= TWO_STAGE_PIXELS
    np.testing.assert_array_equal(area_resize(image, (400, 440)), _direct(image, (400, 440)))


def test_large_image_two_stages_close_to_one():
    image = _radiograph_like(1300, 1100)
    size = (111, 131)  # about 10x smaller: two stages
    out = area_resize(image, size)
    ref = _direct(image, size)
    assert out.shape == ref.shape == (131, 111) and out.dtype == np.float32
    assert not np.array_equal(out, ref)  # the two-stage path ran
    # within a few thousandths of the one-stage average (the noise alone is 0.02)
    assert float(np.abs(out - ref).max()) < 5e-3
    assert abs(float(out.mean()) - float(ref.mean())) < 1e-3


def test_crop_sized_image_shrunk_3x_takes_two_stages_close_to_one():
    image = _radiograph_like(900, 880)  # a knee crop of a 2500-pixel radiograph
    assert TWO_STAGE_PIXELS <= image.size < 1 << 20
    size = (256, 262)  # about 3.4x smaller: blocks of 2 x 2, then the fractional stage
    out = area_resize(image, size)
    ref = _direct(image, size)
    assert out.shape == ref.shape and not np.array_equal(out, ref)
    # the footprints differ by under a source pixel: on the smooth image the averages
    # agree to a few ten-thousandths; with the noise, by about its average over an
    # output pixel (0.02 / 3.4)
    yy, xx = np.mgrid[0:900, 0:880].astype(np.float32)
    smooth = (0.5 + 0.3 * np.sin(xx / 97.0) * np.cos(yy / 131.0)).astype(np.float32)
    assert float(np.abs(area_resize(smooth, size) - _direct(smooth, size)).max()) < 1e-3
    assert float(np.abs(out - ref).mean()) < 0.02 / 3.4
    assert abs(float(out.mean()) - float(ref.mean())) < 1e-3
    # a 2.5x factor stays one stage, bit for bit
    np.testing.assert_array_equal(area_resize(image, (352, 360)), _direct(image, (352, 360)))
