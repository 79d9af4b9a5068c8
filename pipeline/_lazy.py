"""Names a package exports but imports on first use.

Command-line tools that only list registries or validate a file should not pay for
torch, Lightning or Ray at import time, so the packages export their public names
lazily::

    _EXPORTS = {"fit": "pipeline.train.loop", ...}
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

(with the same names imported under ``if TYPE_CHECKING:`` for type checkers).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``.

    ``exports`` maps each public name to the module that defines it; the first access
    imports that module and keeps the value in the package, so later accesses are plain
    attribute lookups.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
