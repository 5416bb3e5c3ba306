#!/usr/bin/env python3
"""Preprocessing cost per file: decode, our transform, and the naive float64 chain it replaces.

    python tools/bench_preprocess.py [--reps 7] [FILE ...]   # default: RG1_UNCR.dcm RG1_J2KR.dcm

Files are pydicom-data names or paths. Medians over ``--reps`` runs; decode is timed on a fresh
dataset each run (pydicom caches pixel_array) as the pipeline decodes (uncompressed little-endian
pixels are read in place, edged/preprocess/native.py; "pydicom ms" is ``pixel_array``), transform on the decoded one with a warm LUT
cache, which is the steady state of a daemon seeing one modality's window over and over.
The transform is also split into its stages (grey levels: the LUT gather, or cv2's line for a
straight chain, edged/preprocess/affine.py; resize; tensor), each timed alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

from edged.models.manifest import InputSpec, PreprocessSpec  # noqa: E402
from edged.preprocess import affine, area, luts, pixels, prepare_timed  # noqa: E402

SPEC = InputSpec(name="input", height=224, width=224)
PP = PreprocessSpec()


def naive(ds: pydicom.Dataset) -> np.ndarray:
    """The obvious float64 chain on the full-size image (what the fast path replaces)."""
    x = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)  # stand-in scaling: same passes, same cost
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    x = cv2.resize(x, (SPEC.width, SPEC.height), interpolation=cv2.INTER_AREA)
    mean, std = np.asarray(PP.mean)[:, None, None], np.asarray(PP.std)[:, None, None]
    return (np.stack([x] * SPEC.channels) - mean) / std


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def stages(ds: pydicom.Dataset, reps: int) -> tuple[float, float, float, float]:
    """Median ms of the grey-level step, the resize, both as the pipeline runs them, and the tensor step.

    The pipeline fuses the first two for an area shrink (strips gathered and shrunk while in
    cache), so "LUT" gathers the whole image and "resize" shrinks that in-memory image, for
    comparison. Uses the pipeline's private stage functions on purpose: this is where time goes.
    """
    header = pixels._check_header(ds, 64_000_000)
    arr = pixels._decode(ds, header)
    h, w = SPEC.height, SPEC.width

    def display() -> object:
        return pixels._display(ds, arr, header, PP)

    def gathered() -> np.ndarray:
        image = display()
        return image.gather() if isinstance(image, (luts.TableImage, affine.LineImage)) else image

    full = gathered()
    if full.dtype == np.uint16 and area.applies(full.shape, h, w):
        resize = median_ms(lambda: area.shrink_array(full, h, w), reps)
    else:
        resize = median_ms(lambda: cv2.resize(full, (w, h), interpolation=cv2.INTER_AREA), reps)
    image = pixels._resize(display(), h, w, PP)
    lut = median_ms(gathered, reps)
    fused = median_ms(lambda: pixels._resize(display(), h, w, PP), reps)
    tensor = median_ms(lambda: pixels._to_tensor(image, SPEC, PP), reps)
    return lut, resize, fused, tensor


def _decode(ds: pydicom.Dataset) -> object:
    return pixels._decode(ds, pixels._check_header(ds, 64_000_000))


def bench(path: str, reps: int) -> tuple[float, ...]:
    """decode, pydicom, LUT, resize, LUT+resize, tensor, transform and naive medians (ms) for one file."""
    decode = median_ms(lambda: _decode(pydicom.dcmread(path)), reps)  # includes the file's read
    by_pydicom = median_ms(lambda: pydicom.dcmread(path).pixel_array, reps)
    ds = pydicom.dcmread(path)
    prepare_timed(ds, SPEC, PP)  # decode once, warm cv2, the LUT cache and the thread pool
    transform = statistics.median(prepare_timed(ds, SPEC, PP)[1]["transform_ms"] for _ in range(reps))
    return decode, by_pydicom, *stages(ds, reps), transform, median_ms(lambda: naive(ds), reps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(
        f"{'file':<16} {'decode ms':>10} {'pydicom ms':>11} {'LUT ms':>7} {'resize ms':>10} {'LUT+resize':>11} {'tensor ms':>10}"
        f" {'transform ms':>13} {'naive f64 ms':>13} {'speed-up':>9}"
    )
    for name in args.files:
        path = name if Path(name).exists() else get_testdata_file(name)
        if path is None:
            print(f"{name:<16} not found (install pydicom-data)")
            continue
        decode, by_pydicom, lut, resize, fused, tensor, transform, slow = bench(str(path), args.reps)
        row = f"{Path(name).name:<16} {decode:>10.1f} {by_pydicom:>11.1f} {lut:>7.2f} {resize:>10.2f} {fused:>11.2f}"
        row += f" {tensor:>10.2f} {transform:>13.2f} {slow:>13.1f}"
        print(f"{row} {slow / transform:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
