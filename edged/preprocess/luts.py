"""Grey-level maths: Modality LUT → VOI → [0, 1] → optional inversion, as value functions.

Every step is written once, as a vectorised function of *values* (float64). The fast path
evaluates that chain on every possible stored value of an 8/16-bit image (≤ 65 536 entries),
quantises it to a uint16 table and gathers the image through it: one pass over the full-size
pixels instead of five float64 passes. Where the chain is a straight line (rescale + linear
window or min–max) :mod:`edged.preprocess.affine` draws it with cv2 instead, within one unit of
this table. The rare paths (float pixel data, 32-bit integers) feed the image itself through the
very same functions, so the two paths cannot drift apart.

Semantics follow pydicom's ``apply_modality_lut`` / ``apply_voi_lut`` (PS3.3 C.11.1, C.11.2),
expressed directly in [0, 1] instead of the window's nominal output range.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from edged.preprocess import strips
from edged.preprocess.errors import PixelError
from edged.preprocess.native import correct

#: Full scale of the quantised tables: 0 → 0.0, FULL_SCALE → 1.0.
FULL_SCALE = 65535


@dataclass(frozen=True)
class Rescale:
    """Rescale Slope/Intercept (the usual Modality LUT)."""

    slope: float
    intercept: float


@dataclass(frozen=True)
class TableLUT:
    """One Modality LUT or VOI LUT Sequence item.

    ``data`` is excluded from equality/hash (a 64k tuple would be slow to hash on every call);
    ``digest`` stands in for it so equal tables share one cached stored-value LUT.
    """

    first_mapped: int
    bits: int
    digest: str
    data: np.ndarray = field(compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Window:
    """Window Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID)."""

    function: str
    center: float
    width: float


@dataclass(frozen=True)
class MinMax:
    """Stretch [low, high] of the modality-LUT output to [0, 1] (no usable VOI, or ``voi: minmax``)."""

    low: float
    high: float


Modality = Rescale | TableLUT | None
Voi = Window | TableLUT | MinMax


# --------------------------------------------------------------------------- reading the dataset


def read_modality(ds: Dataset) -> Modality:
    """The dataset's Modality LUT; the sequence wins over rescale, as in pydicom.

    A broken Modality LUT Sequence is an error rather than something to skip: without it the
    stored values have no known meaning, so any VOI applied to them would be a guess.
    """
    seq = ds.get("ModalityLUTSequence")
    if seq:
        table = _read_table(seq[0], ds)
        if table is None:
            raise PixelError("bad_lut", "Modality LUT Sequence item is malformed")
        return table
    slope, intercept = _number(ds.get("RescaleSlope")), _number(ds.get("RescaleIntercept"))
    if slope is None or intercept is None:
        return None
    return Rescale(slope, intercept)


def read_voi(ds: Dataset) -> Window | TableLUT | None:
    """The first VOI of the dataset: VOI LUT Sequence if usable, else the first window, else None.

    Unusable VOI data (bad descriptor, width below the function's minimum) is skipped rather
    than fatal: the min–max fallback still yields a meaningful image, which is what a field
    device should do with a sloppy modality.
    """
    seq = ds.get("VOILUTSequence")
    if seq:
        table = _read_table(seq[0], ds)
        if table is not None:
            return table
    center, width = _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"  # the DICOM default; unknown values are far likelier typos than new maths
    minimum_ok = width >= 1 if function == "LINEAR" else width > 0  # PS3.3 C.11.2.1.2/3
    if not minimum_ok:
        return None
    return Window(function, center, width)


def _number(value: Any) -> float | None:
    """First value of a (possibly multi-valued) DS/IS element as a finite float, else None."""
    if value is None or isinstance(value, (str, bytes)) and not value.strip():
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_table(item: Dataset, ds: Dataset) -> TableLUT | None:
    """Parse LUT Descriptor + LUT Data; None when the item cannot be used safely."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item["LUTData"].value
    except Exception:  # missing element, wrong VM, unparsable value: all mean "unusable"
        return None
    entries = entries or 65536
    if not 1 <= bits <= 16 or raw is None:
        return None
    if first >= 32768 and ds.get("PixelRepresentation") == 1:
        first -= 65536  # descriptor read as US for a signed image
    data = _lut_values(raw, ds)[:entries].astype(np.float64)
    if data.size == 0:
        return None
    digest = hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()
    return TableLUT(first, bits, digest, data)


def _lut_values(raw: Any, ds: Dataset) -> np.ndarray:
    """LUT Data as integers: OW bytes are 16-bit words in the dataset's byte order."""
    if isinstance(raw, (bytes, bytearray)):
        little = True
        meta = getattr(ds, "file_meta", None)
        tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
        if tsyntax is not None and tsyntax.is_transfer_syntax:
            little = tsyntax.is_little_endian
        elif getattr(ds, "original_encoding", (None, None))[1] is not None:
            little = bool(ds.original_encoding[1])
        usable = len(raw) - len(raw) % 2
        return np.frombuffer(bytes(raw[:usable]), dtype="<u2" if little else ">u2")
    if isinstance(raw, int):
        return np.asarray([raw])
    return np.asarray(list(raw))


# --------------------------------------------------------------------------- the value functions


def modality_values(values: np.ndarray, modality: Modality) -> np.ndarray:
    """Stored values → modality output (float), as pydicom's apply_modality_lut."""
    if modality is None:
        return values
    if isinstance(modality, Rescale):
        return values * modality.slope + modality.intercept
    return _lookup(values, modality)


def unit_values(y: np.ndarray, voi: Voi) -> np.ndarray:
    """Modality output → VOI output scaled to [0, 1].

    For windows this is pydicom's formula divided by its output range, which cancels: the result
    no longer depends on Bits Stored or the rescale that pydicom uses to pick y_min/y_max.
    """
    if isinstance(voi, Window):
        if voi.function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (y - voi.center) / voi.width))
        center, width = voi.center, voi.width
        if voi.function == "LINEAR":  # PS3.3 C.11.2.1.2.1: c - 0.5, w - 1
            center, width = center - 0.5, width - 1.0
        if width == 0:  # LINEAR with width 1: a hard threshold
            return (y > center).astype(y.dtype)
        return np.clip((y - center) / width + 0.5, 0.0, 1.0)
    if isinstance(voi, TableLUT):
        return _lookup(y, voi) / float(2**voi.bits - 1)
    if voi.high > voi.low:
        return np.clip((y - voi.low) / (voi.high - voi.low), 0.0, 1.0)
    return np.zeros_like(y)  # a constant image carries no contrast: map it to black


