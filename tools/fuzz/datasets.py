"""Datasets as lists of elements, encoded by hand so any byte can be wrong on purpose.

pydicom writes only what is valid; the fuzzer needs an element whose length swallows the
next ones, a WindowCenter with the VR ``FD``, an unknown VR, a truncated Pixel Data. So a
dataset here is a list of :class:`Elem` (tag, VR, raw value bytes) and :func:`encode` writes
it in Implicit or Explicit VR Little Endian (or Explicit Big Endian) with per-element
overrides of the length and the VR. :func:`base_image` builds a small, valid chest CR with a
realistic patient (PHI from :mod:`.phi`) that the tiny model accepts.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, replace

import numpy as np

from .phi import Identity

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"

LONG_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
UNDEFINED = 0xFFFFFFFF
_WORD = {"US": 2, "SS": 2, "OW": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 2}


@dataclass(frozen=True)
class Elem:
    tag: int  # (group << 16) | element
    vr: str
    value: bytes
    length: int | None = None  # override of the encoded length (None: the true, even-padded one)
    vr_bytes: bytes | None = None  # override of the two VR characters in explicit VR


def text(s: str, pad: bytes = b" ") -> bytes:
    raw = s.encode("latin-1", "replace")
    return raw + pad if len(raw) % 2 else raw


def uid(s: str | bytes) -> bytes:
    raw = s.encode("latin-1") if isinstance(s, str) else s
    return raw + b"\x00" if len(raw) % 2 else raw


def us(n: int, big: bool = False) -> bytes:
    return struct.pack(">H" if big else "<H", n & 0xFFFF)


def encode(elems: list[Elem], syntax: str = EXPLICIT_LE, sort: bool = True) -> bytes:
    """The dataset bytes (no preamble, no file meta) in ``syntax``; deflated when asked."""
    implicit = syntax == IMPLICIT_LE
    big = syntax == EXPLICIT_BE
    out = bytearray()
    for e in (sorted(elems, key=lambda x: x.tag) if sort else elems):
        group, element = e.tag >> 16, e.tag & 0xFFFF
        value = e.value
        size = _WORD.get(e.vr, 0)
        if big and size and len(value) % size == 0:  # binary numbers are written for LE: swap each word
            value = b"".join(value[i:i + size][::-1] for i in range(0, len(value), size))
        length = len(value) if e.length is None else e.length
        if implicit:
            out += struct.pack("<HHL", group, element, length & 0xFFFFFFFF)
        else:
            h = ">" if big else "<"
            vr = e.vr_bytes if e.vr_bytes is not None else e.vr.encode("ascii")
            out += struct.pack(f"{h}HH", group, element) + vr[:2].ljust(2, b" ")
            if e.vr in LONG_VRS or e.vr == "UN" or (e.vr_bytes is not None and vr in (b"OB", b"OW", b"UN", b"SQ")):
                out += struct.pack(f"{h}HL", 0, length & 0xFFFFFFFF)
            else:
                out += struct.pack(f"{h}H", length & 0xFFFF)
        out += value
    data = bytes(out)
    if syntax == DEFLATED:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = c.compress(data) + c.flush()
    return data


def file_bytes(dataset: bytes, sop_class: str | bytes, instance: str | bytes, syntax: str) -> bytes:
    """Preamble + file meta (what pynetdicom reads to address the C-STORE) + dataset bytes as given."""
    meta = [
        Elem(0x00020001, "OB", b"\x00\x01"),
        Elem(0x00020002, "UI", uid(sop_class)),
        Elem(0x00020003, "UI", uid(instance)),
        Elem(0x00020010, "UI", uid(syntax)),
        Elem(0x00020012, "UI", uid("1.2.826.0.1.3680043.9.7433.1.1")),
    ]
    body = encode(meta, EXPLICIT_LE)
    group_length = encode([Elem(0x00020000, "UL", struct.pack("<L", len(body)))], EXPLICIT_LE)
    return bytes(128) + b"DICM" + group_length + body + dataset


def pixels(rng: random.Random, rows: int, cols: int, bits_stored: int = 12) -> bytes:
    """A smooth gradient with seeded noise (16-bit LE): something a chest model can be run on."""
    top = (1 << bits_stored) - 1
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(0, top // 8, (rows, cols))
    ramp = np.linspace(0, top * 7 // 8, rows, dtype=np.int64)[:, None]
    return ((ramp + noise) & top).astype("<u2").tobytes()


def base_image(rng: random.Random, who: Identity, rows: int = 64, cols: int = 64,
               sop_class: str = CR) -> list[Elem]:
    """A valid frontal chest CR the tiny model accepts, with ``who``'s identity in it."""
    photometric = rng.choice(("MONOCHROME2", "MONOCHROME1"))
    view = rng.choice(("PA", "AP"))
    return [
        Elem(0x00080005, "CS", text("ISO_IR 100")),
        Elem(0x00080016, "UI", uid(sop_class)),
        Elem(0x00080018, "UI", uid(who.instance_uid)),
        Elem(0x00080020, "DA", text("20240517")),
        Elem(0x00080030, "TM", text("101530")),
        Elem(0x00080050, "SH", text(who.accession)),
        Elem(0x00080060, "CS", text("CR" if sop_class == CR else "DX")),
        Elem(0x00080080, "LO", text("ST OLAVS HOSPITAL")),
        Elem(0x00080090, "PN", text(who.referring)),
        Elem(0x00100010, "PN", text(who.name)),
        Elem(0x00100020, "LO", text(who.patient_id)),
        Elem(0x00100030, "DA", text(who.birth_date)),
        Elem(0x00100040, "CS", text(rng.choice(("F", "M", "O")))),
        Elem(0x00101040, "LO", text(who.address)),
        Elem(0x00180015, "CS", text("CHEST")),
        Elem(0x00185101, "CS", text(view)),
        Elem(0x0020000D, "UI", uid(who.study_uid)),
        Elem(0x0020000E, "UI", uid(who.series_uid)),
        Elem(0x00200010, "SH", text("S" + who.accession[3:9])),
        Elem(0x00200013, "IS", text(str(rng.randrange(1, 40)))),
        Elem(0x00200052, "UI", uid(who.frame_uid)),
        Elem(0x00280002, "US", us(1)),
        Elem(0x00280004, "CS", text(photometric)),
        Elem(0x00280010, "US", us(rows)),
        Elem(0x00280011, "US", us(cols)),
        Elem(0x00280100, "US", us(16)),
        Elem(0x00280101, "US", us(12)),
        Elem(0x00280102, "US", us(11)),
        Elem(0x00280103, "US", us(0)),
        Elem(0x00281050, "DS", text("2048")),
        Elem(0x00281051, "DS", text("4096")),
        Elem(0x00321032, "PN", text(who.referring.replace("^^DR", "^^PROF"))),
        Elem(0x00380010, "LO", text(who.admission)),
        Elem(0x7FE00010, "OW", pixels(rng, rows, cols)),
    ]


def with_elem(elems: list[Elem], new: Elem) -> list[Elem]:
    """``elems`` with ``new`` replacing the element of the same tag (or added)."""
    return [e for e in elems if e.tag != new.tag] + [new]


def without(elems: list[Elem], *tags: int) -> list[Elem]:
    return [e for e in elems if e.tag not in tags]


def get(elems: list[Elem], tag: int) -> Elem:
    return next(e for e in elems if e.tag == tag)


def changed(elems: list[Elem], tag: int, **fields: object) -> list[Elem]:
    return [replace(e, **fields) if e.tag == tag else e for e in elems]  # type: ignore[arg-type]
