"""What every edgectl command shares: output formatting, who is asking, which config applies."""

from __future__ import annotations

import argparse
import json
import os
import pwd
from pathlib import Path

from edged.power.config import PowerConfig, load_power_sections


def _fmt(value: object, unverified: bool = False) -> str:
    if value is None:
        text = "-"
    elif value == "uncapped":
        text = "max"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text + ("?" if unverified and value is not None else "")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _who() -> tuple[str, bool]:
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user, True
    try:
        return pwd.getpwuid(os.getuid()).pw_name, False
    except KeyError:
        return str(os.getuid()), False


# Options and variables that choose what edgectl executes or parses as root.
_SUDO_REFUSED_OPTIONS = ("config", "root", "nvpmodel", "profiles")
_SUDO_REFUSED_ENV = ("EDGED_CONFIG", "EDGED_SYSROOT")


def _sudo_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides given to a root edgectl started by sudo (empty otherwise)."""
    if os.geteuid() != 0 or not os.environ.get("SUDO_USER"):
        return []
    given = [f"--{key}" for key in _SUDO_REFUSED_OPTIONS if getattr(args, key)]
    return given + [name for name in _SUDO_REFUSED_ENV if os.environ.get(name)]


def _config(args: argparse.Namespace) -> PowerConfig:
    cfg, _ = load_power_sections(args.config or os.environ.get("EDGED_CONFIG") or _installed_config())
    update: dict[str, object] = {}
    root = args.root or os.environ.get("EDGED_SYSROOT")
    if root:
        update["sysroot"] = Path(root)
    for key, attr in (("nvpmodel", "nvpmodel"), ("profiles", "profile_dir"), ("socket", "control_socket")):
        if getattr(args, key):
            update[attr] = getattr(args, key)
    return PowerConfig.model_validate({**cfg.model_dump(), **update}) if update else cfg


def _installed_config() -> str | None:
    """The daemon's config as installed (systemd unit: -c /etc/edged/edged.yaml), when present,
    so edgectl finds the same control socket and tool paths without being told."""
    path = Path("/etc/edged/edged.yaml")
    return str(path) if path.is_file() else None
