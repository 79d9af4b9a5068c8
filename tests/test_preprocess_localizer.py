"""The knee localizer on the synthetic phantom: IoU, bilateral crops, laterality, fallback."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.dicom import read_radiograph
from pipeline.preprocess import KneeLocalizer, PreprocessConfig, PreprocessWarning, preprocess
from pipeline.preprocess.hog import DIM, box_iou, hog_grid, window_features, window_scores
from pipeline.preprocess.localizer import WEIGHTS_FILE
from pipeline.preprocess.localizer_train import evaluate_localizer, load_truth, prepare


def truth_records(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (folder / "truth.jsonl").read_text().splitlines()
        if line.strip()
    ]


def test_window_scores_equal_the_per_window_descriptors():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((120, 100)).astype(np.float32), (0, 0), 1.5)
    blocks = hog_grid(image)  # (gy, gx, 36)
    w = rng.standard_normal(DIM).astype(np.float32)
    scores = window_scores(blocks, w, 0.25)
    assert scores.shape == (blocks.shape[0] - 12, blocks.shape[1] - 12)
    for y, x in [(0, 0), (3, 5), (scores.shape[0] - 1, scores.shape[1] - 1)]:
        feats = window_features(blocks, y, x)
        assert feats.shape == (DIM,)
        assert scores[y, x] == pytest.approx(float(feats @ w) + 0.25, rel=1e-4, abs=1e-4)


def test_hog_blocks_are_l2_hys_normalised_and_shift_with_the_image():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.random((96, 96)).astype(np.float32), (0, 0), 1.0)
    blocks = hog_grid(image)
    norms = np.linalg.norm(blocks, axis=-1)
    assert np.all(norms <= 1.0 + 1e-5) and np.all(norms > 0.5)
    shifted = hog_grid(image[4:, 8:])  # one and two grid steps
    np.testing.assert_allclose(shifted[1:5, 1:5], blocks[2:6, 3:7], atol=1e-5)


def test_shipped_weights_are_small_and_load():
    assert WEIGHTS_FILE.exists()
    assert WEIGHTS_FILE.stat().st_size < 100_000  # well under 1 MB
    loc = KneeLocalizer.load()
    assert loc.w.shape == (DIM,) and loc.side_w is not None and loc.side_w.shape == (DIM,)
    assert 0 < loc.size_mm[0] < loc.size_mm[1] < loc.size_mm[2]
    assert loc.confidence(10.0) > 0.99 and loc.confidence(-10.0) < 0.01


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-localizer"):
        KneeLocalizer.load(tmp_path / "none.npz")


def test_localization_iou_on_the_phantom(phantom_dir):
    r = evaluate_localizer(phantom_dir)
    assert r["images"] >= 20
    assert r["mean_iou"] >= 0.8, r
    assert r["failure_rate"] <= 0.05, r
    assert r["bilateral_correct"] == r["bilateral_images"], r


def test_bilateral_images_give_two_crops_with_the_right_laterality(phantom_dir):
    config = PreprocessConfig.from_trial({"image_size": 32})
    bilateral = [t for t in truth_records(phantom_dir) if t["bilateral"] and t["view"] == "AP"]
    assert bilateral, "the phantom has bilateral images"
    for t in bilateral:
        crops = preprocess(read_radiograph(phantom_dir / t["file"]), config)
        assert len(crops) == 2
        assert sorted(c.laterality for c in crops) == ["L", "R"]
        for c in crops:
            assert c.image.shape == (32, 32) and c.image.dtype == np.uint16
            truth = next(k["box"] for k in t["knees"] if k["laterality"] == c.laterality)
            assert box_iou(c.box, truth) > 0.5, (t["file"], c.laterality, c.box, truth)


def test_unilateral_images_give_one_crop_on_the_knee(phantom_dir):
    config = PreprocessConfig.from_trial({"image_size": 32})
    single = [t for t in truth_records(phantom_dir) if not t["bilateral"] and t["view"] == "AP"][:6]
    for t in single:
        r = read_radiograph(phantom_dir / t["file"])
        (crop,) = preprocess(r, config)
        (knee,) = t["knees"]
        assert box_iou(crop.box, knee["box"]) > 0.5
        if r.meta["laterality"] in ("L", "R"):
            assert crop.laterality == r.meta["laterality"]


def test_pixel_spacing_sets_the_physical_scale(phantom_dir):
    t = next(t for t in truth_records(phantom_dir) if t["view"] == "AP" and not t["bilateral"])
    r = read_radiograph(phantom_dir / t["file"])
    loc = KneeLocalizer.load()
    work = prepare(r)
    (a,) = loc.detect(work.image, spacing_mm=work.spacing_mm, mode="single")
    # the same radiograph at half the resolution, with twice the pixel spacing
    h, w = work.image.shape
    half = cv2.resize(work.image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    (b,) = loc.detect(half, spacing_mm=tuple(2 * s for s in work.spacing_mm), mode="single")
    assert box_iou(a.box, [2 * v for v in b.box]) > 0.75
    assert not a.fallback and not b.fallback


def test_orientation_decides_which_side_is_the_right_knee(phantom_dir):
    t = next(t for t in truth_records(phantom_dir) if t["bilateral"] and t["view"] == "AP")
    work = prepare(read_radiograph(phantom_dir / t["file"]))
    loc = KneeLocalizer.load()
    usual = loc.detect(work.image, spacing_mm=work.spacing_mm, mode="bilateral")
    flipped = loc.detect(
        work.image, spacing_mm=work.spacing_mm, mode="bilateral", orientation=["R", "F"]
    )
    assert [k.laterality for k in usual] == ["R", "L"]  # viewer's left is the patient's right
    assert [k.laterality for k in flipped] == ["L", "R"]


def test_an_image_without_a_knee_falls_back_to_a_centre_crop_with_a_warning():
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.random((300, 240)).astype(np.float32), (0, 0), 6.0)
    r = SimpleNamespace(image=noise, meta={"pixel_spacing_mm": (0.5, 0.5), "laterality": "L"})
    config = PreprocessConfig.from_dict(
        {"steps": [{"localize": {"min_confidence": 0.5}}, {"resize": {"size": 32}}]}
    )
    with pytest.warns(PreprocessWarning, match="centre crop"):
        (crop,) = preprocess(r, config)
    assert crop.fallback and crop.confidence < 0.5 and crop.laterality == "L"
    x0, y0, x1, y1 = crop.box
    assert abs((x0 + x1) / 2 - 120) <= 2 and abs((y0 + y1) / 2 - 150) <= 2  # centred


def test_preprocessing_a_phantom_file_is_deterministic(phantom_dir):
    f = phantom_dir / load_truth(phantom_dir)[0].file
    config = PreprocessConfig.default()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreprocessWarning)
        a = preprocess(read_radiograph(f), config)
        b = preprocess(read_radiograph(f), config)
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b, strict=True):
        assert (
            x.image.tobytes() == y.image.tobytes()
            and x.box == y.box
            and x.confidence == y.confidence
        )


def test_train_localizer_command_writes_weights_that_detect(phantom_dir, tmp_path):
    out = tmp_path / "w.npz"
    code = main(
        [
            "train-localizer",
            "--data",
            str(phantom_dir),
            "--out",
            str(out),
            "--limit",
            "16",
            "--rounds",
            "1",
        ]
    )
    assert code == 0 and out.exists() and out.stat().st_size < 100_000
    loc = KneeLocalizer.load(out)
    r = evaluate_localizer(phantom_dir, loc, limit=16)
    assert r["mean_iou"] > 0.6, r  # a small training set, scored on what it saw
