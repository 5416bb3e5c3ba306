"""The DICOM listener, bounded: who may connect, how many at once, TLS off the accept loop.

pynetdicom 3.0's server accepts every connection into an association thread, reads and logs
what even a host outside the allow-list sends, counts associations only once their
A-ASSOCIATE-RQ has arrived, and with TLS runs each handshake in its accept loop without a
timeout (one silent client blocks every other). Here:

* the accept loop only accepts, checks the host against ``allowed_hosts`` (a refused host is
  closed at once: nothing it sends is read, parsed or logged) and takes a connection slot
  (:class:`~edged.sources.dicom.limits.ConnectionSlots`: in all and per host); refusals are
  logged and become ``rejected`` events (:class:`~edged.sources.dicom.refusals.Refusals`);
* each connection's own thread does the TLS handshake, bounded by ``handshake_timeout_s``
  (:func:`edged.sources.dicom.tls.handshake`), then runs the association with edged's DUL,
  DIMSE and socket (:mod:`edged.sources.dicom.receive`);
* when the association ends, whatever way, its slot is released and the files of its
  unfinished transfers are deleted.

Where pynetdicom has a hook it is used (``AE.make_server(server_class=...)``, the request
handler class, ``verify_request`` of :mod:`socketserver`); where it has none, a narrow subclass
overrides one method and names the upstream code it stands for. Those overrides were checked
against the pynetdicom versions in :data:`VERIFIED_PYNETDICOM`; :func:`check_pynetdicom` refuses
to start with any other (the daemon and ``edged check`` call it), rather than patch code that
may have changed.
"""

from __future__ import annotations

import logging
import ssl
import threading
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from socket import socket
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from edged.metrics.cpu import CPU
from edged.sources.dicom import tls as dicom_tls
from edged.sources.dicom import uids
from edged.sources.dicom.limits import (
    ConnectionSlots,
    Lease,
    ProgressMeter,
    TransportLimits,
)
from edged.sources.dicom.reactor import Checkpoint, association_timeout
from edged.sources.dicom.receive import GuardedDIMSE, GuardedDUL, GuardedSocket
from edged.sources.dicom.refusals import Refusals
from edged.sources.dicom.versions import (  # noqa: F401
    VERIFIED_PYNETDICOM,
    UnsupportedPynetdicom,
    check_pynetdicom,
)

log = logging.getLogger("edged.dicom")
upstream_log = logging.getLogger("pynetdicom.association")  # the reactor's own lines keep upstream's logger

@dataclass
class Guard:
    """What every connection of one listener shares."""

    limits: TransportLimits
    refusals: Refusals
    spool: Any  # edged.spool.spool.Spool: grow_incoming/drop_incoming/incoming
    tls: ssl.SSLContext | None = None
    handshake_timeout_s: float = 10.0
    send_timeout_s: float = 60.0
    slots: ConnectionSlots = field(init=False)

    def __post_init__(self) -> None:
        self.slots = ConnectionSlots(self.limits.max_associations, self.limits.max_per_host)


