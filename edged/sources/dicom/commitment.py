"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

What edged commits to: an instance is committed when it is durably in edged's spool (fsynced,
its outcome still to come) or already processed (results or a ``skipped`` event committed) —
the ledger (:meth:`Outbox.instance`) and the spool are the truth, nothing else. edged is not an
archive: a committed instance is one whose outcome edged guarantees, not one it keeps forever.
Everything else is listed as failed, with a reason:

=========  ===============================================================================
0x0112     no such object instance: edged never received it (or it was refused)
0x0110     processing failure: received but ended in an ``error`` event (a resend is processed
           again), or the ledger and the spool disagree
=========  ===============================================================================

The report goes where the requester expects it (PS3.4 J.3.3): to a peer listed in
``dicom.storage_commitment.peers`` under the requester's AE title on a new association that
edged opens, proposing the SCP role by SCP/SCU Role Selection (what Orthanc, dcm4chee and most
PACS do: they release the requesting association right after the N-ACTION response); without
such an entry, on the requesting association while the requester keeps it open (what modalities
that wait for the report do). Reports are kept in memory: one that cannot be delivered after
``ATTEMPTS`` tries (or across a restart) is logged, and the requester's own timeout makes it
ask again. No UID reaches a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from edged.config.schema import RemoteAE, StorageCommitmentConfig
from edged.outbox.store import Outbox
from edged.privacy import Pseudonymizer
from edged.sources.dicom import vocab
from edged.spool.spool import Spool

log = logging.getLogger("edged.dicom.commitment")

SUCCESS = 0x0000
PROCESSING_FAILURE, NO_SUCH_INSTANCE = 0x0110, 0x0112
# N-ACTION response statuses (PS3.7 10.1.4.1.10)
NO_SUCH_ACTION, INVALID_ARGUMENT, NO_SUCH_SOP_CLASS, INVALID_INSTANCE = 0x0123, 0x0115, 0x0118, 0x0117
RESOURCE_LIMITATION = 0x0213
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_REFERENCES = 50_000  # one request; a study is a few hundred
MAX_PENDING = 16  # reports being delivered at once
ATTEMPTS = 5  # new-association deliveries, with backoff 2, 4, 8, 16 s
GRACE_S = 0.2  # let a requester that releases right after the N-ACTION response do so


@dataclass
class _Job:
    assoc: object  # the requesting pynetdicom Association
    calling_ae: str
    transaction_uid: str
    refs: list[tuple[str, str]]  # (SOP class UID, SOP instance UID)


