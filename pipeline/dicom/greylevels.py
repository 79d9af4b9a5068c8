"""The grey-level chain: stored pixel values to display values in [0, 1], bone bright.

The chain follows PS3.3 C.11 in the standard order:

1. Modality LUT: the Modality LUT Sequence, else Rescale Slope/Intercept.
2. VOI LUT: the VOI LUT Sequence (preferred), else Window Center/Width with the VOI
   LUT Function (LINEAR, LINEAR_EXACT, SIGMOID), else the full output range of step 1.
3. Normalisation to [0, 1] against the range of step 2 (never the image's own
   minimum or maximum), then inversion when the Photometric Interpretation is
   MONOCHROME1 or the Presentation LUT Shape is INVERSE (the two say the same thing
   in the DX IOD; either alone also inverts).

For integer pixels the chain is evaluated once per possible stored value, in
float64, and the image is a single float32 table lookup (``GreyLevelChain.apply``);
stored bits above Bits Stored are ignored through the same table. The common case,
a chain that is one affine map then a clip (rescale with a linear window, or the
full range) on pixels without stray high bits, skips the table: the same numbers
(to 1e-6) come from one or four float32 array passes, 2-3x faster than the lookup,
on up to four threads for large images.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID


@dataclass(frozen=True, kw_only=True)
class LookupTable:
    """A LUT of PS3.3 C.11: inputs from ``first`` on map to the entries; output range 0..2^bits-1.

    ``data`` holds the entries as little-endian int32 bytes (hashable, and its hash is
    cached, so a chain holding a 64k-entry LUT stays a cheap cache key).
    """

    first: int
    bits: int
    data: bytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Look up ``x`` (float64): values below ``first`` take the first entry, above the last."""
        table = np.frombuffer(self.data, dtype="<i4").astype(np.float64)
        index = np.clip(np.floor(x - self.first), 0, len(table) - 1).astype(np.intp)
        return table[index]

    @property
    def out_range(self) -> tuple[float, float]:
        return 0.0, float(2**self.bits - 1)


@dataclass(frozen=True, kw_only=True)
class Window:
    """Window Center/Width with its VOI LUT Function (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""

    center: float
    width: float
    function: str = "LINEAR"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Map ``x`` to [0, 1]."""
        c, w = self.center, self.width
        if self.function == "LINEAR_EXACT":
            return np.clip((x - c) / w + 0.5, 0.0, 1.0)
        if self.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
        if w <= 1.0:  # LINEAR with width 1: a threshold at center - 0.5
            return (x > c - 0.5).astype(np.float64)
        return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)

    @property
    def is_valid(self) -> bool:
        finite = math.isfinite(self.center) and math.isfinite(self.width)
        return finite and (self.width >= 1.0 if self.function == "LINEAR" else self.width > 0.0)


