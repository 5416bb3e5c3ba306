"""edged behind a real PACS: Orthanc (Debian's package) as the reference peer.

One Orthanc (own storage, own ports, no auth, edged registered as a modality, a Lua router) and
one edged for the whole module; each test uses its own studies. What an integrator trips over
is what is checked: echo raises no alarm, studies sent synchronously, as jobs and by Lua
routing (with Orthanc's default association close delay) each give one result per chest
image, storage commitment succeeds, the SR lands in the source study and reads in dsrdump,
and a job that failed while edged was down succeeds when resubmitted. Skips only where the
``orthanc`` package is not installed (``make test`` installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from edged.localbroker import LocalBroker, free_port, wait_listening
from helpers import PHI, Collector, DaemonProcess, phi_tokens, small_cr, storescu, write_config

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
GDCM = Path("/usr/share/orthanc/plugins/libOrthancGdcm.so")  # Debian's orthanc-gdcm
ROOM = "CR_ROOM_3"  # the modality whose images Orthanc's Lua script routes to edged
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(ORTHANC).exists(),
                                 reason="Orthanc is not installed (Debian package 'orthanc'; make test installs it)")]

LUA = f"""
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == '{ROOM}' then
    SendToModality(instanceId, 'edged')
  end
end
"""


class Orthanc:
    def __init__(self, workdir: Path, edged_port: int, noj2k_port: int):
        self.http, self.dicom = free_port(), free_port()
        (workdir / "route.lua").write_text(LUA)
        config = {
            "Name": "edged-ci", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": [str(GDCM)] if GDCM.exists() else [],
            "LuaScripts": [str(workdir / "route.lua")], "SaveJobs": False, "DicomScuTimeout": 10,
            "DicomModalities": {"edged": {"AET": "EDGED", "Host": "127.0.0.1", "Port": edged_port},
                                "noj2k": {"AET": "EDGED", "Host": "127.0.0.1", "Port": noj2k_port}},
        }
        (workdir / "orthanc.json").write_text(json.dumps(config))
        self.log = workdir / "orthanc.log"
        self.proc = subprocess.Popen([ORTHANC, str(workdir / "orthanc.json")], stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_listening(self.http, self.proc, 30, "Orthanc")
        wait_listening(self.dicom, self.proc, 30, "Orthanc")

    def rest(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> object:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            payload = r.read()
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def upload(self, *paths: Path) -> str:
        """POST the files; returns Orthanc's id of their (common) study."""
        studies = {self.rest("POST", "/instances", raw=p.read_bytes())["ParentStudy"] for p in paths}
        assert len(studies) == 1
        return studies.pop()

    def job(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.rest("GET", f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job['State']}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def study(tmp_path: Path, name: str, n: int, **attrs) -> list[Path]:
    """``n`` small chest CRs of one new study (planted PHI, fresh UIDs)."""
    from pydicom.uid import generate_uid

    uid = generate_uid()
    folder = tmp_path / name
    folder.mkdir()
    return [small_cr(folder / f"{i}.dcm", 64, 64, StudyInstanceUID=uid, **attrs) for i in range(n)]


def instances(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, tiny_repo: Path) -> Iterator[tuple]:
    work = tmp_path_factory.mktemp("orthanc")
    (work / "broker").mkdir()
    broker = LocalBroker(work / "broker").start()
    collector = Collector(broker.port)
    edged_port, noj2k_port = free_port(), free_port()
    orthanc = Orthanc(work, edged_port, noj2k_port)
    orthanc.noj2k_port, orthanc.broker_port, orthanc.work = noj2k_port, broker.port, work
    cfg = {
        "node_id": "pacs-node", "state_dir": str(work / "state"), "cache_dir": str(work / "cache"),
        "model_repository": str(tiny_repo),
        "dicom": {"bind": "127.0.0.1", "port": edged_port,
                  "storage_commitment": {"peers": [{"ae_title": "ORTHANC", "host": "127.0.0.1",
                                                    "port": orthanc.dicom}]},
                  "sr_destination": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom}},
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "models": [{"name": "chexnet-tiny", "sr": True}],
        "power": {"control_socket": str(work / "control.sock")},
    }
    edged = DaemonProcess(write_config(work / "edged.yaml", **cfg), work / "edged.log").start()
    yield orthanc, edged, collector
    if edged.alive():
        edged.terminate()
    orthanc.stop()
    collector.close()
    broker.stop()
    assert not collector.invalid, collector.invalid


def results_for(collector: Collector, count: int, timeout: float = 60) -> None:
    collector.wait_for(lambda c: len(c.results()) >= count, timeout)


