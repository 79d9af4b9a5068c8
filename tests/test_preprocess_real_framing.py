"""Real acquisitions and real framing: shutters at any angle, borders, bars and marks
cleaned; positioning devices and redaction bars leave the crop alone; tight crops,
knees cut by the frame and off-centre knees still found."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import test_preprocess_steps as step_tests  # the leg the step tests draw

from pipeline.dicom import parse_spacing, read_radiograph
from pipeline.preprocess import KneeLocalizer, PreprocessConfig, preprocess
from pipeline.preprocess.background import border_shape, clean_background
from pipeline.preprocess.hog import box_iou
from pipeline.synth.clinical import jpeg_roundtrip


def leg() -> tuple[np.ndarray, np.ndarray]:
    """The leg of the step tests, clipped: (image, bone mask)."""
    img, _, bone = step_tests.leg()
    return np.clip(img, 0, 1), bone


def cleaned_full(img: np.ndarray) -> np.ndarray:
    """The clean output pasted back at its place in the input's frame (0 elsewhere)."""
    r = clean_background(img)
    x0, y0, x1, y1 = r.region
    out = np.zeros_like(img)
    out[y0:y1, x0:x1] = r.image
    return out


def blade(shape: tuple[int, int], angle_deg: float, depth: float, corner: str) -> np.ndarray:
    """A half-plane cutting the ``corner`` ("tl", "tr", "bl", "br") at ``angle_deg``."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = xx if corner[1] == "l" else w - 1 - xx
    y = yy if corner[0] == "t" else h - 1 - yy
    a = np.radians(angle_deg)
    return x * np.cos(a) + y * np.sin(a) < depth


@pytest.mark.parametrize(
    ("angle", "corner"), [(20, "tl"), (45, "tr"), (60, "bl"), (75, "br"), (35, "tr")]
)
def test_bright_shutter_blades_at_any_angle_are_blanked(angle, corner):
    img, bone = leg()
    shutter = blade(img.shape, angle, 70, corner)  # in front of whatever lies under it
    rng = np.random.default_rng(1)
    img[shutter] = 0.93 + 0.01 * rng.standard_normal(int(shutter.sum())).astype(np.float32)
    out = cleaned_full(img)
    inner = cv2.erode(shutter.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert out[inner].max() == 0.0, "the shutter is blanked"
    kept = bone & ~(cv2.dilate(shutter.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0)
    np.testing.assert_array_equal(out[kept], img[kept])  # the bone is untouched


def test_a_blade_is_told_from_a_bone_leaving_the_frame():
    h, w = 200, 160
    yy, xx = np.mgrid[0:h, 0:w]
    corner_blade = (xx + yy) < 60
    assert border_shape(corner_blade) == "blade"
    assert border_shape((xx < 40) & (yy < 30)) == "corner bar"
    shaft = (np.abs(xx - 80) < 15) & (yy < 120)  # a bone running off the top edge
    assert border_shape(shaft) is None
    pocket = ((xx - 160) ** 2 + (yy - 0) ** 2) < 70**2  # a curved pocket in a corner
    assert border_shape(pocket) is None


def test_dark_borders_and_corner_redaction_bars_leave_the_region():
    img, _ = leg()
    h, w = img.shape
    plain = clean_background(img).region
    img[:, w - 12 :] = 0.0  # a scanner's black border
    img[: h // 12, : w // 4] = 1.0  # a white redaction bar in a corner
    img[h - 20 :, w // 2 : w // 2 + 60] = 1.0  # a white bar along the bottom edge
    region = clean_background(img).region
    assert region[1] >= plain[1] and region[3] <= plain[3]  # no bar widens the region
    out = cleaned_full(img)
    assert out[: h // 12 - 2, 2 : w // 4 - 2].max() == 0.0
    assert out[h - 18 :, w // 2 + 2 : w // 2 + 58].max() == 0.0


def test_burned_in_text_outside_the_anatomy_is_removed():
    img, bone = leg()
    h, w = img.shape
    ink = np.zeros(img.shape, np.uint8)
    cv2.putText(ink, "STANDING", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1, 1)  # over air
    cv2.putText(ink, "2019-03-14", (4, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1, 1)
    cv2.putText(ink, "R", (int(0.72 * w), int(0.2 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 1, 2)
    ink = ink.astype(bool) & ~bone
    img[ink] = 1.0
    out = cleaned_full(img)
    assert out[ink].max() < 0.5, "no letter is left bright"
    np.testing.assert_array_equal(out[bone], img[bone])


# --------------------------------------------------------------------------- the crop


def frontal_knees(phantom_dir, n: int) -> list[dict]:
    truth = [json.loads(x) for x in (phantom_dir / "truth.jsonl").read_text().splitlines() if x]
    ap = [t for t in truth if t["view"] == "AP" and not t["bilateral"] and t["knees"]]
    return ap[:n]


def crop_box(image: np.ndarray, config: PreprocessConfig) -> tuple[int, int, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (crop,) = preprocess(SimpleNamespace(image=image, meta={}), config)
    return crop.box


def test_positioning_devices_and_redaction_bars_do_not_move_the_crop(phantom_dir):
    """A lead ruler in the air beside the leg, a white and a black redaction bar over
    corners of air: the cleaned field does not grow to take them in, and the knee crop
    stays where it was (within the few pixels the localizer's scan grid moves when the
    field changes by one: IoU >= 0.85 with the crop without them)."""
    config = PreprocessConfig.default()
    tried = 0
    for t in frontal_knees(phantom_dir, 30):
        if t["collimation"] != "none":
            continue
        img = read_radiograph(phantom_dir / t["file"]).image.copy()
        h, w = img.shape
        air = (np.percentile(img, 95, axis=0) < 0.12).astype(np.uint8)  # columns of air
        runs = np.flatnonzero(np.convolve(air, np.ones(14, np.uint8), "valid") == 14)
        runs = runs[(runs >= 2) & (runs < w - 16)]
        if runs.size == 0:
            continue
        before, region = crop_box(img, config), clean_background(img).region
        x = int(runs[0] + 3)  # 14 columns of air: the ruler in their middle
        img[:, x : x + 8] = 0.95  # a lead ruler ...
        img[::12, x : x + 4] = 0.3  # ... and its ticks
        bh, bw = h // 16, w // 4
        for y0, x0, level in ((0, 0, 1.0), (h - bh, w - bw, 0.0), (0, w - bw, 1.0)):
            if img[y0 : y0 + bh, x0 : x0 + bw].max() < 0.12:  # over air only
                img[y0 : y0 + bh, x0 : x0 + bw] = level
        after, grown = crop_box(img, config), clean_background(img).region
        assert not grown[0] <= x < grown[2], (region, grown, x)  # the ruler is left out
        assert box_iou(before, after) >= 0.85, (t["file"], before, after)
        tried += 1
    assert tried >= 3


def tight(image: np.ndarray, box, scale: float, shift: float) -> tuple[np.ndarray, tuple]:
    """The image cut down to ``scale`` times the knee box (the joint fills the frame when
    under 1), off-centre by ``shift`` of the box; the knee box in the cut's pixels."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + shift * bw, (y0 + y1) / 2
    h, w = image.shape
    X0, Y0 = int(max(0, cx - scale * bw / 2)), int(max(0, cy - scale * bh / 2))
    X1, Y1 = int(min(w, cx + scale * bw / 2)), int(min(h, cy + scale * bh / 2))
    cut = np.ascontiguousarray(image[Y0:Y1, X0:X1])
    knee = (max(0, x0 - X0), max(0, y0 - Y0), min(X1 - X0, x1 - X0), min(Y1 - Y0, y1 - Y0))
    return cut, knee