@dataclass(frozen=True, kw_only=True)
class GreyLevelChain:
    """Stored pixel values -> display values in [0, 1], bone bright (PS3.3 C.11).

    Build one from a data set with :meth:`from_dataset`; :meth:`values` is the math on
    any array of stored values, :meth:`apply` runs it on a decoded image through a
    cached float32 table.
    """

    bits_stored: int
    signed: bool
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: LookupTable | None = None
    voi_lut: LookupTable | None = None
    window: Window | None = None
    invert: bool = False

    @classmethod
    def from_dataset(cls, ds: Dataset) -> GreyLevelChain:
        """Read the chain's attributes; raises ``ValueError`` naming a malformed attribute."""
        bits_stored = _int_attr(ds, "BitsStored", default=_int_attr(ds, "BitsAllocated"))
        signed = _int_attr(ds, "PixelRepresentation", default=0) == 1
        slope, intercept = 1.0, 0.0
        modality_lut = _lut_from_sequence(ds, "ModalityLUTSequence", signed_first=signed)
        if modality_lut is None and "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope = _float_attr(ds, "RescaleSlope", default=1.0)
            intercept = _float_attr(ds, "RescaleIntercept", default=0.0)
            if slope == 0.0 or not (math.isfinite(slope) and math.isfinite(intercept)):
                raise ValueError(
                    f"Rescale Slope {slope} / Intercept {intercept} is not a usable transform"
                )
        voi_lut = _lut_from_sequence(ds, "VOILUTSequence", signed_first=signed or intercept < 0)
        window = _window(ds) if voi_lut is None else None
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        return cls(
            bits_stored=bits_stored,
            signed=signed,
            rescale_slope=slope,
            rescale_intercept=intercept,
            modality_lut=modality_lut,
            voi_lut=voi_lut,
            window=window,
            invert=photometric == "MONOCHROME1" or shape == "INVERSE",
        )

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value Bits Stored and Pixel Representation allow."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def modality_range(self) -> tuple[float, float]:
        """Output range of the Modality LUT step, the reference of the full-range VOI."""
        if self.modality_lut is not None:
            return self.modality_lut.out_range
        lo, hi = self.stored_range
        return (
            lo * self.rescale_slope + self.rescale_intercept,
            hi * self.rescale_slope + self.rescale_intercept,
        )

    @property
    def voi(self) -> str:
        """Which VOI step applies: ``"voi_lut"``, ``"window"`` or ``"full_range"``."""
        if self.voi_lut is not None:
            return "voi_lut"
        return "window" if self.window is not None else "full_range"

    def values(self, x: np.ndarray) -> np.ndarray:
        """The chain on stored values ``x`` (any shape): float64 in [0, 1], bone bright."""
        x = np.asarray(x, dtype=np.float64)
        if self.modality_lut is not None:
            y = self.modality_lut(x)
        else:
            y = x * self.rescale_slope + self.rescale_intercept
        if self.voi_lut is not None:
            lo, hi = self.voi_lut.out_range
            v = (self.voi_lut(y) - lo) / (hi - lo)
        elif self.window is not None:
            v = self.window(y)
        else:
            lo, hi = self.modality_range
            v = (y - lo) / (hi - lo) if hi != lo else np.zeros_like(y)
        v = np.clip(v, 0.0, 1.0)
        return 1.0 - v if self.invert else v

    def lut(self, dtype: np.dtype | str, *, mask_unused_bits: bool = True) -> np.ndarray:
        """float32 table indexed by the unsigned bit pattern of a ``dtype`` pixel (<= 16 bits).

        With ``mask_unused_bits`` only the low Bits Stored bits count (sign-extended for
        signed pixels), as PS3.5 8.1.1 says; otherwise a pattern means its ``dtype`` value.
        """
        return _lut(self, np.dtype(dtype).str.lstrip("<>=|"), mask_unused_bits)

    def apply(
        self, raw: np.ndarray, *, mask_unused_bits: bool = True, use_lut: bool | None = None
    ) -> np.ndarray:
        """The chain on a decoded image: float32 in [0, 1], same shape as ``raw``.

        Integer pixels of up to 16 bits go through the cached table of :meth:`lut`.
        When the whole chain is one affine map then a clip (rescale with a LINEAR or
        LINEAR_EXACT window, or the full range) and no stored value has stray bits
        above Bits Stored, the same numbers come 2-3x faster from four float32 array
        passes (:meth:`affine`); ``use_lut=True`` forces the table, ``False`` refuses it.
        """
        if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
            if not raw.dtype.isnative:
                raw = raw.astype(raw.dtype.newbyteorder("="))
            affine = self.affine() if use_lut is not True else None
            if affine is not None:
                lo, hi = self.stored_range
                check = mask_unused_bits and self.bits_stored < 8 * raw.dtype.itemsize
                out = _apply_affine(
                    raw,
                    *affine,
                    x_max=float(max(abs(lo), abs(hi))),
                    stored=(lo, hi) if check else None,
                )
                if out is not None:
                    return out
            if use_lut is False:
                raise ValueError(
                    "this chain is not affine (or the pixels have stray bits): it needs the table"
                )
            table = self.lut(raw.dtype, mask_unused_bits=mask_unused_bits)
            index = raw.view(f"u{raw.dtype.itemsize}")
            return _take_rows(table, index)
        if raw.dtype.kind in "ui" and mask_unused_bits:
            raw = self._masked(raw.astype(np.int64))
        return self.values(raw).astype(np.float32)

    def affine(self) -> tuple[int, float, float] | None:
        """``(x0, a, b)`` with ``values(x) == clip((x - x0) * a + b, 0, 1)``, or None if no such map.

        ``x0`` is a stored value near the window centre, so ``x - x0`` is exact in
        float32 and the products stay small where the result is inside (0, 1).
        """
        if self.modality_lut is not None or self.voi_lut is not None:
            return None
        s, i = self.rescale_slope, self.rescale_intercept
        lo_x, hi_x = self.stored_range
        w = self.window
        if w is None:
            lo, hi = self.modality_range
            if hi == lo:
                return None
            x0 = lo_x
            a, b = s / (hi - lo), (x0 * s + i - lo) / (hi - lo)
        elif w.function == "LINEAR" and w.width > 1.0:
            x0 = int(min(max(round((w.center - 0.5 - i) / s), lo_x), hi_x))
            a, b = s / (w.width - 1.0), (x0 * s + i - w.center + 0.5) / (w.width - 1.0) + 0.5
        elif w.function == "LINEAR_EXACT":
            x0 = int(min(max(round((w.center - i) / s), lo_x), hi_x))
            a, b = s / w.width, (x0 * s + i - w.center) / w.width + 0.5
        else:
            return None
        if self.invert:
            a, b = -a, 1.0 - b
        return x0, a, b

    def fits_bits_stored(self, raw: np.ndarray) -> bool:
        """Whether no stored value of integer ``raw`` has bits set above Bits Stored.

        Such values mean what they say without masking, so they may be combined (for
        example area-averaged) before the chain runs; stray bits must be masked pixel
        by pixel first (:meth:`apply` does it through the table).
        """
        if self.bits_stored >= 8 * raw.dtype.itemsize:
            return True
        return _within(raw, *self.stored_range)

    def _masked(self, x: np.ndarray) -> np.ndarray:
        x = x & ((1 << self.bits_stored) - 1)
        if self.signed:
            sign = 1 << (self.bits_stored - 1)
            x = (x ^ sign) - sign
        return x