class GuardedAssociation(Association):
    """An acceptor ``Association`` (pynetdicom/association.py) with edged's DUL and DIMSE
    providers, a TLS handshake before its reactors start, and an end that always releases the
    connection's slot and deletes unfinished transfers."""

    cpu_role = "dicom"  # edged/metrics/cpu.py: the receive path's CPU

    def __init__(self, ae: Any, guard: Guard, peer: str, lease: Lease):
        super().__init__(ae, MODE_ACCEPTOR)
        self.guard, self.peer, self.lease = guard, peer, lease
        # The reactor sleeps on this until there is work (edged/sources/dicom/reactor.py); set
        # at first so that anything queued before the reactor starts is looked at at once.
        self.reactor_wake = threading.Event()
        self.reactor_wake.set()
        self._reactor_checkpoint = Checkpoint(self.reactor_wake.set)
        self._reactor_checkpoint.set()
        self.meter = ProgressMeter(guard.limits.min_bytes_per_s, guard.limits.window_s)
        # Association.__init__ built upstream's providers, then set the timeouts, which reach
        # into the DUL's timers: replace both providers, then set the timeouts again.
        self.dul = GuardedDUL(self, self.meter)
        self.dimse = GuardedDIMSE(self, guard.spool)
        self.acse_timeout = ae.acse_timeout
        self.network_timeout = ae.network_timeout

    def run(self) -> None:
        try:
            if self._start_tls():
                super().run()
        except Exception:
            log.exception("association with %s failed", self.peer)
        finally:
            self._end()

    def kill(self) -> None:
        """Upstream ``kill``, with the sleeping reactor woken to see it."""
        self._kill = True
        self.reactor_wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """Upstream ``Association._run_reactor`` (pynetdicom/association.py, 3.0.x), line for
        line, except that it sleeps on :attr:`reactor_wake` (bounded by the idle timer) where
        upstream sleeps 1 ms per loop (:mod:`edged.sources.dicom.reactor`)."""
        self._is_paused = False
        wake = self.reactor_wake
        while not self._kill:
            wake.wait(association_timeout(self))
            wake.clear()  # what set it is looked at below; a later set() ends the next wait

            # Pause point for send_*() and release() from other threads (upstream's comment)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                upstream_log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                upstream_log.info(log_msg)
                self.dul.receive_pdu(wait=False)  # EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                upstream_log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

    def _start_tls(self) -> bool:
        ctx = self.guard.tls
        if ctx is None:
            return True
        sock = self.dul.socket
        assert isinstance(sock, GuardedSocket) and sock.socket is not None
        try:
            tls_socket = dicom_tls.handshake(ctx, sock.socket, self.guard.handshake_timeout_s)
        except dicom_tls.HandshakeFailed as exc:
            quiet = exc.code == "tls_closed"
            self.guard.refusals.refuse(self.peer, exc.code, exc.reason, event=not quiet,
                                       level=logging.INFO if quiet else logging.WARNING)
            sock._shutdown_socket()
            sock.socket = None
            return False
        sock.adopt_tls(tls_socket)
        log.debug("TLS with %s: %s", self.peer, dicom_tls.describe(tls_socket))
        return True

    def _end(self) -> None:
        try:
            n, size = self.dimse.discard_partials() if isinstance(self.dimse, GuardedDIMSE) else (0, 0)
            if n:
                log.info("association with %s ended: %d unfinished transfer(s) deleted (%d bytes)", self.peer, n,
                         size)
            sock = self.dul.socket
            if sock is not None and sock.socket is not None:
                sock._shutdown_socket()
            if isinstance(self.dul, GuardedDUL) and not self.dul.is_alive():
                self.dul.wakeup.close()  # a DUL that never started (TLS refused) did not close it
        finally:
            self.lease.release()
            CPU.retire("dicom")


class GuardedRequestHandler(RequestHandler):
    """``RequestHandler`` (pynetdicom/transport.py) that builds a :class:`GuardedAssociation`
    on a :class:`GuardedSocket` and hands it the connection's slot."""

    server: "GuardedServer"

    def handle(self) -> None:
        """Upstream ``handle``: create the association, trigger EVT_CONN_OPEN, start it; the
        slot goes back here if the association never starts. Runs on the connection's own
        short-lived thread (socketserver's), counted as the receive path's CPU."""
        threading.current_thread().name = "dicom-accept"
        lease = self.server.take_lease(self.request)
        try:
            assoc = self._guarded_association(lease)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
        except BaseException:
            lease.release()
            raise
        finally:
            CPU.retire("dicom")

    def _guarded_association(self, lease: Lease) -> GuardedAssociation:
        """Upstream ``_create_association`` with edged's association and socket classes."""
        guard = self.server.guard
        assoc = GuardedAssociation(self.ae, guard, str(self.client_address[0]), lease)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"  # server.active_associations looks for it
        sock = GuardedSocket(assoc, self.request, assoc.meter, guard.send_timeout_s)
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = copy_contexts(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])  # type: ignore[index]
        return assoc


