"""How large a Deflated Explicit VR Little Endian dataset becomes, found without becoming it.

pydicom inflates a deflated dataset whole, in memory, before it reads a single element: a
1 MB C-STORE that inflates to 1 GB cost the daemon 2.45 GB. So before the handler parses the
header of a deflated dataset, :func:`check_inflated_size` inflates it once as a stream, 64 KB at
a time, counting, and stops at the limit (``dicom.max_inflated_mb``). Memory stays at one chunk
whatever the file claims; CPU is bounded by the limit.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

CHUNK = 64 << 10
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class TooLarge(Exception):
    pass


class NotDeflated(Exception):
    """The file's structure is not a deflated dataset after a file meta group."""


def dataset_offset(f) -> int:  # type: ignore[no-untyped-def]
    """Offset of the first byte after the File Meta Information (group 0002, explicit VR LE)."""
    f.seek(0)
    if f.read(132)[128:] != b"DICM":
        raise NotDeflated("no DICM prefix")
    while True:
        at = f.tell()
        head = f.read(8)
        if len(head) < 8:
            raise NotDeflated("file meta truncated")
        group = struct.unpack("<H", head[:2])[0]
        if group != 0x0002:
            return at
        vr = head[4:6]
        if vr in _LONG_VRS:
            rest = f.read(4)
            if len(rest) < 4:
                raise NotDeflated("file meta truncated")
            length = struct.unpack("<L", rest)[0]
        else:
            length = struct.unpack("<H", head[6:8])[0]
        f.seek(length, 1)


def check_inflated_size(path: Path, limit: int) -> int:
    """Inflated size of the dataset in ``path``; :class:`TooLarge` as soon as it passes
    ``limit`` bytes; ``zlib.error``/:class:`NotDeflated` when it is not a valid deflate stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, PS3.5 A.5
    total = 0
    with open(path, "rb") as f:
        f.seek(dataset_offset(f))
        while True:
            data = f.read(CHUNK)
            if not data:
                break
            while data and not inflater.eof:  # bytes after the stream's end are padding: ignored
                out = inflater.decompress(data, CHUNK)
                total += len(out)
                if total > limit:
                    raise TooLarge(f"deflated dataset inflates to more than {limit >> 20} MB")
                data = inflater.unconsumed_tail
            if inflater.eof:
                break
        total += len(inflater.flush())
    if total > limit:
        raise TooLarge(f"deflated dataset inflates to more than {limit >> 20} MB")
    return total
