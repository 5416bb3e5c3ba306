"""Pseudonyms: keyed HMAC-SHA256 of DICOM UIDs with a per-site secret that never leaves the device.

UIDs identify patients (PS3.15 Annex E removes them), so nothing outside the device sees them.
The same study always maps to the same pseudonym on one site, which lets a gateway group
results per study and lets a validation export be joined back to PACS *on site* by whoever
holds the key — and by nobody else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from edged.spool.durable import fsync_dir


def load_or_create_site_key(path: Path) -> bytes:
    """Read the 32-byte site key, creating it (mode 0600, durably) on first start.

    Two processes starting at once (the daemon and ``edged export-results``) must end with one
    key: each writes its candidate under a unique name and links it into place, which fails
    for the loser; everyone then uses what the file holds.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".site-key-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process created meanwhile
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
    return read_site_key(path)


def read_site_key(path: Path) -> bytes:
    """The existing site key (``edged pseudonym`` must never create one: its pseudonyms would match nothing)."""
    key = path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"{path}: site key is shorter than 32 bytes")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path}: site key must not be readable by group/others (mode {mode:o})")
    return key


class Pseudonymizer:
    """``pseudonym("instance", uid)`` → 32 hex characters (128 bits of HMAC-SHA256)."""

    def __init__(self, key: bytes):
        self._key = key

    def pseudonym(self, kind: str, value: str) -> str:
        msg = f"{kind}:{value.strip()}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def message_id(self, *parts: str) -> str:
        """A stable id for a message derived from what it is about (re-sends keep it)."""
        return self.pseudonym("message", "|".join(parts))
