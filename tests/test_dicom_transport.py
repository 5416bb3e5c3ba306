"""Hostile and broken peers against the running daemon (issue #8, items 4, 5 and 7): bounded
memory and time per peer, slots nobody can hog, partial uploads that do not outlive their
association. Real peers: raw sockets crafting PDUs, pynetdicom and DCMTK's storescu.

Loopback has many addresses: 127.0.0.1 is the good modality, 127.0.0.2 an allowed but
misbehaving host, 127.0.0.3 a host outside ``allowed_hosts``.
"""

from __future__ import annotations

import struct
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from helpers import cr_variants, deflate_bomb, dicom_file, storescu
from rawpeer import CR_CX, RawPeer, associate_rq, p_data, store_command
from test_bad_input import send

CR = dicom_file("RG1_UNCR.dcm")
GOOD, MISBEHAVING, REFUSED = "127.0.0.1", "127.0.0.2", "127.0.0.3"

# Short windows so each case settles in a few seconds (2 s: a good peer starved of CPU for a
# moment on a loaded machine must not look like a slow one).
LIMITS = {
    "allowed_hosts": [f"{GOOD}/32", f"{MISBEHAVING}/32"],
    "max_associations": 4,
    "max_associations_per_host": 2,
    "max_pdu_size": 16384,
    "max_associate_rq_bytes": 16384,  # storescu asks with ~9.6 KB
    "min_transfer_bytes_per_s": 2000,
    "transfer_window_s": 2,
    "acse_timeout_s": 20,  # longer than any case: what ends a bad connection here is edged's limit
}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def small_cr(tmp_path: Path, name: str, size: int = 256) -> Path:
    """The chest CR cropped to size×size (a new instance): 128 KB at 256."""
    ds = dcmread(CR)
    ds.PixelData = ds.pixel_array[:size, :size].tobytes()
    ds.Rows = ds.Columns = size
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def echo_from(port: int, source: str) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGED", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def reasons(collector) -> list[str]:
    return [e["reason"] for e in collector.events("rejected")]


def test_oversized_pdus_are_refused_from_their_header(daemon_factory, collector, tmp_path):
    """Item 4: an A-ASSOCIATE-RQ or a P-DATA-TF longer than we accept is refused after its
    6-byte header; what follows is never read into memory (upstream buffered it whole)."""
    d = daemon_factory(dicom=LIMITS).start()
    first, last = cr_variants(tmp_path, 2)
    assert storescu(d.port, first).returncode == 0  # warm: threads, buffers and the first image's allocations
    collector.wait_for(lambda c: len(c.results()) == 1)
    before = rss_mb(d.proc.pid)

    # A-ASSOCIATE-RQ claiming 1 GB
    peer = RawPeer(d.port)
    peer.send(struct.pack(">BBL", 0x01, 0, 1 << 30))
    assert peer.closed_within(3) is not None, "an oversized A-ASSOCIATE-RQ was not refused"
    peer.close()

    # P-DATA-TF claiming 256 MB on an established association, then 64 MB of it pushed at us
    peer = RawPeer(d.port)
    peer.associate()
    peer.send(struct.pack(">BBL", 0x04, 0, 256 << 20))
    pushed, chunk = 0, b"\x00" * (1 << 20)
    try:
        while pushed < 64 << 20:
            peer.sock.sendall(chunk)
            pushed += len(chunk)
    except OSError:
        pass
    assert pushed < 64 << 20, "the daemon kept reading an oversized P-DATA-TF"
    peer.close()
    assert rss_mb(d.proc.pid) - before < 48, "memory grew with an oversized PDU (256 MB or 1 GB would show)"

    # and the daemon serves on
    assert storescu(d.port, last).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 2 and "pdu_too_large" in reasons(c))
    log = d.log.read_text()  # two log lines; one event (the same peer and reason within 10 s are folded)
    assert log.count("refused: pdu_too_large") == 2 and "Traceback" not in log
    assert d.terminate() == 0


