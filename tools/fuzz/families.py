"""Dataset case families: each makes one :class:`StoreCase` from a seeded generator.

Every case starts from a valid chest CR of a new patient (realistic PHI, registered for the
scan) and breaks it the way the family says: a coded element whose length swallows the
patient module, a wrong VR, truncated pixels, garbage NumberOfFrames, megabyte-sized
strings, deflate streams, UIDs with odd bytes, private tags, non-images, random byte
mutations, duplicates, broken compressed pixel data, deep sequences, requests that do not
match their dataset. Nothing here talks to the daemon.
"""

from __future__ import annotations

import random
import struct
import zlib

from . import datasets as D
from .cases import StoreCase
from .datasets import Elem
from .phi import Identity, PhiRegistry

MODALITY, BODY_PART, VIEW, PHOTOMETRIC = 0x00080060, 0x00180015, 0x00185101, 0x00280004
CODED = (MODALITY, BODY_PART, VIEW, PHOTOMETRIC, 0x00100040, 0x00080005)
SYNTAXES = (D.EXPLICIT_LE, D.IMPLICIT_LE, D.EXPLICIT_LE, D.EXPLICIT_BE, D.DEFLATED)


class Gen:
    """Seeded per case, so case *i* of seed *s* is the same whatever ran before it."""

    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.phi = PhiRegistry(self.rng)

    def at(self, index: int) -> "Gen":
        self.rng.seed(f"{self.seed}:{index}")
        return self

    def image(self, **kw) -> tuple[Identity, list[Elem]]:
        who = self.phi.identity()
        return who, D.base_image(self.rng, who, rows=self.rng.choice((32, 48, 64, 96)),
                                 cols=self.rng.choice((32, 64, 80)), **kw)

    def case(self, family: str, variant: str, who: Identity, elems: list[Elem], syntax: str | None = None,
             **kw) -> StoreCase:
        syntax = syntax or self.rng.choice(SYNTAXES)
        sop = kw.pop("sop_class", D.CR)
        return StoreCase(family, variant, sop, kw.pop("instance", who.instance_uid), syntax,
                         kw.pop("dataset", None) or D.encode(elems, syntax), **kw)


def valid(g: Gen) -> StoreCase:
    r = g.rng
    sop = r.choice((D.CR, D.CR, D.DX_PRESENTATION))
    who, elems = g.image(sop_class=sop)
    if r.random() < 0.3:
        elems = D.with_elem(elems, Elem(0x00281052, "DS", D.text("-1024")))
        elems = D.with_elem(elems, Elem(0x00281053, "DS", D.text("1")))
    return g.case("valid", "frontal chest", who, elems, sop_class=sop)


def coded_length(g: Gen) -> StoreCase:
    """A coded element's length corrupted so it swallows what follows (names, IDs, UIDs)."""
    r = g.rng
    who, elems = g.image()
    tag = r.choice(CODED)
    syntax = r.choice((D.EXPLICIT_LE, D.IMPLICIT_LE))
    target = D.get(elems, tag)
    length = r.choice((0x400, 0x80, 0xFF, 0x1FF, len(target.value) + r.randrange(1, 600),
                       r.randrange(2, 0xFFFF), 0xFFFF, 1, 3))
    elems = D.changed(elems, tag, length=length)
    return g.case("coded_length", f"({tag >> 16:04X},{tag & 0xFFFF:04X}) length {length}", who, elems, syntax)


