"""Receiving from one DICOM peer within bounds: PDU sizes, transfer rate, message sizes, the spool.

pynetdicom 3.0 reads each PDU whole into memory, whatever length its header claims; waits
forever for a PDU's body; keeps DIMSE command sets and non-C-STORE datasets in memory without a
cap; lets a C-STORE dataset stream to disk with no regard for the spool's quota, aborting the
association when the disk fills; and leaves the file of a transfer that was cut off behind.
This module replaces the three pieces of an acceptor association where that happens, each a
narrow subclass of the upstream class named in its docstring (verified against pynetdicom
3.0.0–3.0.4; :func:`edged.sources.dicom.transport.check_pynetdicom` refuses any other version):

* :class:`GuardedDUL` reads PDUs: a PDU longer than :meth:`TransportLimits.pdu_limit` is refused
  from its 6-byte header (A-ABORT, connection closed, ``rejected`` event); a transfer slower than
  the minimum rate is refused likewise (:class:`~edged.sources.dicom.limits.ProgressMeter`).
* :class:`GuardedSocket` reads with a short poll, so a silent peer never pins the reading thread.
* :class:`GuardedDIMSE` caps in-memory messages and puts every streamed C-STORE dataset behind a
  :class:`~edged.sources.dicom.incoming.GuardedFile` (counted against the spool's quota while
  it streams; a disk that fills ends the stream, not the association). Files of transfers that
  never completed are deleted when their association ends (:meth:`GuardedDIMSE.discard_partials`).

The reading loop lives in :meth:`GuardedSocket.recv` and :meth:`GuardedDUL._read_pdu_data`; both
use the receive fast path of :mod:`edged.sources.dicom.fastpath` (issue #14: reads into a
preallocated buffer, dataset fragments written to their file without the per-PDU machinery).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from edged.metrics.cpu import CPU
from edged.sources.dicom import vocab
from edged.sources.dicom.fastpath import ReadAhead, stream_buffered, stream_pdata
from edged.sources.dicom.incoming import GuardedFile
from edged.sources.dicom.limits import (
    MAX_COMMAND_SET,
    MAX_IN_MEMORY_MESSAGE,
    ProgressMeter,
)
from edged.sources.dicom.reactor import EventDrivenDUL, NotifyingQueue, dul_wait

# transport.GuardedAssociation (a pynetdicom Association with the guard's meter and slot); named
# here without importing transport, which imports this module.
GuardedAssociation = Any

log = logging.getLogger("edged.dicom")

POLL_S = 0.2   # longest a read blocks before progress, kills and deadlines are looked at again
ABORT_INVALID_PARAMETER, ABORT_UNSPECIFIED = 0x06, 0x00


class PeerTooSlow(Exception):
    pass


class GuardedSocket(AssociationSocket):
    """``AssociationSocket`` (pynetdicom/transport.py) whose reads wait at most :data:`POLL_S`
    at a time, so the reading thread can measure the peer's progress, notice that its
    association was killed and refuse a peer that is too slow; whose sends give up after
    ``send_timeout`` seconds; and which can start TLS after the accept loop handed it over."""

    def __init__(self, assoc: "GuardedAssociation", client_socket: socket.socket, meter: ProgressMeter,
                 send_timeout: float):
        super().__init__(assoc, client_socket=client_socket)
        self.meter, self.send_timeout = meter, send_timeout
        self.ahead = ReadAhead()
        client_socket.settimeout(POLL_S)

    def adopt_tls(self, tls_socket: socket.socket) -> None:
        tls_socket.settimeout(POLL_S)
        self.socket = tls_socket

    @property
    def ready(self) -> bool:
        """Upstream ``ready`` (a ``select()``), true too while read-ahead bytes wait."""
        return self.ahead.pending() > 0 or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """Upstream ``recv``: read ``nr_bytes`` (fewer when the peer closes), through the
        read-ahead buffer (:class:`~edged.sources.dicom.fastpath.ReadAhead`). Raises
        :class:`PeerTooSlow`, or ``ConnectionAbortedError`` when the association was killed."""
        sock = self.socket
        assert sock is not None
        out = bytearray(nr_bytes)
        view, ahead = memoryview(out), self.ahead
        filled = ahead.take_into(view, nr_bytes)
        meter, clock = self.meter, time.monotonic
        then, progressed = clock(), False
        while filled < nr_bytes:
            try:
                if nr_bytes - filled >= len(ahead.buf):  # a large body: straight into its own buffer
                    n = sock.recv_into(view[filled:], nr_bytes - filled)
                    got = n
                else:
                    n = ahead.fill(sock)
                    got = ahead.take_into(view[filled:], nr_bytes - filled)
            except TimeoutError:  # socket.timeout, also for an SSLSocket
                now = clock()
                meter.waited(now - then)
                then = now
                if progressed:  # a long PDU arriving is progress, not idleness (network_timeout)
                    self.assoc.dul._idle_timer.restart()
                    progressed = False
                # killed: stop reading, but not before the DUL has sent what is queued (an
                # A-ASSOCIATE-RJ from a handler would otherwise be lost and the peer see an abort)
                if self.assoc._kill and self.assoc.dul.to_provider_queue.empty():
                    raise ConnectionAbortedError("association ended while reading") from None
                if meter.too_slow():
                    raise PeerTooSlow from None
                continue
            now = clock()
            meter.waited(now - then)
            then = now
            if not n:  # closed by the peer: what arrived
                view.release()
                del out[filled:]
                return out
            filled += got
            meter.received(n)
            progressed = True
            if meter.too_slow():
                raise PeerTooSlow
        view.release()
        return out

    def send(self, bytestream: bytes) -> None:
        """Upstream ``send`` with a deadline: the socket's short timeout would otherwise fail a
        send to a peer whose receive window is full for a moment."""
        sock = self.socket
        deadline = time.monotonic() + self.send_timeout
        view, sent = memoryview(bytestream), 0
        try:
            while sent < len(view):
                try:
                    sent += sock.send(view[sent:])  # type: ignore[union-attr]
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
        except Exception:
            self.event_queue.put("Evt17")  # as upstream: transport connection closed


class GuardedDUL(EventDrivenDUL, DULServiceProvider):
    """``DULServiceProvider`` (pynetdicom/dul.py) that reads PDUs within the limits, can refuse
    its peer (A-ABORT, close, log line and event), and sleeps until there is work instead of
    polling (:mod:`edged.sources.dicom.reactor`)."""

    cpu_role = "dicom"  # edged/metrics/cpu.py: the receive path's CPU

    def __init__(self, assoc: "GuardedAssociation", meter: ProgressMeter):
        super().__init__(assoc)
        self.event_driven(assoc.reactor_wake.set)  # the wait itself is in _is_transport_event
        self.meter = meter
        self._starved_since: float | None = None
        self._rq_seen = False
        self.fast_pdus = 0  # P-DATA-TF PDUs written by the fast path (fastpath.stream_pdata)

    @property
    def guard(self) -> Any:
        return self.assoc.guard  # type: ignore[attr-defined]

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.wakeup.close()
            self.assoc.reactor_wake.set()  # the association thread sees the DUL has ended
            if not self._rq_seen:
                # The association thread waits up to acse_timeout for an A-ASSOCIATE-RQ that
                # will never come; None is what its wait returns on a timeout: it ends at once
                # and frees the connection's slot (upstream: 30 s after a bad 6-byte PDU).
                self.to_user_queue.put(None)  # type: ignore[arg-type]
            CPU.retire("dicom")

    def refuse(self, reason: str, detail: str, abort_reason: int = ABORT_UNSPECIFIED) -> None:
        """A-ABORT (service provider), close the connection, tell the operator. The state machine
        sees the close (Evt17) and ends the association as for any lost connection."""
        self.guard.refusals.refuse(self.assoc.peer, reason, detail, calling_ae=self._calling_ae())
        sock = self.socket
        if sock is None or sock.socket is None:
            return
        pdu = A_ABORT_RQ()
        pdu.source, pdu.reason_diagnostic = 0x02, abort_reason
        try:
            sock.socket.sendall(pdu.encode())
        except Exception:
            pass
        sock.close()  # shutdown, close, Evt17

    def _calling_ae(self) -> str | None:
        primitive = self.assoc.requestor.primitive
        return vocab.ae_title(primitive.calling_ae_title) if primitive is not None else None

    def _phase(self) -> str:
        if self.state_machine.current_state == "Sta2":
            return "awaiting the A-ASSOCIATE-RQ"
        return "in a DIMSE message" if self.assoc.dimse.message is not None else ""

    def _slow(self, where: str) -> None:
        m = self.meter
        self.refuse("too_slow", f"{m.total} bytes in {m.clock:.0f} s of waiting {where} "
                                f"(at least {m.required / m.window:.0f} bytes/s over {m.window:g} s required)")

    def _is_transport_event(self) -> bool:
        """Upstream, after sleeping until data or other work arrives (``reactor.dul_wait``),
        plus: while a transfer is in progress and nothing arrives, the wait counts against the
        peer's rate; outside one (idle between messages) pynetdicom's idle timer
        (network_timeout) applies."""
        began = time.monotonic()
        dul_wait(self)
        if super()._is_transport_event():
            self._starved_since = None
            return True
        where = self._phase()
        if not where:
            self.meter.idle()
            self._starved_since = None
            return False
        now = time.monotonic()
        self.meter.waited(now - (self._starved_since if self._starved_since is not None else began))
        self._starved_since = now
        if self.meter.too_slow():
            self._slow(where)
            return True
        return False

    def _read_pdu_data(self) -> None:
        """Upstream ``_read_pdu_data``, with the PDU's length checked against its limit before
        the body is read, and our own log lines (no tracebacks, no PDU bytes). PDUs the fast path
        writes put no event on the queue, so they are read back to back while more data is there
        (no trip through the reactor's loop per PDU), whole ones already in the read-ahead buffer
        together (``fastpath.stream_buffered``)."""
        sock = self.socket
        assert isinstance(sock, GuardedSocket)
        limit = self.guard.limits.pdu_limit(0x04, self.assoc.acceptor.maximum_length)
        while True:
            self.fast_pdus += stream_buffered(self, sock.ahead, limit)  # whole PDUs already read
            if not self._read_one_pdu() or self._kill_thread or self.socket is None or not self.socket.ready:
                return

    def _read_one_pdu(self) -> bool:
        """One PDU; True when the fast path consumed it (nothing queued for the state machine)."""
        sock = self.socket
        assert isinstance(sock, GuardedSocket)
        try:
            header = sock.recv(6)
            if len(header) < 6:
                self.event_queue.put("Evt17")  # closed by the peer
                return False
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
                self.guard.refusals.refuse(self.assoc.peer, "invalid_pdu", f"unknown PDU type 0x{pdu_type:02X}",
                                           calling_ae=self._calling_ae())
                self.event_queue.put("Evt19")  # the state machine answers A-ABORT
                return False
            limit = self.guard.limits.pdu_limit(pdu_type, self.assoc.acceptor.maximum_length)
            if length > limit:
                self.refuse("pdu_too_large", f"PDU type 0x{pdu_type:02X} of {length} bytes; at most {limit} "
                                             "accepted (refused from its header, body not read)",
                            ABORT_INVALID_PARAMETER)
                return False
            body = sock.recv(length)
        except PeerTooSlow:
            self._slow("in a PDU")
            return False
        except OSError:  # reset by the peer, or our association ended meanwhile
            self.event_queue.put("Evt17")
            return False
        if len(body) != length:
            log.info("connection from %s closed in the middle of a PDU (%d of %d bytes)", self.assoc.peer,
                     len(body), length)
            self.event_queue.put("Evt17")
            return False
        if pdu_type == 0x04 and stream_pdata(self, body):  # middle of a streamed dataset (fastpath.py)
            self.fast_pdus += 1
            return True
        header += body
        try:
            pdu, event = self._decode_pdu(header)
        except Exception as exc:
            self.guard.refusals.refuse(self.assoc.peer, "invalid_pdu", f"PDU type 0x{pdu_type:02X} of {length} "
                                       f"bytes does not decode ({type(exc).__name__})", calling_ae=self._calling_ae())
            self.event_queue.put("Evt19")
            return False
        if pdu_type == 0x01:
            self._rq_seen = True
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return False


class GuardedDIMSE(DIMSEServiceProvider):
    """``DIMSEServiceProvider`` (pynetdicom/dimse.py) that feeds ``receive_primitive`` one PDV
    at a time (upstream stops at the first PDV that completes a message and drops the rest of
    that P-DATA), refuses in-memory messages above their cap, and guards streamed datasets."""

    def __init__(self, assoc: "GuardedAssociation", spool: Any):
        super().__init__(assoc)
        self.msg_queue = NotifyingQueue(assoc.reactor_wake.set)  # wakes the association thread
        self.spool = spool
        self.files: list[GuardedFile] = []

    def receive_primitive(self, primitive: P_DATA) -> None:
        dul = self.assoc.dul
        assert isinstance(dul, GuardedDUL)
        for pdv in primitive.presentation_data_value_list:
            refusal = self._over_cap(pdv[1])
            if refusal:
                dul.refuse("message_too_large", refusal, ABORT_INVALID_PARAMETER)
                return
            one = P_DATA()
            one.presentation_data_value_list = [[pdv[0], bytes(pdv[1])]]
            try:
                super().receive_primitive(one)
            except OSError as exc:  # NamedTemporaryFile() itself failed: no room for the file
                if not self._stream_failed(exc):
                    dul.refuse("invalid_dimse", f"DIMSE message cannot be received ({exc.strerror})")
                    return
            except Exception as exc:  # a command set that does not decode: upstream's DUL thread died
                dul.refuse("invalid_dimse", f"DIMSE message does not decode ({type(exc).__name__})")
                return
            self._guard()

    def _over_cap(self, pdv: bytes) -> str | None:
        msg = self.message
        if not pdv:
            return None
        held = 0
        if pdv[0] & 1:  # command fragment
            held = msg.encoded_command_set.tell() if msg is not None else 0
            if held + len(pdv) > MAX_COMMAND_SET:
                return f"DIMSE command set over {MAX_COMMAND_SET} bytes"
        elif msg is None or not msg._data_set_file:
            held = msg.data_set.tell() if msg is not None and msg.data_set is not None else 0
            if held + len(pdv) > MAX_IN_MEMORY_MESSAGE:
                return f"DIMSE dataset held in memory over {MAX_IN_MEMORY_MESSAGE} bytes (only C-STORE datasets " \
                       "are streamed to disk)"
        return None

    def _guard(self) -> None:
        msg = self.message
        if msg is None:
            return
        f = msg._data_set_file
        if f is not None and not isinstance(f, GuardedFile):
            g = GuardedFile(self.spool, f, f.name)
            msg._data_set_file = g  # type: ignore[assignment]
            # closed ones were handled (adopted or deleted by pynetdicom after the C-STORE)
            self.files = [h for h in self.files if not h.closed]
            self.files.append(g)

    def _stream_failed(self, exc: OSError) -> bool:
        """The dataset's file could not even be created: the message goes on, its data dropped."""
        msg = self.message
        if msg is None:
            return False
        f = msg._data_set_file
        name = f.name if f is not None else os.path.join(str(self.spool.incoming), f".failed-{id(msg)}.dcm")
        g = GuardedFile(self.spool, f, name)
        g._fail(exc)
        msg._data_set_file = g  # type: ignore[assignment]
        msg._data_set_path = Path(name)
        self.files.append(g)
        return True

    def discard_partials(self) -> tuple[int, int]:
        """Delete the files of this association's transfers that never became a spooled
        instance (cut off, aborted, or never served). Returns (files, bytes) deleted."""
        n = size = 0
        for g in self.files:
            freed = g.discard()
            if freed is not None:
                n, size = n + 1, size + freed
        self.files.clear()
        return n, size
