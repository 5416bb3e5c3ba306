"""``edged selftest`` group ``preprocess``: this device's OpenCV draws the grey-level line as the table would.

The pipeline evaluates straight grey-level chains with ``cv2.addWeighted`` instead of a table
(:mod:`edged.preprocess.affine`), promising every pixel within one unit in 65535 of the table.
CI proves that on PyPI's OpenCV; a Jetson runs JetPack's own OpenCV build (4.1 on JetPack 4.6,
4.5 on 5.1, 4.8 on 6), with NEON kernels CI never executes. So the device checks it: every
stored value of every 8- and 16-bit type (signed and unsigned, at positions in the SIMD body and
in the scalar tail) through the chains a chest CR, a CT and a min–max stretch produce and a steep
one near the float32 bound, inverted and not. The row
also times the gather and the line on a chest-sized image, so the report shows what the line
buys on this CPU.
"""

from __future__ import annotations

import time
from typing import Any

from edged.selftest.report import Row

#: (name, modality, voi) built lazily: importing luts here would load numpy for ``--help``.
_CHAINS = ("chest CR window", "CT rescale + window", "min-max stretch", "steep, near the float32 bound")
#: Every stored-value type: unsigned 16-bit takes cv2's float32 kernel, the others a 32-bit path.
DTYPES = ("<u2", "<i2", "|u1", "|i1")


def _chains() -> list[tuple[str, Any, Any]]:
    from edged.preprocess import luts

    made = [(None, luts.Window("LINEAR", 15000.0, 30000.0)),
            (luts.Rescale(1.0, -1024.0), luts.Window("LINEAR", 40.0, 400.0)),
            (luts.Rescale(2.5, 100.0), luts.MinMax(-3000.0, 90000.0)),
            (luts.Rescale(1.0, -30000.0), luts.Window("LINEAR", 0.5, 3.0))]  # |a·x|, |b| close to LIMIT
    return [(name, *chain) for name, chain in zip(_CHAINS, made)]


def _worst(dtype: str, modality: Any, voi: Any, invert: bool) -> tuple[int, int, int]:
    """(largest difference, pixels that differ, pixels compared) of line vs table over every value fits() admits."""
    import numpy as np

    from edged.preprocess import affine, luts

    straight = affine.line(modality, voi, invert)
    if straight is None:
        raise AssertionError("the chain is not a line")
    size = np.dtype(dtype).itemsize
    values = np.arange(256**size, dtype=f"u{size}").view(dtype)
    a, b = straight
    kept = values[np.maximum(np.abs(a * values.astype(np.float64)), abs(b)) <= affine.LIMIT]
    if kept.size == 0:
        return 0, 0, 0
    image = np.ascontiguousarray(np.tile(kept, 3)[:-5]).reshape(1, -1)  # each value in SIMD body and tail
    got = affine.LineImage(image, a, b).gather().astype(np.int64)
    want = luts.stored_value_lut(dtype, modality, voi, invert)[image.view(f"u{size}")].astype(np.int64)
    diff = np.abs(got - want)
    return int(diff.max()), int(np.count_nonzero(diff)), int(diff.size)


def _timings(repeats: int) -> dict[str, float]:
    """Median ms of the table gather and of the line over a 1955×1841 15-bit image, one thread."""
    import numpy as np

    from edged.preprocess import affine, luts

    codes = np.random.default_rng(0).integers(800, 26500, (1955, 1841), dtype=np.uint16)
    voi = luts.Window("LINEAR", 15000.0, 30000.0)
    table = luts.stored_value_lut("<u2", None, voi, True)
    line = affine.LineImage(codes, *affine.line(None, voi, True))
    out = np.empty_like(codes)

    def median(fn: Any) -> float:
        fn()
        times = []
        for _ in range(max(3, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return round(sorted(times)[len(times) // 2], 2)

    return {"gather_ms": median(lambda: np.take(table, codes, out=out, mode="wrap")),
            "line_ms": median(lambda: line.rows(0, codes.shape[0], out))}


def preprocess_rows(repeats: int = 5) -> list[Row]:
    try:
        import cv2

        worst, differing, compared = 0, 0, 0
        for name, modality, voi in _chains():
            for dtype in DTYPES:
                for invert in (False, True):
                    w, d, n = _worst(dtype, modality, voi, invert)
                    if w > 1:
                        return [Row("preprocess", "grey-level line vs table", "FAIL",
                                    f"{name} ({dtype}, invert={invert}): a pixel {w} units off the table "
                                    f"(OpenCV {cv2.__version__}): this build breaks the line path; report it with this JSON")]
                    worst, differing, compared = max(worst, w), differing + d, compared + n
        times = _timings(repeats)
        note = (f"OpenCV {cv2.__version__}: {compared} pixels, {differing} one unit off (rounding ties), none more; "
                f"chest-sized image gather {times['gather_ms']} ms, line {times['line_ms']} ms")
        return [Row("preprocess", "grey-level line vs table", "PASS", note,
                    {"opencv": cv2.__version__, "max_difference": worst, "differing": differing,
                     "compared": compared, **times})]
    except Exception as exc:
        return [Row("preprocess", "grey-level line vs table", "FAIL", f"{type(exc).__name__}: {exc}"[:300])]
