"""What board is this? Device tree, L4T release and nvpmodel conf, read under an injectable root.

Every path is joined to ``root`` so tests (and ``edgectl --root``) can point detection at a
fake tree built with the real layout; nothing here runs a command. A host without an NVIDIA
device tree is "generic Linux": edged still runs there, it just has no power modes to switch.
"""

from __future__ import annotations

import os
import platform as _pyplatform
import re
from dataclasses import dataclass, field
from pathlib import Path

# L4T release -> JetPack and its Ubuntu/Python/TensorRT, per (major, minor); the entry with the highest
# minor not above the board's applies. TensorRT here is the minor version a JetPack line ships, for
# reports; TensorRT decisions key on the exact release in edged/backends/tensorrt/platforms.py, and
# tests/power/test_power_telemetry.py keeps the two tables in agreement. Sources: NVIDIA's JetPack archive pages and release notes
# (JetPack 7.0 = L4T 38.2, 7.1 = 38.4, 7.2 = 39.2 with Orin support), the reference facts. edged needs
# Python >= 3.10, which only JetPack 6 and 7 ship as the system Python.
_JP4 = {"ubuntu": "18.04", "python": "3.6"}
_JP5 = {"ubuntu": "20.04", "python": "3.8"}
_JP6 = {"ubuntu": "22.04", "python": "3.10"}
_JP7 = {"ubuntu": "24.04", "python": "3.12"}
_STACKS: dict[tuple[int, int], dict[str, str]] = {
    (32, 0): {"jetpack": "4.x", **_JP4, "tensorrt": "7.1"},
    (32, 6): {"jetpack": "4.6", **_JP4, "tensorrt": "8.0"},
    (32, 7): {"jetpack": "4.6.x", **_JP4, "tensorrt": "8.2"},
    (34, 0): {"jetpack": "5.0 DP", **_JP5, "tensorrt": "8.4"},  # R34.1 / 34.1.1: developer previews
    (35, 0): {"jetpack": "5.0.2", **_JP5, "tensorrt": "8.4"},  # R35.1
    (35, 2): {"jetpack": "5.1.x", **_JP5, "tensorrt": "8.5"},
    (36, 0): {"jetpack": "6.0 DP", **_JP6, "tensorrt": "8.6"},  # R36.2
    (36, 3): {"jetpack": "6.0", **_JP6, "tensorrt": "8.6"},
    (36, 4): {"jetpack": "6.1/6.2", **_JP6, "tensorrt": "10.3"},
    (38, 0): {"jetpack": "7.0", **_JP7, "tensorrt": "10.x"},  # R38.2: Thor only
    (38, 4): {"jetpack": "7.1", **_JP7, "tensorrt": "10.x"},
    (39, 0): {"jetpack": "7.2", **_JP7, "tensorrt": "10.x"},  # R39.2: Orin and Thor
}
_SOCS = {"tegra210": "t210", "tegra186": "t186", "tegra194": "t194", "tegra234": "t234", "tegra264": "t264"}
_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?")


def stack_for(major: int, minor: int) -> dict[str, str]:
    """The JetPack stack of L4T ``major.minor``; ``{}`` for a release edged does not know."""
    known = [key for key in _STACKS if key[0] == major and key[1] <= minor]
    return dict(_STACKS[max(known)]) if known else {}


def under(root: Path, path: str) -> Path:
    """``path`` (absolute, as on a device) inside ``root``."""
    return Path(root) / path.lstrip("/")


