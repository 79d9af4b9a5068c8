"""How the experiment folder's state files are written: atomically, never half-written,
with a full disk said plainly, and (for crash tests) a driver that can be killed at
chosen points (``RADSEARCH_TEST_KILL_AT=POINT:N``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path


class ExperimentError(RuntimeError):
    """A problem with an experiment folder (missing, locked, already exists, ...)."""


class ExperimentLocked(ExperimentError):
    """Another driver holds the experiment's lock."""


class DataLocationUnknown(ExperimentError):
    """The experiment ran on a data folder whose location this machine does not know
    (the folder was copied without ``results/.local``): give it again with ``--data``."""


class ExperimentDiskFull(ExperimentError):
    """The disk under the experiment folder is full: a state file could not be written.

    The file it was replacing is untouched (writes are atomic), so the folder keeps its
    last good state and ``resume`` continues from it once there is space again.
    """


#: errno values that mean "no space left" (a full disk or an exhausted quota)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_KILL_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process at the N-th pass through ``name`` when
    ``RADSEARCH_TEST_KILL_AT=name:N`` is set (tests of crash safety); else nothing."""
    spec = os.environ.get("RADSEARCH_TEST_KILL_AT")
    if not spec:
        return
    point, _, count = spec.rpartition(":")
    if point != name:
        return
    _KILL_COUNTS[name] = _KILL_COUNTS.get(name, 0) + 1
    if str(_KILL_COUNTS[name]) == count.strip():
        os.kill(os.getpid(), signal.SIGKILL)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextlib.contextmanager
def disk_full_is_clear(path: Path, folder: Path | None = None) -> Iterator[None]:
    """Turn "no space left on device" while writing ``path`` into an
    :class:`ExperimentDiskFull` that says where, how much is free and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        where = path.parent
        free = ""
        with contextlib.suppress(OSError):
            free = f" ({_bytes(shutil.disk_usage(where).free)} free there)"
        what = "the disk quota is exhausted" if e.errno == errno.EDQUOT else "the disk is full"
        kept = ""
        if folder is not None:
            kept = (
                f"; the last good state of {display_path(folder)} is kept. Free some space, then "
                f"continue with `{resume_command(folder)}`"
            )
        raise ExperimentDiskFull(f"{what}: could not write {display_path(path)}{free}{kept}") from e


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def resume_command(path: str | os.PathLike[str]) -> str:
    """The exact command that continues an experiment."""
    return f"python -m search resume {display_path(Path(path))}"


def display_path(path: Path) -> str:
    """``path`` for the terminal: relative to the working folder when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
