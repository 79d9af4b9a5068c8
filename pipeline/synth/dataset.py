"""Render planned images and write the phantom set: DICOM files, labels, ground truth."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import multiprocessing
import operator
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..registry import check_choice
from . import anatomy, clinical
from .acquisition import burn_marker, collimate, expose, quantize
from .dicom_writer import (
    CR_IMAGE,
    DX_FOR_PRESENTATION,
    SECONDARY_CAPTURE,
    TRANSFER_SYNTAXES,
    build_dataset,
    dataset_bytes,
    syntax_name,
)
from .fractures import draw_fracture
from .identities import SITES, dicom_age, dicom_date, hash_int, make_uid
from .parts import ALL_OTHER_PARTS, DEFAULT_OTHER_PARTS, draw_part
from .plan import DEFAULT_OTHER_SHARE, READERS, ImageSpec, Plan, plan_dataset

GENERATOR_VERSION = "1.2"
# 1.2: other_parts (hips, chests, skyline views), other_share and the clinical style;
#      a default phantom's DICOM files, labels.csv and truth.jsonl are unchanged
DEFAULT_FRACTURE_RATE = 0.25
MU_SOFT = 0.0033  # soft-tissue attenuation per mm (display units)
LABEL_COLUMNS = ["file", "schatzker", "laterality", *(f"schatzker_{r}" for r in READERS)]


def generate(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int] = 512,
    labeled_fraction: float = 0.3,
    fracture_rate: float = DEFAULT_FRACTURE_RATE,
    transfer_syntaxes: Sequence[str] | None = None,
    bits_stored: Sequence[int] | None = None,
    other_parts: Sequence[str] | None = None,
    other_share: float = DEFAULT_OTHER_SHARE,
    style: str = "phantom",
    workers: int = 1,
) -> dict:
    """Write a synthetic knee-radiograph set to ``out_dir``; return its summary.

    ``out_dir/dicom/NNNNNN.dcm`` (real DICOM files), ``labels.csv`` (the user schema),
    ``truth.jsonl`` (boxes, fracture polygons, view pairs) and ``synth.json``
    (parameters and counts). The same arguments give the same bytes, whatever
    ``workers`` is.

    Args:
        n: number of images.
        seed: the set's seed (UIDs, dates, identities and pixels all derive from it).
        size: the long side of each image in pixels (the short side varies with the
            cassette format), or ``(rows, columns)`` to fix the shape of every image.
        labeled_fraction: share of knee studies whose images carry a label.
        fracture_rate: share of patients with a tibial plateau fracture (about the
            share of knee images that show one).
        transfer_syntaxes: names from ``TRANSFER_SYNTAXES`` (``uncompressed``, ``rle``,
            ``jpeg2000``, ``jpeg_lossless``) or UIDs; None mixes all four.
        bits_stored: bit depths to deal (None: 10, 12, 14, 15 and 16 bits).
        other_parts: what the studies that are not a knee study show, from
            ``ALL_OTHER_PARTS`` (hands, ankles, hips, chests and the knee's
            skyline view); None: hands and ankles, as the phantom always had.
        other_share: the share of studies that show one of ``other_parts`` (0.1; at
            most 0.9).
        style: ``"phantom"`` (the default: every knee framed with room, a clean field)
            or ``"clinical"``: framed and marked as real archives are (tight crops,
            two views side by side, shutters, text, arrows, redaction bars, positioning
            devices, 8-bit lossy secondary captures; :mod:`pipeline.synth.clinical`).
        workers: processes rendering and encoding the images (started fresh, with
            ``spawn``: a script that calls this needs the ``if __name__ ==
            "__main__":`` guard).
    """
    start = time.perf_counter()
    params = _validate(
        n, seed, size, labeled_fraction, fracture_rate, transfer_syntaxes, bits_stored, workers
    )
    params.update(_parts(other_parts, other_share))
    if check_choice("style", style, clinical.STYLES) != "phantom":
        params["style"] = style
    workers = operator.index(workers)
    out = Path(out_dir)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    plan = _plan(params)
    _remove_stale(out, {spec.file for spec in plan.images})
    records = _render_all([(replace(spec, style=style), str(out)) for spec in plan.images], workers)
    summary = _write_sidecars(out, records, plan.label_rows, params)
    return {**summary, "out_dir": str(out), "seconds": round(time.perf_counter() - start, 3)}


def _write_sidecars(out: Path, records: list[dict], label_rows: list[dict], params: dict) -> dict:
    """Write ``truth.jsonl``, ``labels.csv`` and ``synth.json``; the summary."""
    truth = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    atomic_write_text(out / "truth.jsonl", truth)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(label_rows)
    atomic_write_text(out / "labels.csv", buffer.getvalue())
    summary = {
        "generator": "pipeline.synth",
        "version": GENERATOR_VERSION,
        "parameters": params,
        "counts": _counts(records, label_rows),
    }
    atomic_write_json(out / "synth.json", summary)
    return summary


def _render_all(jobs: list[tuple[ImageSpec, str]], workers: int) -> list[dict]:
    """Render and write every planned image (in ``workers`` processes); their truth records."""
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child inherits OpenCV's thread pool without its
        # threads and can hang on its first parallel call
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker
        ) as pool:
            return list(pool.map(_render_job, jobs, chunksize=4))
    return [_render_job(job) for job in jobs]


def _parts(other_parts: Sequence[str] | None, other_share: float) -> dict:
    """``other_parts`` and ``other_share`` (checked) where they are not the defaults: a
    default phantom's ``synth.json`` stays as it was."""
    out: dict = {}
    if not 0.0 <= float(other_share) <= 0.9:
        raise ValueError(f"other_share must be in [0, 0.9], got {other_share!r}")
    if float(other_share) != DEFAULT_OTHER_SHARE:
        out["other_share"] = float(other_share)
    if other_parts is None or tuple(other_parts) == DEFAULT_OTHER_PARTS:
        return out
    parts = [str(p).upper() for p in other_parts]
    unknown = [p for p in parts if p not in ALL_OTHER_PARTS]
    if not parts or unknown:
        raise ValueError(
            f"other_parts must be names from {', '.join(ALL_OTHER_PARTS)}, got {list(other_parts)!r}"
        )
    return {**out, "other_parts": parts}


