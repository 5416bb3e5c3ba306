"""Area-average shrinking (cv2 ``INTER_AREA``) of a full-size image that is never materialised.

Why not one ``cv2.resize``: for a non-integer scale, cv2 resamples every *source* row
horizontally with a scalar loop and only then combines rows, in one thread: ~3.6 ms for a
1955×1841 CR going to 224×224, and it needs the whole display image (7 MB of uint16) written
out first. Here the rows are combined first, strip by strip: a strip of ~250 k source pixels
is produced by a :data:`RowSource` (the LUT gather or the drawn line) into a strip buffer that
stays in L2, its destination rows are plain sums of contiguous source rows, and cv2 shrinks
the ~16 resulting rows horizontally. Strips run on :mod:`strips`' threads; nothing is kept
between calls but the weight tables.

What stays the same: the weights are cv2's own. :func:`_taps` transcribes
``computeResizeAreaTab`` (OpenCV ``imgproc/src/resize.cpp``) for the vertical axis, with its
scale ``1 / (dst / src)``, its 1e-3 threshold for dropping slivers and its float32 weights; the
horizontal pass *is* cv2's (with the row count unchanged cv2's vertical weights are exactly 1).
So the result is cv2's area average of the same image, summed in another order: only float32
rounding differs (~1e-7 relative), and cv2's final rounding to uint16 is left out.

Why strips cannot change the result: every destination row is computed from its own source
rows by the same operations whatever strip it falls in (the strips partition destination rows
and read exactly the source rows those need, boundary rows included), so any strip layout gives
the bit-identical image a single strip would. The full-weight rows of a destination row are
summed as integers in float32, exact for up to 256 rows of uint16, which :func:`applies` ensures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from edged.preprocess import strips

#: ``source(start, stop, out)`` → rows ``start:stop`` of the full-size uint16 image, either
#: written into ``out`` (a fresh ``(stop - start, columns)`` uint16 array) or as a view.
RowSource = Callable[[int, int, np.ndarray], np.ndarray]

#: cv2 ignores a partial source pixel that covers at most this much of a destination pixel.
_SLIVER = 1e-3


@dataclass(frozen=True)
class _Taps:
    """cv2's vertical weights for one (source rows, destination rows) pair, per destination row.

    Row i = ``full[i]`` × (sum of source rows ``start[i]:stop[i]``) + ``head_w[i]`` × row
    ``head[i]`` + ``tail_w[i]`` × row ``tail[i]``. An absent head or tail has weight 0 and
    points inside the row's own span, so every row is computed the same way and row i never
    reads outside ``head[i]:tail[i] + 1``.
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]
    head: np.ndarray  # (dst,) intp
    tail: np.ndarray
    full: np.ndarray  # (dst, 1) float32
    head_w: np.ndarray
    tail_w: np.ndarray


@lru_cache(maxsize=64)
def _taps(src: int, dst: int) -> _Taps:
    """``computeResizeAreaTab(src, dst, cn=1, scale)``, regrouped per destination row."""
    scale = 1.0 / (dst / src)  # as cv::resize: inv_scale = dsize / ssize, scale = 1 / inv_scale
    start, stop, head, tail, full, head_w, tail_w = [], [], [], [], [], [], []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        has_head, has_tail = s1 - f1 > _SLIVER, f2 - s2 > _SLIVER
        start.append(s1)
        stop.append(s2)
        head.append(s1 - 1 if has_head else s1)
        tail.append(s2)
        full.append(1.0 / cell)
        head_w.append((s1 - f1) / cell if has_head else 0.0)
        tail_w.append(min(f2 - s2, 1.0, cell) / cell if has_tail else 0.0)
    return _Taps(tuple(start), tuple(stop), _frozen(head, np.intp), _frozen(tail, np.intp),
                 _frozen(full, np.float32)[:, None], _frozen(head_w, np.float32)[:, None],
                 _frozen(tail_w, np.float32)[:, None])  # cv2 keeps each weight as a float


def _frozen(values: list, dtype: type) -> np.ndarray:
    out = np.asarray(values, dtype=dtype)
    out.flags.writeable = False  # cached and shared between threads
    return out


def applies(shape: tuple[int, int], height: int, width: int) -> bool:
    """True when :func:`shrink` stands for ``cv2.resize(..., INTER_AREA)`` at these sizes.

    That is a shrink on both axes (cv2 interpolates when either axis grows) that changes the
    number of rows, by less than 256× vertically (exact row sums).
    """
    rows, cols = shape
    return height < rows < 256 * height and 0 < width <= cols


def shrink(source: RowSource, shape: tuple[int, int], height: int, width: int) -> np.ndarray:
    """Area average of the ``shape`` image that ``source`` yields, at height×width, float32.

    Values stay in the source's units, unrounded. :func:`applies` must hold.
    """
    rows, cols = shape
    taps = _taps(rows, height)
    out = np.empty((height, width), dtype=np.float32)
    per_strip = max(1, round(strips.STRIP_PIXELS * height / (rows * cols)))  # destination rows
    parts = strips.spans(height, per_strip)

    def strip(k: int) -> None:
        first, last = parts[k]
        out[first:last] = _shrink_strip(source, taps, first, last, cols, width)

    strips.run(strip, len(parts))
    return out


def shrink_array(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """:func:`shrink` of an image already in memory."""
    return shrink(lambda start, stop, _: image[start:stop], image.shape, height, width)


def _shrink_strip(source: RowSource, taps: _Taps, first: int, last: int, cols: int, width: int) -> np.ndarray:
    """Destination rows ``first:last``: their source rows, summed down, then cv2 across."""
    low, high = int(taps.head[first]), int(taps.tail[last - 1]) + 1
    image = source(low, high, np.empty((high - low, cols), dtype=np.uint16))
    sums = np.empty((last - first, cols), dtype=np.float32)
    for i in range(first, last):
        full_rows = image[taps.start[i] - low : taps.stop[i] - low]
        np.add.reduce(full_rows, axis=0, dtype=np.float32, out=sums[i - first])
    sums *= taps.full[first:last]
    sums += taps.head_w[first:last] * image[taps.head[first:last] - low]
    sums += taps.tail_w[first:last] * image[taps.tail[first:last] - low]
    if width == cols:
        return sums
    return cv2.resize(sums, (width, last - first), interpolation=cv2.INTER_AREA)

