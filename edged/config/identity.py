"""Who this device is when the configuration came from an image flashed to many devices.

An image carries one ``/etc/edged/edged.yaml`` for every device flashed from it, so a fixed
``node_id`` there would give 50 devices the same MQTT topics and client id (a broker drops the
older client whenever a duplicate connects: they knock each other off). The template therefore
carries a *placeholder*, and each device derives its id from what makes it unique:

* ``$machine-id`` (and the older template value ``edged-unconfigured``): ``node-`` plus the first
  12 hex digits (48 bits) of ``/etc/machine-id``, which systemd generates at first boot when the
  image ships it empty. Stable across reboots and re-installs of edged; unique per device.
* ``$hostname``: the host name, for sites that name their devices; a host name that every
  device of an image shares (``localhost``, empty) falls back to ``$machine-id``.

Derivation happens when the configuration is loaded, so ``edged check`` shows the id the
daemon will use, and says when an image would make every device the same.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

PLACEHOLDERS = {"$machine-id": "machine-id", "$hostname": "hostname", "edged-unconfigured": "machine-id"}
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_UNUSABLE_HOSTNAMES = {"", "localhost", "localhost.localdomain", "(none)"}


def is_placeholder(value: object) -> bool:
    return isinstance(value, str) and value in PLACEHOLDERS


def machine_id(root: Path = Path("/")) -> str | None:
    """``/etc/machine-id`` under ``root`` when it holds an id; None when missing, empty or
    ``uninitialized`` (an image before its first boot)."""
    try:
        text = (root / "etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _MACHINE_ID.match(text) else None


def hostname(root: Path = Path("/")) -> str | None:
    """The host name as a node id (``[A-Za-z0-9_.-]``, 64 characters), or None when unusable.
    On ``/`` it is the running host's name; under another root, ``etc/hostname`` there."""
    if root.resolve() == Path("/"):
        name = socket.gethostname()
    else:
        try:
            name = (root / "etc/hostname").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
    if name.lower() in _UNUSABLE_HOSTNAMES:
        return None
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", name.split(".")[0])[:64].strip("-_.")
    return clean or None


def derive_node_id(placeholder: str, root: Path = Path("/")) -> tuple[str | None, str]:
    """(node id, where it came from) for ``placeholder`` on the device rooted at ``root``.

    The id is None when the device has no identity yet: an image whose machine-id is empty
    (correct: each device generates its own at first boot) and whose host name is unusable.
    """
    if PLACEHOLDERS[placeholder] == "hostname":
        name = hostname(root)
        if name is not None:
            return name, "the host name"
    mid = machine_id(root)
    if mid is not None:
        return f"node-{mid[:12]}", "/etc/machine-id"
    return None, "/etc/machine-id (empty until the first boot)"