def wrong_vr(g: Gen) -> StoreCase:
    """Wrong or unknown VRs on elements the daemon reads (WindowCenter as FD, Rows as LO…)."""
    r = g.rng
    who, elems = g.image()
    choice = r.randrange(7)
    if choice == 0:
        elems = D.with_elem(elems, Elem(0x00281050, "FD", struct.pack("<d", r.uniform(-5e3, 5e3))))
        variant = "WindowCenter as FD"
    elif choice == 1:
        elems = D.with_elem(elems, Elem(0x00281051, r.choice(("FL", "OB", "UN", "SL")),
                                        struct.pack("<f", r.uniform(-10, 5e3))))
        variant = "WindowWidth binary"
    elif choice == 2:
        tag = r.choice((0x00280010, 0x00280011, 0x00280100, 0x00280002))
        elems = D.changed(elems, tag, vr=r.choice(("LO", "FD", "OB", "UL")),
                          value=r.choice((b"12", struct.pack("<d", 64.0), b"\xff\xff\xff\xff", b"")))
        variant = f"image pixel ({tag & 0xFFFF:04X}) wrong VR"
    elif choice == 3:
        tag = r.choice(CODED)
        elems = D.changed(elems, tag, vr_bytes=r.choice((b"ZZ", b"\x00\x00", b"  ", b"xx", b"UN", b"SQ")))
        variant = "unknown VR bytes"
    elif choice == 4:
        elems = D.changed(elems, 0x7FE00010, vr_bytes=r.choice((b"OB", b"UN", b"SQ", b"OF", b"FD")))
        variant = "PixelData VR"
    elif choice == 5:
        elems = D.with_elem(elems, Elem(0x00281050, "DS", D.text(r.choice(("abc", "1e999", "nan", "--5",
                                                                          "2048\\x", "\x00\x01")))))
        variant = "WindowCenter garbage DS"
    else:
        elems = D.with_elem(elems, Elem(0x00281053, "DS", D.text(r.choice(("0", "-0", "1e308", "inf")))))
        variant = "RescaleSlope extreme"
    return g.case("wrong_vr", variant, who, elems, r.choice((D.EXPLICIT_LE, D.EXPLICIT_BE)))


