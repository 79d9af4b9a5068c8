"""Name -> implementation registries for the pluggable parts a search space names.

One registry per kind of part (losses, samplers, methods, SSL methods, preprocessing
steps, ...). Parts register themselves at import time with a decorator, and every
lookup of an unknown name fails with the closest valid names, so a typo in a YAML
space is reported as ``unknown loss 'focall': did you mean 'focal'?``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that no registry entry (or list of choices) carries."""

    def __init__(self, kind: str, name: object, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(unknown_name_message(kind, name, choices))

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def unknown_name_message(kind: str, name: object, choices: list[str]) -> str:
    """``unknown loss 'focall': did you mean 'focal'? (choices: ce, focal, ...)``."""
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f": did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return f"unknown {kind} {name!r}{hint} (choices: {shown})"


@dataclass
class Registry(Generic[T]):
    """A named collection of implementations of one kind of part."""

    kind: str
    _items: dict[str, T] = field(default_factory=dict)
    _docs: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, *, doc: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@LOSSES.register("focal")``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            text = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
            self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """(name, first docstring line) pairs, for ``python -m search list``."""
        return [(n, self._docs.get(n, "")) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def check_choice(kind: str, name: Any, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``name`` if it is one of ``choices``, else raise with a suggestion."""
    if name not in choices:
        raise UnknownNameError(kind, name, list(choices))
    return name
