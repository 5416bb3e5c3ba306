"""A relocatable CPython for JetPacks whose system Python is too old for the daemon.

JetPack 4.6 ships Python 3.6 and JetPack 5.1 ships 3.8; edged needs >= 3.10, and no apt
archive of those Ubuntu releases has a newer one built for their glibc. A relocatable build
(python-build-standalone's aarch64 ``install_only`` tarball needs glibc 2.17; one cross-built
from CPython's source against the JetPack's sysroot works too) runs from wherever it is
unpacked: ``edged install --python-dist TARBALL --python-dist-sha256 HEX`` unpacks it into
``/opt/edged/python`` and the first boot builds the venv with it. TensorRT stays on JetPack's
system Python (``tensorrt.worker_python``): its bindings exist only for that interpreter.

Before anything is written the tarball's digest is compared with the one given (an image for
many devices must be built from exactly the file the integrator vetted), and the interpreter
is checked against the target root: CPU, version, the glibc it and its extension modules need,
and the shared libraries those modules load (libsqlite3 for the outbox, libffi for ctypes).
"""

from __future__ import annotations

import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edged.digests import sha256_file  # noqa: F401 (callers import it from here)
from edged.service.targetcheck import (
    TargetMismatch,
    Version,
    find_library,
    parse_elf,
    read_elf,
    resolve_in_root,
    target_glibc,
)

# Extension modules edged cannot run without: the outbox (sqlite3), hashing and pseudonyms,
# zlib (pip, pydicom), ctypes (sd_notify fallbacks, numpy's loaders), TLS to the broker.
ESSENTIAL_MODULES = ("_sqlite3", "_hashlib", "zlib", "_ctypes", "_ssl", "pyexpat", "_json", "math")


@dataclass
class PythonDist:
    """The unpacked tarball: relative path -> (data, mode) for files, -> target for symlinks."""

    files: dict[str, tuple[bytes, int]]
    links: dict[str, str]
    exe: str  # bin/python3.X, relative
    version: Version



def read_dist(tarball: Path, sha256: str) -> PythonDist:
    """Verify and read ``tarball`` (one top-level folder, e.g. ``python/``, is stripped)."""
    actual = sha256_file(tarball)
    if actual != sha256.strip().lower():
        raise TargetMismatch(f"{tarball}: sha256 is {actual}, not the {sha256} given with --python-dist-sha256")
    files: dict[str, tuple[bytes, int]] = {}
    links: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.strip("./")]
        firsts = {PurePosixPath(m.name.lstrip("./")).parts[0] for m in members}
        strip = len(firsts) == 1 and not any(m.isfile() and m.name.strip("./") in firsts for m in members)
        for m in members:
            parts = PurePosixPath(m.name.lstrip("./")).parts[1 if strip else 0:]
            if not parts:
                continue
            if m.name.startswith("/") or ".." in parts:
                raise TargetMismatch(f"{tarball}: member {m.name} would land outside /opt/edged/python")
            rel = "/".join(parts)
            if m.issym():
                target = PurePosixPath(m.linkname)
                if target.is_absolute() or _escapes(PurePosixPath(rel).parent, target):
                    raise TargetMismatch(f"{tarball}: symlink {m.name} -> {m.linkname} leaves the tree")
                links[rel] = m.linkname
            elif m.isfile():
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                files[rel] = (data, 0o755 if m.mode & stat.S_IXUSR else 0o644)
            elif m.islnk():
                source = "/".join(PurePosixPath(m.linkname.lstrip("./")).parts[1 if strip else 0:])
                if source not in files:
                    raise TargetMismatch(f"{tarball}: hard link {m.name} to {m.linkname}, which comes later")
                files[rel] = files[source]
            elif not m.isdir():
                raise TargetMismatch(f"{tarball}: {m.name} is not a file, folder or symlink")
    names = [n for n in list(files) + list(links) if re.fullmatch(r"bin/python3\.\d+", n)]
    if not names:
        raise TargetMismatch(f"{tarball} has no bin/python3.X: not a CPython install tree "
                             "(python-build-standalone: the *-install_only.tar.gz build)")
    exe = sorted(names, key=lambda n: int(n.rsplit(".", 1)[1]))[-1]
    version = (3, int(exe.rsplit(".", 1)[1]))
    while exe in links:  # bin/python3.11 may itself be a link
        exe = str(PurePosixPath(exe).parent / links[exe])
    return PythonDist(files, links, exe, version)


