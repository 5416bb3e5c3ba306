"""Storage Commitment Push Model SCP against pynetdicom's SCU (Orthanc's is in test_orthanc.py).

An instance is committed only when it is durably spooled or already processed; everything
else is listed as failed with a reason; the report arrives on the requesting association or,
for a requester listed in dicom.storage_commitment.peers, on a new association edged opens
with the SCP role. Before this existed, every N-ACTION failed: no presentation context.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from edged.config.schema import StorageCommitmentConfig
from edged.localbroker import free_port
from edged.outbox.db import Database
from edged.outbox.store import Outbox
from edged.privacy import Pseudonymizer
from edged.sources.dicom.commitment import NO_SUCH_INSTANCE, PROCESSING_FAILURE, SUCCESS, StorageCommitment
from edged.spool.spool import Spool
from helpers import phi_tokens, small_cr, storescu

pytestmark = pytest.mark.slow


def _request(refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _refs(paths: list[Path]) -> list[tuple[str, str]]:
    return [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in (dcmread(p, stop_before_pixels=True) for p in paths)]


def test_verdicts_follow_the_ledger_and_the_spool(tmp_path: Path):
    """The decision itself, on a real SQLite ledger and a real spool directory."""
    pseudo = Pseudonymizer(b"k" * 32)
    outbox = Outbox(Database(tmp_path / "edged.db"))
    spool = Spool(tmp_path / "spool", 1 << 30)
    sc = StorageCommitment(StorageCommitmentConfig(), "EDGED", outbox, spool, pseudo)
    key = lambda uid: pseudo.pseudonym("instance", uid)  # noqa: E731
    for uid, state in (("1.2.3.1", "done"), ("1.2.3.2", "skipped"), ("1.2.3.3", "failed"), ("1.2.3.4", "spooled"),
                       ("1.2.3.5", "spooled")):
        outbox.mark_spooled(key(uid), "s", "AE")
        if state != "spooled":
            from edged.outbox.store import Record
            outbox.add_messages([Record("t", {"message_id": key(uid) + "m"}, (key(uid), "s", state, "AE", None))])
    received = tmp_path / "received.dcm"
    small_cr(received, 8, 8)
    assert spool.adopt(key("1.2.3.4"), received)  # durably spooled, outcome to come
    assert sc.verdict("1.2.3.1") == SUCCESS  # processed
    assert sc.verdict("1.2.3.2") == SUCCESS  # processed (skipped: its event is committed)
    assert sc.verdict("1.2.3.3") == PROCESSING_FAILURE  # ended in an error event
    assert sc.verdict("1.2.3.4") == SUCCESS
    assert sc.verdict("1.2.3.5") == PROCESSING_FAILURE  # the ledger says spooled, the file is not there
    assert sc.verdict("1.2.3.6") == NO_SUCH_INSTANCE


def test_report_on_the_requesting_association(tmp_path, daemon_factory, collector):
    d = daemon_factory().start()
    chest = [small_cr(tmp_path / f"chest{i}.dcm", 64, 64) for i in range(2)]
    knee = small_cr(tmp_path / "knee.dcm", 64, 64, BodyPartExamined="KNEE")
    r = storescu(d.port, *chest, knee)
    assert r.returncode == 0, r.stderr
    never_sent = ("1.2.840.10008.5.1.4.1.1.1", generate_uid())
    refs = _refs(chest + [knee]) + [never_sent]
    collector.wait_for(lambda c: len(c.results()) == 2 and len(c.events("skipped")) == 1, 60)

    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event):
        reports.put((event.request.EventTypeID, event.event_information))
        return 0x0000, None

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established, "storage commitment must be accepted"
    request = _request(refs)
    status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
    assert status.Status == 0x0000
    event_type, info = reports.get(timeout=30)
    assoc.release()
    assert event_type == 2  # failures exist
    assert info.TransactionUID == request.TransactionUID
    committed = {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence}
    assert committed == {uid for _, uid in refs[:3]}
    failed = [(str(i.ReferencedSOPInstanceUID), int(i.FailureReason)) for i in info.FailedSOPSequence]
    assert failed == [(never_sent[1], 0x0112)]
    log = d.log.read_text()
    assert "1 failed, 0x0112 x1" in log
    for token in phi_tokens(*(uid for _, uid in refs)):
        assert token not in log


def test_report_on_a_new_association_to_the_configured_peer(tmp_path, daemon_factory, collector):
    """Like Orthanc: the requester releases right after the N-ACTION response and listens for the
    report as an SCP; edged opens the association, proposing the SCP role (role selection)."""
    listen = free_port()
    d = daemon_factory(dicom={"storage_commitment": {"peers": [
        {"ae_title": "PACS", "host": "127.0.0.1", "port": listen}]}}).start()
    chest = small_cr(tmp_path / "chest.dcm", 64, 64)
    assert storescu(d.port, chest, aet="PACS").returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1, 60)

    reports: queue.Queue[tuple[int, Dataset, str]] = queue.Queue()

    def on_report(event):
        cx = [c for c in event.assoc.accepted_contexts if c.abstract_syntax == StorageCommitmentPushModel][0]
        reports.put((event.request.EventTypeID, event.event_information, f"{cx.as_scu}/{cx.as_scp}"))
        return 0x0000, None

    scp = AE(ae_title="PACS")
    scp.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = scp.start_server(("127.0.0.1", listen), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
        assert assoc.is_established
        request = _request(_refs([chest]))
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
        assoc.release()  # gone before any report could come on it
        assert status.Status == 0x0000
        event_type, info, roles = reports.get(timeout=30)
    finally:
        server.shutdown()
    assert event_type == 1  # all committed
    assert info.TransactionUID == request.TransactionUID
    assert [str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence] == [_refs([chest])[0][1]]
    assert "FailedSOPSequence" not in info
    assert roles == "True/False"  # from the listener's side: edged (the requestor) acts as SCP


def test_malformed_requests_get_an_n_action_failure(daemon_factory):
    d = daemon_factory().start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
    assert assoc.is_established
    try:
        no_transaction = Dataset()
        no_transaction.ReferencedSOPSequence = []
        status, _ = assoc.send_n_action(no_transaction, 1, StorageCommitmentPushModel,
                                        StorageCommitmentPushModelInstance)
        assert status.Status == 0x0115  # invalid argument value
        status, _ = assoc.send_n_action(_request([("1.2.3", "4.5.6")]), 7, StorageCommitmentPushModel,
                                        StorageCommitmentPushModelInstance)
        assert status.Status == 0x0123  # no such action
    finally:
        assoc.release()
    time.sleep(0.2)
    assert d.alive()


def test_a_requester_that_leaves_without_a_peer_entry_is_told_in_the_log(tmp_path, daemon_factory):
    """No peers entry and the requesting association already released: the report cannot be
    delivered; the log says why and what to configure, and nothing hangs."""
    d = daemon_factory().start()
    ae = AE(ae_title="LEAVER")
    ae.add_requested_context(StorageCommitmentPushModel)
    for _ in range(3):
        assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
        assert assoc.is_established
        status, _ = assoc.send_n_action(_request([("1.2.840.10008.5.1.4.1.1.1", generate_uid())]), 1,
                                        StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
        assoc.release()
        assert status.Status == 0x0000
    deadline = time.monotonic() + 10
    while d.log.read_text().count("dicom.storage_commitment.peers has no entry") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert d.log.read_text().count("report for LEAVER not delivered") == 3
    assert storescu(d.port, small_cr(tmp_path / "after.dcm", 32, 32)).returncode == 0  # still serving
