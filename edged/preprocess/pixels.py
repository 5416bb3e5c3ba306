"""One DICOM image → one model input tensor, fast enough to stay off the critical path.

Pipeline (PreprocessSpec order): decode → Modality LUT → VOI → [0, 1] → MONOCHROME1 inversion
→ resize → replicate channels → ``(x - mean) / std``.

Why it is shaped this way: a chest CR is ~3.6 M pixels but the model sees 224×224. The naive
chain spends 50–200 ms on a Jetson making float64 copies of the full-size image. Here all the
grey-level steps are one uint16 pass: a line drawn by cv2 where the chain is straight
(:mod:`edged.preprocess.affine`), else a gather through a cached table
(:mod:`edged.preprocess.luts`); the usual area shrink consumes that pass strip by strip while
it is still in cache (:mod:`edged.preprocess.area`): the full-size display image is never
written out, and only the small result ever becomes float.

Everything that can be rejected from the header is rejected before decoding, so a hostile or
broken file costs microseconds, not a JPEG 2000 decode. Errors are :class:`PixelError` with a
machine-readable ``reason`` and a message free of patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments

from edged.preprocess import affine, area, luts, native
from edged.preprocess.errors import PixelError
from edged.preprocess.native import RawPixels

if TYPE_CHECKING:  # only attributes are read: keeps this module out of the config import graph
    from edged.models.manifest import InputSpec, PreprocessSpec

__all__ = ["PixelError", "prepare", "prepare_timed"]

#: A full-size display image not yet computed: stored values and the chain that maps them.
Display = luts.TableImage | affine.LineImage
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
#: Codestreams that end with an FFD9 marker (JPEG EOI, JPEG-LS EOI, JPEG 2000/HTJ2K EOC).
_MARKER_TERMINATED = frozenset(
    [*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes, *uid.JPEG2000TransferSyntaxes]
)


@dataclass(frozen=True)
class _Header:
    """What the pipeline needs from the header, validated before any pixel is touched."""

    rows: int
    columns: int
    photometric: str


def prepare(
    ds: Dataset, input_spec: InputSpec, pp: PreprocessSpec, max_pixels: int = 64_000_000
) -> np.ndarray:
    """The model input for ``ds``: (C, H, W) for NCHW or (H, W, C) for NHWC, no batch axis.

    Raises :class:`PixelError` for anything the pipeline cannot turn into a faithful image.
    """
    return prepare_timed(ds, input_spec, pp, max_pixels)[0]


def prepare_timed(
    ds: Dataset, input_spec: InputSpec, pp: PreprocessSpec, max_pixels: int = 64_000_000
) -> tuple[np.ndarray, dict[str, float]]:
    """:func:`prepare` plus ``{"decode_ms", "transform_ms"}`` for the daemon's metrics.

    Decoding (often JPEG 2000, hundreds of ms) and our own work are reported apart because they
    call for different fixes: a faster codec or a cheaper transfer syntax vs. this module.
    """
    start = perf_counter()
    header = _check_header(ds, max_pixels)
    arr = _decode(ds, header)
    decoded = perf_counter()
    display = _display(ds, arr, header, pp)
    image = _resize(display, input_spec.height, input_spec.width, pp)
    tensor = _to_tensor(image, input_spec, pp)
    done = perf_counter()
    return tensor, {"decode_ms": (decoded - start) * 1e3, "transform_ms": (done - decoded) * 1e3}


# --------------------------------------------------------------------------- header and decode


def _check_header(ds: Dataset, max_pixels: int) -> _Header:
    """Reject what we cannot or must not decode, from header values alone."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None or not ds[keyword].value:
        raise PixelError("no_pixel_data", "dataset has no pixel data")
    rows, columns = _as_int(ds.get("Rows")), _as_int(ds.get("Columns"))
    if rows is None or columns is None or rows <= 0 or columns <= 0:
        raise PixelError("bad_dimensions", f"invalid image size {rows}x{columns}")
    if rows * columns > max_pixels:
        raise PixelError("too_large", f"{rows}x{columns} exceeds the limit of {max_pixels} pixels")
    frames = _as_int(ds.get("NumberOfFrames", 1) or 1)
    if frames is None or frames < 1:
        raise PixelError("bad_dimensions", "invalid Number of Frames")
    if frames > 1:
        raise PixelError("multi_frame", f"{frames} frames; only single-frame images are supported")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    samples = _as_int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric not in _MONOCHROME or samples != 1:
        shown = photometric[:16] or "missing"
        raise PixelError("unsupported_photometric", f"{shown} with {samples} samples; need MONOCHROME1/2")
    _check_bits(ds, keyword)
    _check_native_length(ds, keyword, rows, columns)
    return _Header(rows, columns, photometric)