def test_deflated_dataset_inflating_beyond_the_limit_is_refused(daemon_factory, collector, tmp_path):
    """Item 4: 34 KB that inflate to 32 MB; pydicom would inflate it whole in memory."""
    bomb = deflate_bomb(CR, tmp_path)
    assert bomb.stat().st_size < 64 << 10

    d = daemon_factory(dicom={"max_inflated_mb": 16}).start()
    before = rss_mb(d.proc.pid)
    assert send(d.port, bomb) == 0xA700
    assert rss_mb(d.proc.pid) - before < 16
    collector.wait_for(lambda c: "too_large" in reasons(c))
    (event,) = collector.events("rejected")
    assert event["status"] == 0xA700 and "inflates to more than 16 MB" in event["detail"]
    assert storescu(d.port, CR).returncode == 0  # serves on
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0


def misbehave(port: int, source: str, stop: threading.Event, how: str) -> RawPeer | None:
    """A connection from ``source`` that, once connected: ``trickling``, associates then drips a
    P-DATA-TF in at 10 bytes/s; ``truncated_pdu`` sends the 6-byte header of a 256-byte PDU and
    nothing more; ``unknown_pdu`` sends a 6-byte PDU of an unknown type and stays connected."""
    try:
        peer = RawPeer(port, source)
    except OSError:
        return None

    def run() -> None:
        try:
            if how == "truncated_pdu":
                peer.send(struct.pack(">BBL", 0x01, 0, 256))
            elif how == "unknown_pdu":
                peer.send(struct.pack(">BBL", 0x7F, 0, 0))
            else:
                peer.associate()
                peer.send(struct.pack(">BBL", 0x04, 0, 1000))
                while not stop.wait(0.1):
                    peer.send(b"\x00")
            stop.wait()
        except (OSError, AssertionError):
            pass

    threading.Thread(target=run, daemon=True).start()
    return peer


@pytest.mark.parametrize("how", ["trickling", "truncated_pdu", "unknown_pdu"])
def test_slow_or_malformed_peers_do_not_hold_the_slots(daemon_factory, collector, how):
    """Item 5: 10 tricklers at 10 bytes/s, or 15 connections that sent 6 bytes of a PDU header
    or an unknown 6-byte PDU, from one host: they get its 2 slots, the rest are closed at connect,
    and the 2 are cut (too slow, or aborted) and their slots back at once, not after acse_timeout.
    The good modality is served all along."""
    d = daemon_factory(dicom=LIMITS).start()
    stop = threading.Event()
    try:
        peers = [misbehave(d.port, MISBEHAVING, stop, how) for _ in range(10 if how == "trickling" else 15)]
        time.sleep(0.3)
        r = storescu(d.port, CR)
        assert r.returncode == 0, r.stderr[-2000:]
        closed = [p.closed_within(6) for p in peers if p is not None]
        assert all(c is not None for c in closed), f"connections still open: {closed}"
        time.sleep(0.5)
        assert echo_from(d.port, MISBEHAVING), "the host's slots did not come back"
    finally:
        stop.set()
    expected = {"too_many_associations", "invalid_pdu" if how == "unknown_pdu" else "too_slow"}
    collector.wait_for(lambda c: len(c.results()) == 1 and expected <= set(reasons(c)))
    log = d.log.read_text()
    assert all(f"refused: {r}" in log for r in expected) and "Traceback" not in log
    assert d.terminate() == 0


def test_a_refused_host_is_dropped_unread_and_locks_nobody_out(daemon_factory, collector):
    """Item 5: a host outside allowed_hosts is closed at connect, before a byte of it is read
    or logged; twelve of its connections hold no slot."""
    d = daemon_factory(dicom=LIMITS).start()
    peers = []
    for _ in range(12):
        peer = RawPeer(d.port, REFUSED)
        try:
            peer.send(associate_rq(calling="INTRUDER_X9"))
        except OSError:
            pass
        peers.append(peer)
    assert all(p.closed_within(2) is not None for p in peers)
    r = storescu(d.port, CR)
    assert r.returncode == 0, r.stderr[-2000:]
    collector.wait_for(lambda c: len(c.results()) == 1 and "host_not_allowed" in reasons(c))
    events = [e for e in collector.events("rejected") if e["reason"] == "host_not_allowed"]
    assert events[0]["peer"] == REFUSED and "calling_ae" not in events[0]
    log = d.log.read_text()
    assert "refused: host_not_allowed" in log
    assert "INTRUDER_X9" not in log, "the refused host's A-ASSOCIATE-RQ was read"
    # pynetdicom's own A-ASSOCIATE-RJ (another called AE title) is reported as well
    assert storescu(d.port, CR, aec="NOT_EDGED").returncode != 0
    collector.wait_for(lambda c: "called_ae_not_recognized" in reasons(c))
    assert "refused: called_ae_not_recognized" in d.log.read_text()
    assert d.terminate() == 0


