"""Crop-first preprocessing: the same crops as the full-resolution chain, from one decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicom import read_radiograph, read_raw
from pipeline.preprocess import PreprocessConfig, build_cache, cropfirst, preprocess
from pipeline.preprocess.arrays import area_resize
from pipeline.preprocess.background import analyse_background, clean_background
from pipeline.preprocess.cropfirst import plan, preprocess_file, preprocess_raw
from pipeline.preprocess.hog import box_iou


def truth_records(folder: Path) -> list[dict]:
    lines = (folder / "truth.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def knee_files(folder: Path, n: int) -> list[Path]:
    return [folder / t["file"] for t in truth_records(folder) if t["view"] == "AP"][:n]


def test_read_raw_is_read_radiograph_before_the_grey_level_chain(phantom_dir):
    for f in sorted((phantom_dir / "dicom").glob("*.dcm"))[:8]:
        r, full = read_raw(f), read_radiograph(f)
        assert r.raw.shape == full.image.shape and r.raw.dtype.kind in "ui"
        np.testing.assert_array_equal(r.grey(r.raw), full.image)
        assert r.meta == full.meta and r.path == full.path


def test_plan_takes_the_trial_chains_and_refuses_others():
    p = plan(PreprocessConfig.from_trial({"image_size": 128}))
    assert p is not None and p.localize is not None
    assert [s.name for s in p.rest] == ["window", "clahe", "pad_square", "resize"]
    assert p.long_side == 256  # clahe's working size: what later steps keep at most
    assert plan(PreprocessConfig.from_trial({"localize": False})).localize is None
    assert plan(PreprocessConfig.from_dict({"steps": ["window", "clean"]})) is None
    assert plan(PreprocessConfig.from_dict({"steps": [{"clean": {"crop": False}}]})) is None


def test_background_analysis_matches_clean_background(phantom_dir):
    for f in sorted((phantom_dir / "dicom").glob("*.dcm"))[:10]:
        image = read_radiograph(f).image
        old = clean_background(image)
        h, w = image.shape
        n = max(h, w)
        small = image if n <= 256 else None
        if small is None:
            small = area_resize(image, (round(w * 256 / n), round(h * 256 / n)))
        a = analyse_background(small)
        assert a.region((w, h)) == old.region
        x0, y0, x1, y1 = old.region
        out = image[y0:y1, x0:x1].copy()
        np.testing.assert_array_equal(a.paint(out, (w, h), old.region), old.image)


def test_cleaned_crops_are_close_to_the_full_resolution_chain(phantom_dir):
    """Without localisation the crop is the anatomy region: only the averaging order differs."""
    config = PreprocessConfig.from_trial({"image_size": 64, "localize": False})
    diffs = []
    for f in knee_files(phantom_dir, 12):
        (old,) = preprocess(read_radiograph(f), config)
        (new,), meta = preprocess_file(f, config)
        assert meta == read_radiograph(f).meta
        assert new.image.shape == old.image.shape == (64, 64) and new.image.dtype == np.uint16
        assert max(abs(a - b) for a, b in zip(new.box, old.box, strict=True)) <= 2
        diffs.append(np.abs(new.image.astype(float) - old.image.astype(float)).mean() / 65535)
    assert np.mean(diffs) < 0.02, diffs


def test_knee_crops_match_the_full_resolution_chain(phantom_dir):
    config = PreprocessConfig.from_trial({"image_size": 32})
    gaps, ious = [], []
    for f in knee_files(phantom_dir, 16):
        old = preprocess(read_radiograph(f), config)
        new, _ = preprocess_file(f, config)
        assert [c.laterality for c in new] == [c.laterality for c in old]
        for a, b in zip(old, new, strict=True):
            assert b.image.shape == (32, 32) and b.image.dtype == np.uint16
            gaps.append(max(abs(u - v) for u, v in zip(a.box, b.box, strict=True)))
            ious.append(box_iou(a.box, b.box))
    assert np.median(gaps) <= 3 and np.mean(np.asarray(gaps) <= 8) >= 0.8, gaps
    assert np.mean(ious) > 0.9, ious


def test_bilateral_images_give_two_crops_with_the_right_laterality(phantom_dir):
    config = PreprocessConfig.from_trial({"image_size": 32})
    bilateral = [t for t in truth_records(phantom_dir) if t["bilateral"] and t["view"] == "AP"]
    assert bilateral, "the phantom has bilateral images"
    for t in bilateral:
        crops, _ = preprocess_file(phantom_dir / t["file"], config)
        assert sorted(c.laterality for c in crops) == ["L", "R"]
        for c in crops:
            truth = next(k["box"] for k in t["knees"] if k["laterality"] == c.laterality)
            assert box_iou(c.box, truth) > 0.5, (t["file"], c.laterality, c.box, truth)


def test_stray_high_bits_take_the_full_resolution_path(phantom_dir, monkeypatch):
    f = knee_files(phantom_dir, 1)[0]
    r = read_raw(f)
    if r.chain.bits_stored >= 8 * r.raw.dtype.itemsize:
        pytest.skip("the phantom file uses every bit")
    config = PreprocessConfig.from_trial({"image_size": 32})
    raw = r.raw.copy()
    raw.view(f"u{raw.dtype.itemsize}")[0, 0] |= 1 << (8 * raw.dtype.itemsize - 1)  # a stray bit
    dirty = type(r)(raw=raw, chain=r.chain, mask_unused_bits=True, meta=r.meta, path=r.path)
    calls = []
    monkeypatch.setattr(cropfirst, "run_crop_first", lambda *a: calls.append(a) or [])
    crops = preprocess_raw(dirty, config)
    assert not calls and len(crops) >= 1  # averaged before masking would be wrong


def test_the_cache_builds_crop_first_and_stores_the_same_meta(phantom_dir, tmp_path):
    config = PreprocessConfig.from_trial({"image_size": 32})
    files = knee_files(phantom_dir, 4)
    index = build_cache(files, config, tmp_path, progress=False)
    assert not index.errors and index.stats["built"] == 4
    for e in index.entries:
        f = Path(e.file)
        new, meta = preprocess_file(f, config)
        np.testing.assert_array_equal(index.load(e), new[e.crop].image)
        assert e.meta == json.loads(json.dumps(meta))