_CONTEXT_FIELDS = {"_context_id", "_abstract_syntax", "_transfer_syntax", "result", "_scu_role", "_scp_role",
                   "_as_scp", "_as_scu"}


def copy_contexts(contexts: list) -> list:
    """What upstream's ``deepcopy(self.server.contexts)`` gives each association, ~40× cheaper.

    A ``PresentationContext`` (pynetdicom/presentation.py, 3.0.x) holds immutable values (UIDs are
    ``str``, ints, bools, None) and one list, its transfer syntaxes: a copy with that list copied
    is as independent of the server's as a deep copy. deepcopy re-created every UID of ~120
    storage contexts × their syntaxes, 16 ms of CPU per association (issue #14), which a modality
    opening an association per image pays per image. The copy is a new instance given the
    original's attributes, not ``copy.copy`` (its ``__reduce_ex__`` round trip cost 0.36 against
    0.07 ms for 120 contexts). A context with any other attribute falls back to deepcopy."""
    out = []
    for cx in contexts:
        fields = vars(cx)
        if fields.keys() - _CONTEXT_FIELDS or not isinstance(fields.get("_transfer_syntax"), list):
            return deepcopy(contexts)
        twin = object.__new__(type(cx))
        twin.__dict__.update(fields)
        twin._transfer_syntax = list(fields["_transfer_syntax"])
        out.append(twin)
    return out


class GuardedServer(ThreadedAssociationServer):
    """``ThreadedAssociationServer`` whose accept loop does nothing but accept, check the host
    and take a slot (``socketserver.BaseServer.verify_request``); TLS is the connection
    thread's business (``ssl_context`` must stay None here)."""

    request_queue_size = 64  # listen backlog: a burst of connections is refused by us, not by the kernel

    def __init__(self, ae: Any, address: tuple, ae_title: str, contexts: list, ssl_context: Any = None,
                 evt_handlers: list | None = None, *, guard: Guard):
        if ssl_context is not None:
            raise ValueError("GuardedServer does TLS itself: pass the context in Guard.tls")
        self.guard = guard
        self._leases: dict[socket, Lease] = {}
        self._leases_lock = threading.Lock()
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers, request_handler=GuardedRequestHandler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if not self.guard.limits.host_allowed(host):
            self.guard.refusals.refuse(host, "host_not_allowed",
                                       "not in dicom.allowed_hosts: closed at connect, nothing read")
            return False
        why = self.guard.slots.take(host)
        if why is not None:
            self.guard.refusals.refuse(host, "too_many_associations", f"closed at connect: {why}")
            return False
        with self._leases_lock:
            self._leases[request] = Lease(self.guard.slots, host)
        return True

    def take_lease(self, request: socket) -> Lease:
        with self._leases_lock:
            return self._leases.pop(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed before its association started: its slot goes back, and
        the reason goes to the log (socketserver would print a traceback on stderr)."""
        with self._leases_lock:
            lease = self._leases.pop(request, None)
        if lease is not None:
            lease.release()
        log.exception("connection from %s failed before its association started", client_address[0])


def serve(ae: Any, address: tuple[str, int], handlers: list, guard: Guard) -> GuardedServer:
    """What ``AE.start_server(block=False)`` (pynetdicom/ae.py) does, with :class:`GuardedServer`:
    ``make_server``, ``serve_forever`` in a daemon thread, the server registered in
    ``ae._servers`` (``AssociationServer.shutdown`` removes it from there). The standard's
    UIDs are checked once per process from here on (:mod:`edged.sources.dicom.uids`)."""
    check_pynetdicom()
    uids.install()
    server = ae.make_server(address, evt_handlers=handlers, server_class=GuardedServer, guard=guard)
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}",
                              daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
