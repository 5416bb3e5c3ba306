"""Results back into the PACS as DICOM SR: the document, its identity, and durable delivery.

The SR is checked by three readers that are not edged: dicom3tools' ``dciodvfy`` (the IOD),
DCMTK's ``dsrdump`` (the content tree) and pydicom. The PACS is DCMTK's ``storescp`` (a real
C-STORE SCP writing what it receives) or a pynetdicom SCP where a refusal is needed; Orthanc
is in test_orthanc.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from edged.localbroker import free_port, wait_listening
from edged.sr.builder import COMPREHENSIVE_SR, Finding, Uids, build, capture, derived_uid, encode
from helpers import PHI, phi_tokens, small_cr, storescu

DCIODVFY, DSRDUMP, STORESCP = "/usr/bin/dciodvfy", "/usr/bin/dsrdump", "/usr/bin/storescp"


def sr_problems(path: Path) -> list[str]:
    """dciodvfy's errors (warnings about DICOMDIR use and our private coding scheme are not)."""
    if not Path(DCIODVFY).exists():
        pytest.fail("dciodvfy missing: apt-get install dicom3tools (make test does this)")
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def dsrdump(path: Path) -> str:
    out = subprocess.run([DSRDUMP, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


FINDING = Finding(model="chexnet", version="0.1.0-seeded", sha256="ab" * 32, clinical=False, backend="onnxruntime",
                  precision="fp32", scores={"Pneumothorax": 0.8482, "Pleural_Thickening": 0.25, "Mass": 0.5},
                  node="ward-3")


def test_sr_document_is_valid_tid1500_in_the_source_study(tmp_path: Path):
    src = small_cr(tmp_path / "src.dcm", 16, 16, StudyDate="20240102", StudyTime="101500", StudyID="S1")
    uids = Uids(*(derived_uid(c * 32) for c in "0123"))
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode(build(capture(src), FINDING, uids, datetime(2024, 1, 2, 10, 30))))
    assert sr_problems(path) == []
    text = dsrdump(path)
    assert "Imaging Measurement Report" in text and "Measurement Group" in text
    assert "NOT FOR CLINICAL USE" in text  # series description and the report text
    assert '"Pneumothorax")="0.8482" (1,UCUM,"no units")' in text
    sr, image = dcmread(path), dcmread(src)
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                    "ReferringPhysicianName", "StudyDate", "StudyID"):
        assert sr[keyword].value == image[keyword].value, keyword
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    group = sr.ContentSequence[7].ContentSequence[0]
    source = [i for i in group.ContentSequence if i.ValueType == "IMAGE"][0]
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    scores = {i.ConceptNameCodeSequence[0].CodeMeaning: i.MeasuredValueSequence[0].FloatingPointValue
              for i in group.ContentSequence if i.ValueType == "NUM"}
    assert scores == FINDING.scores
    names = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    assert names["Device Observer Manufacturer"].TextValue == "edged"
    assert sr.SeriesDescription.endswith("NOT FOR CLINICAL USE")
    # the same result gives the same document identity: a resend is idempotent at the PACS
    again = build(capture(src), FINDING, uids, datetime(2025, 5, 5))
    assert again.SOPInstanceUID == sr.SOPInstanceUID == derived_uid("0" * 32)
    clinical = build(capture(src), Finding(**{**FINDING.__dict__, "clinical": True}), uids, datetime.now())
    assert "NOT FOR CLINICAL USE" not in str(clinical.SeriesDescription) + str(clinical.ContentSequence)