def incoming(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "state" / "spool" / ".incoming").iterdir())


def test_partial_uploads_count_against_the_quota_and_go_with_their_association(daemon_factory, collector,
                                                                              tmp_path):
    """Item 7: 700 KB of a C-STORE still streaming count against a 1 MB quota (another store of
    400 KB is refused 0xA700); when that association is cut off its file is deleted at once."""
    d = daemon_factory(dicom={**LIMITS, "spool_quota_mb": 1, "transfer_window_s": 60}).start()
    ds = dcmread(CR)
    data = CR.read_bytes()
    peer = RawPeer(d.port)
    peer.associate()
    peer.send(p_data(CR_CX, 0x03, store_command(ds.SOPClassUID, ds.SOPInstanceUID)))
    offset = 132 + 200  # into the dataset: the bytes after the file meta do not matter here
    for _ in range(50):  # 700 KB in 14 KB fragments
        peer.send(p_data(CR_CX, 0x00, data[offset:offset + 14000]))
        offset += 14000
    time.sleep(0.3)
    assert sum(p.stat().st_size for p in incoming(tmp_path)) >= 700_000
    other = small_cr(tmp_path, "other", 448)  # ~400 KB
    assert send(d.port, other) == 0xA700
    peer.close()  # cut off in the middle of the dataset
    deadline = time.monotonic() + 3
    while incoming(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert incoming(tmp_path) == [], "the partial upload outlived its association"
    assert send(d.port, other) == 0x0000
    collector.wait_for(lambda c: len(c.results()) == 1 and "spool_full" in reasons(c))
    assert "unfinished transfer(s) deleted" in d.log.read_text()
    assert d.terminate() == 0


@pytest.fixture(params=["space", "inodes"])
def full_spool_fs(request, tmp_path: Path):
    """The spool on an 80 MB tmpfs (needs root, as on this project's CI machines), then filled:
    ``space`` leaves 3 MB free (less than a CR), ``inodes`` leaves no inode (no file can be made)."""
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m,nr_inodes=64", "tmpfs", str(spool)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
    fillers = spool / "fill"

    def fill() -> None:
        fillers.mkdir()
        if request.param == "space":
            (fillers / "0").write_bytes(b"\0" * (77 << 20))
            return
        for i in range(64):
            try:
                (fillers / str(i)).touch()
            except OSError:
                return

    yield fill, lambda: subprocess.run(["rm", "-rf", str(fillers)], check=True)
    subprocess.run(["umount", "-l", str(spool)], check=False)


def test_disk_filling_while_streaming_answers_out_of_resources(daemon_factory, collector, full_spool_fs, tmp_path):
    """Item 7: the spool's filesystem runs out (of space while a 7 MB CR streams in, or of
    inodes for its file): 0xA700 and a ``spool_full`` event, and the association carries on
    (upstream: an exception in pynetdicom's state machine, A-ABORT, no event)."""
    fill, empty = full_spool_fs
    d = daemon_factory().start()
    fill()
    ae = AE(ae_title="MODALITY")
    ds = dcmread(CR, stop_before_pixels=True)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
    assert assoc.is_established
    assert assoc.send_c_store(CR).Status == 0xA700
    assert assoc.send_c_echo().Status == 0x0000, "the association did not survive"
    assoc.release()
    collector.wait_for(lambda c: "spool_full" in reasons(c))
    assert not list((tmp_path / "state" / "spool" / ".incoming").iterdir())
    empty()
    assert storescu(d.port, CR).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert "Traceback" not in d.log.read_text()
    assert d.terminate() == 0
