"""The fast pixel pipeline against a plain float64 reference on real DICOM files.

The reference below is deliberately the obvious implementation (pydicom's own modality/VOI
functions in float64, cv2 on float64, numpy normalisation): if the folded-LUT fast path ever
drifts from DICOM semantics, these tests show it on real data.

Tolerance, from the quantisation the fast path introduces:
  * the grey-level table is uint16 at full scale 65535: ≤ 0.5/65535 per pixel in [0, 1];
  * cv2 resizes that uint16 image with float weights and rounds once: another ≤ 0.5/65535
    (an average of values each off by ≤ 0.5/65535 is itself off by ≤ 0.5/65535); an area
    shrink (edged.preprocess.area: cv2's weights, rows first, float32 out) skips that rounding;
  * so ≤ 1/65535 ≈ 1.53e-5 in [0, 1], divided by the smallest std (0.224) ≈ 6.8e-5, plus float32
    arithmetic on values ≤ 2.7 (≈ 3e-7). FLOAT32_TOL = 1e-4 covers that with a little margin.
  * float16 output adds one float16 rounding: half an ulp at |x| < 4 is 2**-10 ≈ 9.8e-4, so
    FLOAT16_TOL = 2e-3.
"""

from __future__ import annotations

import copy
import pickle
import statistics
import threading
import time

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragmented_frames, itemize_fragment
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from edged.models.manifest import InputSpec, PreprocessSpec
from edged.preprocess import PixelError, area, luts, native, prepare, prepare_timed, strips

FLOAT32_TOL = 1e-4
FLOAT16_TOL = 2e-3

SPEC = InputSpec(name="input", height=224, width=224)
PP = PreprocessSpec()


def load(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (install pydicom-data)")
    return pydicom.dcmread(path)


# --------------------------------------------------------------------------- the reference


def _window_range(ds: Dataset) -> tuple[float, float]:
    """pydicom's apply_windowing output range (y_min, y_max), copied from its source."""
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, 2.0**ds.BitsStored - 1
    else:
        y_min, y_max = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return y_min, y_max


def _reference_unit(ds: Dataset, pp: PreprocessSpec) -> np.ndarray:
    """Full-size float64 image in [0, 1]: modality LUT → VOI → scale → inversion."""
    arr = ds.pixel_array
    y = apply_modality_lut(arr, ds)
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if pp.voi == "auto" and has_lut:
        bits = ds.VOILUTSequence[0].LUTDescriptor[2]
        x = apply_voi_lut(y, ds).astype(np.float64) / (2.0**bits - 1)
    elif pp.voi == "auto" and has_window:
        y_min, y_max = _window_range(ds)
        x = (apply_voi_lut(y.astype(np.float64), ds) - y_min) / (y_max - y_min)
    else:
        y = y.astype(np.float64)
        low, high = y.min(), y.max()
        x = (y - low) / (high - low) if high > low else np.zeros_like(y)
    if pp.invert_monochrome1 and ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    return x


def reference(ds: Dataset, spec: InputSpec = SPEC, pp: PreprocessSpec = PP) -> np.ndarray:
    x = _reference_unit(ds, pp)
    interp = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}[pp.resize]
    h, w = x.shape
    th, tw = spec.height, spec.width
    if pp.keep_aspect:
        scale = min(spec.height / h, spec.width / w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    if (th, tw) != (h, w):
        x = cv2.resize(x, (tw, th), interpolation=interp)
    canvas = np.zeros((spec.height, spec.width))
    top, left = (spec.height - th) // 2, (spec.width - tw) // 2
    canvas[top : top + th, left : left + tw] = x
    mean = np.broadcast_to(np.asarray(pp.mean, np.float64), (spec.channels,))
    std = np.broadcast_to(np.asarray(pp.std, np.float64), (spec.channels,))
    out = np.stack([(canvas - m) / s for m, s in zip(mean, std)])
    return out if spec.layout == "NCHW" else out.transpose(1, 2, 0)


def assert_matches(ds: Dataset, spec: InputSpec = SPEC, pp: PreprocessSpec = PP) -> np.ndarray:
    got = prepare(ds, spec, pp)
    want = reference(ds, spec, pp)
    assert got.dtype == np.dtype(spec.dtype)
    assert got.shape == want.shape
    tol = FLOAT32_TOL if spec.dtype == "float32" else FLOAT16_TOL
    diff = np.abs(got.astype(np.float64) - want).max()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol}"
    return got


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize(
    "name",
    [
        "RG1_UNCR.dcm",  # CR chest, MONOCHROME1, 15-bit, window
        "RG3_UNCR.dcm",  # CR, MONOCHROME1, 10-bit, window
        "CT_small.dcm",  # signed, rescale, no window → min-max
        "MR_small.dcm",  # signed, window
        "mlut_18.dcm",  # Modality LUT Sequence, signed stored values
        "vlut_04.dcm",  # VOI LUT Sequence, 8-bit
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless, 8-bit
        "JPGExtended.dcm",  # JPEG extended (lossy 12-bit), no VOI
        "JPEG-LL.dcm",  # JPEG lossless, signed 16-bit
        "MR_small_RLE.dcm",  # RLE
        "MR2_J2KR.dcm",  # JPEG 2000 lossless, 12-bit, rescale + window
        "693_J2KR.dcm",  # JPEG 2000 lossless, signed, rescale + window
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "MR_small_padded.dcm",  # trailing dataset padding
        "image_dfl.dcm",  # Deflated Explicit VR, 8-bit
        "rtdose_1frame.dcm",  # 32-bit unsigned: the direct (non-LUT) path
        "rtdose_expb_1frame.dcm",  # 32-bit big endian
        "rtdose_rle_1frame.dcm",  # 32-bit RLE
    ],
)
@pytest.mark.filterwarnings("ignore:The pixel data is 8320 bytes long")  # MR_small_padded: expected
def test_matches_reference_on_real_files(name: str) -> None:
    assert_matches(load(name))


