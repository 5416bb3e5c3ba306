"""Delivers queued DICOM SRs to the PACS (``dicom.sr_destination``) with C-STORE, until it says success.

One thread. Every due row is sent on one association per round; a row is delivered only when
the PACS answers success or a warning (0x0000, 0xB000, 0xB006, 0xB007: stored). What happens
otherwise follows PS3.4's status families:

* no association (refused, unreachable, TLS failure), no answer, or "out of resources"
  (0xA7xx, 0x0213): transient — tried again after ``retry_backoff_s``, doubling up to
  ``max_backoff_s``, for ``give_up_after_h``;
* "data set does not match" (0xA9xx), "cannot understand" (0xCxxx) or anything else: the same
  bytes will never be accepted, so delivery fails for good at once.

Failing for good is an ``error`` event (``sr_rejected`` or ``sr_delivery_failed``) with the
instance's pseudonym and the status, never the SR's content; the blob is then cleared. The SR's
SOP Instance UID is stable, so a resend after a lost answer is idempotent at the PACS.
"""

from __future__ import annotations

import logging
import threading
import time
from io import BytesIO

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from edged.config.schema import SrDestination
from edged.outbox.emitter import EventEmitter
from edged.privacy import Pseudonymizer
from edged.sr.builder import COMPREHENSIVE_SR
from edged.sr.outbox import SrOutbox, SrRow

log = logging.getLogger("edged.sr")

STORED = {0x0000, 0xB000, 0xB006, 0xB007}
PURGE_AFTER_S = 7 * 24 * 3600


def transient(status: int) -> bool:
    return (status & 0xFF00) == 0xA700 or status == 0x0213


class SrSender:
    def __init__(self, dest: SrDestination, ae_title: str, outbox: SrOutbox, events: EventEmitter,
                 pseudo: Pseudonymizer):
        self.dest, self.ae_title, self.outbox, self.events, self.pseudo = dest, ae_title, outbox, events, pseudo
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sr-sender", daemon=True)
        self._tls = None
        if dest.tls is not None:
            from edged.sr.tls import client_context

            self._tls = client_context(dest.tls.ca_file, dest.tls.cert_file, dest.tls.key_file)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        last_purge = 0.0
        while not self._stopping.is_set():
            try:
                rows = self.outbox.due()
                if rows:
                    self._round(rows)
                    continue
                if time.monotonic() - last_purge > 3600:
                    last_purge = time.monotonic()
                    self.outbox.purge(PURGE_AFTER_S)
            except Exception:  # a bug or a full disk must not end delivery for good
                log.exception("SR delivery round failed; trying again")
                self._stopping.wait(5.0)
            nxt = self.outbox.next_due()
            self._wake.wait(min(5.0, max(0.05, nxt - time.time())) if nxt else 5.0)
            self._wake.clear()

    def _round(self, rows: list[SrRow]) -> None:
        d = self.dest
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = d.timeout_s
        ae.add_requested_context(COMPREHENSIVE_SR, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        tls = (self._tls, d.host) if self._tls is not None else None
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, tls_args=tls)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "no association (unreachable, timeout or TLS)"
            log.warning("SR destination %s at %s:%d: %s; %d SR(s) wait", d.ae_title, d.host, d.port, why, len(rows))
            for row in rows:
                self._later(row, why)
            return
        try:
            for row in rows:
                if self._stopping.is_set():
                    break  # still due: sent after the next start
                if not assoc.is_established:
                    self._later(row, "association ended")
                    continue
                self._send(assoc, row)
        finally:
            if assoc.is_established:
                assoc.release()

    def _send(self, assoc, row: SrRow) -> None:
        ds = dcmread(BytesIO(row.dataset))
        try:
            answer = assoc.send_c_store(ds)
        except Exception as exc:  # encoding or a dropped connection: try again later
            self._later(row, f"send failed ({type(exc).__name__})")
            return
        status = getattr(answer, "Status", None)
        if status is None:
            self._later(row, "no answer")
        elif status in STORED:
            self.outbox.delivered(row.id)
            log.info("instance %s: %s SR stored by %s (0x%04X)", row.instance, row.model, self.dest.ae_title, status)
        elif transient(status):
            self._later(row, f"status 0x{status:04X}")
        else:
            self._give_up(row, "sr_rejected", f"the PACS refused the SR with status 0x{status:04X}; the same SR "
                                             f"will not be accepted")

    def _later(self, row: SrRow, why: str) -> None:
        d = self.dest
        if time.time() - row.created_at > d.give_up_after_h * 3600:
            self._give_up(row, "sr_delivery_failed", f"not delivered to {d.ae_title} within {d.give_up_after_h:g} h "
                                                     f"({row.attempts + 1} attempts; last: {why})")
            return
        delay = min(d.retry_backoff_s * 2 ** min(row.attempts, 30), d.max_backoff_s)
        self.outbox.retry(row.id, time.time() + delay, why)
        log.info("instance %s: %s SR not delivered (%s); next attempt in %.0f s", row.instance, row.model, why, delay)

    def _give_up(self, row: SrRow, reason: str, detail: str) -> None:
        log.error("instance %s: %s SR delivery failed for good: %s", row.instance, row.model, detail)
        queued = self.events.emit("error", reason,
                                  message_id=self.pseudo.message_id("error", reason, row.model, row.instance),
                                  instance=row.instance, study=row.study or None, model=row.model, detail=detail)
        if queued:
            self.outbox.failed(row.id, reason)
        else:  # the outbox refused the event (disk full): the row comes back, and the event with it
            self.outbox.retry(row.id, time.time() + 60, reason)
