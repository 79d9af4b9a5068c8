"""Real radiographs: every file of ``../shared/real_images`` decided and localised.

The pictures (JPEG/PNG exports, RGB-encoded greyscale) are read where they are, never
copied into the repository: each is wrapped in a DICOM file in a temporary folder
(Secondary Capture, MONOCHROME2, 8 bits, tagged KNEE / AP whatever it shows, as a user
wrapping them would) and goes through the cache build of the default trial chain.
The expected class and the hand-drawn knee box of each picture are in
``benchmarks/real_image_boxes.csv`` (shared with ``benchmarks/real_images.py``).
Without the folder (set ``RADSEARCH_REAL_IMAGES`` to it elsewhere) every test here
is skipped with a message saying so.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

from pipeline.data import build_items
from pipeline.preprocess import PreprocessConfig, build_cache
from pipeline.preprocess.hog import box_iou

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("real_images", ROOT / "benchmarks/real_images.py")
real_images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_images)

FOLDER = real_images.default_folder()
TRUTH = real_images.read_boxes()
pytestmark = pytest.mark.skipif(
    not FOLDER.is_dir(),
    reason=f"no real radiographs at {FOLDER} (set RADSEARCH_REAL_IMAGES to ../shared/real_images)",
)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The wrapped pictures and their cache, built once: (names, wrapped folder, index)."""
    root = tmp_path_factory.mktemp("real-images")
    names = real_images.wrap_folder(FOLDER, root / "dicom")
    files = [root / "dicom" / (n + ".dcm") for n in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the centre-crop fallbacks of the negatives
        index = build_cache(files, PreprocessConfig.default(), root / "cache", progress=False)
    assert not index.errors, index.errors
    entries = {}
    for e in index.entries:
        entries.setdefault(Path(e.file).relative_to(root / "dicom").as_posix()[:-4], []).append(e)
    return names, root / "dicom", index, entries


def test_every_picture_of_the_folder_has_its_expected_class(cached):
    names, *_ = cached
    assert sorted(names) == sorted(TRUTH), "benchmarks/real_image_boxes.csv lists every picture"
    frontal = [n for n, t in TRUTH.items() if t["expected"] == "frontal_knee"]
    assert all(TRUTH[n]["box"] is not None for n in frontal)


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_each_real_image_is_decided_from_its_pixels(cached, name):
    *_, entries = cached
    scope = entries[name][0].scope
    expected = TRUTH[name]["expected"]
    if expected == "frontal_knee":
        assert scope["scope"] == "frontal_knee", scope
    else:  # a lateral, a skyline, an ankle or a hip is never taken as a frontal knee
        assert scope["scope"] != "frontal_knee", scope
    if expected == "not_knee":
        assert scope["scope"] == "not_knee", scope


@pytest.mark.parametrize(
    "name", sorted(n for n, t in TRUTH.items() if t["expected"] == "frontal_knee")
)
def test_each_frontal_knee_is_found(cached, name):
    """Tight crops (the joint filling the frame), the two-view image's frontal half."""
    *_, entries = cached
    best = max(box_iou(e.box, TRUTH[name]["box"]) for e in entries[name])
    assert best >= 0.6, (name, [e.box for e in entries[name]])
    assert not any(e.fallback for e in entries[name])


def test_tags_that_say_knee_ap_are_overruled_and_reported(cached):
    names, wrapped, index, _ = cached
    items = build_items(index, None, data_dir=wrapped)
    frontal = {n for n, t in TRUTH.items() if t["expected"] == "frontal_knee"}
    assert {i.file[:-4] for i in items.items} == frontal
    assert {d.file[:-4] for d in items.disagreements} == set(names) - frontal
    assert items.summary()["out_of_scope"] == len(names) - len(frontal)
    tags_only = build_items(index, None, data_dir=wrapped, scope_policy="tags")
    assert len({i.file for i in tags_only.items}) == len(names)  # the tags keep them all
