"""View filter: keep frontal knee radiographs, flag lateral views and other body parts.

The decision reads only de-identified metadata (``pipeline.dicom`` meta keys ``view``,
``body_part``, ``series_description``), the way the reference project's first step
did. ``ViewPosition`` decides the view when it is recorded; otherwise the series
description's words do (English and Spanish: ``AP``, ``PA``, ``FRONTAL``, ``LAT``,
``LATERAL``, ``PERFIL``, ...). ``BodyPartExamined`` decides the body part when it names
one; a generic value (``LEG``, ``EXTREMITY``, ...) or a missing one defers to the
series description (``KNEE``, ``RODILLA``, ...).

Missing metadata: by default an image whose view or body part is not recorded is kept
(reason ``"kept: ... not recorded"``), because many archives drop these tags; with
``strict=True`` it is flagged instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

FRONTAL = frozenset({"AP", "PA", "FRONTAL", "ANTEROPOSTERIOR", "POSTEROANTERIOR", "APPA", "PAAP"})
LATERAL = frozenset(
    {
        "LAT",
        "LATERAL",
        "LATERALE",
        "LL",
        "RL",
        "LLAT",
        "RLAT",
        "ML",
        "LM",
        "PERFIL",
        "LATERALMEDIAL",
    }
)
OTHER_VIEWS = frozenset(
    {
        "OBL",
        "OBLIQUE",
        "OBLICUA",
        "OBLICUO",
        "AXIAL",
        "SKYLINE",
        "MERCHANT",
        "SUNRISE",
        "TANGENTIAL",
        "TANGENCIAL",
        "TUNNEL",
        "ROSENBERG",
        "OTHER",
    }
)
KNEE = frozenset(
    {"KNEE", "KNEES", "RODILLA", "RODILLAS", "GENU", "GENOU", "KNIE", "JOELHO", "GINOCCHIO"}
)
# Values of BodyPartExamined that do not say which joint: the series description decides.
GENERIC_PARTS = frozenset(
    {
        "LEG",
        "LOWERLIMB",
        "LOWER_LIMB",
        "LOWER LIMB",
        "EXTREMITY",
        "LOWEREXTREMITY",
        "LOWER_EXTREMITY",
        "LOWEXM",
    }
)
OTHER_PARTS = frozenset(
    {
        "ANKLE",
        "TOBILLO",
        "FOOT",
        "PIE",
        "HIP",
        "CADERA",
        "PELVIS",
        "FEMUR",
        "TIBIA",
        "CHEST",
        "THORAX",
        "TORAX",
        "HAND",
        "MANO",
        "WRIST",
        "MUNECA",
        "ELBOW",
        "CODO",
        "SHOULDER",
        "HOMBRO",
        "SPINE",
        "COLUMNA",
        "SKULL",
        "CRANEO",
        "HEAD",
        "ABDOMEN",
    }
)


def _words(text: Any) -> list[str]:
    """Upper-case ASCII words of a tag value (accents dropped: ``MUÑECA`` -> ``MUNECA``)."""
    if not text:
        return []
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    return [w for w in re.split(r"[^A-Z0-9]+", ascii_text.upper()) if w]


def _kind_of_view(words: list[str]) -> str | None:
    kinds = {
        "frontal" if w in FRONTAL else "lateral" if w in LATERAL else "other"
        for w in words
        if w in FRONTAL or w in LATERAL or w in OTHER_VIEWS
    }
    return kinds.pop() if len(kinds) == 1 else None


def view_kind(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """(``"frontal"`` | ``"lateral"`` | ``"other"`` | None, the text that decided it).

    ``ViewPosition`` first; a description naming two kinds (``"RODILLA AP Y LAT"``) is
    ambiguous and gives None.
    """
    view = str(meta.get("view") or "").strip().upper()
    if view:
        compact = re.sub(r"[^A-Z0-9]", "", view)
        if compact in FRONTAL or view in FRONTAL:
            return "frontal", view
        if compact in LATERAL or view in LATERAL:
            return "lateral", view
        kind = _kind_of_view(_words(view))
        return (kind or "other"), view
    description = str(meta.get("series_description") or "").strip()
    kind = _kind_of_view(_words(description))
    return kind, description


def body_part_kind(meta: Mapping[str, Any]) -> tuple[str | None, str]:
    """(``"knee"`` | ``"other"`` | None, the text that decided it)."""
    part = str(meta.get("body_part") or "").strip().upper()
    words = _words(part)
    if part and part not in GENERIC_PARTS and "".join(words) not in GENERIC_PARTS:
        if any(w in KNEE for w in words):
            return "knee", part
        return "other", part
    description = str(meta.get("series_description") or "").strip()
    desc_words = _words(description)
    if any(w in KNEE for w in desc_words):
        return "knee", description
    if any(w in OTHER_PARTS for w in desc_words):
        return "other", description
    return None, part or description


def is_frontal_knee(meta: Mapping[str, Any], *, strict: bool = False) -> tuple[bool, str]:
    """Whether an image is a frontal (AP/PA) knee radiograph, and why (or why not).

    Reasons name the deciding tag: ``"frontal knee (AP)"``, ``"lateral view (LAT)"``,
    ``"other body part (ANKLE)"``, ``"other view (AXIAL)"``, ``"kept: view not recorded"``.
    """
    part, part_text = body_part_kind(meta)
    if part == "other":
        return False, f"other body part ({part_text})"
    view, view_text = view_kind(meta)
    if view == "lateral":
        return False, f"lateral view ({view_text})"
    if view == "other":
        return False, f"other view ({view_text})"
    missing = []
    if view is None:
        missing.append(f"view ambiguous ({view_text})" if view_text else "view not recorded")
    if part is None:
        missing.append("body part not recorded")
    if missing:
        text = ", ".join(missing)
        return (False, text) if strict else (True, f"kept: {text}")
    return True, f"frontal knee ({view_text})"