def _lookup(values: np.ndarray, table: TableLUT) -> np.ndarray:
    """LUT Sequence semantics: below the first mapped value → entry 0, past the end → last entry."""
    index = np.floor(values) - table.first_mapped
    np.clip(index, 0, table.data.size - 1, out=index)
    return table.data[index.astype(np.intp)]


# --------------------------------------------------------------------------- fast path: one table


def value_range(arr: np.ndarray, modality: Modality,
                bounds: tuple[int, int] | None = None) -> tuple[float, float]:
    """Exact min and max of the modality output over the pixels of an integer image.

    Only the stored-value extremes are needed when the modality mapping is monotonic (rescale
    always is; real Modality LUTs almost always are), which costs one cheap min/max pass. A
    non-monotonic table falls back to a histogram of the values actually present. ``bounds``:
    the stored values' (min, max) when the caller has them already.
    """
    low, high = bounds if bounds is not None else (int(arr.min()), int(arr.max()))
    if not isinstance(modality, TableLUT):
        ends = modality_values(np.array([low, high], dtype=np.float64), modality)
        return float(ends.min()), float(ends.max())
    mapped = modality_values(np.arange(low, high + 1, dtype=np.float64), modality)
    steps = np.diff(mapped)
    if np.all(steps >= 0) or np.all(steps <= 0):
        return float(min(mapped[0], mapped[-1])), float(max(mapped[0], mapped[-1]))
    present = np.bincount((arr.ravel().astype(np.int64) - low), minlength=high - low + 1) > 0
    return float(mapped[present].min()), float(mapped[present].max())