class StorageCommitment:
    def __init__(self, cfg: StorageCommitmentConfig, ae_title: str, outbox: Outbox, spool: Spool,
                 pseudo: Pseudonymizer, timeout_s: float = 30.0, backoff_s: float = 2.0):
        self.cfg, self.ae_title, self.outbox, self.spool, self.pseudo = cfg, ae_title, outbox, spool, pseudo
        self.peers: dict[str, RemoteAE] = {p.ae_title: p for p in cfg.peers}
        self.timeout_s, self.backoff_s = timeout_s, backoff_s
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self.delivered = 0  # reports the requester acknowledged (for tests and status)

    # -- the SCP side ----------------------------------------------------------------------
    def add_contexts(self, ae: AE) -> None:
        # Requesters propose the SCU role (default); a report association of ours proposes SCP.
        ae.add_supported_context(StorageCommitmentPushModel, SYNTAXES, scu_role=True, scp_role=True)

    def handle_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req = event.request
        calling = vocab.ae_title(event.assoc.requestor.ae_title)
        if str(req.RequestedSOPClassUID) != StorageCommitmentPushModel:
            return self._refuse(calling, NO_SUCH_SOP_CLASS, "N-ACTION for another SOP class")
        if str(req.RequestedSOPInstanceUID) != StorageCommitmentPushModelInstance:
            return self._refuse(calling, INVALID_INSTANCE, "not the well-known Storage Commitment instance")
        if req.ActionTypeID != 1:
            return self._refuse(calling, NO_SUCH_ACTION, f"action type {req.ActionTypeID} (only 1 is defined)")
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            refs = [(str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                    for item in info.ReferencedSOPSequence]
        except Exception as exc:  # missing or unreadable Transaction UID / Referenced SOP Sequence
            return self._refuse(calling, INVALID_ARGUMENT, f"action information unreadable ({type(exc).__name__})")
        if not transaction or not 0 < len(refs) <= MAX_REFERENCES or not all(c and i for c, i in refs):
            return self._refuse(calling, INVALID_ARGUMENT, f"{len(refs)} references, or an empty UID")
        if not self._pending.acquire(blocking=False):
            return self._refuse(calling, RESOURCE_LIMITATION, f"{MAX_PENDING} reports are being delivered")
        job = _Job(event.assoc, calling, transaction, refs)
        threading.Thread(target=self._run, args=(job,), name="commitment-report", daemon=True).start()
        log.info("storage commitment request from %s for %d instance(s) accepted", calling, len(refs))
        return SUCCESS, None

    def _refuse(self, calling: str, status: int, why: str) -> tuple[int, None]:
        log.warning("storage commitment request from %s refused (0x%04X): %s", calling, status, why)
        return status, None

    # -- deciding --------------------------------------------------------------------------
    def verdict(self, sop_instance_uid: str) -> int:
        """SUCCESS when the instance is durably spooled or already processed, else a failure reason."""
        key = self.pseudo.pseudonym("instance", sop_instance_uid)
        state, _ = self.outbox.instance(key)
        if state in ("done", "skipped"):
            return SUCCESS
        if state in ("spooled", None) and key in self.spool:
            return SUCCESS
        if state == "spooled":  # being settled right now: the file goes only after the ledger says done
            state, _ = self.outbox.instance(key)
            return SUCCESS if state in ("done", "skipped") else PROCESSING_FAILURE
        return PROCESSING_FAILURE if state == "failed" else NO_SUCH_INSTANCE

    def report(self, job: _Job) -> tuple[int, Dataset]:
        """The N-EVENT-REPORT's event type and Event Information (PS3.4 Table J.3-2)."""
        ok, failed = [], []
        reasons: Counter[int] = Counter()
        for sop_class, sop_instance in job.refs:
            status = self.verdict(sop_instance)
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            if status == SUCCESS:
                ok.append(item)
            else:
                item.FailureReason = status
                failed.append(item)
                reasons[status] += 1
        ds = Dataset()
        ds.TransactionUID = job.transaction_uid
        if ok:
            ds.ReferencedSOPSequence = ok
        if failed:
            ds.FailedSOPSequence = failed
        log.info("storage commitment for %s: %d committed, %d failed%s", job.calling_ae, len(ok), len(failed),
                 "".join(f", 0x{code:04X} x{n}" for code, n in sorted(reasons.items())))
        return (2 if failed else 1), ds

    # -- delivering ------------------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        try:
            event_type, ds = self.report(job)
            peer = self.peers.get(job.calling_ae)
            if peer is None:
                time.sleep(GRACE_S)
                if self._same_association(job, event_type, ds):
                    return
                log.warning("storage commitment report for %s not delivered: the requesting association is closed "
                            "and dicom.storage_commitment.peers has no entry for this AE title", job.calling_ae)
                return
            for attempt in range(1, ATTEMPTS + 1):
                if self._new_association(peer, event_type, ds):
                    return
                if attempt < ATTEMPTS:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
            log.error("storage commitment report for %s not delivered to %s:%d after %d attempts; the requester "
                      "may ask again", job.calling_ae, peer.host, peer.port, ATTEMPTS)
        except Exception:
            log.exception("storage commitment report for %s failed", job.calling_ae)
        finally:
            self._pending.release()

    def _same_association(self, job: _Job, event_type: int, ds: Dataset) -> bool:
        assoc = job.assoc
        if not getattr(assoc, "is_established", False) or not _pause(assoc):
            return False
        try:
            status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel,
                                                  StorageCommitmentPushModelInstance)
        except Exception as exc:
            log.warning("storage commitment report for %s on its own association failed: %s", job.calling_ae, exc)
            return False
        return self._answered(job.calling_ae, status, "on the requesting association")

    def _new_association(self, peer: RemoteAE, event_type: int, ds: Dataset) -> bool:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(StorageCommitmentPushModel, SYNTAXES)
        role = build_role(StorageCommitmentPushModel, scp_role=True)  # we play SCP on an association we open
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
        if not assoc.is_established:
            log.warning("storage commitment report: association to %s at %s:%d refused or failed", peer.ae_title,
                        peer.host, peer.port)
            return False
        try:
            status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel,
                                                  StorageCommitmentPushModelInstance)
        finally:
            if assoc.is_established:
                assoc.release()
        return self._answered(peer.ae_title, status, f"to {peer.host}:{peer.port}")

    def _answered(self, who: str, status: Dataset | None, how: str) -> bool:
        code = getattr(status, "Status", None) if status is not None else None
        if code is None:
            log.warning("storage commitment report for %s %s: no response", who, how)
            return False
        if code != SUCCESS:
            log.warning("storage commitment report for %s %s answered 0x%04X", who, how, code)
            return False
        self.delivered += 1
        log.info("storage commitment report delivered %s (%s)", how, who)
        return True


def _pause(assoc, timeout_s: float = 5.0) -> bool:
    """Pause an acceptor association's reactor before sending on it, with a deadline.

    pynetdicom 3's ``send_n_event_report`` pauses the reactor itself by waiting, without a
    deadline, for ``_is_paused``; a reactor that ended meanwhile (the peer released the
    association between our check and the send) never sets it, and the sender would spin
    forever. Paused here first, the send finds it paused and goes on; a reactor that does not
    pause in time (ended, or serving a long request) is left running and the report is not sent
    on this association. The send itself is bounded by the DIMSE timeout."""
    checkpoint, deadline = getattr(assoc, "_reactor_checkpoint", None), time.monotonic() + timeout_s
    if checkpoint is None or not hasattr(assoc, "_is_paused"):
        return False  # another pynetdicom: do not risk it
    checkpoint.clear()
    while not assoc._is_paused:
        if time.monotonic() > deadline or not assoc.is_established or not assoc.is_alive():
            checkpoint.set()
            return False
        time.sleep(0.001)
    if not assoc.is_established:
        checkpoint.set()
        return False
    return True
