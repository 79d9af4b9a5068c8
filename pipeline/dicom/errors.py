"""The one error family of DICOM reading: :class:`DicomError`, one subclass per cause.

``str(err)`` is one line that names the file and the reason, and the reason says what
to do (install a decoder, re-export or copy the file again, skip it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


class DicomError(Exception):
    """A DICOM file that cannot be read as a radiograph; ``str(err)`` is one line naming the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__(f"{self.path}: {self.reason}")


class UnreadableFileError(DicomError):
    """The file cannot be opened (missing, a folder, no permission)."""


class NotDicomError(DicomError):
    """The file is not DICOM (no DICM preamble and no recognisable data set)."""


class CorruptDicomError(DicomError):
    """The file is DICOM but broken: truncated, invalid values, missing required attributes."""


class NoPixelDataError(DicomError):
    """The file holds no image (a report, structured report, RT plan, DICOMDIR, ...)."""


class UnsupportedTransferSyntaxError(DicomError):
    """No installed decoder handles the file's transfer syntax; the message names what to install."""


class DecodeError(DicomError):
    """Every installed decoder failed on the pixel data (corrupt codestream or an unsupported variant)."""


class UnsupportedImageError(DicomError):
    """The pixel data is not a single 2-D greyscale image."""


class NotGreyscaleError(UnsupportedImageError):
    """Colour or palette image (Samples per Pixel > 1, RGB, YBR, PALETTE COLOR)."""


class MultiFrameError(UnsupportedImageError):
    """More than one frame (a cine, a volume, a dose grid)."""


def short_reason(e: BaseException, limit: int = 160) -> str:
    """An exception's message on one line of at most ``limit`` characters, for a reason.

    pydicom's "all plugins failed" preamble is dropped: the caller names the plugins.
    """
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(
        r"^Unable to decode as exceptions were raised by all available plugins:\s*\w+:\s*", "", text
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."