def test_j2k_lossless_twin_equals_uncompressed() -> None:
    plain = prepare(load("RG1_UNCR.dcm"), SPEC, PP)
    j2k = prepare(load("RG1_J2KR.dcm"), SPEC, PP)
    assert np.array_equal(plain, j2k)  # lossless decode → identical stored values → identical LUT output


@pytest.mark.parametrize(
    "twin", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_compressed_twins_equal_uncompressed(twin: str) -> None:
    assert np.array_equal(prepare(load("MR_small.dcm"), SPEC, PP), prepare(load(twin), SPEC, PP))


def test_monochrome1_is_inverted_only_when_asked() -> None:
    ds = load("RG1_UNCR.dcm")
    inverted = assert_matches(ds)
    plain = assert_matches(ds, pp=PreprocessSpec(invert_monochrome1=False))
    unit_inv = inverted[0] * PP.std[0] + PP.mean[0]
    unit_plain = plain[0] * PP.std[0] + PP.mean[0]
    assert np.abs(unit_inv + unit_plain - 1.0).max() < 1e-4


# --------------------------------------------------------------------------- derived datasets


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "MR_small.dcm"])
def test_voi_lut_functions(name: str, function: str) -> None:
    ds = load(name)
    ds.VOILUTFunction = function
    assert_matches(ds)


def test_unknown_voi_function_means_linear() -> None:
    """pydicom raises on an unknown VOI LUT Function; a field device applies the DICOM default."""
    ds = load("MR_small.dcm")
    want = prepare(ds, SPEC, PP)
    ds.VOILUTFunction = "LINEAR_EXCAT"
    assert np.array_equal(prepare(ds, SPEC, PP), want)


def test_first_of_multiple_windows() -> None:
    ds = load("RG1_UNCR.dcm")
    ds.WindowCenter, ds.WindowWidth = [12000, 15000], [8000, 30000]
    assert_matches(ds)