def read_text(path: Path) -> str | None:
    """File text or None; sysfs and device-tree files vanish and refuse reads, which is never fatal."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_float(path: Path) -> float | None:
    """A sysfs number (``in_power0_input``, ``energy_uj``…) or None when absent or not a number."""
    return _read_as(path, float)


def read_int(path: Path) -> int | None:
    """A sysfs integer (``temp``, ``cur_freq``, ``load``…) or None when absent or not an integer."""
    return _read_as(path, int)


def _read_as(path: Path, kind: type[int] | type[float]) -> int | float | None:
    text = read_text(path)
    try:
        return kind(text.strip()) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Platform:
    root: Path
    is_jetson: bool
    machine: str
    model: str | None = None
    compatible: tuple[str, ...] = ()
    soc: str | None = None
    parts: tuple[str, ...] = ()  # module/carrier part numbers, e.g. ("p3509-0000", "p3767-0000")
    l4t: str | None = None
    stack: dict[str, str] = field(default_factory=dict)  # jetpack, ubuntu, python, tensorrt
    nvpmodel_conf: Path | None = None  # the conf path under root (symlink resolved inside root)
    nvpmodel_conf_name: str | None = None  # basename of the symlink target, e.g. nvpmodel_p3767_0000.conf

    @property
    def jetpack(self) -> str | None:
        return self.stack.get("jetpack")

    def as_dict(self) -> dict:
        return {
            "kind": "jetson" if self.is_jetson else "generic-linux",
            "machine": self.machine,
            "model": self.model,
            "compatible": list(self.compatible),
            "soc": self.soc,
            "parts": list(self.parts),
            "l4t": self.l4t,
            "jetpack": self.jetpack,
            "stack": dict(self.stack),
            "nvpmodel_conf": str(self.nvpmodel_conf) if self.nvpmodel_conf else None,
            "nvpmodel_conf_name": self.nvpmodel_conf_name,
        }


def parse_compatible(raw: str) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """NUL-separated compatible → (entries, SoC, part numbers).

    A Nano reads ``nvidia,p3449-0000-b00+p3448-0002-b00``: carrier and module joined by ``+``.
    """
    entries = tuple(e.strip() for e in raw.split("\0") if e.strip())
    soc = None
    parts: list[str] = []
    for entry in entries:
        name = entry.split(",", 1)[-1]
        if name in _SOCS:
            soc = soc or _SOCS[name]
        for piece in name.split("+"):
            if re.match(r"^p\d{4}", piece) and piece not in parts:
                parts.append(piece)
    return entries, soc, tuple(parts)


def parse_tegra_release(text: str) -> tuple[str | None, dict[str, str]]:
    """``# R36 (release), REVISION: 4.3, ...`` → ("36.4.3", stack for JetPack 6)."""
    found = _RELEASE.search(text or "")
    if not found:
        return None, {}
    major, minor, patch = int(found.group(1)), found.group(2), found.group(3)
    l4t = f"{major}.{minor}" + (f".{patch}" if patch is not None else "")
    return l4t, stack_for(major, int(minor))


def _conf_location(root: Path) -> tuple[Path | None, str | None]:
    link = under(root, "/etc/nvpmodel.conf")
    if not link.exists() and not link.is_symlink():
        return None, None
    if link.is_symlink():
        target = os.readlink(link)
        # An absolute target is absolute *on the device*: re-root it instead of following it out of root.
        resolved = under(root, target) if target.startswith("/") else link.parent / target
        return (resolved if resolved.exists() else link), Path(target).name
    return link, None


def detect_platform(root: str | Path = "/") -> Platform:
    """Read the board's identity under ``root``; never raises for missing or unreadable files."""
    root = Path(root)
    model = read_text(under(root, "/proc/device-tree/model")) or read_text(
        under(root, "/sys/firmware/devicetree/base/model")
    )
    model = model.strip("\0\n ") if model else None
    compat_raw = (
        read_text(under(root, "/proc/device-tree/compatible"))
        or read_text(under(root, "/sys/firmware/devicetree/base/compatible"))
        or ""
    )
    compatible, soc, parts = parse_compatible(compat_raw)
    l4t, stack = parse_tegra_release(read_text(under(root, "/etc/nv_tegra_release")) or "")
    conf, conf_name = _conf_location(root)
    is_jetson = (
        soc is not None or l4t is not None or conf is not None or any(c.startswith("nvidia,") for c in compatible)
    )
    host = _pyplatform.machine()
    machine = host if Path(root).resolve() == Path("/") else ("aarch64" if is_jetson else host)
    return Platform(
        root=root,
        is_jetson=is_jetson,
        machine=machine,
        model=model,
        compatible=compatible,
        soc=soc,
        parts=parts,
        l4t=l4t,
        stack=stack,
        nvpmodel_conf=conf,
        nvpmodel_conf_name=conf_name,
    )
