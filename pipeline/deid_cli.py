"""``python -m pipeline deid IN_DIR OUT_DIR``: de-identified copies of a DICOM folder.

Every DICOM file under IN_DIR is read, de-identified with the PS3.15 basic profile
(:func:`pipeline.deid.deidentify`) and written to the same relative path under
OUT_DIR; the originals are never written to. Files that are not DICOM are skipped
and counted. The salt of the pseudonyms comes from ``$RADSEARCH_SALT`` or the
per-user secret (see :func:`pipeline.deid.resolve_salt`): use the same salt for
every batch of one project so patients keep their keys.

File names are kept (so a labels CSV still matches): rename files whose names carry
identifying information before sharing them.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from pipeline.deid import deidentify, resolve_salt
from pipeline.dicom import DicomError, iter_files, read_dataset
from pipeline.io import atomic_write_bytes

_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_dir", type=Path, help="folder of DICOM files (read only)")
    parser.add_argument("out_dir", type=Path, help="folder for the de-identified copies (created)")
    parser.add_argument(
        "--keep-patient-characteristics",
        action="store_true",
        help="keep sex, age (90+ pooled), size and weight (PS3.15 Retain Patient Characteristics Option)",
    )


def main(args: argparse.Namespace) -> int:
    in_dir: Path = args.in_dir
    out_dir: Path = args.out_dir
    if not in_dir.is_dir():
        print(f"python -m pipeline deid: {in_dir}: not a folder", file=sys.stderr)
        return 2
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        print(
            f"python -m pipeline deid: {out_dir} must be outside {in_dir} (and not contain it), "
            "so the originals are never overwritten",
            file=sys.stderr,
        )
        return 2
    salt = resolve_salt()
    files = list(iter_files(in_dir))
    written = 0
    counts = {"removed": 0, "emptied": 0, "replaced": 0, "uids": 0}
    skipped: list[str] = []
    burned_in: list[str] = []
    for path in files:
        rel = path.relative_to(in_dir)
        try:
            ds = read_dataset(path)
        except DicomError as e:
            skipped.append(f"{rel}: {type(e).__name__}: {e.reason}")
            continue
        if (
            str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
            == _DICOMDIR
        ):
            skipped.append(
                f"{rel}: a DICOMDIR index (its offsets would break): rebuild it from the copies"
            )
            continue
        report = deidentify(
            ds, salt, retain_patient_characteristics=args.keep_patient_characteristics
        )
        buffer = io.BytesIO()
        report.dataset.save_as(buffer, enforce_file_format=False)
        target = out_dir / rel
        if target.exists() and os.path.samefile(target, path):  # a link back into IN_DIR
            skipped.append(f"{rel}: refusing to overwrite the original through a link")
            continue
        atomic_write_bytes(target, buffer.getvalue())
        written += 1
        for key in counts:
            counts[key] += len(getattr(report, key))
        if (report.burned_in_annotation or "").upper() == "YES":
            burned_in.append(str(rel))
    changed = sum(counts.values())
    print(
        f"de-identified {written} files into {out_dir}: {changed} tags changed "
        f"({counts['removed']} removed, {counts['emptied']} emptied, {counts['replaced']} replaced, "
        f"{counts['uids']} UIDs replaced); {len(skipped)} files skipped"
    )
    for line in skipped[:20]:
        print(f"  skipped {line}")
    if len(skipped) > 20:
        print(f"  ... {len(skipped) - 20} more skipped")
    if burned_in:
        print(
            f"warning: {len(burned_in)} files declare Burned In Annotation = YES: the basic profile "
            "does not clean pixels; review them before sharing (first: "
            + ", ".join(burned_in[:5])
            + ")"
        )
    return 0
