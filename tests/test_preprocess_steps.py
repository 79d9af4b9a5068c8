"""Preprocessing steps on synthetic arrays: padding, cleaning, windowing, CLAHE, resize."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.preprocess import STEPS, PreprocessConfig, Work, preprocess
from pipeline.preprocess.background import clean_background
from pipeline.preprocess.chain import run_steps, start_work
from pipeline.preprocess.steps import (
    clahe,
    clahe_levels,
    clahe_opencv,
    pad_to_square,
    percentile_window,
    percentiles,
    resize_square,
)


def knee_like(h: int = 240, w: int = 180, seed: int = 0) -> np.ndarray:
    """A leg-shaped bright band with texture on a dark background: float32 (h, w)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    band = np.abs(xx - w / 2) < w * 0.22
    img = np.where(band, 0.45 + 0.25 * np.cos(yy / 9.0) * np.cos(xx / 7.0), 0.02)
    img = img + 0.03 * rng.standard_normal((h, w))
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- pad_square


@pytest.mark.parametrize("shape", [(3, 5), (4, 7), (7, 4), (6, 6), (1, 10), (101, 64)])
def test_pad_to_square_is_exactly_square_and_keeps_the_pixels(shape):
    img = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape) + 1
    out, (top, left) = pad_to_square(img, 0.0)
    n = max(shape)
    assert out.shape == (n, n)
    np.testing.assert_array_equal(out[top : top + shape[0], left : left + shape[1]], img)
    assert out.sum() == img.sum()  # padding is the pad value only
    # centred: the two margins differ by at most one pixel
    bottom, right = n - shape[0] - top, n - shape[1] - left
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1


def test_pad_square_step_keeps_the_map_to_source():
    work = Work(image=np.ones((4, 10), np.float32), meta={}, source_shape=(4, 10))
    (out,) = STEPS.get("pad_square").apply(work, STEPS.get("pad_square").params())
    assert out.image.shape == (10, 10)
    # the image's first row sits 3 rows down: current (0, 3) is source (0, 0)
    assert out.source_box(0, 3, 10, 7) == (0, 0, 10, 4)


# --------------------------------------------------------------------------- clean


def leg(
    h: int = 320, w: int = 256, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A leg (soft tissue and textured bone) running off the top and bottom, on air:
    (image, soft-tissue mask, bone mask)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w), 0.05, np.float32)
    soft = np.abs(xx - w / 2) < 0.3 * w
    bone = np.abs(xx - w / 2) < 0.12 * w
    img[soft] = 0.3
    img[bone] = 0.65 + 0.1 * (np.cos(yy / 4.0) * np.cos(xx / 3.0))[bone]
    img += 0.01 * rng.standard_normal((h, w)).astype(np.float32)
    return img, soft, bone


