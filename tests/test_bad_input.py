"""Bad input gets a clear answer and loses nothing: the right DICOM status, an event with a
reason, a PHI-free log line, and the daemon keeps serving the next good image."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import MPEG2MPML, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from helpers import dicom_file, storescu
from helpers import send_file as send

CR = dicom_file("RG1_UNCR.dcm")


def variant(tmp_path: Path, name: str, edit) -> Path:
    """A copy of the chest CR with a new SOP Instance UID, changed by ``edit(ds)``."""
    ds = dcmread(CR)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    edit(ds)
    out = tmp_path / f"{name}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_bad_input_answers_and_keeps_serving(daemon_factory, collector, tmp_path):
    d = daemon_factory().start()

    def no_pixels(ds):
        del ds.PixelData

    def huge(ds):
        ds.Rows, ds.Columns = 20000, 20000

    def rgb(ds):
        ds.PhotometricInterpretation = "RGB"

    def lateral(ds):
        ds.ViewPosition = "LL"

    def two_frames(ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    def processing(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1.1"  # DX For Processing: raw detector data
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.Modality = "DX"

    cases = {
        "no_pixels": (no_pixels, 0xC000),
        "huge": (huge, 0xA700),
        "rgb": (rgb, 0x0000),
        "lateral": (lateral, 0x0000),
        "two_frames": (two_frames, 0x0000),
        "processing": (processing, 0x0000),
    }
    for name, (edit, expected) in cases.items():
        assert send(d.port, variant(tmp_path, name, edit)) == expected, name

    # truncated in the middle of the pixel data
    data = CR.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) // 2])
    assert send(d.port, truncated) == 0xC000

    # header of another instance than the dataset (file meta says X, dataset says Y)
    ds = dcmread(CR)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mismatch = tmp_path / "mismatch.dcm"
    ds.save_as(mismatch)  # keeps our file meta as is
    assert send(d.port, mismatch) == 0xA900

    # a transfer syntax we cannot decode is refused at association time, with an event
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, [MPEG2MPML])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
    assert assoc.is_established and len(assoc.rejected_contexts) == 1
    assoc.release()

    # and the daemon still serves a good image
    good = variant(tmp_path, "good", lambda ds: None)
    assert storescu(d.port, good).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1 and len(c.events("rejected")) >= 5
                       and len(c.events("skipped")) >= 4)
    rejected = {e["reason"] for e in collector.events("rejected")}
    assert {"no_pixel_data", "too_large", "truncated", "mismatch", "presentation_context"} <= rejected
    skipped = {e["reason"] for e in collector.events("skipped")}
    assert {"photometric", "view_position", "multi_frame", "sop_class"} <= skipped
    log = d.log.read_text()
    assert "Traceback" not in log
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID"):
        value = str(dcmread(CR, stop_before_pixels=True).get(kw, ""))
        if len(value) > 3:
            assert value not in log, f"{kw} in the daemon log"
    assert d.terminate() == 0


def test_undecodable_pixels_after_ack_give_an_error_event(daemon_factory, collector, tmp_path):
    """Accepted (header fine) but the JPEG 2000 stream is broken: error event, spool emptied."""
    j2k = dcmread(dicom_file("RG1_J2KR.dcm"))
    j2k.SOPInstanceUID = generate_uid()
    j2k.file_meta.MediaStorageSOPInstanceUID = j2k.SOPInstanceUID
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(j2k.PixelData, number_of_frames=1))
    j2k.PixelData = encapsulate([frame[: (len(frame) // 50) & ~1]])
    broken = tmp_path / "broken_j2k.dcm"
    j2k.save_as(broken, enforce_file_format=True)
    d = daemon_factory().start()
    assert send(d.port, broken) == 0x0000
    collector.wait_for(lambda c: len(c.events("error")) == 1)
    (event,) = collector.events("error")
    assert event["reason"] == "decode_failed"
    assert d.terminate() == 0
    assert not list((tmp_path / "state" / "spool").glob("*.dcm"))


@pytest.mark.parametrize("allow", [{"allowed_calling_aes": ["CR_ROOM_1"]}, {"allowed_hosts": ["10.1.2.0/24"]}])
def test_allow_lists_refuse_associations(daemon_factory, collector, allow):
    d = daemon_factory(dicom=allow).start()
    r = storescu(d.port, CR, aet="STRANGER")
    assert r.returncode != 0
    collector.wait_for(lambda c: len(c.events("rejected")) == 1)
    reason = collector.events("rejected")[0]["reason"]
    assert reason == ("calling_ae_not_allowed" if "allowed_calling_aes" in allow else "host_not_allowed")
    if "allowed_calling_aes" in allow:
        assert storescu(d.port, CR, aet="CR_ROOM_1").returncode == 0
        collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0


def test_spool_quota_answers_out_of_resources(daemon_factory, collector):
    d = daemon_factory(dicom={"spool_quota_mb": 1}).start()
    assert send(d.port, CR) == 0xA700
    collector.wait_for(lambda c: len(c.events("rejected")) == 1)
    assert collector.events("rejected")[0]["reason"] == "spool_full"
    assert d.terminate() == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, in this test, writing the file
def test_deflated_and_nonconformant_uids_are_served_and_never_logged(daemon_factory, collector, tmp_path):
    """Deflated Explicit VR LE (negotiated, so it must work) and UIDs with leading-zero components,
    as older devices send them: inferred normally, and the raw UIDs appear nowhere in the log."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    odd = "1.2.840.0999.777.02"

    def nonconformant(ds):
        ds.StudyInstanceUID = odd + ".1"
        ds.SOPInstanceUID = odd + ".2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    weird = variant(tmp_path, "weird", nonconformant)
    deflated = tmp_path / "deflated.dcm"
    ds = dcmread(CR)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(deflated, implicit_vr=False, little_endian=True, enforce_file_format=True)
    ds = dcmread(deflated)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    d = daemon_factory().start()
    assert storescu(d.port, weird).returncode == 0
    assert send(d.port, deflated) == 0x0000
    collector.wait_for(lambda c: len(c.results()) == 2)
    assert {r["source"]["transfer_syntax"] for r in collector.results()} >= {"Deflated Explicit VR Little Endian"}
    assert d.terminate() == 0
    log = d.log.read_text()
    assert odd not in log, "a non-conformant UID was logged"


def test_contexts_a_peer_merely_proposes_raise_no_alarm(daemon_factory, collector):
    """Issue #15: Orthanc's C-ECHO also proposes FIND/MOVE; routers propose each SOP class in
    several syntaxes. Refusing what is not needed is normal: no warning, no ``rejected`` event."""
    import time

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.sop_class import (ModalityWorklistInformationFind, StudyRootQueryRetrieveInformationModelFind,
                                      StudyRootQueryRetrieveInformationModelMove)

    d = daemon_factory().start()
    ae = AE(ae_title="ORTHANC")
    for cx in (Verification, StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
               ModalityWorklistInformationFind):
        ae.add_requested_context(cx)
    ae.add_requested_context(ComputedRadiographyImageStorage, [MPEG2MPML])  # refused...
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])  # ...but this one serves
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
    assert assoc.is_established and len(assoc.rejected_contexts) == 4
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    time.sleep(1.0)
    assert d.terminate() == 0
    assert not collector.events("rejected")
    assert "presentation context" not in d.log.read_text() and "cannot serve" not in d.log.read_text()