@pytest.fixture
def storescp(tmp_path: Path):
    """DCMTK's storescp as the PACS; ``start()`` may come late (the PACS is down at first)."""
    procs: list[subprocess.Popen] = []
    port = free_port()
    out = tmp_path / "pacs"
    out.mkdir()

    class Pacs:
        def __init__(self):
            self.port, self.dir = port, out

        def start(self):
            p = subprocess.Popen([STORESCP, "-aet", "PACS", "-od", str(out), str(port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_listening(port, p, 10, "storescp")
            return self

        def files(self) -> list[Path]:
            return sorted(out.glob("SR*"))

    yield Pacs()
    for p in procs:
        p.kill()
        p.wait(5)


@pytest.mark.slow
def test_sr_reaches_the_pacs_after_it_comes_back(tmp_path, daemon_factory, collector, storescp):
    """The PACS is down when the result is written: the SR waits in the SQLite outbox and is
    sent once the PACS listens; identity from the source, none of it on MQTT or in the log."""
    d = daemon_factory(dicom={"sr_destination": {"ae_title": "PACS", "host": "127.0.0.1", "port": storescp.port,
                                                 "retry_backoff_s": 0.5, "max_backoff_s": 1}},
                       models=[{"name": "chexnet-tiny", "sr": True}]).start()
    src = small_cr(tmp_path / "chest.dcm", 64, 64)
    assert storescu(d.port, src).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1, 60)
    time.sleep(1.5)  # a few refused attempts
    storescp.start()
    deadline = time.monotonic() + 30
    while not storescp.files() and time.monotonic() < deadline:
        time.sleep(0.2)
    (sr_file,) = storescp.files()
    time.sleep(0.5)  # storescp finishes writing
    sr, image = dcmread(sr_file), dcmread(src)
    assert sr.PatientID == PHI["PatientID"] and sr.StudyInstanceUID == image.StudyInstanceUID
    assert sr_problems(sr_file) == []
    assert "chexnet" in dsrdump(sr_file)
    wire = repr([p for _, p, _ in collector.messages]) + d.log.read_text()
    for token in phi_tokens(str(image.StudyInstanceUID), str(image.SOPInstanceUID), str(sr.SOPInstanceUID)):
        assert token not in wire
    assert "SR stored by PACS" in d.log.read_text()


@pytest.mark.slow
def test_a_refused_sr_is_an_error_event_and_unreachable_gives_up(tmp_path, daemon_factory, collector):
    """0xC000 from the PACS fails for good at once (sr_rejected); an unreachable PACS past
    give_up_after_h ends in sr_delivery_failed. The results themselves are unaffected."""
    from pynetdicom import AE, evt

    refusing = AE(ae_title="PACS")
    refusing.add_supported_context(COMPREHENSIVE_SR)
    port = free_port()
    server = refusing.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xC000)])
    try:
        d = daemon_factory(dicom={"sr_destination": {"ae_title": "PACS", "host": "127.0.0.1", "port": port}},
                           models=[{"name": "chexnet-tiny", "sr": True}]).start()
        assert storescu(d.port, small_cr(tmp_path / "a.dcm", 64, 64)).returncode == 0
        collector.wait_for(lambda c: len(c.results()) == 1 and len(c.events("error")) == 1, 60)
    finally:
        server.shutdown()
    (event,) = collector.events("error")
    assert event["reason"] == "sr_rejected" and "0xC000" in event["detail"]
    assert event["instance"] == collector.results()[0]["instance"]
    d.terminate()

    gone = free_port()  # nothing listens here
    shutil.rmtree(tmp_path / "state")
    d2 = daemon_factory(dicom={"sr_destination": {"ae_title": "PACS", "host": "127.0.0.1", "port": gone,
                                                  "retry_backoff_s": 0.3, "max_backoff_s": 0.5,
                                                  "give_up_after_h": 0.0005}},
                        models=[{"name": "chexnet-tiny", "sr": True}]).start()
    assert storescu(d2.port, small_cr(tmp_path / "b.dcm", 64, 64)).returncode == 0
    collector.wait_for(lambda c: any(e["reason"] == "sr_delivery_failed" for e in c.events("error")), 60)
    assert len(collector.results()) == 2


def _pki(where: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 (the PACS) and a client certificate (edged)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    where.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pacs-ca", "-keyout",
            "ca.key", "-out", "ca.crt")
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out",
                f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
    return where


@pytest.mark.slow
def test_sr_over_dicom_tls_to_a_pacs_that_requires_client_certificates(tmp_path, daemon_factory, collector):
    """DCMTK's storescp as a TLS PACS (BCP 195 profile, client certificate required): edged
    verifies the PACS against sr_destination.tls.ca_file and presents its own certificate."""
    pki = _pki(tmp_path / "pki")
    port, out = free_port(), tmp_path / "tls-pacs"
    out.mkdir()
    pacs = subprocess.Popen([STORESCP, "-aet", "PACS", "-od", str(out), "+tls", str(pki / "server.key"),
                             str(pki / "server.crt"), "+cf", str(pki / "ca.crt"), "-rc", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, pacs, 10, "storescp")
        tls = {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "client.crt"),
               "key_file": str(pki / "client.key")}
        d = daemon_factory(dicom={"sr_destination": {"ae_title": "PACS", "host": "127.0.0.1", "port": port,
                                                     "tls": tls}},
                           models=[{"name": "chexnet-tiny", "sr": True}]).start()
        assert storescu(d.port, small_cr(tmp_path / "chest.dcm", 64, 64)).returncode == 0
        deadline = time.monotonic() + 30
        while not list(out.glob("SR*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(list(out.glob("SR*"))) == 1, d.log.read_text()[-2000:]
    finally:
        pacs.kill()
        pacs.wait(5)