def _integer(name: str, value: object, minimum: int) -> int:
    message = f"{name} must be an integer >= {minimum}, got {value!r}"
    try:
        number = operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        raise ValueError(message) from None
    if isinstance(value, bool) or number < minimum:
        raise ValueError(message)
    return number


def planned_labels(
    n: int,
    seed: int,
    *,
    size: int | tuple[int, int] = 512,
    labeled_fraction: float = 0.3,
    fracture_rate: float = DEFAULT_FRACTURE_RATE,
) -> dict[str, int]:
    """How many labeled frontal knees (and how many fractured) :func:`generate` would
    write with these arguments, from its plan alone (nothing rendered: milliseconds).

    Rows the readers tie on count as labeled here; the labels CSV sends them to
    adjudication instead, so the real count is a little lower.
    """
    plan = _plan(_validate(n, seed, size, labeled_fraction, fracture_rate, None, None, 1))
    labeled = {
        r["file"]
        for r in plan.label_rows
        if r["schatzker"] or any(r[f"schatzker_{x}"] for x in READERS)
    }
    knees = [
        k for spec in plan.images if spec.view == "AP" and spec.file in labeled for k in spec.knees
    ]
    return {"labeled": len(knees), "fractured": sum(k.schatzker > 0 for k in knees)}


def _plan(params: dict) -> Plan:
    """The plan of a set from its checked parameters (:func:`_validate`, :func:`_parts`)."""
    return plan_dataset(
        params["n"],
        params["seed"],
        size=params["size"],
        fracture_rate=params["fracture_rate"],
        labeled_fraction=params["labeled_fraction"],
        transfer_syntaxes=params["transfer_syntaxes"],
        bits_stored=params["bits_stored"],
        other_parts=params.get("other_parts", DEFAULT_OTHER_PARTS),
        other_share=params.get("other_share", DEFAULT_OTHER_SHARE),
    )


