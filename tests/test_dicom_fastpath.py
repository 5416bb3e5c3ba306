"""The receive fast path (edged/sources/dicom/fastpath.py) against the installed pynetdicom: a real
pynetdicom SCU sends the chest CR in 16 KB PDUs (≈440) to edged's guarded listener; the middle
fragments go through the fast path and the file the C-STORE handler gets is byte for byte what
was sent. The version guard names the fast path when pynetdicom is a release it was not written for."""

from __future__ import annotations

import io
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
