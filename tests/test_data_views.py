"""View filter: frontal knee views kept, lateral views and other body parts flagged."""

from __future__ import annotations

import pytest

from pipeline.data import is_frontal_knee, view_kind


@pytest.mark.parametrize(
    ("meta", "keep", "fragment"),
    [
        ({"view": "AP", "body_part": "KNEE"}, True, "frontal knee (AP)"),
        ({"view": "PA", "body_part": "KNEE"}, True, "frontal knee (PA)"),
        ({"view": "ap", "body_part": "knee"}, True, "frontal knee"),
        # Spanish series description decides when the body part tag is missing or generic.
        (
            {"view": "AP", "body_part": None, "series_description": "RX RODILLA DCHA"},
            True,
            "frontal knee",
        ),
        (
            {"view": "AP", "body_part": "LEG", "series_description": "Rodilla izquierda"},
            True,
            "frontal knee",
        ),
        (
            {"view": None, "body_part": "KNEE", "series_description": "RODILLA AP"},
            True,
            "frontal knee",
        ),
        ({"view": "LAT", "body_part": "KNEE"}, False, "lateral view (LAT)"),
        ({"view": "LL", "body_part": "KNEE"}, False, "lateral view (LL)"),
        ({"view": "RL", "body_part": "KNEE"}, False, "lateral view (RL)"),
        (
            {"view": None, "body_part": "KNEE", "series_description": "RODILLA PERFIL"},
            False,
            "lateral view",
        ),
        (
            {"view": None, "body_part": "KNEE", "series_description": "Knee lateral"},
            False,
            "lateral view",
        ),
        ({"view": "AP", "body_part": "ANKLE"}, False, "other body part (ANKLE)"),
        (
            {"view": "AP", "body_part": None, "series_description": "TOBILLO AP"},
            False,
            "other body part",
        ),
        ({"view": "PA", "body_part": "CHEST"}, False, "other body part (CHEST)"),
        ({"view": "LAT", "body_part": "HIP"}, False, "other body part (HIP)"),
        ({"view": "AXIAL", "body_part": "KNEE"}, False, "other view (AXIAL)"),
        ({"view": "OTHER", "body_part": "KNEE"}, False, "other view (OTHER)"),
        (
            {"view": None, "body_part": "KNEE", "series_description": "RODILLA AXIAL"},
            False,
            "other view",
        ),
    ],
)
def test_view_filter_cases(meta, keep, fragment):
    ok, reason = is_frontal_knee(meta)
    assert ok is keep
    assert fragment in reason


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({}, "view not recorded"),
        ({"view": "AP"}, "body part not recorded"),
        ({"body_part": "KNEE", "series_description": "RODILLA AP Y LAT"}, "view ambiguous"),
    ],
)
def test_missing_metadata_is_kept_by_default_and_flagged_when_strict(meta, fragment):
    ok, reason = is_frontal_knee(meta)
    assert ok and reason.startswith("kept:") and fragment in reason
    ok, reason = is_frontal_knee(meta, strict=True)
    assert not ok and fragment in reason


def test_view_kind():
    assert view_kind({"view": "AP"}) == ("frontal", "AP")
    assert view_kind({"view": "LAT"})[0] == "lateral"
    assert view_kind({"series_description": "RODILLA PERFIL"})[0] == "lateral"
    assert view_kind({})[0] is None