def leg_radiograph(
    h: int = 320, w: int = 256, seed: int = 0, collimate: bool = True
) -> tuple[np.ndarray, dict]:
    """A leg (soft tissue + textured bone), two burned-in letters, a rotated collimation field."""
    rng = np.random.default_rng(seed)
    img, soft, bone = leg(h, w, rng)
    # burned-in letters: one over air, one over soft tissue
    marks = np.zeros((h, w), np.uint8)
    cv2.putText(marks, "L", (int(0.06 * w), int(0.22 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 1, 3)
    cv2.putText(marks, "R", (int(0.24 * w), int(0.9 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 1, 2)
    img[marks > 0] = 1.0
    # white collimation outside a slightly rotated field
    field = np.zeros((h, w), np.uint8)
    corners = np.array([[12, 10], [w - 14, 16], [w - 18, h - 12], [8, h - 18]], np.int32)
    cv2.fillPoly(field, [corners], 1)
    if not collimate:
        field[:] = 1
    img[field == 0] = 0.95 + 0.01 * rng.standard_normal(int((field == 0).sum())).astype(np.float32)
    return np.clip(img, 0, 1), {"soft": soft, "bone": bone, "marks": marks > 0, "field": field > 0}


def test_clean_removes_rotated_collimation_and_burned_in_letters():
    img, parts = leg_radiograph()
    r = clean_background(img)
    x0, y0, x1, y1 = r.region
    out = np.zeros_like(img)
    out[y0:y1, x0:x1] = r.image
    assert r.markers >= 2
    # no collimation and no letter is left: nothing bright outside the bone
    assert out[~parts["bone"]].max() < 0.6
    # the letter over soft tissue is filled with the tissue's grey, not cut out
    over_tissue = parts["marks"] & parts["soft"] & ~parts["bone"]
    assert over_tissue.any() and np.all(np.abs(out[over_tissue] - 0.3) < 0.1)
    # the bone is untouched (but for a few pixels along the collimation's edge)
    inside = cv2.erode(parts["field"].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    inner = parts["bone"] & inside
    np.testing.assert_array_equal(out[inner], img[inner])
    # the field's corners are cut away with the collimation
    assert x0 > 0 and y0 > 0 and x1 < img.shape[1] and y1 < img.shape[0]


def test_clean_leaves_a_bone_reaching_the_edge_alone():
    img, parts = leg_radiograph(collimate=False)  # the leg runs off the top and bottom
    r = clean_background(img)
    x0, y0, _x1, y1 = r.region
    assert y0 == 0 and y1 == img.shape[0]  # bone at the top and bottom edges is kept
    bone_cols = np.flatnonzero(parts["bone"][0])
    np.testing.assert_array_equal(r.image[0, bone_cols - x0], img[0, bone_cols])


def test_clean_step_reports_the_kept_region_as_box():
    img = np.zeros((100, 80), np.float32)
    img[:10] = 1.0
    img[10:100, 20:60] = 0.6 + 0.1 * np.random.default_rng(1).random((90, 40), dtype=np.float32)
    cfg = PreprocessConfig.from_dict({"steps": ["clean"]})
    (crop,) = preprocess(SimpleNamespace(image=img, meta={}), cfg)
    x0, y0, x1, _y1 = crop.box
    assert y0 >= 10 and x0 >= 15 and x1 <= 65


def test_clean_keeps_a_blank_image_whole():
    r = clean_background(np.zeros((50, 40), np.float32))
    assert r.image.shape == (50, 40)


# --------------------------------------------------------------------------- window


def test_percentile_window_maps_the_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.6, (128, 128)).astype(np.float32)
    out = percentile_window(img, 5, 95, ignore_zero=False)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert 0.04 < (out == 0).mean() < 0.06 and 0.04 < (out == 1).mean() < 0.06
    # monotonic: order of pixels is kept
    flat_in, flat_out = img.ravel(), out.ravel()
    order = np.argsort(flat_in)
    assert np.all(np.diff(flat_out[order]) >= 0)


def test_percentiles_match_numpy_and_can_ignore_the_background():
    rng = np.random.default_rng(1)
    img = rng.uniform(0.3, 0.7, (64, 64)).astype(np.float32)
    lo, hi = percentiles(img, (10, 90))
    np.testing.assert_allclose([lo, hi], np.percentile(img, (10, 90)), atol=2e-3)
    padded = np.zeros((64, 128), np.float32)
    padded[:, :64] = img
    assert percentiles(padded, (10,), ignore_zero=True)[0] == pytest.approx(lo, abs=2e-3)
    assert percentiles(padded, (10,), ignore_zero=False)[0] == 0.0


# --------------------------------------------------------------------------- clahe


def local_contrast(img: np.ndarray, tile: int = 16) -> float:
    h, w = img.shape
    t = img[: h // tile * tile, : w // tile * tile].reshape(h // tile, tile, w // tile, tile)
    return float(t.std(axis=(1, 3)).mean())


def test_clahe_raises_local_contrast_more_with_a_higher_clip():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:128, 0:128]
    img = (
        0.3 + 0.4 * yy / 128 + 0.02 * np.sin(xx / 3.0) + 0.005 * rng.standard_normal((128, 128))
    ).astype(np.float32)
    outs = [clahe(img, clip=c, grid=4) for c in (2.0, 4.0, 8.0)]
    assert all(o.dtype == np.float32 and o.min() >= 0.0 and o.max() <= 1.0 for o in outs)
    contrast = [local_contrast(o) for o in outs]
    assert contrast[0] < contrast[1] < contrast[2]
    assert local_contrast(img) < contrast[1]


def test_clahe_grid_changes_the_result_and_is_deterministic():
    img = knee_like(128, 128)
    a, b = clahe(img, 2.0, 2), clahe(img, 2.0, 8)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(b, clahe(img, 2.0, 8))


@pytest.mark.parametrize(
    ("shape", "clip", "grid"), [((128, 128), 2.0, 8), ((101, 77), 4.0, 4), ((64, 96), 1.0, 2)]
)
def test_clahe_is_opencvs_algorithm_at_256_levels(shape, clip, grid):
    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 3.0)
    u8 = (np.clip(img * 1.5 - 0.2, 0, 1) * 255 + 0.5).astype(np.uint8)
    expected = cv2.createCLAHE(clip, (grid, grid)).apply(u8).astype(np.float32) / 255
    got = clahe(u8.astype(np.float32) / 255, clip, grid, levels=256)
    assert np.abs(got - expected).max() <= 1.01 / 255  # OpenCV rounds its mapping to 8 bits


def test_clahe_keeps_grey_levels_between_bins():
    ramp = np.tile(
        np.linspace(0.3, 0.5, 200, dtype=np.float32), (64, 1)
    )  # 0.2 wide: ~51 of 256 bins
    out = clahe(ramp, 2.0, 1, levels=256)  # one tile: one mapping for every pixel
    assert len(np.unique(out[0])) > 150  # not snapped to the 51 bins it spans
    assert np.all(np.diff(out[32]) >= 0)  # and monotonic along the ramp


def test_clahe_opencv_backend_runs_on_uint16():
    img = knee_like(96, 96)
    out = clahe_opencv(img, 2.0, 4)
    assert (
        out.dtype == np.float32 and out.shape == img.shape and out.min() >= 0.0 and out.max() <= 1.0
    )
    spec = STEPS.get("clahe")
    (item,) = spec.apply(
        start_work(SimpleNamespace(image=img, meta={})), spec.params(backend="opencv", grid=4)
    )
    np.testing.assert_array_equal(item.image, out)


def test_clahe_levels_follow_the_tile_size():
    assert clahe_levels((64, 64), 8) == 256  # 8x8-pixel tiles: coarse histograms
    assert clahe_levels((512, 512), 8) == 512
    assert clahe_levels((4096, 4096), 8) == 4096  # never above 12 bits


def test_clahe_step_equalises_at_working_resolution():
    work = start_work(
        SimpleNamespace(image=knee_like(400, 300), meta={"pixel_spacing_mm": (0.2, 0.2)})
    )
    spec = STEPS.get("clahe")
    (out,) = spec.apply(work, spec.params(working_size=200))
    assert max(out.image.shape) == 200
    assert out.spacing_mm == pytest.approx((0.4, 0.4), rel=0.01)


# --------------------------------------------------------------------------- resize


def test_resize_square_keeps_the_mean_and_size():
    img = knee_like(300, 300)
    out = resize_square(img, 64)
    assert out.shape == (64, 64)
    assert out.mean() == pytest.approx(img.mean(), abs=0.01)
    assert resize_square(img[:32, :32], 64).shape == (64, 64)  # upsampling too


# --------------------------------------------------------------------------- the registry and the chain


PARAMS = {
    "localize": None
}  # localize is tested with the phantom (tests/test_preprocess_localizer.py)


@pytest.mark.parametrize("name", [n for n in STEPS.names() if n not in PARAMS])
def test_every_step_gives_valid_float_images(name):
    spec = STEPS.get(name)
    work = start_work(SimpleNamespace(image=knee_like(150, 110), meta={"laterality": "R"}))
    out = spec.apply(work, spec.params())
    assert out, name
    for item in out:
        assert item.image.dtype == np.float32 and item.image.ndim == 2
        assert item.image.min() >= 0.0 and item.image.max() <= 1.0
        assert item.laterality == "R"
    again = spec.apply(work, spec.params())
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_chain_without_localisation_gives_one_uint16_crop_of_the_trial_size():
    cfg = PreprocessConfig.from_trial({"image_size": 48, "localize": False})
    r = SimpleNamespace(image=knee_like(200, 120), meta={"laterality": "L"})
    (crop,) = preprocess(r, cfg)
    assert crop.image.dtype == np.uint16 and crop.image.shape == (48, 48)
    assert crop.laterality == "L" and not crop.fallback and crop.confidence == 1.0
    assert len(np.unique(crop.image)) > 256  # 16-bit levels, not 8-bit ones
    assert np.any(crop.image % 257 != 0)
    np.testing.assert_array_equal(crop.image, preprocess(r, cfg)[0].image)


def test_run_steps_reports_every_step():
    cfg = PreprocessConfig.from_trial({"localize": False})
    seen = []
    run_steps(
        SimpleNamespace(image=knee_like(), meta={}),
        cfg,
        on_step=lambda name, items: seen.append(name),
    )
    assert seen == ["input", *cfg.step_names()]
