"""How big a validation split must be to rank configurations, and what the warning says."""

from __future__ import annotations

import math

import pytest

from search.noise import (
    AUROC_SE_LIMIT,
    ValidationSize,
    auroc_standard_error,
    too_small,
)


def test_hanley_mcneil_standard_error():
    # Hanley & McNeil (1982), eq. 2 by hand for AUROC 0.9, 50 positives, 50 negatives:
    # Q1 = 0.9 / 1.1, Q2 = 1.62 / 1.9; (0.09 + 49 (Q1 - 0.81) + 49 (Q2 - 0.81)) / 2500
    assert auroc_standard_error(50, 50, 0.9) == pytest.approx(0.03212, abs=1e-5)
    assert auroc_standard_error(8, 35) > auroc_standard_error(64, 227)
    assert math.isinf(auroc_standard_error(0, 40))


def test_the_validation_split_of_the_first_demo_is_too_small_and_the_warning_says_why():
    """The split that ranked the first demo's trials: 43 crops, 8 fractures."""
    size = ValidationSize(crops=43, fractures=8, how="prepared")
    assert size.auroc_se > 2 * AUROC_SE_LIMIT
    text = too_small(size, source="spaces/x.yaml", labeled=290, test_fraction=0.15)
    assert text.startswith("spaces/x.yaml: the validation split is too small")
    assert "43 validation crops with 8 fractures" in text
    assert "objective.folds: 5" in text and "5x the" in text and "val_fraction" in text


def test_a_split_with_enough_fractures_passes():
    assert too_small(ValidationSize(crops=290, fractures=64, how="planned"), source="x") is None


def test_cross_validated_trials_are_not_told_to_cross_validate():
    size = ValidationSize(crops=40, fractures=6, how="prepared", folds=5)
    text = too_small(size, source="x", labeled=60)
    assert text is not None and "objective.folds" not in text and "over 5 folds" in text