@functools.lru_cache(maxsize=32)
def _lut(chain: GreyLevelChain, dtype: str, mask_unused_bits: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    patterns = np.arange(2 ** (8 * dt.itemsize), dtype=np.int64)  # every bit pattern
    if mask_unused_bits and chain.bits_stored < 8 * dt.itemsize:
        values = chain._masked(patterns)
    else:
        values = patterns.astype(f"u{dt.itemsize}").view(dt).astype(np.int64)
    table = chain.values(values).astype(np.float32)
    table.flags.writeable = False
    return table


#: Pixels per block of the blocked array passes below: the block's float32 output
#: (1 MiB) and numpy's index buffer stay in cache between the passes over it.
_BLOCK_PIXELS = 1 << 18


def _row_blocks(shape: tuple[int, ...]) -> Iterator[slice]:
    """Slices of whole rows of about :data:`_BLOCK_PIXELS` pixels covering a 2-D ``shape``."""
    step = max(1, _BLOCK_PIXELS // max(1, shape[1]))
    for start in range(0, shape[0], step):
        yield slice(start, start + step)


def _apply_affine(
    raw: np.ndarray,
    x0: int,
    a: float,
    b: float,
    x_max: float,
    stored: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """``clip((raw - x0) * a + b, 0, 1)`` in float32, to about 1e-7 of the float64 value.

    With ``stored`` = (lo, hi), None as soon as a value lies outside it (stray bits
    above Bits Stored: the caller then needs the masking table), checked block by block
    as the blocks are mapped, not in a pass of its own. Each block of rows is mapped
    then clipped while in cache. Where every term stays below 4 (float32 rounding then
    stays below 5e-7), OpenCV maps the block in one pass: for ``a > 0`` its min-max
    normalisation, ``x * a + g`` with the scale and shift it derives from the block's
    own extremes, which we pick so that they are ``a`` and ``g`` (1.3x faster than
    ``addWeighted``, which inverted chains use); the extremes are also the stray-bit
    check, and only the ends that can leave [0, 1] are clipped. Else four numpy passes.
    """
    g = b - x0 * a
    use_cv = raw.ndim == 2 and max(abs(a) * x_max, abs(g)) <= 4.0
    lo, hi = np.float32(0.0), np.float32(1.0)
    out = np.empty(raw.shape, dtype=np.float32)
    blocks = list(_row_blocks(raw.shape)) if raw.ndim == 2 else [slice(None)]

    def run(part: list[slice]) -> bool:
        for rows in part:
            src, dst = raw[rows], out[rows]
            if src.size == 0:
                continue
            if use_cv:
                x_min, x_max_, _, _ = cv2.minMaxLoc(src)
                if stored is not None and not stored[0] <= x_min <= x_max_ <= stored[1]:
                    return False
                y_min, y_max = a * x_min + g, a * x_max_ + g  # the block's extreme values
                if a > 0:  # (min-max normalisation only scales up: smallest to smallest)
                    cv2.normalize(src, dst, y_min, y_max, cv2.NORM_MINMAX, dtype=cv2.CV_32F)
                else:
                    cv2.addWeighted(src, a, src, 0.0, g, dst=dst, dtype=cv2.CV_32F)
                if min(y_min, y_max) < _CLIP_MARGIN:
                    cv2.threshold(dst, 0.0, 0.0, cv2.THRESH_TOZERO, dst=dst)
                if max(y_min, y_max) > 1.0 - _CLIP_MARGIN:
                    cv2.threshold(dst, 1.0, 0.0, cv2.THRESH_TRUNC, dst=dst)
                continue
            if stored is not None and not _within(src, *stored):
                return False
            np.copyto(dst, src, casting="unsafe")  # (a mixed-type subtract is 3x slower)
            dst -= np.float32(x0)  # exact: integers below 2^24
            dst *= np.float32(a)
            dst += np.float32(b)
            np.clip(dst, lo, hi, out=dst)
        return True

    return out if all(_in_threads(run, blocks, raw.size)) else None


#: A block whose values all lie this far inside [0, 1] needs no clipping: float32
#: rounding of ``x * a + g`` (terms below 4) moves a value by less than 5e-7.
_CLIP_MARGIN = 1e-6


def _within(x: np.ndarray, lo: int, hi: int) -> bool:
    """Whether every value of integer ``x`` lies in [lo, hi]."""
    if x.size == 0:
        return True
    if x.dtype.kind == "u" and lo <= 0:
        return int(x.max()) <= hi
    return lo <= int(x.min()) and int(x.max()) <= hi


def _take_rows(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for unsigned ``index`` covering every bit pattern of its dtype.

    In blocks of rows, so numpy's intp copy of the index stays in cache, and with
    ``mode="wrap"``: no index can be out of range (the table has an entry for every
    pattern), and skipping the bounds check makes the gather 1.7x faster.
    """
    out = np.empty(index.shape, dtype=np.float32)
    if index.ndim != 2:
        np.take(table, index, out=out, mode="wrap")
        return out

    def take(part: list[slice]) -> None:
        for rows in part:
            np.take(table, index[rows], out=out[rows], mode="wrap")

    _in_threads(take, list(_row_blocks(index.shape)), index.size)
    return out


#: Images at least this large are mapped by several threads...
_THREADED_PIXELS = 1 << 20
#: ... at most this many (the passes are bound by memory, not arithmetic).
_MAX_THREADS = 4


def _in_threads(fn: Callable[[list[slice]], Any], blocks: list[slice], pixels: int) -> list[Any]:
    """``fn`` over ``blocks`` split in contiguous parts, one per thread; the results.

    numpy's gathers and ufuncs and OpenCV release the GIL, so the parts run in
    parallel: on up to ``cv2.getNumThreads()`` threads (``cv2.setNumThreads(1)``
    makes the reader single-threaded, as a cache build's workers do), for images of
    :data:`_THREADED_PIXELS` or more.
    """
    threads = min(cv2.getNumThreads(), _MAX_THREADS, len(blocks))
    if pixels < _THREADED_PIXELS or threads <= 1:
        return [fn(blocks)]
    step = math.ceil(len(blocks) / threads)
    parts = [blocks[i : i + step] for i in range(0, len(blocks), step)]
    return list(_executor(threads, os.getpid()).map(fn, parts))


@functools.lru_cache(maxsize=4)
def _executor(threads: int, pid: int) -> ThreadPoolExecutor:
    # One pool per process: a pool inherited through fork has no threads behind it.
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="radsearch-grey")


def _lut_from_sequence(ds: Dataset, keyword: str, *, signed_first: bool) -> LookupTable | None:
    seq = ds.get(keyword)
    if not seq:
        return None
    item = seq[0]
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3:
        raise ValueError(f"{keyword} LUT Descriptor has {len(descriptor)} values, not 3")
    entries, first, bits = descriptor
    entries = entries or 65536
    if signed_first and first >= 32768:  # US-encoded negative first value
        first -= 65536
    elem = item["LUTData"]
    if elem.VR == "OW" or isinstance(elem.value, bytes):
        meta = getattr(ds, "file_meta", None)
        little = True
        if meta is not None and meta.get("TransferSyntaxUID"):
            little = UID(str(meta.TransferSyntaxUID)).is_little_endian
        values = np.frombuffer(bytes(elem.value), dtype="<u2" if little else ">u2")[:entries]
    else:
        value = elem.value
        values = np.asarray(
            list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        )
    if values.size == 0:
        raise ValueError(f"{keyword} has no LUT Data")
    if not 1 <= bits <= 16:
        bits = max(1, int(values.max()).bit_length())
    return LookupTable(first=first, bits=bits, data=values.astype("<i4").tobytes())


def _window(ds: Dataset) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center = _first_float(ds.WindowCenter)
        width = _first_float(ds.WindowWidth)
    except (TypeError, ValueError):
        return None  # an unusable window falls back to the full range
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    window = Window(center=center, width=width, function=function)
    return window if window.is_valid else None


def _first_float(value: Any) -> float:
    if isinstance(value, list | tuple | MultiValue):
        value = value[0]
    return float(value)


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"missing {keyword}")
        return default
    return int(value)


def _float_attr(ds: Dataset, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return _first_float(value)
