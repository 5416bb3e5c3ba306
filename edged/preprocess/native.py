"""Uncompressed pixels read in place: a view on the dataset's own bytes, unused bits left as sent.

Why: for an uncompressed 16-bit image pydicom's ``pixel_array`` copies the 7 MB of a chest CR
and then shifts every pixel left and right to clear the bits above *Bits Stored* (PS3.5 8.1.1:
their values cannot be assumed). That was ~8 ms of CPU per image, more than the whole grey-level
chain and resize after it (issue #14), and it is work the stored-value table can do for free:
the table has an entry for every 16-bit pattern anyway, so the entry for a pattern with junk in
the unused bits simply holds the result for the corrected value
(:func:`edged.preprocess.luts.stored_value_lut` with ``bits_stored``).

What is read in place: Implicit or Explicit VR Little Endian (as received: the spool keeps what
the modality sent), one sample per pixel, Bits Allocated 8 or 16, on a little-endian host. The
view is read-only and covers exactly Rows × Columns values (``pixels._check_native_length``
has already refused data shorter than that, or longer by more than a row of padding).
Everything else — compressed syntaxes, big endian, 32-bit and float pixel data — goes through
pydicom unchanged.

The promise: what the pipeline computes from a :class:`RawPixels` is bit-identical to what it
computes from pydicom's corrected ``pixel_array``; ``tests/test_preprocess.py`` holds both paths
to that, junk bits included.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset

_IN_PLACE_SYNTAXES = frozenset([uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian])


@dataclass(frozen=True)
class RawPixels:
    """Stored values as sent: ``codes`` may carry junk above ``bits_stored``."""

    codes: np.ndarray  # (rows, columns), read-only, uint8/int8/uint16/int16
    bits_stored: int

    @property
    def dtype(self) -> np.dtype:
        return self.codes.dtype

    def bounds(self) -> tuple[int, int] | None:
        """``(min, max)`` of the stored values when no pixel has junk in its unused bits (then
        ``codes`` equals pydicom's corrected array: a value in range has its unused bits equal
        to zero or to its sign), else None. One min/max pass, which a min–max stretch needs
        anyway."""
        low, high = int(self.codes.min()), int(self.codes.max())
        bits = self.bits_stored
        if bits >= self.dtype.itemsize * 8:
            clean = True
        elif self.dtype.kind == "u":
            clean = high < (1 << bits)
        else:
            clean = -(1 << (bits - 1)) <= low and high < (1 << (bits - 1))
        return (low, high) if clean else None

    def corrected(self) -> np.ndarray:
        """pydicom's ``_correct_unused_bits``: a copy with the unused bits cleared (unsigned) or
        set to the sign (signed)."""
        return correct(self.codes, self.bits_stored)


def correct(codes: np.ndarray, bits_stored: int) -> np.ndarray:
    """Shift left then right by the unused bits in the array's own dtype (arithmetic for signed):
    exactly pydicom 3's ``_correct_unused_bits``."""
    shift = codes.dtype.itemsize * 8 - bits_stored
    out = codes.copy()
    if shift:
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)
    return out


def read_in_place(ds: Dataset, rows: int, columns: int) -> RawPixels | None:
    """The pixels of ``ds`` as a view on its *Pixel Data* bytes, or None when pydicom must decode
    them. The header must have passed ``pixels._check_header`` (sizes, bits, one frame)."""
    if sys.byteorder != "little":
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _IN_PLACE_SYNTAXES:
        return None
    if "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if allocated not in (8, 16):
        return None
    data = ds.PixelData
    if not isinstance(data, (bytes, bytearray)):
        return None
    signed = int(ds.PixelRepresentation) == 1
    dtype = np.dtype(f"{'<' if allocated == 16 else '|'}{'i' if signed else 'u'}{allocated // 8}")
    codes = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    codes.flags.writeable = False
    return RawPixels(codes, stored)
