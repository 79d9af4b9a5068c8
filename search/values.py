"""Numbers as the search meets them: from YAML, Ax, numpy and Ray results.

One definition each, used by every module of ``search``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (for JSON, YAML and Ray configs); others unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def finite(value: Any) -> bool:
    """True for a real number (numpy scalars included, booleans not) that is finite as
    a float (an integer beyond the float range is not)."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def as_float(value: Any) -> Any:
    """A float for any real number (numpy included, non-finite kept), else the value unchanged."""
    value = plain(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def finite_or_none(value: Any) -> Any:
    """The value as a Python scalar when it is a finite number or a boolean, else ``None``."""
    value = plain(value)
    return value if finite(value) or isinstance(value, bool) else None