@pytest.mark.parametrize(("scale", "shift"), [(0.7, 0.0), (0.85, 0.1), (1.0, -0.15), (1.2, 0.2)])
def test_the_localizer_finds_knees_in_tight_and_off_centre_crops(phantom_dir, scale, shift):
    """No pixel spacing (an export): the knee fills the frame or is partly cut."""
    config = PreprocessConfig.default()
    ious = []
    for t in frontal_knees(phantom_dir, 8):
        image = read_radiograph(phantom_dir / t["file"]).image
        cut, knee = tight(image, t["knees"][0]["box"], scale, shift)
        ious.append(box_iou(crop_box(cut, config), knee))
    assert np.mean(ious) >= 0.75 and min(ious) >= 0.5, np.round(ious, 2)


def test_the_reaching_pass_is_what_finds_the_knee_that_fills_the_frame(phantom_dir):
    loc = KneeLocalizer.load()
    found = {True: [], False: []}
    for t in frontal_knees(phantom_dir, 8):
        image = read_radiograph(phantom_dir / t["file"]).image
        cut, _ = tight(image, t["knees"][0]["box"], 0.7, 0.0)
        cleaned = clean_background(cut).image
        for reach in (True, False):
            (k,) = loc.detect(cleaned, mode="single", reach=reach)
            found[reach].append(not k.fallback)
    assert all(found[True]) and sum(found[False]) < len(found[False])


def test_physical_size_from_the_pixel_spacing_holds_in_a_tight_crop(phantom_dir):
    loc = KneeLocalizer.load()
    for t in frontal_knees(phantom_dir, 4):
        r = read_radiograph(phantom_dir / t["file"])
        spacing = parse_spacing(r.meta.get("pixel_spacing_mm"))
        if spacing is None:
            continue
        cut, _ = tight(r.image, t["knees"][0]["box"], 0.8, 0.1)
        (k,) = loc.detect(cut, spacing_mm=spacing, mode="single")
        side = max(k.box[2] - k.box[0], k.box[3] - k.box[1])
        true_side = max(t["knees"][0]["box"][2] - t["knees"][0]["box"][0], 1)
        assert 0.7 <= side / true_side <= 1.4  # sized in mm, not by the frame


def test_a_lossy_8_bit_export_still_localises(phantom_dir):
    config = PreprocessConfig.default()
    t = frontal_knees(phantom_dir, 1)[0]
    image = read_radiograph(phantom_dir / t["file"]).image
    lossy = jpeg_roundtrip(image, np.random.default_rng(0))
    assert box_iou(crop_box(lossy, config), crop_box(image, config)) >= 0.8
