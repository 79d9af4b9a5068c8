"""Labels, views, patient-grouped splits and datasets: which image goes where, with what label.

    table = load_labels(data_dir / "labels.csv", data_dir)     # rows + counted problems
    items = build_items(index, table)                          # crops joined with labels
    splits = make_splits(items.units, test=0.15, val=0.15, seed=0)
    train = CachedRadiographs(splits.select(items.items, "train"), index, views="ap")

The torch datasets are imported on first use, so label and split tools stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_exports
from pipeline.data.items import (
    OUT_OF_SCOPE,
    SCOPE_POLICIES,
    Disagreement,
    Excluded,
    Item,
    ItemSet,
    build_items,
    items_from_entries,
    scope_verdict,
    split_units,
)
from pipeline.data.labels import (
    Adjudication,
    LabelProblem,
    LabelRow,
    LabelsError,
    LabelTable,
    consensus,
    load_labels,
)
from pipeline.data.splits import Assignment, Splits, SplitsError, make_splits
from pipeline.data.views import is_frontal_knee, view_kind

if TYPE_CHECKING:
    from pipeline.data.datasets import CachedRadiographs, collate

__all__ = [
    "OUT_OF_SCOPE",
    "SCOPE_POLICIES",
    "Adjudication",
    "Assignment",
    "CachedRadiographs",
    "Disagreement",
    "Excluded",
    "Item",
    "ItemSet",
    "LabelProblem",
    "LabelRow",
    "LabelTable",
    "LabelsError",
    "Splits",
    "SplitsError",
    "build_items",
    "collate",
    "consensus",
    "is_frontal_knee",
    "items_from_entries",
    "load_labels",
    "make_splits",
    "scope_verdict",
    "split_units",
    "view_kind",
]

# torch (~1.5 s to import) only for the datasets: label and split tools stay light
__getattr__, __dir__ = lazy_exports(
    __name__, {"CachedRadiographs": "pipeline.data.datasets", "collate": "pipeline.data.datasets"}
)