def test_window_width_one_is_a_threshold() -> None:
    ds = load("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 600, 1
    assert_matches(ds)


def test_signed_rescaled_ct_with_window() -> None:
    ds = load("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    assert_matches(ds)


def test_voi_lut_wins_over_window() -> None:
    ds = load("vlut_04.dcm")
    ds.WindowCenter, ds.WindowWidth = 10, 5
    assert_matches(ds)


def test_minmax_ignores_window() -> None:
    assert_matches(load("RG1_UNCR.dcm"), pp=PreprocessSpec(voi="minmax"))


def test_invalid_window_falls_back_to_minmax() -> None:
    ds = load("MR_small.dcm")
    ds.WindowWidth = 0
    got = prepare(ds, SPEC, PP)
    del ds.WindowCenter, ds.WindowWidth
    assert np.abs(got - reference(ds)).max() <= FLOAT32_TOL


def test_monochrome1_variant() -> None:
    ds = load("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert_matches(ds)


def _restore(ds: Dataset, arr: np.ndarray, bits_stored: int) -> Dataset:
    ds.PixelData = arr.tobytes()
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def test_8bit_variant() -> None:
    ds = load("RG3_UNCR.dcm")
    _restore(ds, (ds.pixel_array >> 2).astype(np.uint8), 8)
    ds.WindowCenter, ds.WindowWidth = 137, 256
    assert_matches(ds)


def test_12bit_variant() -> None:
    ds = load("RG1_UNCR.dcm")
    _restore(ds, ds.pixel_array >> 3, 12)
    ds.WindowCenter, ds.WindowWidth = 1875, 3750
    assert_matches(ds)


def test_signed_12bit_variant() -> None:
    ds = load("CT_small.dcm")
    _restore(ds, np.clip(ds.pixel_array.astype(np.int16) - 1200, -2048, 2047), 12)
    ds.WindowCenter, ds.WindowWidth = -100, 900
    assert_matches(ds)


# --------------------------------------------------------------------------- pixels read in place


def _via_pydicom(monkeypatch: pytest.MonkeyPatch, ds: Dataset, pp: PreprocessSpec = PP) -> np.ndarray:
    """What the pipeline computes when pydicom decodes (the path before issue #14)."""
    with monkeypatch.context() as m:
        m.setattr(native, "read_in_place", lambda *a: None)
        return prepare(copy.deepcopy(ds), SPEC, pp)


def _with_junk(ds: Dataset, arr: np.ndarray, bits_stored: int, seed: int) -> Dataset:
    """``arr`` stored with random values in the bits above ``bits_stored`` (PS3.5 8.1.1: a
    receiver must not assume anything about them)."""
    rng = np.random.default_rng(seed)
    width = arr.dtype.itemsize * 8
    unsigned = arr.view(f"u{arr.dtype.itemsize}")
    junk = rng.integers(0, 1 << (width - bits_stored), size=arr.shape, dtype=unsigned.dtype) << bits_stored
    low = unsigned & unsigned.dtype.type((1 << bits_stored) - 1)
    return _restore(ds, (low | junk).view(arr.dtype), bits_stored)


@pytest.mark.parametrize("chain", ["window", "minmax", "sigmoid"])
@pytest.mark.parametrize("variant", ["unsigned12", "signed12", "unsigned6of8"])
def test_in_place_pixels_equal_pydicom_despite_junk_bits(monkeypatch: pytest.MonkeyPatch, variant: str,
                                                         chain: str) -> None:
    """Pixels read in place with junk in their unused bits give the bit-identical tensor pydicom's
    corrected pixel_array gives, and pydicom never decodes them: a straight chain (window,
    min–max) through the corrected copy and a line, a curve through the table that clears the
    junk itself."""
    pp = PreprocessSpec(voi="minmax") if chain == "minmax" else PP
    if variant == "unsigned12":
        ds = load("RG1_UNCR.dcm")
        ds = _with_junk(ds, ds.pixel_array >> 3, 12, seed=1)
        ds.WindowCenter, ds.WindowWidth = 1875, 3750
    elif variant == "signed12":
        ds = load("CT_small.dcm")
        ds = _with_junk(ds, np.clip(ds.pixel_array.astype(np.int16) - 1200, -2048, 2047), 12, seed=2)
        ds.WindowCenter, ds.WindowWidth = -100, 900
    else:
        ds = load("RG3_UNCR.dcm")
        ds = _with_junk(ds, (ds.pixel_array >> 4).astype(np.uint8), 6, seed=3)
        ds.WindowCenter, ds.WindowWidth = 32, 64
    if chain == "sigmoid":
        ds.VOILUTFunction = "SIGMOID"
    raw = native.read_in_place(ds, ds.Rows, ds.Columns)
    assert raw is not None and raw.bounds() is None  # the junk is really there
    got = prepare(ds, SPEC, pp)
    assert ds._pixel_array is None  # read in place, not decoded by pydicom
    assert np.array_equal(got, _via_pydicom(monkeypatch, ds, pp))
    assert_matches(ds, pp=pp)  # and both match the float64 reference on the corrected values


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "CT_small.dcm", "MR_small_padded.dcm", "vlut_04.dcm"])
@pytest.mark.filterwarnings("ignore:The pixel data is 8320 bytes long")
def test_in_place_pixels_equal_pydicom_on_real_files(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    ds = load(name)
    assert native.read_in_place(ds, ds.Rows, ds.Columns) is not None
    assert np.array_equal(prepare(ds, SPEC, PP), _via_pydicom(monkeypatch, ds))


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR2_J2KR.dcm", "rtdose_1frame.dcm"])
def test_other_pixels_are_decoded_by_pydicom(name: str) -> None:
    """Big endian, compressed and 32-bit pixel data keep pydicom's decoder."""
    ds = load(name)
    assert native.read_in_place(ds, ds.Rows, ds.Columns) is None


def test_int32_direct_path() -> None:
    ds = load("CT_small.dcm")
    _restore(ds, ds.pixel_array.astype(np.int32) * 1000, 32)
    ds.RescaleSlope = 0.001
    ds.WindowCenter, ds.WindowWidth = 40, 400
    assert_matches(ds)


def test_float_pixel_data_direct_path() -> None:
    ds = load("CT_small.dcm")
    arr = ds.pixel_array.astype(np.float32) * 0.5
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept
    ds.FloatPixelData, ds.BitsAllocated = arr.tobytes(), 32
    got = prepare(ds, SPEC, PP)
    unit = (arr - arr.min()) / (arr.max() - arr.min())
    want = (cv2.resize(unit.astype(np.float64), (224, 224), interpolation=cv2.INTER_AREA) - 0.485) / 0.229
    assert np.abs(got[0] - want).max() <= FLOAT32_TOL


def test_non_monotonic_modality_lut_minmax() -> None:
    ds = load("mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    item.LUTData = [int(v) for v in np.asarray(item.LUTData)[::-1]]  # decreasing
    assert_matches(ds)
    item.LUTData = [(i * 7919) % 4096 for i in range(4096)]  # scrambled: histogram path
    assert_matches(ds)


def test_modality_lut_as_ow_bytes() -> None:
    ds = load("mlut_18.dcm")
    item = ds.ModalityLUTSequence[0]
    data = np.asarray(item.LUTData, dtype="<u2").tobytes()
    del item.LUTData
    item.add_new("LUTData", "OW", data)
    assert_matches(ds)


def test_constant_image_is_finite() -> None:
    ds = load("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    _restore(ds, np.full((64, 64), 7, np.int16), 16)
    got = prepare(ds, SPEC, PP)
    assert np.isfinite(got).all()
    assert_matches(ds)


# --------------------------------------------------------------------------- layouts and dtypes


def test_nhwc_is_transposed_nchw() -> None:
    ds = load("RG1_UNCR.dcm")
    nhwc = assert_matches(ds, InputSpec(name="x", height=224, width=224, layout="NHWC"))
    assert nhwc.shape == (224, 224, 3)
    assert np.array_equal(nhwc, prepare(ds, SPEC, PP).transpose(1, 2, 0))


def test_one_channel() -> None:
    spec = InputSpec(name="x", height=256, width=192, channels=1)
    got = assert_matches(load("RG1_UNCR.dcm"), spec, PreprocessSpec(mean=(0.5,), std=(0.25,)))
    assert got.shape == (1, 256, 192)


def test_keep_aspect_letterbox() -> None:
    pp = PreprocessSpec(keep_aspect=True)
    spec = InputSpec(name="x", height=224, width=320)
    got = assert_matches(load("RG1_UNCR.dcm"), spec, pp)  # 1955×1841 → 224×211 centred in 224×320
    pad = (0.0 - PP.mean[0]) / PP.std[0]
    assert np.allclose(got[0, :, :50], pad) and np.allclose(got[0, :, -50:], pad)
    assert_matches(load("MR_small.dcm"), spec, pp)  # upscaling 64×64 → 224×224 in 224×320


def test_linear_resize() -> None:
    assert_matches(load("RG1_UNCR.dcm"), pp=PreprocessSpec(resize="linear"))
    assert_matches(load("MR_small.dcm"), pp=PreprocessSpec(resize="linear"))


def test_float16_output() -> None:
    got = assert_matches(load("RG1_UNCR.dcm"), InputSpec(name="x", height=224, width=224, dtype="float16"))
    assert got.dtype == np.float16


# --------------------------------------------------------------------------- errors

PHI = ("Doe^Jane", "1.2.826.0.1.3680043.99.12345")


def _with_phi(ds: Dataset) -> Dataset:
    ds.PatientName, ds.SOPInstanceUID = PHI
    return ds


def _expect(ds: Dataset, reason: str, **kwargs: int) -> PixelError:
    with pytest.raises(PixelError) as info:
        prepare(_with_phi(ds), SPEC, PP, **kwargs)
    assert info.value.reason == reason
    assert not any(value in str(info.value) for value in PHI)
    return info.value


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "OBXXXX1A_rle.dcm"])
def test_colour_is_rejected(name: str) -> None:
    _expect(load(name), "unsupported_photometric")


def test_multi_frame_is_rejected() -> None:
    _expect(load("emri_small_RLE.dcm"), "multi_frame")


def test_missing_pixel_data() -> None:
    ds = load("CT_small.dcm")
    del ds.PixelData
    _expect(ds, "no_pixel_data")


def test_too_large_is_rejected_before_decoding() -> None:
    ds = load("RG1_J2KR.dcm")
    started = time.perf_counter()
    _expect(ds, "too_large", max_pixels=1_000_000)
    assert time.perf_counter() - started < 0.1  # the J2K decode alone takes ~0.5 s
    assert ds._pixel_array is None


def test_real_truncated_file() -> None:
    _expect(load("MR_truncated.dcm"), "decode_failed")


def test_one_bit_is_rejected() -> None:
    _expect(load("liver_1frame.dcm"), "unsupported_bits")


def test_truncated_native_pixel_data() -> None:
    ds = load("CT_small.dcm")
    ds.PixelData = ds.PixelData[:1000]
    _expect(ds, "decode_failed")


@pytest.mark.parametrize(
    "name", ["JPGLosslessP14SV1_1s_1f_8b.dcm", "RG1_J2KR.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_truncated_compressed_pixel_data(name: str) -> None:
    """libjpeg returns a truncated JPEG lossless frame with zero rows and no error: must not pass."""
    ds = load(name)
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    err = _expect(ds, "decode_failed")
    assert "end marker" in str(err)


def test_end_marker_split_across_fragments_is_accepted() -> None:
    ds = load("JPGLosslessP14SV1_1s_1f_8b.dcm")
    frame = b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([frame], fragments_per_frame=1)
    want = prepare(ds, SPEC, PP)
    ds = load("JPGLosslessP14SV1_1s_1f_8b.dcm")
    cut = len(frame) - 1  # the last fragment holds only the trailing D9 (+ pad)
    empty_offset_table, end = b"\xfe\xff\x00\xe0" + bytes(4), b"\xfe\xff\xdd\xe0" + bytes(4)
    ds.PixelData = empty_offset_table + itemize_fragment(frame[:cut]) + itemize_fragment(frame[cut:]) + end
    assert np.array_equal(prepare(ds, SPEC, PP), want)


def test_bad_dimensions_and_bits() -> None:
    ds = load("CT_small.dcm")
    ds.Rows = 0
    _expect(ds, "bad_dimensions")
    ds = load("CT_small.dcm")
    ds.Rows = 100  # header disagrees with the data: pydicom alone would crop silently
    _expect(ds, "bad_dimensions")
    ds = load("CT_small.dcm")
    ds.BitsAllocated = 12
    _expect(ds, "unsupported_bits")
    ds = load("CT_small.dcm")
    ds.BitsStored = 17
    _expect(ds, "unsupported_bits")


def test_broken_modality_lut() -> None:
    ds = load("mlut_18.dcm")
    del ds.ModalityLUTSequence[0].LUTData
    _expect(ds, "bad_lut")


def test_pixel_error_survives_pickle() -> None:
    err = pickle.loads(pickle.dumps(PixelError("too_large", "1x1")))
    assert (err.reason, err.message) == ("too_large", "1x1")


# --------------------------------------------------------------------------- speed and caching


def test_lut_is_cached_per_parameters() -> None:
    ds = load("RG1_UNCR.dcm")
    ds.VOILUTFunction = "SIGMOID"  # a curve: the table path (a straight window needs no table)
    prepare(ds, SPEC, PP)
    hits = luts.stored_value_lut.cache_info().hits
    prepare(copy.deepcopy(ds), SPEC, PP)
    assert luts.stored_value_lut.cache_info().hits == hits + 1


def test_fast_path_beats_naive_float64() -> None:
    """Relative, not absolute: CI machines are shared, but both paths share the load."""
    ds = load("RG1_UNCR.dcm")
    prepare(ds, SPEC, PP)  # warm the LUT cache and cv2
    fast = statistics.median(prepare_timed(ds, SPEC, PP)[1]["transform_ms"] for _ in range(5))
    naive = []
    for _ in range(5):
        started = time.perf_counter()
        reference(ds)
        naive.append((time.perf_counter() - started) * 1e3)
    assert fast < statistics.median(naive) / 2, (fast, statistics.median(naive))


# --------------------------------------------------------------------------- area shrink and strips


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1955, 1841), (224, 224)),  # the chest CR
        ((1955, 1841), (224, 211)),  # its letterbox
        ((1955, 1841), (1955 // 3, 1841)),  # rows only: no horizontal pass
        ((448, 448), (224, 224)),  # integer scale: cv2's "fast" area path
        ((300, 250), (224, 200)),  # scale < 2: a destination row draws on 2-3 source rows
        ((2001, 1503), (1000, 224)),  # 2.001×: slivers ≤ 1e-3 that cv2 drops
        ((97, 64), (1, 1)),  # one pixel
    ],
)
def test_area_shrink_is_cv2_inter_area(shape: tuple[int, int], size: tuple[int, int]) -> None:
    """Same weights as cv2: only float32 rounding (~1e-7 of full scale) and cv2's final rounding differ."""
    image = np.random.default_rng(sum(shape)).integers(0, 65536, shape, dtype=np.uint16)
    height, width = size
    assert area.applies(shape, height, width)
    got = area.shrink_array(image, height, width)
    assert got.dtype == np.float32 and got.shape == size
    exact = cv2.resize(image.astype(np.float64), (width, height), interpolation=cv2.INTER_AREA)
    assert np.abs(got - exact).max() <= 0.02  # of 65535
    rounded = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    assert np.abs(got - rounded).max() <= 0.52


def test_area_does_not_take_enlargements() -> None:
    assert not area.applies((64, 64), 224, 224)
    assert not area.applies((300, 200), 224, 224)  # columns grow: cv2 interpolates
    assert not area.applies((224, 300), 224, 224)  # rows unchanged: nothing to sum


def test_area_strip_layout_cannot_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips partition destination rows and read exactly their source rows: bit-identical results."""
    image = np.random.default_rng(1).integers(0, 65536, (1955, 1841), dtype=np.uint16)
    whole_strip = {}
    for pixels_per_strip in (1, 1 << 16, 1 << 18, 1 << 40):  # one row per strip … one strip
        monkeypatch.setattr(strips, "STRIP_PIXELS", pixels_per_strip)
        whole_strip[pixels_per_strip] = area.shrink_array(image, 224, 224)
    monkeypatch.setattr(strips, "_get_pool", lambda: (None, 0))  # all strips on the caller
    serial = area.shrink_array(image, 224, 224)
    for got in whole_strip.values():
        assert np.array_equal(got, serial)


def test_table_image_rows_and_gather_are_the_plain_gather() -> None:
    ds = load("RG1_UNCR.dcm")
    arr = ds.pixel_array
    table = luts.stored_value_lut(arr.dtype.str, luts.read_modality(ds), luts.read_voi(ds), True)
    image = luts.TableImage.of(table, arr)
    want = table[arr]
    assert np.array_equal(image.gather(), want)
    assert np.array_equal(image.rows(100, 140, np.empty((40, arr.shape[1]), np.uint16)), want[100:140])
    signed = load("CT_small.dcm").pixel_array  # int16: gathered through its unsigned view
    table = luts.stored_value_lut(signed.dtype.str, None, luts.MinMax(-1000.0, 1000.0), False)
    assert np.array_equal(luts.apply_table(table, signed), table[signed.view(np.uint16)])


def test_concurrent_calls_give_the_sequential_results() -> None:
    """Two daemon workers preprocess at once: the shared pool must not mix their strips."""
    names = ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR_small.dcm", "CT_small.dcm"]
    datasets = [load(name) for name in names]
    want = [prepare(ds, SPEC, PP) for ds in datasets]
    failures: list[str] = []

    def worker(offset: int) -> None:
        for round_ in range(6):
            k = (offset + round_) % len(names)
            if not np.array_equal(prepare(datasets[k], SPEC, PP), want[k]):
                failures.append(names[k])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_strips_run_waits_for_every_strip_before_raising() -> None:
    """A failing strip must not let run() return while other strips still write the caller's buffers."""
    finished: list[int] = []
    caller = threading.current_thread()

    def task(k: int) -> None:
        if threading.current_thread() is caller:
            raise RuntimeError("caller's strip")
        time.sleep(0.05)
        finished.append(k)

    with pytest.raises(RuntimeError, match="caller's strip"):
        strips.run(task, 4)
    at_return = len(finished)
    time.sleep(0.1)  # a strip still running after run() gave up would finish here
    assert len(finished) == at_return
    calls: list[int] = []
    strips.run(calls.append, 50)
    assert sorted(calls) == list(range(50))


def test_decode_workers_keep_strips_on_their_own_thread() -> None:
    """A decode worker's warm-up makes every strip run on the thread that asked (strips.caller_only),
    while the daemon's own threads (decode_processes: 0) keep the shared pool."""
    import subprocess
    import sys

    probe = (
        "import threading\n"
        "from edged.preprocess import pool, strips\n"
        "def threads():\n"
        "    seen = set()\n"
        "    strips.run(lambda k: (seen.add(threading.get_ident()), __import__('time').sleep(0.002)), 40)\n"
        "    return len(seen)\n"
        "before = threads()\n"
        "pool._warm()\n"
        "print(before, threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, out.stdout.split())
    assert after == 1
    if min(strips.MAX_PARALLEL, strips._cores()) > 1:  # the pool really took strips before
        assert before >= 2
