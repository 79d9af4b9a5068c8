"""The synthetic knee-radiograph phantom: real DICOM files, a labels CSV and ground truth.

``generate(out_dir, n, seed)`` writes a deterministic set that exercises everything a
real collection throws at the pipeline (MONOCHROME1/2, 10-16 bits, rescale and VOI
variants, four transfer syntaxes, collimation, burned-in markers, lateral and non-knee
images (hands and ankles; with ``other_parts`` also hips, chests and skyline views of
the knee), bilateral images, PHI in the header) and carries Schatzker I-VI tibial plateau
fractures with their regions, for training and for scoring saliency maps.
``write_dicom`` writes one array as a DICOM file in a chosen transfer syntax.
"""

from .dataset import (
    DEFAULT_FRACTURE_RATE,
    GENERATOR_VERSION,
    LABEL_COLUMNS,
    generate,
    planned_labels,
)
from .dicom_writer import TRANSFER_SYNTAXES, build_dataset, write_dicom, write_secondary_capture
from .fractures import SCHATZKER_NAMES
from .parts import ALL_OTHER_PARTS, DEFAULT_OTHER_PARTS

__all__ = [
    "ALL_OTHER_PARTS",
    "DEFAULT_FRACTURE_RATE",
    "DEFAULT_OTHER_PARTS",
    "GENERATOR_VERSION",
    "LABEL_COLUMNS",
    "SCHATZKER_NAMES",
    "TRANSFER_SYNTAXES",
    "build_dataset",
    "generate",
    "planned_labels",
    "write_dicom",
    "write_secondary_capture",
]
