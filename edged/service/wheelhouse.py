"""``edged wheelhouse --jetpack 4.6|5.1|6 -d DIR``: the wheels a JetPack image needs, fetched once.

Run on a host with network (any CPU): it downloads, for aarch64, exactly the wheels that fit the
JetPack's glibc and the daemon's interpreter, plus pip (the first boot installs with it from
its wheel) and a wheel of edged itself, so that the image builds its venv offline. pip's
resolver only sees wheels whose platform tag is one of ``manylinux2014_aarch64`` /
``manylinux_2_17_aarch64`` ... ``manylinux_2_<N>_aarch64`` for the JetPack's glibc 2.N, so a
release that needs a newer glibc (onnxruntime >= 1.29 is manylinux_2_28: too new for JetPack
4.6's 2.27) is skipped for the newest one that fits. Every downloaded wheel is then checked
with the installer's own rules (:mod:`edged.service.targetcheck`) and listed with the glibc it needs.
"""

from __future__ import annotations

import argparse
import configparser
import subprocess
import sys
from pathlib import Path

from edged.service.targetcheck import JETPACK_GLIBC, TargetMismatch, check_wheels, wheel_tags

# The daemon's interpreter per JetPack: the system Python on 6 (3.10); on 4.6 and 5.1 the
# relocatable CPython staged with `edged install --python-dist` (3.11 is what this defaults to).
DEFAULT_PYTHON = {"4.6": "3.11", "5.1": "3.11", "6": "3.10"}


def requirements(source: Path) -> list[str]:
    """``install_requires`` of the source tree's setup.cfg (the daemon's dependencies)."""
    cfg = configparser.ConfigParser()
    cfg.read(source / "setup.cfg", encoding="utf-8")
    raw = cfg.get("options", "install_requires", fallback="")
    return [line.split("#")[0].strip() for line in raw.splitlines() if line.split("#")[0].strip()]


def platforms(glibc: tuple[int, int], arch: str = "aarch64") -> list[str]:
    return [f"manylinux2014_{arch}"] + [f"manylinux_2_{minor}_{arch}" for minor in range(17, glibc[1] + 1)]


def pip_download_command(dest: Path, jetpack: str, python: str, reqs: list[str]) -> list[str]:
    major, minor = python.split(".")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--dest", str(dest), "--implementation", "cp", "--python-version", python,
           "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    for platform in platforms(JETPACK_GLIBC[jetpack]):
        cmd += ["--platform", platform]
    return cmd + reqs + ["pip"]


def build(dest: Path, jetpack: str, python: str, source: Path, run=subprocess.run) -> list[str]:
    """Fill ``dest``; returns the report lines. Raises CalledProcessError or TargetMismatch."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(source)
    if not reqs:
        raise TargetMismatch(f"{source}/setup.cfg lists no install_requires")
    run(pip_download_command(dest, jetpack, python, reqs), check=True)
    run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "-w", str(dest),
         str(source)], check=True)
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    glibc = JETPACK_GLIBC[jetpack]
    check_wheels(wheels, "aarch64", tuple(int(n) for n in python.split(".")), glibc)  # type: ignore[arg-type]
    lines = [f"wheelhouse for JetPack {jetpack} (aarch64, glibc {glibc[0]}.{glibc[1]}, CPython {python}) in {dest}:"]
    for name in wheels:
        tags = wheel_tags(name)
        need = min((_glibc_of(p) for p in tags.platforms), default=None)  # any one tag that fits
        lines.append(f"  {name}" + (f"  (glibc >= 2.{need})" if need else ""))
    return lines


def _glibc_of(platform: str) -> int:
    import re

    m = re.match(r"manylinux_2_(\d+)_", platform)
    return int(m.group(1)) if m else (17 if platform.startswith("manylinux2014") else 0)


def add_wheelhouse_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("wheelhouse", help="download the aarch64 wheels a JetPack image needs (host with network)")
    p.add_argument("--jetpack", required=True, choices=sorted(JETPACK_GLIBC), help="target JetPack release")
    p.add_argument("-d", "--dest", type=Path, required=True, help="directory to fill (edged install --wheelhouse)")
    p.add_argument("--python", help="the daemon's CPython X.Y on the device (default: 3.10 for JetPack 6, "
                   "3.11 for 4.6/5.1, i.e. the --python-dist interpreter)")
    p.add_argument("--source", type=Path, help="edged source checkout (default: this one)")
    p.set_defaults(func=run_wheelhouse)
    return p


def run_wheelhouse(args: argparse.Namespace) -> int:
    source = args.source or Path(__file__).resolve().parents[2]
    if not (source / "setup.cfg").is_file():
        print(f"edged wheelhouse: {source} is not an edged source tree: pass --source", file=sys.stderr)
        return 2
    python = args.python or DEFAULT_PYTHON[args.jetpack]
    if tuple(int(n) for n in python.split(".")) < (3, 10):
        print(f"edged wheelhouse: the daemon needs CPython >= 3.10, not {python}", file=sys.stderr)
        return 2
    try:
        print("\n".join(build(args.dest, args.jetpack, python, source)))
    except subprocess.CalledProcessError as exc:
        print(f"edged wheelhouse: {' '.join(map(str, exc.cmd[:4]))} ... failed with status {exc.returncode}",
              file=sys.stderr)
        return 1
    except TargetMismatch as exc:
        print(f"edged wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0
