"""Problems found while a search space is read: collected, then raised together.

Every problem names the file and the key path (``spaces/x.yaml: parameters.lr.bounds:
lower must be < upper``), and unknown names come with the closest valid ones. The
helpers here read the plain values a YAML file holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pipeline
from search.values import finite


class SpaceError(ValueError):
    """One or more problems in a search space; each names the file and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        return "\n".join(
            f"{self.source}: {path}: {msg}" if path else f"{self.source}: {msg}"
            for path, msg in self.problems
        )

    def __str__(self) -> str:
        return self._format()


_LONG_WORD = re.compile(r"\S{100,}")


class Problems:
    """Collects problems while a space is parsed, so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        # a pasted or corrupted value can be kilobytes long: keep each line readable
        path, message = (
            _LONG_WORD.sub(lambda m: m.group()[:60] + "...", t) for t in (path, message)
        )
        self.items.append((path, message))

    def unknown(self, path: str, what: str, name: Any, choices: Iterable[str]) -> None:
        """``unknown <what> 'name': did you mean ...? (choices: ...)``."""
        self.add(path, pipeline.unknown_name_message(what, name, list(choices)))

    def choice(self, path: str, what: str, value: Any, allowed: Iterable[str]) -> bool:
        """Whether ``value`` is one of ``allowed``; when not, a problem naming the closest."""
        allowed = list(allowed)
        if value in allowed:
            return True
        self.unknown(path, what, value, allowed)
        return False

    def unknown_keys(self, path: str, given: Iterable[str], allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in given:
            if key not in allowed:
                self.unknown(f"{path}.{key}" if path else str(key), "key", key, allowed)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened (a fuzzed or pasted value can be megabytes long)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        text = f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_text(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def number(value: Any) -> float | int | None:
    """A finite YAML number; also accepts strings such as ``1e-4`` (YAML 1.1 reads them as
    text). Infinities, NaN and integers beyond the float range are not numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return None
        whole = re.fullmatch(r"[-+]?\d+", value.strip()) is not None
        try:
            value = int(value.strip()) if whole else number
        except ValueError:  # more digits than int() converts
            return None
    if isinstance(value, int):
        return value if finite(value) else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def mapping(value: Any, path: str, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.add(path, f"expected a mapping, got {type(value).__name__}")
        return {}
    return dict(value)
