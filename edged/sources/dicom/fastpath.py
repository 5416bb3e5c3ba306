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
* :func:`stream_pdata`: a P-DATA-TF PDU whose PDVs are all *non-final dataset fragments* of the
  C-STORE whose dataset is streaming to a spool file, arriving in Sta6 with no event or PDU
  waiting ahead of it, is written to that file directly — what DT-2 → ``receive_primitive`` →
  ``decode_msg`` would do (``write(data[1:])`` per PDV; the state stays Sta6), minus the objects,
  copies and queues. Everything else (command fragments, the last fragment, another context, a
  file that is not edged's :class:`~edged.sources.dicom.incoming.GuardedFile`, handlers bound to
  ``EVT_DATA_RECV``/``EVT_PDU_RECV``/``EVT_FSM_TRANSITION`` beyond pynetdicom's standard logging
  one, a malformed PDV) takes upstream's path unchanged. Upstream equivalent: ``dul.py
  DULServiceProvider._read_pdu_data``/``_decode_pdu``, ``fsm.py DT_2``, ``dimse.py
  DIMSEServiceProvider.receive_primitive`` and ``dimse_messages.py DIMSEMessage.decode_msg`` (the
  data-set branch with ``STORE_RECV_CHUNKED_DATASET``), all 3.0.x.

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


def stream_pdata(dul: Any, body: bytearray) -> bool:
    """Write a P-DATA-TF ``body`` of middle dataset fragments straight into the streaming file.
    Returns False (nothing done) when the PDU must take upstream's path."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return False
    msg = dul.assoc.dimse.message
    if msg is None or not isinstance(msg._data_set_file, GuardedFile):
        return False
    if not _standard_only(dul.assoc):
        return False
    view, size, off = memoryview(body), len(body), 0
    parts = []
    while off < size:
        if off + 6 > size:
            return False
        item = _LEN.unpack_from(body, off)[0]
        if item < 2 or off + 4 + item > size or body[off + 4] != msg.context_id or body[off + 5] & 3:
            return False  # malformed, another context, a command or the last fragment
        parts.append(view[off + 6:off + 4 + item])
        off += 4 + item
    f = msg._data_set_file
    for part in parts:
        f.write(part)
    return True