def truncated(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    syntax = r.choice((D.EXPLICIT_LE, D.IMPLICIT_LE))
    data = D.encode(elems, syntax)
    mode = r.randrange(4)
    if mode == 0:
        cut = r.randrange(len(data) - 4000 if len(data) > 8000 else len(data) // 2, len(data))
        return g.case("truncated", "pixel data cut", who, elems, syntax, dataset=data[:cut] or b"\x00\x00")
    if mode == 1:
        cut = r.randrange(8, max(9, len(data) // 8))
        return g.case("truncated", "header cut", who, elems, syntax, dataset=data[:cut])
    px = D.get(elems, 0x7FE00010)
    if mode == 2:
        elems = D.changed(elems, 0x7FE00010, length=len(px.value) + r.choice((2, 1000, 1 << 20, 0xFFFFFFF0)))
        return g.case("truncated", "pixel length too long", who, elems, syntax)
    elems = D.changed(elems, 0x7FE00010, value=px.value[: r.randrange(0, len(px.value)) & ~1])
    return g.case("truncated", "short pixel data", who, elems, syntax)


def frames(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    v = r.choice(("abc", "-1", "0", "1e9", "99999999999999", "2.5", "", "\x00\x00", "1\\2", " 7 ", "+3",
                  "2147483648", "NaN"))
    elems = D.with_elem(elems, Elem(0x00280008, "IS", D.text(v)))
    return g.case("frames", f"NumberOfFrames {v!r}", who, elems)


def huge_strings(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    tag = r.choice((BODY_PART, VIEW, MODALITY, 0x00100010, 0x00081030, 0x00204000))
    vr = {0x00100010: "PN", 0x00081030: "LO", 0x00204000: "LT"}.get(tag, "CS")
    unit = r.choice((f"{who.name} {who.patient_id} {who.birth_date} ", "CHEST ", "A" * 31 + "^", "1.2.3.4.5."))
    size = r.choice((4096, 16384, 60000, 65534))
    elems = D.with_elem(elems, Elem(tag, vr, D.text((unit * (size // len(unit) + 1))[:size])))
    return g.case("huge_strings", f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {size} bytes", who, elems,
                  r.choice((D.EXPLICIT_LE, D.IMPLICIT_LE)))


def deflated(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    raw = D.encode(elems, D.EXPLICIT_LE)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    good = c.compress(raw) + c.flush()
    mode = r.randrange(5)
    data, variant = {
        0: (good, "valid"),
        1: (good[: r.randrange(1, len(good))], "stream cut"),
        2: (good + bytes(r.randrange(256) for _ in range(64)), "garbage after"),
        3: (raw, "not deflated"),
        4: (zlib.compress(raw), "zlib header (not raw deflate)"),
    }[mode]
    return g.case("deflated", variant, who, elems, D.DEFLATED, dataset=data)


ODD_UIDS = (
    lambda u: u.replace(".", ".0", 1),  # a leading-zero component
    lambda u: u + " ",
    lambda u: u[:12] + "\x00" + u[12:],
    lambda u: u + ".A1",
    lambda u: u + "." + "9" * 60,  # over 64 characters
    lambda u: "2.25." + str(int.from_bytes(u.encode()[:16], "big")),
    lambda u: u.replace(".", "\\", 2),
    lambda u: u + "\u00e9",
    lambda u: "." + u,
    lambda u: u + "..",
)


def odd_uids(g: Gen) -> StoreCase:
    """UIDs with odd bytes in the dataset, the request, or both (raw: pynetdicom would refuse)."""
    r = g.rng
    who, elems = g.image()
    k = r.randrange(len(ODD_UIDS))
    odd = ODD_UIDS[k](who.instance_uid)
    g.phi.plant(*(t for t in odd.split(".") if len(t) >= 9))
    where = r.choice(("dataset", "both", "study"))
    if where == "study":
        elems = D.changed(elems, 0x0020000D, value=D.uid(ODD_UIDS[k](who.study_uid).encode("latin-1", "replace")))
        return g.case("odd_uids", f"study UID form {k}", who, elems)
    elems = D.changed(elems, 0x00080018, value=D.uid(odd.encode("latin-1", "replace")))
    instance = odd.encode("latin-1", "replace") if where == "both" else who.instance_uid
    return g.case("odd_uids", f"instance UID form {k} in {where}", who, elems, instance=instance,
                  via="raw" if where == "both" else "pynetdicom")


def private_tags(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    creator = r.choice(("ACME_HIS 1.0", "SIEMENS CSA HEADER", "GEMS_ACQU_01", who.name[:16]))
    elems = elems + [
        Elem(0x00090010, "LO", D.text(creator)),
        Elem(0x00091001, "LO", D.text(who.patient_id)),
        Elem(0x00091002, "PN", D.text(who.name)),
        Elem(0x00091003, "UN", bytes(r.randrange(256) for _ in range(r.randrange(0, 300)))),
        Elem(0x00290010, "LO", D.text("PRIVATE")),
        Elem(0x00291010, "OB", bytes(r.randrange(256) for _ in range(r.randrange(0, 2000)))),
    ]
    if r.random() < 0.3:  # a private SOP class on a CR context: the request and the context disagree
        private = "1.3.12.2.1107.5.9.1"
        elems = D.changed(elems, 0x00080016, value=D.uid(private))
        return g.case("private_tags", "private SOP class", who, elems, sop_class=private, via="raw",
                      context_class=D.CR)
    return g.case("private_tags", f"creator {creator[:12]}", who, elems)


NON_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "basic text SR",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.88.59": "key object selection",
}


def non_image(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    sop = r.choice(sorted(NON_IMAGES))
    elems = D.without(elems, *range(0x00280000, 0x00290000), 0x7FE00010)
    elems = D.changed(elems, 0x00080016, value=D.uid(sop))
    elems = D.changed(elems, MODALITY, value=D.text(r.choice(("SR", "PR", "DOC", "KO"))))
    elems.append(Elem(0x00400010, "SH", D.text(who.name[:16])))
    if "PDF" in NON_IMAGES[sop]:
        elems.append(Elem(0x00420011, "OB", b"%PDF-1.4 " + who.name.encode() + b" " + who.patient_id.encode()))
    return g.case("non_image", NON_IMAGES[sop], who, elems, sop_class=sop)


def mutate(g: Gen) -> StoreCase:
    """Random byte flips, insertions and deletions in the header of a valid dataset."""
    r = g.rng
    who, elems = g.image()
    syntax = r.choice((D.EXPLICIT_LE, D.IMPLICIT_LE))
    data = bytearray(D.encode(elems, syntax))
    header = len(data) - len(D.get(elems, 0x7FE00010).value)
    n = r.randrange(1, 9)
    for _ in range(n):
        at = r.randrange(0, header)
        op = r.randrange(4)
        if op == 0:
            data[at] ^= 1 << r.randrange(8)
        elif op == 1:
            data[at] = r.choice((0x00, 0xFF, 0x7F, 0x80, r.randrange(256)))
        elif op == 2:
            data[at:at] = bytes(r.randrange(256) for _ in range(r.randrange(1, 5)))
        else:
            del data[at: at + r.randrange(1, 5)]
    return g.case("mutate", f"{n} mutations", who, elems, syntax, dataset=bytes(data))


def duplicate(g: Gen) -> StoreCase:
    who, elems = g.image()
    return g.case("duplicate", "same instance twice", who, elems, repeat=2)


def compressed_broken(g: Gen) -> StoreCase:
    r = g.rng
    who, elems = g.image()
    syntax = r.choice((D.RLE, D.JPEG_BASELINE, D.JPEG_LOSSLESS))
    junk = bytes(r.randrange(256) for _ in range(r.randrange(16, 3000)))
    if syntax == D.RLE and r.random() < 0.5:  # an RLE header that promises segments that are not there
        junk = struct.pack("<16L", r.randrange(1, 16), 64, 0xFFFFFF, *([0] * 13)) + junk
    if syntax == D.JPEG_BASELINE and r.random() < 0.5:
        junk = b"\xff\xd8\xff\xdb" + junk
    frag = struct.pack("<HHL", 0xFFFE, 0xE000, len(junk) + (len(junk) & 1)) + junk + (b"\x00" if len(junk) & 1 else b"")
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + frag
    if r.random() < 0.8:
        items += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    if r.random() < 0.3:  # a fragment whose length overruns the data
        items = items[:12] + struct.pack("<L", 0x7FFFFFFF) + items[16:]
    elems = D.changed(elems, 0x7FE00010, vr="OB", value=items, length=D.UNDEFINED)
    names = {D.RLE: "RLE", D.JPEG_BASELINE: "JPEG baseline", D.JPEG_LOSSLESS: "JPEG lossless"}
    return g.case("compressed_broken", names[syntax], who, elems, syntax)  # encapsulated: explicit VR LE


def sequences(g: Gen) -> StoreCase:
    """Nested sequences: deep nesting, undefined lengths without delimiters, items that lie."""
    r = g.rng
    who, elems = g.image()
    depth = r.choice((3, 50, 400, 2000))
    inner = D.encode([Elem(0x00100010, "PN", D.text(who.name))], D.EXPLICIT_LE)
    for _ in range(depth):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
        inner = struct.pack("<HH", 0x0040, 0xA730) + b"SQ" + struct.pack("<HL", 0, len(item)) + item
    if r.random() < 0.4:  # undefined length, no delimiters at all
        inner = inner[:8] + struct.pack("<L", D.UNDEFINED) + inner[12:]
    data = D.encode(elems, D.EXPLICIT_LE)
    px_at = data.rfind(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")
    return g.case("sequences", f"depth {depth}", who, elems, D.EXPLICIT_LE, dataset=data[:px_at] + inner + data[px_at:])


def mismatch(g: Gen) -> StoreCase:
    """The request addresses another instance or class than the dataset carries."""
    r = g.rng
    who, elems = g.image()
    if r.random() < 0.5:
        other = g.phi.uid()
        return g.case("mismatch", "instance differs", who, elems, instance=other, via="raw")
    return g.case("mismatch", "class differs", who, elems, sop_class=D.DX_PRESENTATION, via="raw",
                  context_class=D.DX_PRESENTATION)


FAMILIES = {
    "valid": (8, valid), "coded_length": (12, coded_length), "wrong_vr": (9, wrong_vr),
    "truncated": (6, truncated), "frames": (5, frames), "huge_strings": (3, huge_strings),
    "deflated": (5, deflated), "odd_uids": (6, odd_uids), "private_tags": (4, private_tags),
    "non_image": (4, non_image), "mutate": (16, mutate), "duplicate": (3, duplicate),
    "compressed_broken": (4, compressed_broken), "sequences": (2, sequences), "mismatch": (3, mismatch),
}
