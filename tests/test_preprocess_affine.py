"""Straight grey-level chains evaluated by cv2 (edged/preprocess/affine.py) against the table.

The module's promise: where it takes over from the stored-value table, every pixel is within
one unit in 65535 of the table's entry (only rounding ties can differ), and it takes over only
for chains that are straight lines over the image's values. Whole-pipeline accuracy against the
float64 reference is tests/test_preprocess.py's job; these pin the per-pixel bound and the
choice of path.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edged.models.manifest import PreprocessSpec
from edged.preprocess import affine, luts, pixels
from edged.preprocess.native import RawPixels

CHAINS = [  # (modality, voi): rescales, both linear functions, min–max, narrow and wide windows
    (None, luts.Window("LINEAR", 15000.0, 30000.0)),
    (None, luts.Window("LINEAR_EXACT", 550.0, 1024.0)),
    (luts.Rescale(1.0, -1024.0), luts.Window("LINEAR", 40.0, 400.0)),
    (luts.Rescale(0.5, 0.0), luts.Window("LINEAR", 1.5, 2.0)),  # w - 1 = 1: steep, fits for |x| ≤ 8
    (luts.Rescale(2.5, 100.0), luts.MinMax(-3000.0, 90000.0)),
    (None, luts.MinMax(17.0, 17.0)),  # constant image: black (white inverted)
    (luts.Rescale(-1.0, 4095.0), luts.Window("LINEAR_EXACT", 2000.0, 4000.0)),  # falling rescale
    (None, luts.Window("LINEAR", 4000.5, 41.0)),  # |b| ≈ 6.5e6: float32 errs by ~0.5 unit, fits() refuses
    (None, luts.Window("LINEAR", 30000.5, 41.0)),  # |b| ≈ 4.9e7: by several units
    (luts.Rescale(1.0, -30000.0), luts.Window("LINEAR", 0.5, 3.0)),  # |b|, |a·x| near the limit
]


def _every_value(dtype: str) -> np.ndarray:
    """Every bit pattern of ``dtype``, three times over in one odd-length row, so each value
    lands both in cv2's SIMD body and in its scalar tail at some position."""
    values = np.arange(256 ** np.dtype(dtype).itemsize, dtype=f"u{np.dtype(dtype).itemsize}").view(dtype)
    return np.ascontiguousarray(np.tile(values, 3)[:-5]).reshape(1, -1)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("chain", range(len(CHAINS)))
@pytest.mark.parametrize("dtype", ["<u2", "<i2", "|u1", "|i1"])
def test_line_is_within_one_unit_of_the_table(dtype: str, chain: int, invert: bool) -> None:
    modality, voi = CHAINS[chain]
    image = _every_value(dtype)
    straight = affine.line(modality, voi, invert)
    assert straight is not None
    a, b = straight
    kept = image[np.maximum(np.abs(a * image.astype(np.float64)), abs(b)) <= affine.LIMIT]
    if kept.size == 0:
        assert not affine.fits(straight, (0, 0))  # the whole chain stays on the table
        return
    kept = np.ascontiguousarray(kept).reshape(1, -1)
    assert affine.fits(straight, (int(kept.min()), int(kept.max())))
    table = luts.stored_value_lut(dtype, modality, voi, invert)
    got = affine.LineImage(kept, *straight).gather()
    want = table[kept.view(f"u{np.dtype(dtype).itemsize}")]
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= kept.size // 100  # only values within 0.05 unit of a tie


def test_rows_write_into_the_given_buffer() -> None:
    codes = np.arange(40 * 33, dtype=np.uint16).reshape(40, 33)
    image = affine.LineImage(codes, 2.0, 5.0)
    out = np.empty((10, 33), np.uint16)
    got = image.rows(10, 20, out)
    assert got is out or np.shares_memory(got, out)
    assert np.array_equal(out, np.clip(codes[10:20].astype(np.int64) * 2 + 5, 0, 65535))


