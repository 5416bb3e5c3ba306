"""The receive fast path: what a C-STORE dataset costs per PDU, brought close to DCMTK's.

pynetdicom 3.0 moves every P-DATA-TF PDU of a streamed C-STORE dataset (≈440 per 7 MB image at
DCMTK's 16 KB PDUs) through: a ``select()`` and 4 KB ``recv`` calls in a Python loop
(``AssociationSocket.recv``), two copies (``bytes(bytestream)``; ``PresentationDataValueItem``),
a PDU object and a P-DATA primitive, the event queue and the state machine (Sta6 + Evt10 →
DT-2), ``DIMSEMessage.decode_msg`` per PDV (another copy of the fragment, then ``flush()``
through ``NamedTemporaryFile``'s per-call wrapper). For edged that was ~3× DCMTK ``storescp``'s
CPU per image (docs/performance.md, issue #14). Two changes, both in edged's own subclasses of
:mod:`edged.sources.dicom.receive`:

* :class:`ReadAhead`: the socket is read with ``recv_into`` into one preallocated buffer,
  as much as the kernel has (up to :data:`READ_AHEAD_BYTES`), and PDUs are cut from it; a body
  larger than the buffer is read straight into its own buffer. ``ready`` is true while bytes are
  buffered (upstream's ``select()`` cannot see them). Upstream equivalent: the loop in
  ``pynetdicom/transport.py AssociationSocket.recv`` (3.0.x), which reads ``min(nr_bytes - len,
  4096)`` bytes per ``socket.recv``.
* :func:`stream_pdata` / :func:`stream_buffered`: a P-DATA-TF PDU whose PDVs are all *non-final
  dataset fragments* of the C-STORE whose dataset is streaming to a spool file, arriving in Sta6 with no event or PDU
  waiting ahead of it, is written to that file directly — what DT-2 → ``receive_primitive`` →
  ``decode_msg`` would do (``write(data[1:])`` per PDV; the state stays Sta6), minus the objects,
  copies and queues. Everything else (command fragments, the last fragment, another context, a
  file that is not edged's :class:`~edged.sources.dicom.incoming.GuardedFile`, handlers bound to
  ``EVT_DATA_RECV``/``EVT_PDU_RECV``/``EVT_FSM_TRANSITION`` beyond pynetdicom's standard logging
  one, a malformed PDV) takes upstream's path unchanged. Upstream equivalent: ``dul.py
  DULServiceProvider._read_pdu_data``/``_decode_pdu``, ``fsm.py DT_2``, ``dimse.py
  DIMSEServiceProvider.receive_primitive`` and ``dimse_messages.py DIMSEMessage.decode_msg`` (the
  data-set branch with ``STORE_RECV_CHUNKED_DATASET``), all 3.0.x. Whole PDUs of that kind that
  are already in the read-ahead buffer are taken together, their data written in one call.

Both rely on pynetdicom internals; :data:`~edged.sources.dicom.versions.FASTPATH_VERIFIED` lists
the versions they were written against (3.0.4 read in full; 3.0.0-3.0.3 diffed for the functions
named above), and :func:`edged.sources.dicom.versions.check_pynetdicom` (``edged check`` and the
daemon's start) refuses any other, naming this module.
"""

from __future__ import annotations

import struct
from typing import Any

from edged.sources.dicom.incoming import GuardedFile

READ_AHEAD_BYTES = 256 * 1024
_LEN = struct.Struct(">L")
_WATCHED = ("EVT_DATA_RECV", "EVT_PDU_RECV", "EVT_FSM_TRANSITION")


class ReadAhead:
    """Bytes read from a socket ahead of the PDU that asked for them."""

    def __init__(self, size: int = READ_AHEAD_BYTES):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def pending(self) -> int:
        return self.end - self.start

    def take_into(self, out: memoryview, n: int) -> int:
        """Move up to ``n`` buffered bytes into ``out``; returns how many."""
        k = min(n, self.end - self.start)
        if k:
            out[:k] = self.view[self.start:self.start + k]
            self.start += k
            if self.start == self.end:
                self.start = self.end = 0
        return k

    def fill(self, sock: Any) -> int:
        """One ``recv_into`` of whatever the kernel has (the buffer must be empty): 0 on EOF."""
        n = sock.recv_into(self.view)
        self.start, self.end = 0, n
        return n


