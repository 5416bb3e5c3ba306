"""The spool directory: one file per accepted SOP instance, named by its pseudonym.

Files are the exact bytes the modality sent (never decoded or re-encoded on the way in), so a
spool file can be inspected or re-sent with DCMTK. A file disappears only after the results for
it are committed to the outbox; whatever is here at start-up is work still to do.

Datasets still arriving are streamed into :attr:`Spool.incoming` on the same filesystem. Their
bytes count against the quota and the disk's reserve *while they arrive*
(:meth:`Spool.grow_incoming`, called before each write), so ten modalities sending at once cannot
overrun the quota between them, and a transfer that would fill the disk is stopped while it
streams. A partial upload is deleted when its association ends
(:mod:`edged.sources.dicom.receive`), and whatever is in ``.incoming`` at start-up is deleted.

An image that can never be inferred (its pixels do not decode, every attempt failed) is moved
to ``quarantine/`` after its ``error`` event is committed, not deleted: a technician can look at
it or re-send it. The quarantine is bounded in bytes and age; the oldest files go first. Files
there are not work: a restart does not pick them up again.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

from edged.spool.durable import fsync_dir

_NAME = re.compile(r"^[0-9a-f]{32}\.dcm$")
_FREE_SPACE_EVERY = 1 << 20


class SpoolFull(Exception):
    """Accepting the object would exceed the quota or the disk: answer 0xA700."""


class Spool:
    def __init__(self, directory: Path, quota_bytes: int, reserve_free_bytes: int = 64 << 20,
                 quarantine_bytes: int = 512 << 20, quarantine_days: float = 30.0):
        self.directory = directory
        self.quota_bytes = quota_bytes
        self.reserve_free_bytes = reserve_free_bytes
        self.quarantine_bytes = quarantine_bytes
        self.quarantine_days = quarantine_days
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.quarantine_dir = directory / "quarantine"
        self.quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        # Where associations stream incoming datasets (the daemon's tempfile dir): same
        # filesystem as the spool, emptied at start (half-received objects were never acknowledged).
        self.incoming = directory / ".incoming"
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(mode=0o700)
        self._lock = threading.Lock()
        self._incoming: dict[str, int] = {}  # path in .incoming -> bytes written so far
        self._incoming_total = 0
        self._unchecked = 0  # incoming bytes since the disk's free space was last looked at
        self._sizes = {p.stem: p.stat().st_size for p in directory.iterdir() if _NAME.match(p.name)}
        self._spooled_total = sum(self._sizes.values())
        for stale in directory.glob(".*.tmp"):  # half-written by a crashed process: never acknowledged
            stale.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.dcm"

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._sizes


    def pending(self) -> list[str]:
        """Keys in arrival order (mtime), for recovery at start-up."""
        with self._lock:
            keys = list(self._sizes)
        return sorted(keys, key=lambda k: self._mtime(k))

    def _mtime(self, key: str) -> float:
        try:
            return self.path(key).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def grow_incoming(self, path: str, nbytes: int) -> None:
        """Count ``nbytes`` more of a dataset being streamed to ``path`` (in :attr:`incoming`)
        against the quota and the disk's reserve, *before* they are written. Raises
        :class:`SpoolFull` (nothing counted) when they do not fit. Called for every PDU a peer
        sends, so it is O(1): the disk's free space is looked at once per MB received."""
        with self._lock:
            used = self._spooled_total + self._incoming_total
            if used + nbytes > self.quota_bytes:
                raise SpoolFull(f"spool quota: {used + nbytes} > {self.quota_bytes} bytes "
                                f"(with the transfers in progress)")
            if self._unchecked + nbytes >= _FREE_SPACE_EVERY or path not in self._incoming:
                st = os.statvfs(self.directory)
                if st.f_bavail * st.f_frsize - nbytes < self.reserve_free_bytes:
                    raise SpoolFull("spool filesystem is nearly full")
                self._unchecked = 0
            self._unchecked += nbytes
            self._incoming[path] = self._incoming.get(path, 0) + nbytes
            self._incoming_total += nbytes

    def drop_incoming(self, path: str) -> None:
        """``path`` no longer holds a transfer (adopted, deleted, or given up)."""
        with self._lock:
            self._incoming_total -= self._incoming.pop(path, 0)

    def incoming_bytes(self) -> int:
        with self._lock:
            return self._incoming_total

    def _reserve(self, key: str, size: int, received: str = "") -> bool:
        """Count ``size`` against the quota before the slow write, so concurrent stores see it.
        False if ``key`` is already spooled. ``received``'s own in-progress count is not
        counted twice."""
        with self._lock:
            if key in self._sizes:
                return False
            used = self._spooled_total + self._incoming_total - self._incoming.get(received, 0)
            if used + size > self.quota_bytes:
                raise SpoolFull(f"spool quota: {used + size} > {self.quota_bytes} bytes")
            # The received file is already on this filesystem (streamed into .incoming): the rename
            # takes no more space, so only the reserve itself is checked, not reserve + size.
            st = os.statvfs(self.directory)
            if st.f_bavail * st.f_frsize < self.reserve_free_bytes:
                raise SpoolFull("spool filesystem is nearly full")
            self._sizes[key] = size
            self._spooled_total += size
            self._incoming_total -= self._incoming.pop(received, 0)
            return True

    def adopt(self, key: str, received: Path) -> bool:
        """Move a fully received file into the spool durably (fsync, rename, fsync dir).

        False (and nothing touched) when ``key`` is already spooled: two associations carrying the
        same instance at once must not overwrite each other's file. ``received`` must be on the
        spool's filesystem (see :attr:`incoming`) for the rename to be atomic.
        """
        size = received.stat().st_size
        if not self._reserve(key, size, str(received)):
            return False
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(received, self.path(key))
            fsync_dir(self.directory)
        except BaseException:
            with self._lock:
                self._spooled_total -= self._sizes.pop(key, 0)
            raise
        return True

    def remove(self, key: str) -> None:
        """Delete a processed file. No directory fsync: the ledger is authoritative, and a file
        that reappears after a crash is recognised as done and removed again at start-up."""
        with self._lock:
            self._spooled_total -= self._sizes.pop(key, 0)
        self.path(key).unlink(missing_ok=True)

    def quarantine(self, key: str) -> Path | None:
        """Move a file that can never be inferred out of the spool (its event is committed).
        Returns where it went, or None when there was no file."""
        with self._lock:
            self._spooled_total -= self._sizes.pop(key, 0)
        src = self.path(key)
        dst = self.quarantine_dir / src.name
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return None
        os.utime(dst)  # age counts from quarantine, not from reception
        self.prune_quarantine()
        return dst

    def prune_quarantine(self) -> int:
        """Drop quarantined files older than the retention, then the oldest beyond the byte cap."""
        files = []
        for p in self.quarantine_dir.glob("*.dcm"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        cutoff = time.time() - self.quarantine_days * 86400
        total = sum(size for _, size, _ in files)
        removed = 0
        for mtime, size, p in files:
            if mtime >= cutoff and total <= self.quarantine_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def quarantined(self) -> list[str]:
        return sorted(p.stem for p in self.quarantine_dir.glob("*.dcm"))