def test_echo_raises_no_alarm(pacs):
    orthanc, edged, collector = pacs
    before = len(collector.events())
    assert orthanc.rest("POST", "/modalities/edged/echo", {}) == {}
    time.sleep(0.5)
    assert [e for e in collector.events()[before:] if e["type"] == "rejected"] == []
    assert "cannot serve" not in edged.log.read_text()


def test_study_sent_synchronously_and_as_a_20_image_job(pacs, tmp_path):
    orthanc, edged, collector = pacs
    small = study(tmp_path, "sync", 2) + study(tmp_path, "knee", 1, BodyPartExamined="KNEE")
    base, skipped = len(collector.results()), len(collector.events("skipped"))
    orthanc.rest("POST", "/modalities/edged/store", {"Resources": [orthanc.upload(*small[:2])], "Synchronous": True})
    orthanc.rest("POST", "/modalities/edged/store", {"Resources": [orthanc.upload(small[2])], "Synchronous": True})
    results_for(collector, base + 2)
    collector.wait_for(lambda c: len(c.events("skipped")) == skipped + 1, 30)

    twenty = study(tmp_path, "twenty", 20)
    job = orthanc.rest("POST", "/modalities/edged/store", {"Resources": [orthanc.upload(*twenty)],
                                                           "Asynchronous": True})
    assert orthanc.job(job["ID"])["State"] == "Success"
    results_for(collector, base + 22)
    got = [r["instance"] for r in collector.results()[base:]]
    assert len(got) == len(set(got)) == 22  # every chest image exactly one result


def test_lua_routing_with_orthancs_default_close_delay(pacs, tmp_path):
    """Orthanc keeps a Lua association open 5 s after its last use: images 2 s apart share it,
    then Orthanc closes it. edged's idle timeout (90 s) outlasts that: nothing is lost, no warning."""
    orthanc, edged, collector = pacs
    routed = study(tmp_path, "routed", 3)
    base = len(collector.results())
    for path in routed:
        r = storescu(orthanc.dicom, path, aet=ROOM, aec="ORTHANC")
        assert r.returncode == 0, r.stderr
        time.sleep(2)
    results_for(collector, base + 3, 60)
    time.sleep(4)  # Orthanc's close delay runs out
    log = edged.log.read_text()
    assert "without a request" not in log and "Network timeout" not in log
    assert "Broken pipe" not in orthanc.log.read_text()
    assert {r["source"]["calling_ae"] for r in collector.results()[base:]} == {"ORTHANC"}


