"""What is checked in a received dataset before a C-STORE is answered, and the syntaxes offered.

The SCP (:mod:`edged.sources.dicom.scp`) answers only after these checks: a header pydicom cannot
read, a truncated Pixel Data, an image larger than configured are refused with the status PS3.4
prescribes (:class:`Rejected`), before anything is promised. Every check reads the header only;
Pixel Data stays on disk (deferred), so memory does not grow with image size.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from edged.sources.dicom.accept import value
from edged.sources.dicom.inflate import TooLarge, check_inflated_size

SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
NATIVE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
COMPRESSED = [
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]


def decodable_syntaxes() -> list[str]:
    """Uncompressed syntaxes plus every compressed one whose decoder is installed."""
    from pydicom.pixels import get_decoder

    out = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    for uid in COMPRESSED:
        try:
            if get_decoder(UID(uid)).is_available:
                out.append(UID(uid))
        except (NotImplementedError, ValueError):
            continue
    return out


def offered_syntaxes(accept_undecodable: bool) -> list[str]:
    """What the storage contexts accept: every syntax edged knows when ``accept_undecodable`` (a
    router's study transfer must not fail on one image; the image is then acknowledged and
    reported ``no_decoder``), else only what this device decodes (a transcoding router converts)."""
    decodable = decodable_syntaxes()
    return decodable + [UID(u) for u in COMPRESSED if u not in decodable] if accept_undecodable else decodable



class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_inflated(path: Path, limit_mb: float) -> None:
    """pydicom inflates a deflated dataset whole in memory: bound what it would inflate first."""
    try:
        check_inflated_size(path, int(limit_mb * 1024 * 1024))
    except TooLarge as exc:
        raise Rejected(OUT_OF_RESOURCES, f"too_large: {exc} (dicom.max_inflated_mb)") from None
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"unreadable: deflated dataset does not inflate ({type(exc).__name__})") \
            from None


def parse(path: Path) -> Dataset:
    """Parse the header; Pixel Data stays on disk (deferred), so memory does not grow with image size."""
    try:
        ds = dcmread(path, defer_size=64 * 1024)
        ds.get_item("PixelData", keep_deferred=True)  # walks the dataset without loading large values
        return ds
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"unreadable: dataset does not parse ({type(exc).__name__})") from None


def check(ds: Dataset, req_class: str, req_instance: str, max_pixels: int, file_size: int) -> None:
    """Reject what cannot be understood before promising anything. Any exception other than
    :class:`Rejected` raised here also means "cannot understand" (the caller maps it)."""
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        # absent, not different: pydicom returns an *empty* dataset when an undefined-length
        # element never meets its delimiter; a dataset whose identity cannot be read is one
        # we cannot understand (0xC000), not one that names another instance (0xA900)
        raise Rejected(CANNOT_UNDERSTAND, "unreadable: the dataset's SOP Class/Instance UID cannot be read")
    if str(ds.get("SOPInstanceUID", "")) != req_instance or str(ds.get("SOPClassUID", "")) != req_class:
        raise Rejected(MISMATCH, "mismatch: dataset SOP class/instance differ from the request")
    if "PixelData" not in ds:
        if ds.get("Rows") is not None:
            raise Rejected(CANNOT_UNDERSTAND, "no_pixel_data: image without Pixel Data")
        return  # a non-image object (report, presentation state): routed, then skipped
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(ds.get("SamplesPerPixel", 1))
        frames = int(value(ds, "NumberOfFrames") or 1)  # type: ignore[call-overload]
    except (AttributeError, TypeError, ValueError, OverflowError):
        raise Rejected(CANNOT_UNDERSTAND, "bad_image_header: Rows/Columns/BitsAllocated/NumberOfFrames missing "
                                          "or invalid") from None
    # Rows and Columns are US: a value above 65535 (sent with another VR) is an invalid header,
    # not a large image (0xA700 would invite the sender to retry it forever)
    if not 0 < rows <= 0xFFFF or not 0 < cols <= 0xFFFF or bits not in (1, 8, 16, 32, 64) or \
            not 1 <= frames <= 1_000_000 or not 1 <= spp <= 4:
        raise Rejected(CANNOT_UNDERSTAND, f"bad_image_header: {rows}x{cols}, {bits} bits allocated, "
                                          f"{spp} samples, {frames} frames")
    if rows * cols > max_pixels:
        raise Rejected(OUT_OF_RESOURCES, f"too_large: {rows}x{cols} exceeds {max_pixels} pixels")
    raw = ds.get_item("PixelData", keep_deferred=True)  # length and file offset, value unread
    declared = getattr(raw, "length", None)
    if declared is not None and declared != 0xFFFFFFFF:
        present = min(declared, file_size - getattr(raw, "value_tell", 0))
        expected = rows * cols * spp * frames * bits // 8
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            return  # offsets are into the inflated stream, not the file: decoding will tell
        if ds.file_meta.TransferSyntaxUID in NATIVE and bits >= 8 and present < expected:
            raise Rejected(CANNOT_UNDERSTAND, f"truncated: Pixel Data has {present} of {expected} bytes")
        if present < declared:
            raise Rejected(CANNOT_UNDERSTAND, f"truncated: Pixel Data has {present} of {declared} bytes")
