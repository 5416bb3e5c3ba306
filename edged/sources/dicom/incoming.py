"""A C-STORE dataset arriving into the spool's ``.incoming``, within the spool's bounds.

pynetdicom streams each C-STORE dataset into a ``NamedTemporaryFile`` with no regard for the
spool: ten modalities could overrun its quota between them, and a write that meets a full disk
raises inside pynetdicom's state machine, which aborts the association (no status, no event).
:class:`GuardedFile` takes that file's place: each write is counted against the spool first
(:meth:`edged.spool.spool.Spool.grow_incoming`: quota and the disk's reserve); the first write
that does not fit, or that the kernel refuses, ends the stream: the file is deleted at once (its
space back), the rest of the dataset is read and dropped as it arrives, and when the message is
complete the handler answers 0xA700 with a ``spool_full`` event (:func:`stream_failure`). The
association carries on.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pynetdicom import evt

from edged.spool.spool import SpoolFull

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class GuardedFile:
    """Stands in for the ``NamedTemporaryFile`` that pynetdicom streams a C-STORE dataset into
    (``DIMSEMessage.decode_msg`` writes and flushes it; ``StorageServiceClass.SCP`` closes and
    unlinks it by ``name`` after the handler). Each write is counted against the spool before it
    is made; the first one that fails sets :attr:`failure` and ends the stream (see module)."""

    def __init__(self, spool: Any, ntf: Any | None, name: str):
        # writes go to the NamedTemporaryFile's own file object: its wrapper costs a Python call
        # per write and per flush (issue #14); close() still goes through the wrapper
        self.spool, self._ntf, self.name = spool, ntf, name
        self._raw = getattr(ntf, "file", ntf)
        self.failure: str | None = None
        self.written = 0
        self.closed = False
        if ntf is not None:
            try:
                head = ntf.tell()  # preamble and file meta, written before we got the file
                spool.grow_incoming(name, head)
                self.written = head
            except (OSError, SpoolFull) as exc:
                self._fail(exc)

    @property
    def file(self) -> "GuardedFile":
        return self  # upstream calls ``.file.flush()``

    def write(self, data: bytes) -> int:
        if self.failure is None and self._ntf is not None:
            try:
                self.spool.grow_incoming(self.name, len(data))
                self._raw.write(data)
                self.written += len(data)
            except (OSError, SpoolFull) as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.failure is None and self._ntf is not None:
            try:
                self._raw.flush()
            except OSError as exc:  # a buffered write meets the full disk here
                self._fail(exc)

    def close(self) -> None:
        if self._ntf is not None:
            try:
                self._ntf.close()
            except OSError as exc:
                if self.failure is None:
                    self._fail(exc)
            self._ntf = None
        self.closed = True
        self.spool.drop_incoming(self.name)

    def discard(self) -> int | None:
        """Close and delete (the association ended). Returns the bytes deleted, None when the
        file was already adopted into the spool or deleted after its C-STORE."""
        self.close()
        if self.failure is None:
            self.failure = "spool_write: the association ended while the dataset was arriving"
        try:
            size = os.stat(self.name).st_size
            os.unlink(self.name)
            return size
        except OSError:
            return None

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, SpoolFull):
            self.failure = f"spool_full: {exc}"
        elif isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            self.failure = f"spool_full: no room on the spool's filesystem while receiving ({exc.strerror})"
        else:
            self.failure = f"spool_write: {getattr(exc, 'strerror', None) or type(exc).__name__} while receiving"
        ntf, self._ntf = self._ntf, None
        try:
            if ntf is not None:
                ntf.close()
        except OSError:
            pass
        try:
            os.unlink(self.name)  # its space back at once; the rest of the dataset is dropped
        except OSError:
            pass
        self.spool.drop_incoming(self.name)


def stream_failure(event: evt.Event) -> str | None:
    """Why the C-STORE dataset of ``event`` could not be received, or None."""
    f = getattr(event.request, "_dataset_file", None)
    return f.failure if isinstance(f, GuardedFile) else None
