"""Will these binaries run on that root filesystem? Checked on the host, before flashing.

A wheel or an interpreter the target cannot load fails only at the device's first boot, far
from whoever built the image. Three things decide it, and all three can be read without
running anything: the CPU (ELF ``e_machine``, the wheel's platform tag), the CPython ABI (the
wheel's ``cpXY`` tags against the interpreter's version) and the C library (the highest
``GLIBC_2.N`` symbol version a binary needs, from its ELF ``.gnu.version_r`` or the wheel's
``manylinux_2_N`` tag, against the ``GLIBC_2.N`` versions the target's ``libc.so.6`` defines in
``.gnu.version_d``). Standard library only, little-endian 64-bit ELF (aarch64, x86-64).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7l"}
SHT_DYNAMIC, SHT_GNU_VERDEF, SHT_GNU_VERNEED = 6, 0x6FFFFFFD, 0x6FFFFFFE
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
# JetPack release -> the glibc of its Ubuntu (L4T r32 = 18.04, r35 = 20.04, r36 = 22.04).
JETPACK_GLIBC = {"4.6": (2, 27), "5.1": (2, 31), "6": (2, 35)}
Version = tuple[int, int]


class TargetMismatch(Exception):
    """A binary cannot run on the target; the message says what to fetch instead."""


@dataclass
class ElfInfo:
    machine: str | None
    needs_glibc: Version | None = None  # highest GLIBC_2.N in .gnu.version_r
    defines_glibc: Version | None = None  # highest GLIBC_2.N in .gnu.version_d (libc itself)
    needed: list[str] = field(default_factory=list)  # DT_NEEDED libraries


def _glibc(name: str) -> Version | None:
    m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def read_elf(path: Path) -> ElfInfo | None:
    """Machine, glibc versions needed/defined and DT_NEEDED of an ELF file; None if not ELF."""
    return parse_elf(path.read_bytes())


def parse_elf(data: bytes) -> ElfInfo | None:
    """:func:`read_elf` of bytes already read (e.g. a tarball member)."""
    if data[:4] != b"\x7fELF":
        return None
    if data[4] != 2 or data[5] != 1:  # only ELF64 little-endian (every Jetson and x86-64 host)
        return ElfInfo(None)
    info = ElfInfo(ELF_MACHINES.get(struct.unpack_from("<H", data, 18)[0], "unknown"))
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)] if shoff else []

    def string(link: int, offset: int) -> str:
        base = sections[link][4] + offset
        return data[base:data.index(b"\0", base)].decode("ascii", "replace")

    needs: list[Version] = []
    defines: list[Version] = []
    for _name, kind, _flags, _addr, off, size, link, _info, _align, _entsize in sections:
        if not size:
            continue
        if kind == SHT_GNU_VERNEED:
            pos = off
            while True:
                _ver, count, _file, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                apos = pos + aux
                for _ in range(count):
                    _hash, _fl, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                    needs += [v for v in [_glibc(string(link, name))] if v]
                    apos += anext
                if not nxt:
                    break
                pos += nxt
        elif kind == SHT_GNU_VERDEF:
            pos = off
            while True:
                _ver, _fl, _ndx, count, _hash, aux, nxt = struct.unpack_from("<HHHHIII", data, pos)
                if count:
                    name, _anext = struct.unpack_from("<II", data, pos + aux)
                    defines += [v for v in [_glibc(string(link, name))] if v]
                if not nxt:
                    break
                pos += nxt
        elif kind == SHT_DYNAMIC:
            for pos in range(off, off + size, 16):
                tag, val = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    info.needed.append(string(link, val))
    info.needs_glibc = max(needs, default=None)
    info.defines_glibc = max(defines, default=None)
    return info


def resolve_in_root(root: Path, rel: str) -> Path | None:
    """Follow symlinks of ``root/rel`` as the target would (absolute targets stay in root)."""
    path = root / rel.lstrip("/")
    for _ in range(32):
        if not path.is_symlink():
            return path if path.is_file() else None
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return None


LIB_DIRS = ("lib/{triplet}", "usr/lib/{triplet}", "lib64", "usr/lib64", "lib", "usr/lib")
TRIPLETS = {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu", "armv7l": "arm-linux-gnueabihf"}


def find_library(root: Path, name: str, arch: str | None) -> Path | None:
    triplets = [TRIPLETS[arch]] if arch in TRIPLETS else list(TRIPLETS.values())
    for pattern in LIB_DIRS:
        for triplet in triplets:
            found = resolve_in_root(root, pattern.format(triplet=triplet) + "/" + name)
            if found is not None:
                return found
    return None


def target_glibc(root: Path, arch: str | None) -> Version | None:
    """The glibc of the root: from ``libc-2.N.so`` (glibc < 2.34 names its file so) or from
    the versions ``libc.so.6`` defines. None when the root has no libc (a staging directory)."""
    libc = find_library(root, "libc.so.6", arch)
    if libc is None:
        return None
    m = re.fullmatch(r"libc-(\d+)\.(\d+)\.so", libc.name)
    if m:
        return int(m.group(1)), int(m.group(2))
    info = read_elf(libc)
    return info.defines_glibc if info else None


@dataclass(frozen=True)
class WheelTags:
    name: str
    pythons: tuple[str, ...]
    abi: str
    platforms: tuple[str, ...]


def wheel_tags(filename: str) -> WheelTags:
    parts = filename[:-4].split("-")
    return WheelTags(parts[0], tuple(parts[-3].split(".")), parts[-2], tuple(parts[-1].split(".")))


def platform_glibc(platform: str, arch: str) -> Version | None | str:
    """glibc a platform tag needs on ``arch``: a version, None (pure: ``any``), or a reason
    string when the tag cannot run there at all."""
    if platform == "any":
        return None
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
    if m:
        return (int(m.group(1)), int(m.group(2))) if m.group(3) == arch else f"built for {m.group(3)}"
    legacy, _, plat_arch = platform.partition("_")
    if legacy in LEGACY_MANYLINUX:
        return LEGACY_MANYLINUX[legacy] if plat_arch == arch else f"built for {plat_arch}"
    if platform.startswith("musllinux"):
        return "built for musl libc, not glibc"
    if platform == f"linux_{arch}":
        return (0, 0)  # a local build: no declared glibc; the ELF check of an interpreter covers those
    return f"built for {platform}"


def wheel_problem(filename: str, arch: str | None, python: Version | None, glibc: Version | None) -> str | None:
    """Why a wheel cannot be installed on the target, or None when it fits (unknowns pass)."""
    tags = wheel_tags(filename)
    if python is not None:
        cp = f"cp{python[0]}{python[1]}"
        if tags.abi == "abi3":
            lowest = min((int(p[3:]) for p in tags.pythons if re.fullmatch(r"cp3\d+", p)), default=0)
            if lowest > python[1]:
                return f"needs CPython >= 3.{lowest} (abi3), the target's is {python[0]}.{python[1]}"
        elif tags.abi.startswith("cp") and tags.abi != cp:
            return f"built for {tags.abi}, the target's interpreter is {cp}"
        elif all(p.startswith("cp") for p in tags.pythons) and cp not in tags.pythons:
            return f"built for {'.'.join(tags.pythons)}, the target's interpreter is {cp}"
    if arch is None:
        return None
    reasons = []
    for platform in tags.platforms:
        need = platform_glibc(platform, arch)
        if need is None or (isinstance(need, tuple) and (glibc is None or need <= glibc)):
            return None
        reasons.append(need if isinstance(need, str) else f"needs glibc {need[0]}.{need[1]}")
    have = f", the target has {glibc[0]}.{glibc[1]}" if glibc else ""
    return f"{' / '.join(sorted(set(reasons)))} ({arch}{have})"


def jetpack_of(glibc: Version | None) -> str:
    """The newest JetPack a root with this glibc can stand for, for messages."""
    fits = [jp for jp, v in JETPACK_GLIBC.items() if glibc is not None and v <= glibc]
    return fits[-1] if fits else "4.6"


def check_wheels(names: list[str], arch: str | None, python: Version | None, glibc: Version | None) -> None:
    """Refuse wheels the target cannot use, saying what to fetch instead."""
    bad = [f"{name}: {why}" for name in names if (why := wheel_problem(name, arch, python, glibc))]
    if bad:
        py = f" --python {python[0]}.{python[1]}" if python else ""
        raise TargetMismatch(
            "wheels the target cannot use:\n  " + "\n  ".join(bad) + "\nfetch a wheelhouse for this target: "
            f"`edged wheelhouse --jetpack {jetpack_of(glibc)}{py} -d DIR` (it picks the newest version of each "
            "requirement that has a wheel for its glibc and CPython)")