def _standard_only(assoc: Any) -> bool:
    """No one listens to the per-PDU events the fast path does not trigger, except pynetdicom's
    standard PDU logger (it logs P-DATA-TF at debug level only)."""
    cached = getattr(assoc, "_edged_fastpath_ok", None)
    if cached is not None:
        return cached
    from pynetdicom import evt
    from pynetdicom._handlers import standard_pdu_recv_handler

    ok = True
    for name in _WATCHED:
        for handler in assoc.get_handlers(getattr(evt, name)) or []:
            func = handler[0] if isinstance(handler, tuple) else handler
            if func is not standard_pdu_recv_handler:
                ok = False
    assoc._edged_fastpath_ok = ok
    return ok


def _streaming_file(dul: Any) -> GuardedFile | None:
    """The file the current C-STORE's dataset streams into, when a P-DATA-TF of middle fragments
    may be written to it directly: Sta6, nothing queued ahead of it, edged's own file, and no
    one listening to the per-PDU events the fast path does not trigger."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return None
    msg = dul.assoc.dimse.message
    if msg is None or not isinstance(msg._data_set_file, GuardedFile) or not _standard_only(dul.assoc):
        return None
    return msg._data_set_file


def _middle_fragments(buf: Any, view: memoryview, off: int, stop: int, context_id: int) -> list | None:
    """The data of the PDVs in ``buf[off:stop]`` (a P-DATA-TF's variable field) when every one is
    a non-final dataset fragment of ``context_id``; None for anything else (malformed, another
    context, a command or the last fragment)."""
    parts = []
    while off < stop:
        if off + 6 > stop:
            return None
        item = _LEN.unpack_from(buf, off)[0]
        if item < 2 or off + 4 + item > stop or buf[off + 4] != context_id or buf[off + 5] & 3:
            return None
        parts.append(view[off + 6:off + 4 + item])
        off += 4 + item
    return parts


def stream_pdata(dul: Any, body: bytearray) -> bool:
    """Write a P-DATA-TF ``body`` of middle dataset fragments straight into the streaming file.
    Returns False (nothing done) when the PDU must take upstream's path."""
    f = _streaming_file(dul)
    if f is None:
        return False
    parts = _middle_fragments(body, memoryview(body), 0, len(body), dul.assoc.dimse.message.context_id)
    if parts is None:
        return False
    for part in parts:
        f.write(part)
    return True


def stream_buffered(dul: Any, ahead: ReadAhead, limit: int) -> int:
    """Consume the whole P-DATA-TF PDUs of middle dataset fragments that are already in the
    read-ahead buffer, and write their data to the streaming file in one write. Stops at the
    first PDU that is incomplete, of another type, longer than ``limit`` or not only middle
    fragments: that one takes the one-PDU path. Returns the PDUs consumed.

    Why: at 16 KB PDUs (DCMTK's and many modalities' size) a 7 MB image is ~440 PDUs; one at a
    time each cost two reads out of the buffer into fresh buffers, a parse and a write call.
    A 256 KB read-ahead holds ~15 of them."""
    if ahead.end - ahead.start < 6:
        return 0
    f = _streaming_file(dul)
    if f is None:
        return 0
    buf, view, start, end = ahead.buf, ahead.view, ahead.start, ahead.end
    context_id = dul.assoc.dimse.message.context_id
    parts: list = []
    count = 0
    while end - start >= 6 and buf[start] == 0x04:
        stop = start + 6 + _LEN.unpack_from(buf, start + 2)[0]
        if stop - start - 6 > limit or stop > end:
            break
        more = _middle_fragments(buf, view, start + 6, stop, context_id)
        if more is None:
            break
        parts += more
        start, count = stop, count + 1
    if count:
        data = b"".join(parts)  # out of the buffer before it is read into again
        parts.clear()
        ahead.start = start
        if start == end:
            ahead.start = ahead.end = 0
        f.write(data)
    return count
