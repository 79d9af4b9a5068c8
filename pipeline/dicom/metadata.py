"""The de-identified ``meta`` dict of a radiograph: typed header values, no PHI.

The meta dict holds no names, IDs, UIDs or dates: patient, study and site are salted
pseudonyms from :mod:`pipeline.deid`, the age is a number (90 and over pooled) and the
series description has the patient's name and ID masked. :func:`read_meta` reads it
from a file's header alone.
"""

from __future__ import annotations

import math
import os
import re
from datetime import date
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.deid import clean_text, identity_keys, resolve_salt
from pipeline.dicom.errors import DicomError
from pipeline.dicom.image_header import transfer_syntax
from pipeline.dicom.parse import header_values, read_dataset

META_KEYS: tuple[str, ...] = (
    "pixel_spacing_mm",
    "modality",
    "view",
    "laterality",
    "patient_orientation",
    "body_part",
    "series_description",
    "manufacturer",
    "bits_stored",
    "photometric",
    "rows",
    "columns",
    "patient_sex",
    "patient_age",
    "patient_key",
    "study_key",
    "site_key",
    "transfer_syntax",
)


def read_meta(path: str | os.PathLike[str], *, salt: str | bytes | None = None) -> dict[str, Any]:
    """The de-identified ``meta`` dict of a file, from its header only (no pixel decoding)."""
    path = Path(path)
    ds = read_dataset(path, stop_before_pixels=True)
    with header_values(path):
        return meta_of(ds, path, resolve_salt(salt))


_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_AGE_CAP = 90.0  # HIPAA Safe Harbor pools ages of 90 and over


def _get(ds: Dataset, keyword: str) -> Any:
    """A header value, or None when absent, empty or not convertible."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    return value


def _str(ds: Dataset, keyword: str, *, upper: bool = False) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    text = " ".join(str(value).split())
    return (text.upper() if upper else text) or None


def meta_of(ds: Dataset, path: Path, salt: bytes) -> dict[str, Any]:
    """The de-identified ``meta`` dict of a parsed data set (:data:`META_KEYS`), keyed by ``salt``."""
    modality = _str(ds, "Modality", upper=True)
    keywords = (
        ("ImagerPixelSpacing", "PixelSpacing") if modality in ("DX", "CR") else ("PixelSpacing",)
    )
    spacing = next(filter(None, (parse_spacing(_get(ds, k)) for k in keywords)), None)
    laterality = _str(ds, "ImageLaterality", upper=True) or _str(ds, "Laterality", upper=True)
    series = _str(ds, "SeriesDescription")
    try:
        syntax = transfer_syntax(ds, path).name
    except DicomError:
        syntax = None
    return {
        "pixel_spacing_mm": spacing,
        "modality": modality,
        "view": _str(ds, "ViewPosition", upper=True),
        "laterality": laterality if laterality in ("L", "R", "B") else None,
        "patient_orientation": _orientation(_get(ds, "PatientOrientation")),
        "body_part": _str(ds, "BodyPartExamined", upper=True),
        "series_description": clean_text(series, ds) if series else None,
        "manufacturer": _str(ds, "Manufacturer"),
        "bits_stored": _int_or_none(_get(ds, "BitsStored")),
        "photometric": _str(ds, "PhotometricInterpretation", upper=True),
        "rows": _int_or_none(_get(ds, "Rows")),
        "columns": _int_or_none(_get(ds, "Columns")),
        "patient_sex": {"F": 0.0, "M": 1.0}.get(_str(ds, "PatientSex", upper=True) or ""),
        "patient_age": _age(ds),
        **identity_keys(ds, salt),
        "transfer_syntax": syntax,
    }


def _orientation(value: Any) -> tuple[str, str] | None:
    """PatientOrientation (row direction, column direction), e.g. ``("L", "F")``."""
    if value is None:
        return None
    parts = [
        str(v).strip().upper()
        for v in (value if isinstance(value, list | tuple) else str(value).split("\\"))
    ]
    if len(parts) != 2 or not all(re.fullmatch(r"[LRAPHF]{1,3}", p) for p in parts):
        return None
    return (parts[0], parts[1])


def parse_spacing(value: Any) -> tuple[float, float] | None:
    """A (row, column) pixel spacing in mm from a pair of numbers; None unless both are
    finite and positive."""
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return row, col


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _age(ds: Dataset) -> float | None:
    years = None
    text = _str(ds, "PatientAge", upper=True)
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", text or "")
    if match:
        years = int(match.group(1)) * _AGE_UNITS[match.group(2) or "Y"]
    else:
        birth = _date(_str(ds, "PatientBirthDate"))
        study = _date(_str(ds, "StudyDate"))
        if birth and study and study >= birth:
            years = (study - birth).days / 365.25
    if years is None:
        return None
    return round(min(years, _AGE_CAP), 1)


def _date(text: str | None) -> date | None:
    if not text or not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
