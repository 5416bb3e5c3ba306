"""The DICOM Storage SCP: C-ECHO and C-STORE, durable before success.

What the handler promises a modality when it answers 0x0000: the bytes it sent are fsynced in
the spool (or, for images no model accepts, a ``skipped`` event is committed to the outbox).
It never decodes pixels and never runs inference — a slow handler blocks the sender's
association. What an accepted instance becomes is :mod:`edged.sources.dicom.source`'s business.
Bad input gets the status PS3.4 prescribes plus an event:

=========  ==========================================================
0xA700     out of resources: spool quota or disk full, write failure
0xA900     dataset does not match the SOP class/instance of the request
0xC000     cannot understand: unreadable or truncated dataset (its SOP UIDs unreadable included),
           invalid header, no pixel data
=========  ==========================================================

A header that makes pydicom raise anything at all is "cannot understand" (0xC000), never "out of
resources": 0xA7xx invites the sender to retry the same bytes forever.

Who may connect, how many at once, how large and how slow their PDUs may be, TLS, and where a
streamed dataset may grow are the transport's business (:mod:`edged.sources.dicom.transport`,
:mod:`~edged.sources.dicom.receive`): by the time a handler here runs, the peer's host is
allowed and the dataset is on disk within the spool's quota — or
:func:`~edged.sources.dicom.incoming.stream_failure` says why it is not (0xA700, ``spool_full``).

An image in a syntax this device cannot decode is acknowledged (``dicom.accept_undecodable``) and
reported ``no_decoder``. Storage commitment and the idle rule: :mod:`.commitment`, :mod:`.idle`.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Protocol

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from edged.config.schema import DicomConfig
from edged.outbox.emitter import EventEmitter
from edged.outbox.store import Outbox
from edged.privacy import Pseudonymizer
from edged.sources.dicom import idle, tls, transport, vocab
from edged.sources.dicom.accept import sop_class_name
from edged.sources.dicom.commitment import StorageCommitment
from edged.sources.dicom.header import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    Rejected,
    check,
    check_inflated,
    decodable_syntaxes,
    offered_syntaxes,
    parse,
)
from edged.sources.dicom.incoming import stream_failure
from edged.sources.dicom.limits import TransportLimits
from edged.sources.dicom.refusals import Refusals
from edged.sources.dicom.source import DicomSource
from edged.spool.spool import Spool, SpoolFull

log = logging.getLogger("edged.dicom")

# What this SCP serves; refusing anything else a peer merely proposes (FIND, MOVE, GET, worklist)
# is normal and not reported.
SERVED_CLASSES = frozenset({str(Verification)} | {str(cx.abstract_syntax) for cx in StoragePresentationContexts})

_REJECTS = {
    (0x01, 0x07): ("called_ae_not_recognized", "association addressed to another AE title (dicom.require_called_ae)"),
    (0x03, 0x02): ("too_many_associations", "A-ASSOCIATE-RJ local limit exceeded"),
}


class Observer(Protocol):
    """Metrics: every association's outcome and every C-STORE status answered."""

    def association(self, result: str, reason: str = "") -> None: ...

    def store(self, status: int) -> None: ...


class _Uncounted:
    def association(self, result: str, reason: str = "") -> None:
        pass

    def store(self, status: int) -> None:
        pass