def test_storage_commitment_success_and_failure(pacs, tmp_path):
    orthanc, edged, collector = pacs
    paths = study(tmp_path, "commit", 2)
    base = len(collector.results())
    refs = [{"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "SOPInstanceUID": uid} for uid in sorted(instances(paths))]

    def report_of(path: str) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = orthanc.rest("GET", path)
            if report["Status"] != "Pending":
                return report
            time.sleep(0.2)
        raise AssertionError("storage commitment report never arrived")

    def commit(refs: list[dict]) -> dict:
        return report_of(orthanc.rest("POST", "/modalities/edged/storage-commitment", {"DicomInstances": refs})["Path"])

    # C-STORE chained with storage commitment, as Orthanc does it for a store job
    stored = orthanc.rest("POST", "/modalities/edged/store", {"Resources": [orthanc.upload(*paths)],
                                                              "Synchronous": True, "StorageCommitment": True})
    report = report_of(f"/storage-commitment/{stored['StorageCommitmentTransactionUID']}")
    assert report["Status"] == "Success", report
    results_for(collector, base + 2)
    report = commit(refs)  # asked again later, when both are processed
    assert report["Status"] == "Success", report
    assert sorted(s["SOPInstanceUID"] for s in report["Success"]) == [r["SOPInstanceUID"] for r in refs]
    unknown = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1"}
    report = commit([refs[0], unknown])
    assert report["Status"] == "Failure"
    assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in report["Failures"]] == [(unknown["SOPInstanceUID"],
                                                                                         0x0112)]


def test_sr_arrives_in_the_source_study(pacs, tmp_path):
    orthanc, edged, collector = pacs
    (path,) = study(tmp_path, "sr", 1)
    study_id = orthanc.upload(path)
    base = len(collector.results())
    orthanc.rest("POST", "/modalities/edged/store", {"Resources": [study_id], "Synchronous": True})
    results_for(collector, base + 1)
    deadline, sr_series = time.monotonic() + 30, []
    while not sr_series and time.monotonic() < deadline:
        sr_series = [s for s in orthanc.rest("GET", f"/studies/{study_id}/series?expand")
                     if s["MainDicomTags"].get("Modality") == "SR"]
        time.sleep(0.3)
    assert sr_series, "no SR series in the source study"
    (instance,) = sr_series[0]["Instances"]
    sr_file = tmp_path / "sr.dcm"
    sr_file.write_bytes(orthanc.rest("GET", f"/instances/{instance}/file"))
    dump = subprocess.run(["/usr/bin/dsrdump", str(sr_file)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "NOT FOR CLINICAL USE" in dump.stdout
    sr, image = dcmread(sr_file), dcmread(path)
    assert (sr.PatientID, sr.StudyInstanceUID) == (PHI["PatientID"], image.StudyInstanceUID)
    result = collector.results()[base]
    scores = {i.ConceptNameCodeSequence[0].CodeMeaning: i.MeasuredValueSequence[0].FloatingPointValue
              for i in sr.ContentSequence[7].ContentSequence[0].ContentSequence if i.ValueType == "NUM"}
    assert scores == pytest.approx(result["scores"])


def test_edged_down_during_a_job_then_resubmitted(pacs, tmp_path):
    orthanc, edged, collector = pacs
    paths = study(tmp_path, "down", 5)
    study_id = orthanc.upload(*paths)
    base = len(collector.results())
    edged.kill9()
    job = orthanc.rest("POST", "/modalities/edged/store", {"Resources": [study_id], "Asynchronous": True})
    assert orthanc.job(job["ID"])["State"] == "Failure"
    edged.start()
    orthanc.rest("POST", f"/jobs/{job['ID']}/resubmit", {})
    assert orthanc.job(job["ID"])["State"] == "Success"
    results_for(collector, base + 5)
    got = {r["instance"] for r in collector.results()[base:]}
    assert len(got) == 5


def test_a_device_without_a_j2k_decoder_behind_orthanc(pacs, tiny_repo, tmp_path):
    """The study job that used to fail after its first image: with the default
    (accept_undecodable) it succeeds, the J2K image is an error/no_decoder and the rest is
    inferred; with accept_undecodable: false Orthanc's GDCM plugin transcodes and it is inferred."""
    from test_pacs_dicom import _without_openjpeg

    from helpers import dicom_file

    orthanc, edged, collector = pacs
    j2k = dicom_file("RG1_J2KR.dcm")
    (plain,) = study(tmp_path, "plain", 1)
    studies = [orthanc.upload(j2k), orthanc.upload(plain)]  # one job: the J2K image first
    env = _without_openjpeg(tmp_path)
    cfg = {"node_id": "pacs-node", "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "model_repository": str(tiny_repo), "dicom": {"bind": "127.0.0.1", "port": orthanc.noj2k_port},
           "mqtt": {"host": "127.0.0.1", "port": orthanc.broker_port}, "models": [{"name": "chexnet-tiny"}],
           "power": {"control_socket": str(tmp_path / "control.sock")}}
    noj2k = DaemonProcess(write_config(tmp_path / "a.yaml", **cfg), tmp_path / "noj2k.log", env).start()
    base, errors = len(collector.results()), len(collector.events("error"))
    try:
        job = orthanc.rest("POST", "/modalities/noj2k/store", {"Resources": studies, "Asynchronous": True})
        assert orthanc.job(job["ID"])["State"] == "Success"
        collector.wait_for(lambda c: len(c.results()) == base + 1 and len(c.events("error")) == errors + 1, 60)
        assert collector.events("error")[-1]["reason"] == "no_decoder"
        noj2k.terminate()
        if not GDCM.exists():
            pytest.skip("Orthanc's GDCM plugin is not installed (Debian package orthanc-gdcm): no transcoding")
        shutil.rmtree(tmp_path / "state")
        cfg["dicom"]["accept_undecodable"] = False
        noj2k = DaemonProcess(write_config(tmp_path / "b.yaml", **cfg), tmp_path / "noj2k.log", env).start()
        job = orthanc.rest("POST", "/modalities/noj2k/store", {"Resources": studies, "Asynchronous": True})
        assert orthanc.job(job["ID"])["State"] == "Success"
        results_for(collector, base + 3)  # both images inferred, the J2K one transcoded by Orthanc
        syntaxes = sorted(r["source"]["transfer_syntax"] for r in collector.results()[base + 1:])
        assert syntaxes == ["Explicit VR Little Endian", "Explicit VR Little Endian"]
    finally:
        if noj2k.alive():
            noj2k.terminate()


def test_no_phi_left_the_device(pacs):
    """Last in the module: everything published and logged so far, searched for planted PHI."""
    orthanc, edged, collector = pacs
    wire = repr([p for _, p, _ in collector.messages]) + edged.log.read_text()
    for token in phi_tokens():
        assert token not in wire