def _check_bits(ds: Dataset, keyword: str) -> None:
    """Bits Allocated 8/16/32 integers (32/64 for float pixel data), Bits Stored within it."""
    allocated = _as_int(ds.get("BitsAllocated"))
    allowed = {"PixelData": (8, 16, 32), "FloatPixelData": (32,), "DoubleFloatPixelData": (64,)}[keyword]
    if allocated not in allowed:
        raise PixelError("unsupported_bits", f"Bits Allocated {allocated} is not one of {allowed}")
    if keyword != "PixelData":
        return
    stored = _as_int(ds.get("BitsStored"))
    if stored is None or not 1 <= stored <= allocated:
        raise PixelError("unsupported_bits", f"Bits Stored {stored} with Bits Allocated {allocated}")
    if ds.get("PixelRepresentation") not in (0, 1):
        raise PixelError("unsupported_bits", "Pixel Representation must be 0 or 1")


def _check_native_length(ds: Dataset, keyword: str, rows: int, columns: int) -> None:
    """Uncompressed data must be the size the header implies, give or take one row of padding.

    pydicom treats any surplus as padding and silently decodes the first Rows×Columns values,
    so a wrong Rows or Columns would yield a cropped or sheared image instead of an error. Real
    files do pad (pydicom's own MR_small_padded.dcm carries one extra row), hence the slack: a
    surplus of up to one row still decodes the intended image; more means the header is wrong.
    """
    tsyntax = _transfer_syntax(ds)
    if keyword == "PixelData" and (tsyntax is None or tsyntax.is_encapsulated):
        return  # compressed: the decoder checks sizes; unknown syntax: decoding will fail anyway
    sample_bytes = (_as_int(ds.get("BitsAllocated")) or 0) // 8
    expected, row_bytes = rows * columns * sample_bytes, columns * sample_bytes
    actual = len(ds[keyword].value)
    if actual < expected:
        raise PixelError("decode_failed", f"pixel data is {actual} bytes, {expected} expected (truncated?)")
    if actual > expected + max(1, row_bytes):
        raise PixelError("bad_dimensions", f"pixel data is {actual} bytes, header implies {expected}")


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _decode(ds: Dataset, header: _Header) -> np.ndarray | RawPixels:
    """Uncompressed little-endian pixels read in place (:mod:`edged.preprocess.native`), else
    ``ds.pixel_array`` (pydicom + pylibjpeg plugins), checked against the header.

    Decoder messages are replaced by the exception type: they are not ours to vet for PHI.
    """
    raw = native.read_in_place(ds, header.rows, header.columns)
    if raw is not None:
        return raw
    _check_stream_end(ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # any decoder/plugin failure is the same outcome for the caller
        raise PixelError("decode_failed", f"{_syntax_name(ds)}: {type(exc).__name__}") from None
    if arr.shape != (header.rows, header.columns):
        raise PixelError("bad_dimensions", f"decoded {arr.shape}, header says {header.rows}x{header.columns}")
    if arr.dtype.kind not in "iuf":
        raise PixelError("unsupported_bits", f"decoded dtype {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_stream_end(ds: Dataset) -> None:
    """Refuse JPEG-family frames whose codestream does not end with its FFD9 marker.

    libjpeg decodes a truncated JPEG (e.g. a transfer cut short) without any error and returns
    the missing rows as zeros: a plausible-looking but wrong image that a model would happily
    score. Checking the tail before decoding turns that into ``decode_failed``. Trailing 0x00
    (DICOM even-length padding) and 0xFF (JPEG fill bytes) are tolerated.
    """
    tsyntax = _transfer_syntax(ds)
    if tsyntax not in _MARKER_TERMINATED or "PixelData" not in ds:
        return
    tail = b""
    try:
        for fragment in generate_fragments(ds.PixelData):
            tail = (tail + bytes(fragment[-16:]))[-16:]
    except Exception:  # malformed item tags: the decoder would fail too, say so consistently
        raise PixelError("decode_failed", f"{_syntax_name(ds)}: malformed encapsulation") from None
    if not tail.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
        raise PixelError("decode_failed", f"{_syntax_name(ds)}: codestream has no end marker (truncated?)")


def _transfer_syntax(ds: Dataset) -> uid.UID | None:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _syntax_name(ds: Dataset) -> str:
    tsyntax = _transfer_syntax(ds)
    return f"cannot decode {tsyntax.name}" if tsyntax else "cannot decode (no transfer syntax)"


# --------------------------------------------------------------------------- grey levels


def _display(
    ds: Dataset, arr: np.ndarray | RawPixels, header: _Header, pp: PreprocessSpec
) -> Display | np.ndarray:
    """Full-size display image: uint16 at full scale 65535 (fast paths) or float32 in [0, 1].

    The fast paths leave the image as stored values plus the chain that maps them, evaluated
    later by the resize: a straight line where the chain is one (:mod:`affine`: rescale with a
    linear window or min–max, SIMD arithmetic), else a gather through a table of every stored
    value. Pixels read in place may carry junk above Bits Stored, which one bounds pass finds:
    a table clears it itself (entry for the pattern as sent = result for the corrected value);
    for a line, or for the range of a min–max stretch, such pixels are corrected first, as
    pydicom corrects them, so both decode paths give the same tensor.
    """
    modality = luts.read_modality(ds)
    voi = luts.read_voi(ds) if pp.voi == "auto" else None
    invert = pp.invert_monochrome1 and header.photometric == "MONOCHROME1"
    straight = affine.line(modality, voi, invert) if voi is not None else None
    curve = voi is not None and straight is None  # the table's case
    bits_stored, bounds = None, None
    if isinstance(arr, RawPixels):
        if curve:  # the table clears junk above Bits Stored itself: no bounds pass needed
            if arr.bits_stored < arr.dtype.itemsize * 8:
                bits_stored = arr.bits_stored
            arr = arr.codes
        else:
            bounds = arr.bounds()  # None: some pixel carries junk above Bits Stored (rare)
            if bounds is None:  # corrected as pydicom corrects it, for a line or a range
                arr = arr.corrected()
                bounds = int(arr.min()), int(arr.max())
            else:
                arr = arr.codes
    elif not curve and arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        bounds = int(arr.min()), int(arr.max())  # decoded by pydicom: already corrected
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        if voi is None:
            voi = luts.MinMax(*luts.value_range(arr, modality, bounds))
            straight = affine.line(modality, voi, invert)
        if straight is not None and bounds is not None and affine.fits(straight, bounds):
            return affine.LineImage(arr, *straight)
        table = luts.stored_value_lut(arr.dtype.str, modality, voi, invert, bits_stored)
        return luts.TableImage.of(table, arr)
    return luts.transform_direct(arr, modality, voi, invert)


# --------------------------------------------------------------------------- geometry and tensor


def _resize(display: Display | np.ndarray, height: int, width: int, pp: PreprocessSpec) -> np.ndarray:
    """Resize to height×width (or letterbox), returning float32 in [0, 1].

    Letterbox padding is 0 in display space (black), i.e. ``-mean/std`` after normalisation.
    """
    rows, cols = display.shape
    target_h, target_w = height, width
    if pp.keep_aspect:
        scale = min(height / rows, width / cols)
        target_h = min(height, max(1, round(rows * scale)))
        target_w = min(width, max(1, round(cols * scale)))
    image = _resample_unit(display, target_h, target_w, pp.resize)
    if (target_h, target_w) == (height, width):
        return image
    canvas = np.zeros((height, width), dtype=np.float32)
    top, left = (height - target_h) // 2, (width - target_w) // 2
    canvas[top : top + target_h, left : left + target_w] = image
    return canvas


def _resample_unit(display: Display | np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """``display`` at height×width as float32 in [0, 1].

    The fast path keeps the full-size work in 2-byte pixels and only the small result becomes
    float. An area shrink (the common case: detector image → model input) gathers and shrinks
    strip by strip (:mod:`edged.preprocess.area`), cv2's area average without its final
    rounding; other resizes gather the whole uint16 image and let cv2 resize it, whose kernels
    use float weights and round once, adding ≤ 0.5/65535.
    """
    if isinstance(display, (luts.TableImage, affine.LineImage)):
        if method == "area" and area.applies(display.shape, height, width):
            image = area.shrink(display.rows, display.shape, height, width)
            image /= np.float32(luts.FULL_SCALE)
            return image
        display = display.gather()
    if (height, width) != display.shape:
        display = cv2.resize(display, (width, height), interpolation=_INTERPOLATION[method])
    return _to_unit_float(display)


def _to_unit_float(display: np.ndarray) -> np.ndarray:
    if display.dtype == np.uint16:
        return display.astype(np.float32) / np.float32(luts.FULL_SCALE)
    return display.astype(np.float32, copy=False)


def _to_tensor(image: np.ndarray, spec: InputSpec, pp: PreprocessSpec) -> np.ndarray:
    """Replicate to ``channels``, normalise per channel, lay out, cast to the model dtype.

    Each channel's ``(image - mean) / std`` (float32) is written straight into its place in one
    output array: no per-channel temporaries and no stacking copy, which on a 224×224×3 input
    made this step cost 0.05–0.5 ms depending on how the allocator felt about the temporaries.
    """
    mean = _per_channel(pp.mean, spec.channels, "mean")
    std = _per_channel(pp.std, spec.channels, "std")
    nchw = spec.layout == "NCHW"
    out = np.empty((spec.channels, *image.shape) if nchw else (*image.shape, spec.channels), np.float32)
    for channel, (m, s) in enumerate(zip(mean, std)):
        plane = out[channel] if nchw else out[..., channel]
        np.subtract(image, m, out=plane)
        np.divide(plane, s, out=plane)
    return out.astype(spec.dtype, copy=False)


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    """Broadcast a 1-value mean/std to every channel; the manifest validator guards the rest."""
    if len(values) not in (1, channels):
        raise ValueError(f"preprocess.{name} needs 1 or {channels} values, got {len(values)}")
    return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,))