class StorageSCP:
    def __init__(self, cfg: DicomConfig, spool: Spool, outbox: Outbox, pseudo: Pseudonymizer, source: DicomSource,
                 events: EventEmitter, observer: Observer | None = None):
        self.cfg, self.spool, self.outbox, self.pseudo = cfg, spool, outbox, pseudo
        self.source, self.events = source, events
        self.observer: Observer = observer or _Uncounted()
        self._server = None
        self.refusals = Refusals(events.emit, count=lambda reason: self.observer.association("rejected", reason))
        self.port: int | None = None
        self.commitment = StorageCommitment(cfg.storage_commitment, cfg.ae_title, outbox, spool, pseudo,
                                            timeout_s=cfg.dimse_timeout_s)
        self._decodable: frozenset[str] = frozenset()

    def limits(self) -> TransportLimits:
        c = self.cfg
        return TransportLimits(
            max_associations=c.max_associations, max_per_host=c.max_associations_per_host, max_pdu=c.max_pdu_size,
            max_associate_rq=c.max_associate_rq_bytes, min_bytes_per_s=c.min_transfer_bytes_per_s,
            window_s=c.transfer_window_s,
            allowed=tuple(ipaddress.ip_network(h, strict=False) for h in c.allowed_hosts))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        # Stream every received dataset to a file instead of memory: a 7 MB CR (or a 100 MB
        # mammogram) never sits in RAM, and the file is renamed into the spool, not copied.
        # pynetdicom writes it with tempfile, so the daemon points tempfile at the spool's
        # filesystem (Daemon.start). This setting is process-wide; the daemon owns the process.
        _config.STORE_RECV_CHUNKED_DATASET = True
        transport.check_pynetdicom()
        ae = AE(ae_title=self.cfg.ae_title)
        # The transport's slots enforce max_associations at connect; pynetdicom's own count (threads
        # alive at A-ASSOCIATE-RQ time) also sees threads that released their slot and are exiting.
        ae.maximum_associations = self.cfg.max_associations + 2
        ae.maximum_pdu_size = self.cfg.max_pdu_size
        ae.acse_timeout = self.cfg.acse_timeout_s
        ae.dimse_timeout = self.cfg.dimse_timeout_s
        ae.network_timeout = self.cfg.network_timeout_s
        ae.require_called_aet = False  # checked in handle_requested, which logs and reports it
        for problem in idle.problems(self.cfg.network_timeout_s):
            log.warning("%s", problem)
        self._decodable = frozenset(str(u) for u in decodable_syntaxes())
        syntaxes = offered_syntaxes(self.cfg.accept_undecodable)
        ae.add_supported_context(Verification)
        # Every storage class is offered: routers forward whole studies and fail the whole
        # transfer on a refused context; what no model accepts is acknowledged and skipped.
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        handlers = [
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_ABORTED, idle.handle_aborted),
        ]
        if self.cfg.storage_commitment.enabled:
            self.commitment.add_contexts(ae)
            handlers.append((evt.EVT_N_ACTION, self.commitment.handle_n_action))
        t = self.cfg.tls
        guard = transport.Guard(
            self.limits(), self.refusals.start(), self.spool, send_timeout_s=self.cfg.network_timeout_s,
            tls=tls.server_context(t.cert_file, t.key_file, t.ca_file, t.require_client_cert) if t else None,
            handshake_timeout_s=t.handshake_timeout_s if t else 0.0)
        self._server = transport.serve(ae, (self.cfg.bind, self.cfg.port), handlers, guard)
        self.port = self._server.server_address[1]
        log.info("DICOM SCP %s listening on %s:%d%s", self.cfg.ae_title, self.cfg.bind, self.port,
                 " (TLS" + (", client certificates required)" if t.require_client_cert else ")") if t else "")

    def stop(self) -> None:
        """Stop accepting associations. Open ones are not cut: a C-STORE they still carry is
        spooled durably as usual and processed at the next start."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.refusals.stop()

    # -- association policy --------------------------------------------------------------
    def handle_requested(self, event: evt.Event) -> None:
        """Calling AE allow-list (hosts were checked at connect, by the transport)."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = primitive.calling_ae_title.strip() if primitive else ""
        called = primitive.called_ae_title.strip() if primitive else ""
        if self.cfg.allowed_calling_aes and calling not in self.cfg.allowed_calling_aes:
            reason, diag, detail = "calling_ae_not_allowed", 0x03, "association refused by the allow-list"
        elif self.cfg.require_called_ae and called != self.cfg.ae_title:
            reason, diag = "called_ae_not_recognized", 0x07
            detail = (f"association addressed to AE title {vocab.ae_title(called)}; this node is "
                      f"{self.cfg.ae_title} (dicom.ae_title; dicom.require_called_ae: false accepts any)")
        else:
            return
        assoc.acse.send_reject(0x01, 0x01, diag)
        self.refusals.refuse(assoc.requestor.address, reason, detail, calling_ae=vocab.ae_title(calling))
        _wait_sent(assoc)

    def handle_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own A-ASSOCIATE-RJ (its association count, …): say so too."""
        rj = event.assoc.acceptor.primitive
        code = (getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
        reason, detail = _REJECTS.get(code, ("association_rejected",
                                             f"A-ASSOCIATE-RJ source {code[0]} reason {code[1]}"))
        primitive = event.assoc.requestor.primitive
        self.refusals.refuse(event.assoc.requestor.address, reason, detail,
                             calling_ae=vocab.ae_title(primitive.calling_ae_title) if primitive else None)

    def handle_accepted(self, event: evt.Event) -> None:
        """Report refused presentation contexts that leave a peer's store or echo unservable.

        Peers propose more than they use: Orthanc's echo also proposes FIND/MOVE, routers propose
        each SOP class in several transfer syntaxes. A refused context is a problem (warning and
        a ``rejected`` event) only when it is for storage or verification *and* no other context
        of the same SOP class was accepted; everything else is normal negotiation (debug)."""
        self.observer.association("accepted")
        assoc = event.assoc
        refused = assoc.rejected_contexts
        if not refused:
            return
        calling = vocab.ae_title(assoc.requestor.ae_title)
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        unservable = sorted({sop_class_name(str(cx.abstract_syntax)) for cx in refused
                             if str(cx.abstract_syntax) in SERVED_CLASSES and str(cx.abstract_syntax) not in accepted})
        if not unservable:
            log.debug("association from %s: %d proposed presentation context(s) not needed or not offered here",
                      calling, len(refused))
            return
        log.warning("association from %s: cannot serve %s (no transfer syntax we can decode was offered)",
                    calling, ", ".join(unservable))
        self.events.emit("rejected", "presentation_context", calling_ae=calling,
                         detail=f"no decodable transfer syntax offered for: {', '.join(unservable)}")

    # -- C-STORE -------------------------------------------------------------------------
    def handle_store(self, event: evt.Event) -> int:
        status = self._answer(event)
        self.observer.store(status)
        return status

    def _answer(self, event: evt.Event) -> int:
        calling = vocab.ae_title(event.assoc.requestor.ae_title)
        try:
            return self._store(event, calling)
        except Rejected as exc:
            log.warning("C-STORE from %s refused (0x%04X): %s", calling, exc.status, exc.reason)
            self.events.emit("rejected", exc.reason.split(":")[0], calling_ae=calling, status=exc.status,
                             detail=exc.reason)
            return exc.status
        except Exception:  # never let pynetdicom answer 0xC211 with no trace
            log.exception("C-STORE from %s failed", calling)
            self.events.emit("rejected", "internal_error", calling_ae=calling, status=OUT_OF_RESOURCES,
                             detail="internal error while storing; see the device log")
            return OUT_OF_RESOURCES

    def _store(self, event: evt.Event, calling: str) -> int:
        req_instance = str(event.request.AffectedSOPInstanceUID)
        req_class = str(event.request.AffectedSOPClassUID)
        key = self.pseudo.pseudonym("instance", req_instance)
        state, _ = self.outbox.instance(key)
        if state in ("spooled", "done", "skipped") or key in self.spool:
            return self._duplicate(key, calling, state)
        failure = stream_failure(event)
        if failure is not None:  # quota or disk ran out while the dataset streamed in
            raise Rejected(OUT_OF_RESOURCES, failure)
        received = event.dataset_path  # streamed to disk by pynetdicom, on the spool's filesystem
        size = received.stat().st_size
        if event.context.transfer_syntax == DeflatedExplicitVRLittleEndian:
            check_inflated(received, self.cfg.max_inflated_mb)
        try:
            ds = parse(received)
            check(ds, req_class, req_instance, self.cfg.max_image_pixels, size)
            d = self.source.describe(ds, calling)
        except Rejected:
            raise
        except Exception as exc:  # pydicom raising on a corrupted element: the header is not understood
            raise Rejected(CANNOT_UNDERSTAND, f"unreadable: {type(exc).__name__} while reading the header") from None
        if not d.accepted:
            try:
                self.events.commit([self.source.skipped_record(key, d, calling)])
            except Exception as exc:
                raise Rejected(OUT_OF_RESOURCES, f"spool_write: cannot record the instance ({type(exc).__name__})") \
                    from None
            log.info("instance %s from %s skipped: %s", key, calling, "; ".join(d.refused.values()))
            return SUCCESS
        try:
            if not self.spool.adopt(key, received):  # the same instance won a race on another association
                return self._duplicate(key, calling, "spooled")
        except SpoolFull as exc:
            raise Rejected(OUT_OF_RESOURCES, f"spool_full: {exc}") from None
        except OSError as exc:
            raise Rejected(OUT_OF_RESOURCES, f"spool_write: {exc.strerror}") from None
        self.outbox.mark_spooled(key, d.study, calling)
        syntax = str(event.context.transfer_syntax)
        if syntax not in self._decodable:  # acknowledged like any image, kept in quarantine, reported
            self.source.no_decoder(key, d, calling, sop_class_name(syntax))
            return SUCCESS
        log.info("instance %s from %s spooled for %s (%d bytes)", key, calling, ",".join(d.accepted), size)
        self.source.accept(key, d, calling)
        return SUCCESS

    def _duplicate(self, key: str, calling: str, state: str | None) -> int:
        """The same SOP instance again: success, stored and inferred once. If it is still waiting
        in the spool it is (re-)offered to the pipeline, in case its first offer was lost."""
        log.info("instance %s from %s already received (%s): not stored again", key, calling, state or "spooled")
        if state not in ("done", "skipped"):
            if state is None:  # the file made it into the spool but the ledger row did not
                self.outbox.mark_spooled(key, "", calling)
            self.source.offer(key)
        self.events.emit("duplicate", "already_received", calling_ae=calling, instance=key,
                         detail=f"instance already {state or 'spooled'}; stored and inferred once")
        return SUCCESS


def _wait_sent(assoc, timeout: float = 2.0) -> None:
    """Let the DUL thread send the A-ASSOCIATE-RJ before returning. After a rejection in an
    EVT_REQUESTED handler pynetdicom 3.0 shuts the socket down at once (association.py, acceptor
    branch of ``run``), unlike its own rejections, which ``kill()`` after the DUL is done; without
    this wait the peer sees an abort instead of the reason."""
    deadline = time.monotonic() + timeout
    while not assoc.dul.to_provider_queue.empty() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.02)  # the primitive leaves the queue as its PDU is written
