"""Finding patient identifiers in what the tool wrote.

:func:`phi_strings` reads the identifying values out of DICOM headers themselves (names
and their parts, IDs, dates, accession numbers, institutions, addresses, phone numbers,
UIDs, the private operator tag), so the search follows whatever the data carries.
:func:`scan_tree` looks for them in every file under a folder: text files with word
boundaries (and names' short parts in upper case only, as the headers write them),
binary files (checkpoints, W&B transaction logs) for the values of 7 characters or
more, which random bytes do not spell by chance. Single words (name parts) are matched
in upper case only, as the headers write them; longer values in any case.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

# Header values that identify a person, a visit or a place (PS3.15 Annex E basic profile).
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "ImageComments",
)
NAME_KEYWORDS = (
    "PatientName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)
MIN_BINARY = 7  # shorter values are only looked for in text files


@dataclass(frozen=True)
class Hit:
    file: Path
    value: str
    source: str  # the header keyword the value came from
    context: str


def _values(elem_value: object) -> list[str]:
    if isinstance(elem_value, list | tuple | pydicom.multival.MultiValue):
        return [str(v) for v in elem_value]
    return [str(elem_value)]


def phi_strings(dicom_files: Iterable[Path]) -> dict[str, str]:
    """value -> header keyword, for every identifying value in the files' headers."""
    out: dict[str, str] = {}
    for path in dicom_files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            if keyword not in ds or not ds.get(keyword):
                continue
            for value in _values(ds.get(keyword)):
                value = value.strip()
                if len(value) < 4:
                    continue
                out.setdefault(value, keyword)
                if keyword in NAME_KEYWORDS:
                    parts = [p for p in re.split(r"[\^ ]+", value) if len(p) >= 3 and p != "DR"]
                    for part in parts:
                        out.setdefault(part, keyword)
                    if len(parts) >= 2:
                        out.setdefault(" ".join(parts), keyword)
                        out.setdefault(" ".join(reversed(parts)), keyword)
                if keyword == "PatientBirthDate" and re.fullmatch(r"\d{8}", value):
                    out.setdefault(f"{value[:4]}-{value[4:6]}-{value[6:]}", keyword)
        for elem in ds.iterall():  # private tags (an operator's name in a vendor block)
            if (
                elem.tag.is_private
                and elem.VR in ("LO", "PN", "SH")
                and isinstance(elem.value, str)
            ):
                value = elem.value.strip()
                if len(value) >= 6 and not elem.tag.is_private_creator:
                    out.setdefault(value, f"private {elem.tag}")
    return out


def _is_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data[:65536].decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > 65000  # a multi-byte character cut at the window's end
    return True


def _pattern(value: str, *, text: bool) -> re.Pattern[bytes]:
    escaped = re.escape(value.encode("utf-8"))
    if value.isdigit():  # not part of a longer number or a decimal fraction
        return re.compile(rb"(?<![0-9.])" + escaped + rb"(?![0-9])")
    if text and (len(value) < 8 or value.isalpha()):
        # one word (a name part): whole, and in upper case as the headers write it, since
        # common words and names ("Montserrat" in plotly's country list) are in any text
        return re.compile(rb"(?<![A-Za-z])" + escaped + rb"(?![A-Za-z])")
    flags = re.IGNORECASE if text else 0
    return re.compile(rb"(?<![A-Za-z0-9])" + escaped + rb"(?![A-Za-z0-9])", flags)


def scan_tree(
    roots: Iterable[Path], phi: dict[str, str], *, exclude: Iterable[Path] = ()
) -> tuple[int, list[Hit]]:
    """(files scanned, hits) for every regular file under ``roots`` (not under ``exclude``)."""
    excluded = [Path(p).resolve() for p in exclude]
    text_patterns = [(v, s, _pattern(v, text=True)) for v, s in phi.items()]
    binary_patterns = [
        (v, s, _pattern(v, text=False)) for v, s in phi.items() if len(v) >= MIN_BINARY
    ]
    hits: list[Hit] = []
    scanned = 0
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            resolved = path.resolve()
            if any(resolved.is_relative_to(e) for e in excluded):
                continue
            scanned += 1
            data = path.read_bytes()
            text = _is_text(data)
            lowered = data.lower() if text else data
            for value, source, pattern in text_patterns if text else binary_patterns:
                needle = value.encode("utf-8")
                if (needle.lower() if text else needle) not in lowered:
                    continue  # a substring test first: fast, and most values are absent
                m = pattern.search(data)
                if m:
                    lo, hi = max(0, m.start() - 60), m.end() + 60
                    context = data[lo:hi].decode("utf-8", errors="replace")
                    hits.append(Hit(file=path, value=value, source=source, context=context))
    return scanned, hits


# ---------------------------------------------------------------------------------------
# A real run to scan
# ---------------------------------------------------------------------------------------


#: the smallest real trial a search can run: a test network at 32 px, lr searched
TINY_PARAMETERS: dict[str, Any] = {
    "backbone": "test_resnet",
    "pretrained": "none",
    "image_size": 32,
    "batch_size": 8,
    "localize": False,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
    "lr": {"type": "range", "bounds": [1e-4, 1e-2], "scale": "log"},
}


def tiny_space(data_dir, cache_dir) -> dict[str, Any]:
    return {
        "name": "privacy",
        "seed": 0,
        "data": {"data_dir": str(data_dir), "cache_dir": str(cache_dir)},
        "objective": {"metric": "val/auroc", "direction": "maximize"},
        "parameters": dict(TINY_PARAMETERS),
        "budget": {
            "trials": 2,
            "concurrency": 1,
            "cpus_per_trial": 1,
            "epochs": 1,
            "scheduler": "none",
            "initial_trials": 2,
            "final_epochs": 1,
        },
        "tracking": {"mode": "offline", "project": "privacy"},
    }


def search_and_promote(data_dir: Path, root: Path) -> tuple[Path, Path]:
    """A two-trial search (Ray, ``run_trial``, W&B offline) and a promote on ``data_dir``.

    Returns (experiment folder, preprocessing cache folder), both under ``root``.
    """
    import os

    import ray

    from search.promote import promote
    from search.runner import run_search
    from search.space import SpaceConfig

    cache = root / "cache"
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "RADSEARCH_CACHE")}
    os.environ["WANDB_MODE"] = "offline"
    os.environ["RADSEARCH_CACHE"] = str(cache)
    try:
        space = SpaceConfig.from_dict(tiny_space(data_dir, cache), source="privacy.yaml")
        result = run_search(
            space, name="privacy", results_dir=root / "results", progress=False, num_cpus=2
        )
        promote(result.path, epochs=1, wandb_mode="offline")
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return result.path, cache