def _validate(n, seed, size, labeled_fraction, fracture_rate, syntaxes, bits, workers) -> dict:
    n = _integer("n", n, 1)
    seed = _integer("seed", seed, 0)
    workers = _integer("workers", workers, 1)
    if not isinstance(size, (tuple, list)):
        shape: int | list[int] = _integer("size", size, 96)
    else:
        try:
            rows, cols = (_integer("size", x, 96) for x in size)
        except ValueError:
            raise ValueError(
                f"size must be an int or (rows, columns), each >= 96, got {size!r}"
            ) from None
        shape = [rows, cols]
    for name, value in (("labeled_fraction", labeled_fraction), ("fracture_rate", fracture_rate)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if isinstance(syntaxes, str):
        syntaxes = [syntaxes]
    names = list(TRANSFER_SYNTAXES) if syntaxes is None else [syntax_name(s) for s in syntaxes]
    if not names:
        raise ValueError("transfer_syntaxes must name at least one syntax (or be None)")
    if bits is not None:
        bits = [int(b) for b in bits]
        if not bits or any(not 8 <= b <= 16 for b in bits):
            raise ValueError(f"bits_stored must be values in 8..16, got {bits!r}")
    return {
        "n": n,
        "seed": seed,
        "size": shape,
        "labeled_fraction": float(labeled_fraction),
        "fracture_rate": float(fracture_rate),
        "transfer_syntaxes": names,
        "bits_stored": bits,
    }


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Drop numbered files a previous, larger generation left in ``out/dicom``."""
    if not (out / "synth.json").exists():
        return
    for path in (out / "dicom").glob("*.dcm"):
        rel = f"dicom/{path.name}"
        if re.fullmatch(r"\d{6}\.dcm", path.name) and rel not in keep:
            path.unlink()


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _render_job(job: tuple[ImageSpec, str]) -> dict:
    spec, out = job
    pixels, fields, private, record = render(spec)
    ds = build_dataset(
        pixels, transfer_syntax=record["transfer_syntax"], fields=fields, private=private
    )
    atomic_write_bytes(Path(out) / spec.file, dataset_bytes(ds))
    return record


def render(spec: ImageSpec) -> tuple[np.ndarray, dict, list, dict]:
    """Render one planned image: (stored pixels, header fields, private tags, truth)."""
    rng = np.random.default_rng([spec.seed, 1, spec.index])
    rows, cols = spec.shape
    hd = spec.header
    spacing = hd["fov_mm"] / (cols if spec.bilateral else rows)  # mm per pixel
    attenuation, knees_truth = _draw_anatomy(spec, spacing, rng)
    body = attenuation > 0.02
    display, _noise = expose(attenuation, spacing, rng)
    acq = spec.acquisition
    keep = [k["box"] for k in knees_truth] or [_bbox(body)]
    field = collimate(display, keep, acq.collimation, rng)
    markers = []
    if acq.marker:
        if spec.bilateral:  # the patient's right knee is on the viewer's left
            letters = [("R", True), ("L", False)]
        else:
            letters = [(knees_truth[0]["laterality"] if knees_truth else hd["laterality"], None)]
        for text, left in letters:
            box = burn_marker(display, text, body, keep, field, rng, prefer_left=left)
            if box is not None:
                markers.append({"text": text, "box": box})
    notes = None
    if spec.style == "clinical":
        c = clinical.finish(
            display,
            body,
            knees_truth,
            markers,
            view=spec.view,
            bilateral=spec.bilateral,
            spacing=spacing,
            mu_soft=MU_SOFT,
            rng=np.random.default_rng([spec.seed, 4, spec.index]),  # the style's own generator
        )
        display, body, knees_truth, markers, notes = c.display, c.body, c.knees, c.markers, c.notes
        if notes.get("secondary_capture"):  # 8 bits, shown as stored
            acq = replace(acq, photometric="MONOCHROME2", presentation_lut=None, bits_stored=8)
            acq = replace(acq, signed=False, rescale=None, voi="none")
    pixels, pixel_fields = quantize(display, acq, body, rng)
    fields = _header(spec, spacing, rng)
    fields.update(pixel_fields)
    fields["BurnedInAnnotation"] = "YES" if markers or notes else "NO"
    if notes and notes.get("secondary_capture"):
        fields.update(SOPClassUID=SECONDARY_CAPTURE, ConversionType="WSD")
    private = _private(spec, rng)
    record = _truth_record(spec, knees_truth, markers, spacing)
    if notes is not None:
        record.update(style=spec.style, clinical=notes, shape=list(display.shape))
        if notes.get("secondary_capture"):  # stored as it was exported: uncompressed
            record["transfer_syntax"] = "uncompressed"
    return pixels, fields, private, record


def _draw_anatomy(
    spec: ImageSpec, spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """The planned body part's attenuation (rows, cols) and, for knees, their truth records
    (box, grade, visibility, fracture polygons)."""
    rows, cols = spec.shape
    texture = anatomy.trabecular_texture(rng, (rows, cols), spacing)
    attenuation = np.zeros((rows, cols), np.float32)
    knees_truth = []
    if spec.view in ("OTHER", "SKYLINE"):
        frame = anatomy.Frame(
            cols * rng.uniform(0.42, 0.58),
            rows * rng.uniform(0.4, 0.55),
            1.0 / spacing,
            np.radians(rng.uniform(-15, 15)),
            1.0 if rng.random() < 0.5 else -1.0,
        )
        attenuation += draw_part(
            spec.body_part, spec.view, (rows, cols), frame, texture, rng, MU_SOFT
        )
    else:
        centers = _knee_centres(spec, rng)
        for knee, (cx, cy) in zip(spec.knees, centers):
            shape = anatomy.KneeShape.draw(
                np.random.default_rng([spec.seed, 2, knee.anatomy_key]), spec.patient["sex"]
            )
            pose = _pose(spec, knee, cx, cy, spacing, shape, rng)
            draw_knee = anatomy.draw_knee_lat if spec.view == "LAT" else anatomy.draw_knee_ap
            layers = draw_knee((rows, cols), shape, pose, texture, MU_SOFT)
            polygons = draw_fracture(
                layers.tibia,
                layers.tibia_frame,
                shape,
                knee.schatzker,
                knee.visibility,
                np.random.default_rng([spec.seed, 3, knee.fracture_key]),
                spec.view,
            )
            attenuation += layers.tibia
            attenuation += layers.other
            knees_truth.append(
                {
                    "laterality": knee.laterality,
                    "box": layers.box,
                    "schatzker": knee.schatzker,
                    "visibility": knee.visibility,
                    "fracture_polygons": [_clip_polygon(p, cols, rows) for p in polygons],
                }
            )
    return attenuation, knees_truth


def _truth_record(
    spec: ImageSpec, knees_truth: list[dict], markers: list[dict], spacing: float
) -> dict:
    """The image's line of ``truth.jsonl``."""
    acq = spec.acquisition
    image_label = max((k["schatzker"] for k in knees_truth), default=0)
    return {
        "file": spec.file,
        "patient": spec.patient["id"],
        "study": spec.study["uid"],
        "view": spec.view,
        "body_part": spec.body_part,
        "bilateral": spec.bilateral,
        "schatzker": int(image_label),
        "knees": knees_truth,
        "partner": f"dicom/{spec.partner + 1:06d}.dcm" if spec.partner is not None else None,
        "pixel_spacing_mm": round(spacing, 6),
        "transfer_syntax": acq.transfer_syntax,
        "photometric": acq.photometric,
        "presentation_lut": acq.presentation_lut,
        "bits_stored": acq.bits_stored,
        "signed": acq.signed,
        "voi": acq.voi,
        "collimation": acq.collimation,
        "markers": markers,
    }


def _knee_centres(spec: ImageSpec, rng: np.random.Generator) -> list[tuple[float, float]]:
    rows, cols = spec.shape
    if spec.bilateral:
        cy = rows * rng.uniform(0.45, 0.55)
        gap = cols * rng.uniform(0.21, 0.26)
        mid = cols * rng.uniform(0.47, 0.53)
        return [(mid - gap, cy + rng.normal(0, 4)), (mid + gap, cy + rng.normal(0, 4))]
    return [(cols * rng.uniform(0.42, 0.58), rows * rng.uniform(0.42, 0.56))]


def _pose(spec, knee, cx, cy, spacing, shape, rng) -> anatomy.Pose:
    """A knee's position and posture; kept inside the image with its whole box."""
    rows, cols = spec.shape
    lat = spec.view == "LAT"
    mirror = (
        (1.0 if knee.laterality == "R" else -1.0) if not lat else float(rng.choice([-1.0, 1.0]))
    )
    angle = np.radians(rng.uniform(-10, 10) if not spec.bilateral else rng.uniform(-5, 5))
    frame = anatomy.Frame(cx, cy, 1.0 / spacing, angle, mirror)
    corners = frame.corners(*anatomy.knee_box_uv(shape))
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    dx = max(0.0, 2 - x0) - max(0.0, x1 - (cols - 3))
    dy = max(0.0, 2 - y0) - max(0.0, y1 - (rows - 3))
    frame = anatomy.Frame(cx + dx, cy + dy, 1.0 / spacing, angle, mirror)
    return anatomy.Pose(
        frame=frame,
        varus=np.radians(rng.uniform(-4, 4)),
        flexion=rng.uniform(5, 45) if lat else rng.uniform(0, 20),
        # AP: the posterior plateau rim projects below the anterior one (beam tilt)
        rim_offset=rng.uniform(-4, 4) if lat else rng.uniform(0.0, 4.0),
    )


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        h, w = mask.shape
        return [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _clip_polygon(poly: np.ndarray, cols: int, rows: int) -> list[list[float]]:
    p = np.clip(np.asarray(poly, float), 0, [cols - 1, rows - 1])
    return [[round(float(x), 2), round(float(y), 2)] for x, y in p]


def _header(spec: ImageSpec, spacing: float, rng: np.random.Generator) -> dict:
    """Identity, study, device and geometry tags (every PHI tag de-identification strips)."""
    site = SITES[spec.site]
    person, study, hd = spec.patient, spec.study, spec.header
    date = dicom_date(dt.date.fromordinal(study["date"]))
    seconds = int(study["time"][:2]) * 3600 + int(study["time"][2:4]) * 60 + spec.index % 50
    acq_time = f"{seconds // 3600 % 24:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    f: dict = {
        "SpecificCharacterSet": "ISO_IR 100",
        "SOPClassUID": CR_IMAGE if site.modality == "CR" else DX_FOR_PRESENTATION,
        "SOPInstanceUID": make_uid(spec.seed, "sop", spec.index),
        "StudyInstanceUID": study["uid"],
        "SeriesInstanceUID": make_uid(spec.seed, "series", spec.index),
        "ImageType": ["ORIGINAL", "PRIMARY"] if site.modality == "CR" else ["DERIVED", "PRIMARY"],
        **dict.fromkeys(["StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"], date),
        "StudyTime": study["time"],
        **dict.fromkeys(["SeriesTime", "AcquisitionTime", "ContentTime"], acq_time),
        "AccessionNumber": study["accession"],
        "Modality": site.modality,
        "Manufacturer": site.manufacturer,
        "InstitutionName": site.institution,
        "InstitutionAddress": site.address,
        "ReferringPhysicianName": study["referring"],
        "StationName": site.station,
        "StudyDescription": hd["study_description"],
        "SeriesDescription": hd["series_description"],
        "PerformingPhysicianName": study["performing"],
        "OperatorsName": study["operator"],
        "ManufacturerModelName": site.model,
        "PatientName": person["name"],
        "PatientID": person["id"],
        "IssuerOfPatientID": site.issuer,
        "PatientBirthDate": dicom_date(dt.date.fromordinal(person["birth"])),
        "PatientSex": person["sex"],
        "OtherPatientIDs": person["other_id"],
        "PatientAddress": person["address"],
        "PatientTelephoneNumbers": person["phone"],
        "DeviceSerialNumber": f"{abs(hash_int(site.station)) % 10**8:08d}",
        "SoftwareVersions": f"{site.model.split()[0]} {1 + spec.site % 5}.{spec.site * 3 % 10}",
        "ProtocolName": hd["series_description"] or hd["study_description"],
        "KVP": str(hd["kvp"]),
        "Exposure": str(round(hd["mas"])),
        "ExposureTime": str(int(rng.integers(8, 80))),
        "XRayTubeCurrent": str(int(rng.integers(160, 500))),
        "DistanceSourceToDetector": "1100"
        if spec.bilateral
        else str(int(rng.integers(1000, 1150))),
        "StudyID": study["study_id"],
        "SeriesNumber": str(1 + (spec.view == "LAT") + 2 * (spec.view == "OTHER")),
        "InstanceNumber": "1",
        "LossyImageCompression": "00",
    }
    f.update(_optional_fields(spec, spacing))
    return f


def _optional_fields(spec: ImageSpec, spacing: float) -> dict:
    """The tags a site writes or leaves out: age, body part, view, laterality, the pixel
    spacing tags, free-text comments and a request sequence."""
    site = SITES[spec.site]
    person, study, hd = spec.patient, spec.study, spec.header
    f: dict = {}
    if hd["age_tag"]:
        f["PatientAge"] = dicom_age(study["age"])
    if hd["body_part"]:
        f["BodyPartExamined"] = str(hd["body_part"])
    if hd["view_position"]:
        f["ViewPosition"] = hd["view_position"]
    if site.modality == "DX":
        f["PresentationIntentType"] = "FOR PRESENTATION"
        f["PatientOrientation"] = ["L", "F"] if spec.view != "LAT" else ["A", "F"]
    lat = hd["laterality"]
    if site.laterality_tag == "ImageLaterality":
        f["ImageLaterality"] = lat
    elif site.laterality_tag == "Laterality" and lat in ("L", "R"):
        f["Laterality"] = lat
    style = hd["spacing_style"]
    sp = f"{spacing:.6f}".rstrip("0")
    if style in ("imager", "both"):
        f["ImagerPixelSpacing"] = [sp, sp]
    if style in ("both", "pixel"):
        calibrated = f"{spacing / 1.08:.6f}".rstrip("0") if style == "both" else sp
        f["PixelSpacing"] = [calibrated, calibrated]
        if style == "both":
            f["PixelSpacingCalibrationType"] = "GEOMETRY"
    if hd["comments"]:
        given = person["name"].split("^")[-1].title()
        f["ImageComments"] = f"Paciente {given}, caida casual. Tel {person['phone']}"
    if hd["request_sequence"]:
        f["RequestAttributesSequence"] = [
            {
                "RequestedProcedureID": study["accession"][-6:],
                "ScheduledProcedureStepID": f"SPS{study['study_id']}",
                "RequestedProcedureDescription": hd["study_description"],
            }
        ]
    return f


def _private(spec: ImageSpec, rng: np.random.Generator) -> list:
    """A vendor-style private block, one element of which names the operator."""
    return [
        (0x0019, "RADSYNTH ACQ 1.0", 0x01, "LO", spec.study["operator"].replace("^", " ")),
        (0x0019, "RADSYNTH ACQ 1.0", 0x02, "DS", f"{rng.uniform(200, 1800):.1f}"),
        (0x0019, "RADSYNTH ACQ 1.0", 0x03, "LO", f"ROOM {1 + spec.site % 4}"),
    ]


def _counts(records: list[dict], rows: list[dict]) -> dict:
    knees = [k for r in records for k in r["knees"]]
    return {
        "images": len(records),
        "patients": len({r["patient"] for r in records}),
        "studies": len({r["study"] for r in records}),
        "views": _tally(r["view"] for r in records),
        "bilateral": sum(r["bilateral"] for r in records),
        "knees": len(knees),
        "schatzker_knees": {str(t): sum(k["schatzker"] == t for k in knees) for t in range(7)},
        "fractured_images": sum(r["schatzker"] > 0 for r in records),
        "label_rows": len(rows),
        "labeled_rows": sum(bool(r["schatzker"]) for r in rows),
        "reader_only_rows": sum(not r["schatzker"] and bool(r["schatzker_r1"]) for r in rows),
        "transfer_syntaxes": _tally(r["transfer_syntax"] for r in records),
        "photometric": _tally(
            f"{r['photometric']}/{r['presentation_lut'] or '-'}" for r in records
        ),
        "bits_stored": {str(b): c for b, c in _tally(r["bits_stored"] for r in records).items()},
    }


def _tally(values: Iterable) -> dict:
    """How often each value occurs, by value."""
    return dict(sorted(Counter(values).items()))
