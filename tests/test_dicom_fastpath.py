"""The receive fast path (edged/sources/dicom/fastpath.py) against the installed pynetdicom: a real
pynetdicom SCU sends the chest CR in 16 KB PDUs (≈440) to edged's guarded listener; the middle
fragments go through the fast path and the file the C-STORE handler gets is byte for byte what
was sent. The version guard names the fast path when pynetdicom is a release it was not written for."""

from __future__ import annotations

import io
import queue
import tempfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from edged.localbroker import free_port
from edged.sources.dicom import transport, versions
from edged.sources.dicom.limits import TransportLimits
from edged.sources.dicom.refusals import Refusals
from edged.spool.spool import Spool

CR = Path(get_testdata_file("RG1_UNCR.dcm"))


def test_unverified_pynetdicom_names_the_fast_path(monkeypatch):
    monkeypatch.setattr(versions, "VERIFIED_PYNETDICOM", (*versions.VERIFIED_PYNETDICOM, "3.0.99"))
    with pytest.raises(versions.UnsupportedPynetdicom, match=r"fastpath\.py.*FASTPATH_VERIFIED"):
        versions.check_pynetdicom("3.0.99")
    versions.check_pynetdicom("3.0.4")  # the pinned release passes


def test_dataset_fragments_take_the_fast_path_and_arrive_intact(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool", 1 << 30)
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(tempfile, "tempdir", str(spool.incoming))
    got: dict = {}

    def on_store(event):
        got["bytes"] = Path(event.dataset_path).read_bytes()
        got["fast"] = event.assoc.dul.fast_pdus
        return 0x0000

    ae = AE(ae_title="EDGED")
    ae.maximum_pdu_size = 16384  # DCMTK's and many modalities' PDU size: ≈440 PDUs for this image
    ae.add_supported_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    guard = transport.Guard(TransportLimits(max_pdu=16384), Refusals(lambda *a, **k: None), spool)
    port = free_port()
    server = transport.serve(ae, ("127.0.0.1", port), [(evt.EVT_C_STORE, on_store)], guard)
    try:
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        ds = dcmread(CR)
        assoc = scu.associate("127.0.0.1", port, ae_title="EDGED", max_pdu=16384)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000
    finally:
        server.shutdown()
    assert got["fast"] > 400, got["fast"]  # every middle fragment; the first and last took upstream's path
    received = dcmread(io.BytesIO(got["bytes"]))
    assert received.PixelData == ds.PixelData
    assert received.SOPInstanceUID == ds.SOPInstanceUID and received.PatientName == ds.PatientName


def _pdata(context_id: int, fragments: list[tuple[bytes, int]]) -> bytes:
    """A P-DATA-TF PDU: one PDV per (data, control header) pair."""
    import struct

    items = b"".join(struct.pack(">LBB", len(d) + 2, context_id, ctl) + d for d, ctl in fragments)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def test_whole_pdus_in_the_read_ahead_are_written_together(tmp_path):
    """stream_buffered takes every complete P-DATA-TF of middle dataset fragments already in the
    buffer, writes their data in one call, and leaves the first PDU it may not take (here the last
    fragment, then a PDU cut off at the buffer's end) for the one-PDU path."""
    from types import SimpleNamespace

    from edged.sources.dicom.fastpath import ReadAhead, stream_buffered
    from edged.sources.dicom.incoming import GuardedFile

    spool = Spool(tmp_path / "spool", 1 << 30)
    ntf = tempfile.NamedTemporaryFile(dir=spool.incoming, delete=False)
    f = GuardedFile(spool, ntf, ntf.name)
    writes = []
    real_write = f.write
    f.write = lambda data: writes.append(len(data)) or real_write(data)  # type: ignore[method-assign]
    message = SimpleNamespace(context_id=3, _data_set_file=f)
    assoc = SimpleNamespace(dimse=SimpleNamespace(message=message), _edged_fastpath_ok=True)
    dul = SimpleNamespace(state_machine=SimpleNamespace(current_state="Sta6"), event_queue=queue.Queue(),
                          _recv_pdu=queue.Queue(), assoc=assoc)
    middles = [_pdata(3, [(bytes([i]) * 1000, 0x00), (bytes([i + 100]) * 500, 0x00)]) for i in range(5)]
    last = _pdata(3, [(b"end", 0x02)])
    stream = b"".join(middles) + last + _pdata(3, [(b"x" * 100, 0x00)])[:50]
    ahead = ReadAhead(64 * 1024)
    ahead.buf[:len(stream)] = stream
    ahead.start, ahead.end = 0, len(stream)

    assert stream_buffered(dul, ahead, limit=16384) == 5
    assert writes == [7500]  # one write for five PDUs
    assert bytes(ahead.buf[ahead.start:ahead.start + len(last)]) == last  # the last fragment is left
    assert stream_buffered(dul, ahead, limit=16384) == 0
    f.close()
    expected = b"".join(bytes([i]) * 1000 + bytes([i + 100]) * 500 for i in range(5))
    assert Path(ntf.name).read_bytes() == expected

    other_context = ReadAhead(64 * 1024)
    pdu = _pdata(5, [(b"y" * 10, 0x00)])
    other_context.buf[:len(pdu)] = pdu
    other_context.end = len(pdu)
    assert stream_buffered(dul, other_context, limit=16384) == 0  # another context: upstream's path
    dul.state_machine.current_state = "Sta7"
    assert stream_buffered(dul, ahead, limit=16384) == 0