@lru_cache(maxsize=32)
def stored_value_lut(dtype: str, modality: Modality, voi: Voi, invert: bool,
                     bits_stored: int | None = None) -> np.ndarray:
    """The whole grey-level chain for every bit pattern of an 8/16-bit dtype, as uint16.

    Indexed by the *unsigned view* of the pixels, so signed data needs no offsetting pass:
    entry i holds the result for the signed value whose bit pattern is i. Covering every bit
    pattern (not just Bits Stored) reproduces pydicom even for garbage in the unused high bits.
    With ``bits_stored`` the table is for pixels whose unused bits were *not* corrected
    (:mod:`edged.preprocess.native`): entry i holds the result for pattern i corrected as
    pydicom corrects it, so the gather does the correction.
    Cached per parameter tuple: a site sends a handful of distinct windows, and a 16-bit table
    costs ~1 ms to build but 128 KiB to keep.
    """
    kind = np.dtype(dtype)
    codes = np.arange(256**kind.itemsize, dtype=f"u{kind.itemsize}").view(kind)
    if bits_stored is not None:
        codes = correct(codes, bits_stored)
    unit = unit_values(modality_values(codes.astype(np.float64), modality), voi)
    if invert:
        unit = 1.0 - unit
    table = np.rint(unit * FULL_SCALE).astype(np.uint16)
    table.flags.writeable = False  # shared between calls and threads
    return table


@dataclass(frozen=True)
class TableImage:
    """The display image as stored values plus their :func:`stored_value_lut` table.

    Nothing full-size is computed up front: :mod:`edged.preprocess.area` asks for strips of
    rows (:meth:`rows`) and shrinks each while it is still in cache; other resizes take the
    whole image (:meth:`gather`).
    """

    table: np.ndarray
    codes: np.ndarray  # the pixels' unsigned view: every value is a valid index into ``table``

    @classmethod
    def of(cls, table: np.ndarray, arr: np.ndarray) -> TableImage:
        return cls(table, arr.view(f"u{arr.dtype.itemsize}"))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Display rows ``start:stop``, gathered into ``out``.

        ``mode="wrap"`` is not about wrapping: the table has an entry for every bit pattern, so
        no index is out of range, and with ``out=`` the default ``mode="raise"`` would gather
        into a hidden temporary and copy that over.
        """
        return np.take(self.table, self.codes[start:stop], out=out, mode="wrap")

    def gather(self) -> np.ndarray:
        """The whole display image (uint16), gathered in row strips on :mod:`strips`' threads."""
        return whole(self.rows, self.shape)


def whole(rows: Callable[[int, int, np.ndarray], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Every row that ``rows(start, stop, out)`` writes, in one uint16 array: row strips on
    :mod:`strips`' threads (a :class:`TableImage`'s or an affine ``LineImage``'s ``gather``)."""
    out = np.empty(shape, dtype=np.uint16)
    parts = strips.spans(shape[0], strips.STRIP_PIXELS // max(1, shape[1]))

    def strip(k: int) -> None:
        start, stop = parts[k]
        target = out[start:stop]
        got = rows(start, stop, target)
        if not np.may_share_memory(got, target):  # a source may answer with a view of its own
            target[...] = got

    strips.run(strip, len(parts))
    return out


def apply_table(table: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """Gather ``arr`` through a :func:`stored_value_lut` table (one pass, uint16 out)."""
    return TableImage.of(table, arr).gather()


# --------------------------------------------------------------------------- rare path: direct


def transform_direct(arr: np.ndarray, modality: Modality, voi: Voi | None, invert: bool) -> np.ndarray:
    """Float pixel data or 32-bit integers: the same value functions on the image itself.

    Float data stays float32 (its own precision); 32-bit integers go through float64 because
    float32 would round values above 2**24 before the window sees them.
    """
    work = arr.astype(np.float64 if arr.dtype.kind in "iu" else np.float32)
    y = modality_values(work, modality)
    if voi is None:
        finite = y[np.isfinite(y)]
        voi = MinMax(float(finite.min()), float(finite.max())) if finite.size else MinMax(0.0, 0.0)
    unit = np.nan_to_num(unit_values(y, voi), nan=0.0, posinf=1.0, neginf=0.0)
    if invert:
        unit = 1.0 - unit
    return unit.astype(np.float32, copy=False)
