"""A relocatable CPython 3.11 for the JetPack 5 analogue, cross-built here from Debian's source.

An integrator would fetch python-build-standalone's aarch64 ``install_only`` tarball; that
download is not reachable from this project's machines, so ``make flash-test-jp5`` makes the
same kind of artefact: CPython 3.11 from Debian's ``python3.11`` source package (its upstream
tarball), cross-compiled with Debian's ``gcc-aarch64-linux-gnu`` against a bullseye arm64
sysroot (glibc 2.31, the JetPack 5 analogue), so it needs nothing newer than the target has.
Packed as ``python/...`` like python-build-standalone, and staged with ``--python-dist``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from flashlib import MIRROR

DEV_PACKAGES = ["libc6-dev", "libffi-dev", "zlib1g-dev", "libsqlite3-dev", "libssl-dev", "libbz2-dev",
                "liblzma-dev", "libexpat1-dev"]
TRIPLET = "aarch64-linux-gnu"
# Not needed by a daemon, large, or both.
PRUNE = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3/tests", "unittest/test",
         "config-3.11-aarch64-linux-gnu")


def _run(cmd: list[str], log: Path, **kw) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, **kw)


def sysroot(work: Path, log: Path) -> Path:
    """bullseye arm64 headers and libraries, only extracted (no maintainer scripts: no qemu)."""
    root = work / "sysroot"
    if not (root / "usr/include/stdio.h").exists():
        _run(["mmdebstrap", "--arch=arm64", "--variant=extract", f"--include={','.join(DEV_PACKAGES)}",
              "bullseye", str(root), MIRROR], log)
    _relative_links(root)
    # Debian's ffi.h is multiarch (usr/include/aarch64-linux-gnu); configure sets
    # LIBFFI_INCLUDEDIR from pkg-config to usr/include, where setup.py then finds no ffi.h and
    # builds a _ctypes without libffi (undefined symbol ffi_type_void at import).
    for header in ("ffi.h", "ffitarget.h"):
        link = root / "usr/include" / header
        if not link.exists() and (root / "usr/include" / TRIPLET / header).exists():
            link.symlink_to(f"{TRIPLET}/{header}")
    return root


def _relative_links(root: Path) -> None:
    """Absolute symlinks (``usr/lib/.../libpthread.so -> /lib/.../libpthread.so.0``) would point
    into the host: the linker then finds nothing, falls back to ``libpthread.a`` and configure
    reports "could not find pthreads". Make them relative to the sysroot."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if link.is_symlink() and os.readlink(link).startswith("/"):
                target = root / os.readlink(link).lstrip("/")
                link.unlink()
                link.symlink_to(os.path.relpath(target, link.parent))


def source(work: Path, log: Path) -> Path:
    """The upstream tarball from Debian's python3.11 source package (apt-get source -d)."""
    apt = work / "apt"
    (apt / "lists/partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(
        f"deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} bookworm main\n")
    opts = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", "APT::Sandbox::User=root", "-qq"]
    _run(["apt-get", *opts, "update"], log)
    _run(["apt-get", *opts, "source", "--download-only", "python3.11"], log, cwd=apt)
    (orig,) = glob.glob(str(apt / "python3.11_*.orig.tar.*"))
    _run(["tar", "-xf", orig, "-C", str(work)], log)
    (tree,) = [p for p in work.glob("Python-3.11*") if p.is_dir()]
    return tree


def build_relocatable_cpython(work: Path, log: Path) -> Path:
    """``work/python.tar.gz``: a CPython 3.11 install tree for aarch64 / glibc 2.31."""
    sr = sysroot(work, log)
    tree = source(work, log)
    build, stage = work / "cpython-build", work / "cpython-stage"
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)
    build.mkdir()
    inc = f"-isystem {sr}/usr/include/{TRIPLET} -isystem {sr}/usr/include"
    libdirs = [f"{sr}/usr/lib/{TRIPLET}", f"{sr}/lib/{TRIPLET}"]
    env = dict(os.environ,
               CC=f"{TRIPLET}-gcc --sysroot={sr}", CPPFLAGS=inc, CFLAGS="-O2",
               LDFLAGS=" ".join(f"-L{d} -Wl,-rpath-link,{d}" for d in libdirs),
               PKG_CONFIG_LIBDIR=f"{sr}/usr/lib/{TRIPLET}/pkgconfig:{sr}/usr/share/pkgconfig",
               PKG_CONFIG_SYSROOT_DIR=str(sr),
               ac_cv_file__dev_ptmx="yes", ac_cv_file__dev_ptc="no", ac_cv_buggy_getaddrinfo="no")
    _run([str(tree / "configure"), f"--host={TRIPLET}", "--build=x86_64-linux-gnu", "--prefix=/opt/edged/python",
          f"--with-build-python={_build_python()}", "--without-ensurepip",
          "--disable-test-modules"], log, cwd=build, env=env)
    _run(["make", f"-j{os.cpu_count() or 2}"], log, cwd=build, env=env)
    _run(["make", "install", f"DESTDIR={stage}"], log, cwd=build, env=env)
    prefix = stage / "opt/edged/python"
    lib = prefix / "lib/python3.11"
    for rel in PRUNE:
        shutil.rmtree(lib / rel, ignore_errors=True)
    for cache in list(prefix.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    strip = shutil.which(f"{TRIPLET}-strip")
    if strip:  # debug symbols are most of the size; a device needs none of them
        binaries = [str(prefix / "bin/python3.11")] + [str(p) for p in (lib / "lib-dynload").glob("*.so")]
        _run([strip, "--strip-unneeded", *binaries], log)
    missing = [m for m in ("_sqlite3", "_ctypes", "_ssl", "zlib", "_hashlib")
               if not list((lib / "lib-dynload").glob(f"{m}.cpython-311-*.so"))]
    if missing:
        raise RuntimeError(f"the cross-built CPython lacks {missing}: see {log}")
    from edged.service.targetcheck import read_elf

    for module, needs in (("_ctypes", "libffi.so"), ("_sqlite3", "libsqlite3.so"), ("_ssl", "libssl.so")):
        (so,) = (lib / "lib-dynload").glob(f"{module}.cpython-311-*.so")
        info = read_elf(so)
        if not info or not any(n.startswith(needs) for n in info.needed):
            raise RuntimeError(f"{so.name} is not linked with {needs}: see {log}")
    tarball = work / "python.tar.gz"
    _run(["tar", "-czf", str(tarball), "-C", str(stage / "opt/edged"), "python"], log)
    return tarball


def _build_python() -> str:
    """A host CPython 3.11 to drive the cross build: Debian's (the same 3.11.2 as the source)."""
    for candidate in ("/usr/bin/python3.11", shutil.which("python3.11")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("the cross build needs a host python3.11 (Debian 12: apt-get install python3.11)")
