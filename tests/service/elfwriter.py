"""Minimal ELF64 files with the sections the target checks read, for tests that need an aarch64
interpreter or library on an x86 host: ``.gnu.version_r`` (GLIBC versions needed),
``.gnu.version_d`` (versions a libc defines) and ``.dynamic`` (DT_NEEDED). The reader is also
tested against this host's real libc and python, so the two cannot drift apart unnoticed."""

from __future__ import annotations

import struct
from pathlib import Path

MACHINES = {"aarch64": 183, "x86_64": 62}


def elf(machine: str = "aarch64", needs: tuple[str, ...] = (), defines: tuple[str, ...] = (),
        needed: tuple[str, ...] = ()) -> bytes:
    strtab = bytearray(b"\0")

    def s(text: str) -> int:
        off = len(strtab)
        strtab.extend(text.encode() + b"\0")
        return off

    libc = s("libc.so.6")
    verneed = b""
    if needs:
        aux = b"".join(struct.pack("<IHHII", 0, 0, 2 + i, s(v), 16 if i < len(needs) - 1 else 0)
                       for i, v in enumerate(needs))
        verneed = struct.pack("<HHIII", 1, len(needs), libc, 16, 0) + aux
    verdef = b""
    for i, v in enumerate(defines):
        last = i == len(defines) - 1
        verdef += struct.pack("<HHHHIII", 1, 0, i + 1, 1, 0, 20, 0 if last else 28) + struct.pack("<II", s(v), 0)
    dynamic = b"".join(struct.pack("<qQ", 1, s(lib)) for lib in needed) + struct.pack("<qQ", 0, 0)
    shstr = b"\0.dynstr\0.gnu.version_r\0.gnu.version_d\0.dynamic\0.shstrtab\0"
    body = [bytes(strtab), verneed, verdef, dynamic, shstr]
    offsets, pos = [], 64
    for part in body:
        offsets.append(pos)
        pos += len(part)
    shoff = pos
    kinds = [(1, 3), (9, 0x6FFFFFFE), (24, 0x6FFFFFFD), (39, 6), (48, 3)]  # (name offset in shstr, type)
    sections = [bytes(64)]
    for (name, kind), off, part in zip(kinds, offsets, body):
        link = 0 if kind == 3 else 1
        sections.append(struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, off, len(part), link, 0, 8, 0))
    header = (b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 3, MACHINES[machine], 1, 0, 0, shoff, 0, 64, 56, 0, 64,
                            len(sections), 5))
    return header + b"".join(body) + b"".join(sections)


def write(path: Path, data: bytes, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def jetpack_root(root: Path, glibc: str = "2.27", python: str = "3.6", libs: tuple[str, ...] = ()) -> Path:
    """A root laid out like L4T's Ubuntu: libc-2.N.so behind libc.so.6 (glibc < 2.34), the system
    python3 -> python3.X, and ``libs`` present in /usr/lib/aarch64-linux-gnu."""
    lib = root / "lib/aarch64-linux-gnu"
    write(lib / f"libc-{glibc}.so", elf(defines=tuple(f"GLIBC_2.{n}" for n in range(17, int(glibc.split('.')[1]) + 1))))
    (lib / "libc.so.6").symlink_to(f"libc-{glibc}.so")
    write(root / f"usr/bin/python{python}", elf(needs=("GLIBC_2.17",)))
    (root / "usr/bin/python3").symlink_to(f"python{python}")
    for name in libs:
        write(root / "usr/lib/aarch64-linux-gnu" / name, elf(), 0o644)
    return root
