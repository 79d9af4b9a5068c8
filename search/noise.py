"""Is the validation split big enough to rank configurations? Said before a search starts.

A search ranks trials by a validation score. With a few dozen validation crops and a
handful of fractures, that score's standard error exceeds every difference between
sensible configurations: the search then optimises noise. ``search validate`` and the
start of ``search run`` estimate the validation side's size (from the phantom's plan or
the labels CSV, then exactly once the data is prepared) and warn, with the fixes, when
the standard error of a validation AUROC would exceed ``AUROC_SE_LIMIT``.

The standard error is Hanley & McNeil's (1982) for an AUROC of ``TYPICAL_AUROC``; every
trial then measures its own (``val/auroc_sem``, a patient-level bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pipeline

if TYPE_CHECKING:
    from search.space import SpaceConfig

#: the validation AUROC's standard error above which ranking trials is mostly noise
AUROC_SE_LIMIT = 0.04
#: the AUROC at which the standard error is estimated (a model that learned something)
TYPICAL_AUROC = 0.85


def auroc_standard_error(positives: int, negatives: int, auroc: float = TYPICAL_AUROC) -> float:
    """Hanley & McNeil's standard error of an AUROC from ``positives`` and ``negatives``."""
    if positives < 1 or negatives < 1:
        return math.inf
    q1 = auroc / (2.0 - auroc)
    q2 = 2.0 * auroc * auroc / (1.0 + auroc)
    var = (
        auroc * (1.0 - auroc)
        + (positives - 1) * (q1 - auroc * auroc)
        + (negatives - 1) * (q2 - auroc * auroc)
    ) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class ValidationSize:
    """How many crops (and fractures) the validation side scores; ``how`` says from what."""

    crops: int
    fractures: int
    how: str  # "planned" (phantom plan), "labels CSV" (before the view filter), "prepared"
    folds: int | None = None

    @property
    def auroc_se(self) -> float:
        return auroc_standard_error(self.fractures, self.crops - self.fractures)

    def describe(self) -> str:
        cv = f" over {self.folds} folds" if self.folds else ""
        se = "undefined" if math.isinf(self.auroc_se) else f"about {self.auroc_se:.3f}"
        return (
            f"{self.crops} validation crops{cv} with {self.fractures} fractures ({self.how}): "
            f"a validation AUROC has a standard error of {se}"
        )


def size_from(counts: Mapping[str, Any], how: str) -> ValidationSize:
    """From ``pipeline.expected_validation`` or ``pipeline.prepare``'s counts."""
    return ValidationSize(
        crops=int(counts["val"]),
        fractures=int(counts["val_fractures"]),
        how=how,
        folds=counts.get("folds"),
    )


def too_small(
    size: ValidationSize, *, source: str, labeled: int | None = None, test_fraction: float = 0.15
) -> str | None:
    """The warning (with the fixes) when ``size`` is too small to rank configurations.

    ``labeled``: all labeled crops (to say what cross-validation would give: every
    non-test crop scored once).
    """
    se = size.auroc_se
    if se <= AUROC_SE_LIMIT:
        return None
    fixes = []
    if not size.folds and labeled and size.crops:
        k = 5
        share = (1.0 - test_fraction) * labeled / size.crops  # CV scores this many times more
        cv = auroc_standard_error(
            round(share * size.fractures), round(share * (size.crops - size.fractures))
        )
        fixes.append(
            f"cross-validate with `objective.folds: {k}` (each trial trains {k} models: {k}x the "
            f"cost; every non-test crop is then scored once, standard error about {cv:.3f})"
        )
    fixes.append("raise `val_fraction` (a fixed parameter)")
    fixes.append("label more images (above all, more fractures)")
    noise = "undefined" if math.isinf(se) else f"{2 * math.sqrt(2) * se:.2f}"
    return (
        f"{source}: the validation split is too small to rank configurations: "
        f"{size.describe()}, so two trials closer than {noise} cannot be told apart. "
        f"Fixes: {'; '.join(fixes)}."
    )


def planned_warning(space: SpaceConfig) -> str | None:
    """:func:`too_small` from the space alone (the phantom's plan or the labels CSV)."""
    if not space.check_names:
        return None
    base = space.trial_base()
    counts = pipeline.expected_validation(base)
    how = "planned" if counts["source"] == "phantom" else "labels CSV, before the view filter"
    return too_small(
        size_from(counts, how),
        source=space.source,
        labeled=counts["labeled"],
        test_fraction=pipeline.TrialConfig.from_dict(base).data.test_fraction,
    )


def prepared_warning(space: SpaceConfig, counts: Mapping[str, Any]) -> str | None:
    """:func:`too_small` from ``pipeline.prepare``'s exact counts."""
    splits = counts["splits"]
    labeled = sum(splits.get(k, 0) for k in ("train", "val", "test"))
    test_fraction = splits.get("test", 0) / labeled if labeled else 0.15
    return too_small(
        size_from(counts, "prepared"),
        source=space.source,
        labeled=labeled,
        test_fraction=test_fraction,
    )