@pytest.mark.parametrize(
    ("modality", "voi"),
    [
        (None, luts.Window("SIGMOID", 100.0, 50.0)),
        (None, luts.Window("LINEAR", 100.0, 1.0)),  # width 1: a threshold
        (luts.TableLUT(0, 16, "d", np.arange(10.0)), luts.Window("LINEAR", 5.0, 10.0)),
        (None, luts.TableLUT(0, 16, "d", np.arange(10.0))),
    ],
    ids=["sigmoid", "threshold", "modality-lut", "voi-lut"],
)
def test_curves_keep_the_table(modality: luts.Modality, voi: luts.Voi) -> None:
    assert affine.line(modality, voi, False) is None


def test_values_beyond_float32s_reach_keep_the_table() -> None:
    steep = affine.line(None, luts.Window("LINEAR", 60000.0, 1.5), False)  # a = 131070
    assert steep is not None
    assert affine.fits(steep, (59999, 60001)) is False  # |a·x| ≈ 7.9e9: float32 would err by hundreds
    assert affine.fits(affine.line(None, luts.Window("LINEAR", 15000.0, 30000.0), True), (0, 32767))
    absurd = affine.line(luts.Rescale(1e-312, 1000.0), luts.Window("LINEAR_EXACT", 1000.0, 1e-308), False)
    assert absurd is not None and not affine.fits(absurd, (0, 100))  # a NaN intercept: max() alone skipped it


def _display_of(name: str, pp: PreprocessSpec = PreprocessSpec(), **changes: object) -> object:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (install pydicom-data)")
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    header = pixels._check_header(ds, 64_000_000)
    return pixels._display(ds, pixels._decode(ds, header), header, pp)


@pytest.mark.parametrize(
    ("name", "changes", "pp", "kind"),
    [
        ("RG1_UNCR.dcm", {}, PreprocessSpec(), affine.LineImage),  # chest CR: window
        ("RG1_UNCR.dcm", {}, PreprocessSpec(voi="minmax"), affine.LineImage),
        ("CT_small.dcm", {}, PreprocessSpec(), affine.LineImage),  # signed, rescale, min–max
        ("MR_small.dcm", {}, PreprocessSpec(), affine.LineImage),  # signed, window
        ("RG1_UNCR.dcm", {"VOILUTFunction": "SIGMOID"}, PreprocessSpec(), luts.TableImage),
        ("vlut_04.dcm", {}, PreprocessSpec(), luts.TableImage),  # VOI LUT Sequence
        ("mlut_18.dcm", {}, PreprocessSpec(), luts.TableImage),  # Modality LUT Sequence
    ],
)
def test_the_pipeline_takes_the_line_for_straight_chains(name: str, changes: dict, pp: PreprocessSpec,
                                                         kind: type) -> None:
    assert type(_display_of(name, pp, **changes)) is kind


def test_junk_bits_are_corrected_before_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line reads junk above Bits Stored as value: the pipeline corrects such pixels first."""
    seen: list[np.ndarray] = []
    real = affine.LineImage

    def spy(codes: np.ndarray, a: float, b: float) -> affine.LineImage:
        seen.append(codes)
        return real(codes, a, b)

    monkeypatch.setattr(affine, "LineImage", spy)
    codes = np.full((4, 4), 0xF005, dtype="<u2")  # value 5 in 12 bits, junk above
    raw = RawPixels(codes, 12)
    ds = pydicom.Dataset()
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    header = pixels._Header(4, 4, "MONOCHROME2")
    pixels._display(ds, raw, header, PreprocessSpec())
    assert seen and int(seen[0].max()) == 5


def test_selftest_group_passes_here_and_fails_on_a_line_two_units_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``edged selftest --only preprocess`` is the device's proof of this module's promise."""
    from edged.selftest.preprocess import preprocess_rows

    (row,) = preprocess_rows(repeats=1)
    assert row.status == "PASS", row.note
    assert row.data["max_difference"] <= 1 and row.data["compared"] > 1_000_000
    real = affine.LineImage.rows

    def off_by_two(self: affine.LineImage, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        got = real(self, start, stop, out)
        np.add(got, 2, out=got, casting="unsafe")
        return got

    monkeypatch.setattr(affine.LineImage, "rows", off_by_two)
    (row,) = preprocess_rows(repeats=1)
    assert row.status == "FAIL" and "units off the table" in row.note
