"""Grey-level chains that are a straight line, evaluated by cv2 instead of gathered through a table.

Why: most projection radiographs carry a Rescale (or none) and a linear window, or no window and
get the min–max stretch. Then the whole chain Modality LUT → VOI → [0, 1] → inversion, at the
table's full scale, is ``clip(a·x + b, 0, FULL_SCALE)`` of the stored value x. Gathering 3.6 M
stored values through a 64–128 KiB table is random reads that miss L1, 1–2 ns per pixel;
``cv2.addWeighted`` evaluates the line with SIMD in about a seventh of that for unsigned 16-bit
pixels, what CR and DX send (chest CR, one core: gather 4.2 ms, line 0.6 ms; issue #14); signed
and 8-bit pixels go through a 32-bit intermediate with double weights, slower but still ahead of
the gather (int16 4.9 against 7.0 ms). :class:`LineImage` stands where
:class:`edged.preprocess.luts.TableImage` would: same ``shape``, ``rows`` and ``gather``, so the
area shrink (:mod:`edged.preprocess.area`) consumes either strip by strip.

What may differ from the table, and why it is bounded: cv2 computes the line in float32 and
rounds once (``saturate_cast``); the table evaluates the same chain in float64 and rounds with
``np.rint``. :func:`fits` admits a line only when ``|a·x|`` and ``|b|`` stay ≤ 2**18 for every
stored value in the image (and both are finite), so float32's error stays near 0.05 of one unit
in 65535, far below the half unit that would matter: a pixel can
differ from the table only where the exact value lies that close to a rounding tie, and then by
exactly one unit — inside the table's own half-unit quantisation budget, which the tests'
tolerance against the float64 reference already carries (``tests/test_preprocess.py``).

When the table is kept: a Modality or VOI LUT Sequence, a SIGMOID window, a width-1 LINEAR window
(a hard threshold), and any image whose values would break the bound above. A line reads junk
above Bits Stored as value, so :func:`edged.preprocess.pixels._display` corrects such pixels
first (as pydicom does) where the chain is a line; where it bends, the table clears junk itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edged.preprocess.luts import FULL_SCALE, MinMax, Modality, Rescale, Voi, Window, whole

#: Largest |a·x| and |b| admitted: float32 then errs by about 2**18 × 2**-24 × 3 ≈ 0.05 of one unit.
LIMIT = float(1 << 18)


def line(modality: Modality, voi: Voi, invert: bool) -> tuple[float, float] | None:
    """``(a, b)`` with table entry ≈ ``clip(a·x + b, 0, FULL_SCALE)``, or None if the chain bends.

    The same maths as :func:`edged.preprocess.luts.unit_values` (PS3.3 C.11.2.1.2: LINEAR uses
    c − 0.5 and w − 1), collected into one slope and intercept.
    """
    if modality is None:
        slope, intercept = 1.0, 0.0
    elif isinstance(modality, Rescale):
        slope, intercept = modality.slope, modality.intercept
    else:
        return None
    if isinstance(voi, Window):
        if voi.function not in ("LINEAR", "LINEAR_EXACT"):
            return None
        center, width = voi.center, voi.width
        if voi.function == "LINEAR":
            center, width = center - 0.5, width - 1.0
        if width == 0:
            return None
        gain, offset = 1.0 / width, 0.5 - center / width  # unit = y·gain + offset
    elif isinstance(voi, MinMax):
        if voi.high > voi.low:
            gain = 1.0 / (voi.high - voi.low)
            offset = -voi.low * gain
        else:
            gain, offset = 0.0, 0.0  # a constant image: black, as unit_values
    else:
        return None
    a = FULL_SCALE * slope * gain
    b = FULL_SCALE * (intercept * gain + offset)
    if invert:  # FULL_SCALE·(1 − clip(u)) = clip(FULL_SCALE − FULL_SCALE·u)
        a, b = -a, FULL_SCALE - b
    return a, b


def fits(coefficients: tuple[float, float], bounds: tuple[int, int]) -> bool:
    """True when float32 evaluates the line to within 0.05 unit for stored values in ``bounds``."""
    a, b = coefficients
    low, high = bounds
    if not (math.isfinite(a) and math.isfinite(b)):  # absurd headers (1e-308 widths): max() skips NaN
        return False
    return max(abs(a * low), abs(a * high), abs(b)) <= LIMIT


@dataclass(frozen=True)
class LineImage:
    """The display image as clean stored values plus the line that maps them (uint16 out)."""

    codes: np.ndarray  # (rows, columns) integers of ≤ 16 bits, no junk above Bits Stored
    a: float
    b: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape

    def rows(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Display rows ``start:stop`` written into ``out`` (uint16)."""
        part = self.codes[start:stop]
        return cv2.addWeighted(part, self.a, part, 0.0, self.b, dst=out, dtype=cv2.CV_16U)

    def gather(self) -> np.ndarray:
        """The whole display image (uint16), in row strips on the strip threads."""
        return whole(self.rows, self.shape)