def _escapes(folder: PurePosixPath, target: PurePosixPath) -> bool:
    depth = len(folder.parts)
    for part in target.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def check_dist(dist: PythonDist, root: Path) -> tuple[str, Version | None, list[str]]:
    """(arch, glibc the interpreter needs, notes); raises TargetMismatch when it cannot run."""
    if dist.version < (3, 10):
        raise TargetMismatch(f"the --python-dist interpreter is Python 3.{dist.version[1]}; edged needs >= 3.10")
    info = parse_elf(dist.files[dist.exe][0]) if dist.exe in dist.files else None
    if info is None or info.machine is None:
        raise TargetMismatch(f"{dist.exe} in the --python-dist tarball is not a 64-bit ELF executable")
    arch = info.machine
    glibc = target_glibc(root, arch)
    target_arch = _root_arch(root)
    if target_arch is not None and target_arch != arch:
        raise TargetMismatch(f"the --python-dist interpreter is for {arch}, the target root is {target_arch}: fetch "
                             f"the {target_arch} build (python-build-standalone: cpython-3.X-{target_arch}-unknown-"
                             "linux-gnu-install_only.tar.gz)")
    ours = {PurePosixPath(n).name for n in list(dist.files) + list(dist.links) if ".so" in n}
    need, notes, missing = info.needs_glibc, [], []
    for rel, (data, _mode) in dist.files.items():
        if not (rel.startswith("lib/") and ".so" in PurePosixPath(rel).name and data[:4] == b"\x7fELF"):
            continue
        ext = parse_elf(data)
        if ext is None:
            continue
        if ext.needs_glibc and (need is None or ext.needs_glibc > need):
            need = ext.needs_glibc
        module = PurePosixPath(rel).name.split(".")[0]
        for lib in ext.needed:
            if lib not in ours and find_library(root, lib, arch) is None and glibc is not None:
                missing.append((module, lib))
    if need and glibc and need > glibc:
        raise TargetMismatch(
            f"the --python-dist interpreter needs glibc {need[0]}.{need[1]}, the target root has "
            f"{glibc[0]}.{glibc[1]}: fetch a build made for an older glibc (python-build-standalone's "
            "aarch64 install_only builds need 2.17) or build CPython against this JetPack's sysroot")
    fatal = sorted({f"{m} needs {lib}" for m, lib in missing if m in ESSENTIAL_MODULES})
    if fatal:
        raise TargetMismatch("the --python-dist interpreter's modules need libraries the target root lacks: "
                             + "; ".join(fatal) + ": add them to the image (e.g. apt libsqlite3-0, libffi7, "
                             "libssl1.1 on JetPack 5) or use a build that bundles them (python-build-standalone)")
    notes += [f"note: --python-dist module {m} needs {lib}, which the target lacks (edged does not use it)"
              for m, lib in sorted(set(missing)) if m not in ESSENTIAL_MODULES]
    if glibc is None:
        notes.append("note: the target root has no libc.so.6: the interpreter's glibc was not checked")
    return arch, need, notes


def _root_arch(root: Path) -> str | None:
    for rel in ("usr/bin/env", "bin/sh", "usr/bin/python3"):
        path = resolve_in_root(root, rel)
        if path is not None:
            info = read_elf(path)
            if info is not None:
                return info.machine
    return None


