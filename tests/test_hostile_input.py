"""Hostile and broken datasets (issue #8): no PHI out, an outcome for every acknowledged image,
PS3.4 statuses. Each test here failed on the code before the fix it names."""

from __future__ import annotations

import json
import time

import pytest

from helpers import PHI, patch_element, phi_tokens, send_file, small_cr

CODED = {  # element, its tag, what follows it in a small CR (and so gets swallowed)
    "Modality": (0x0008, 0x0060),
    "BodyPartExamined": (0x0018, 0x0015),
    "ViewPosition": (0x0018, 0x5101),
    "PhotometricInterpretation": (0x0028, 0x0004),
}


def leaks(collector, log_text: str, tokens: list[str]) -> list[str]:
    published = json.dumps([p for _, p, _ in collector.messages])
    return [t for t in tokens if t in published or t in log_text]


def test_a_corrupted_coded_length_swallowing_phi_leaks_nothing(daemon_factory, collector, tmp_path):
    """Defect 1: a coded element whose length swallows the following ones (patient name, ID,
    birth date, UIDs) was published uppercased in a skipped event's detail and in ``source``."""
    from pydicom import dcmread

    d = daemon_factory().start()
    uids: list[str] = []
    acknowledged = 0
    for keyword, tag in sorted(CODED.items()):
        for length in (0x40, 0x400):
            path = small_cr(tmp_path / f"{keyword}-{length}.dcm")
            ds = dcmread(path)
            uids += [str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)]
            status = send_file(d.port, patch_element(path, tag, length=length))
            assert status in (0x0000, 0xC000), (keyword, length, hex(status or -1))
            acknowledged += status == 0x0000
    # every acknowledged one ends with an outcome; every refused one with a rejected event
    collector.wait_for(lambda c: len(c.results()) + len(c.events("skipped")) + len(c.events("error")) == acknowledged
                       and len(c.events("rejected")) == 8 - acknowledged)
    assert d.terminate() == 0
    assert not leaks(collector, d.log.read_text(), phi_tokens(*uids))
    for payload in [p for _, p, _ in collector.messages if "source" in p]:
        for field in ("modality", "body_part", "view_position", "photometric"):
            value = payload["source"].get(field)
            assert value is None or len(value) <= 16, value


@pytest.mark.parametrize("case,patch", [
    ("BitsStored of 3 bytes (BytesLengthException)", dict(tag=(0x0028, 0x0101), length=3, pad=b"\0")),
    ("WindowCenter with an unknown VR", dict(tag=(0x0028, 0x1050), vr=b"XX")),
])
def test_acknowledged_images_pydicom_cannot_read_end_in_an_error_event(daemon_factory, collector, tmp_path,
                                                                      case, patch):
    """Defect 3: after 0x0000 an unexpected pydicom exception was logged and retried every 30 s
    and at every restart, forever, with no event. Now: an ``error`` event, the file in quarantine,
    and a restart does not resurrect it."""
    path = patch_element(small_cr(tmp_path / "cr.dcm"), **patch)
    d = daemon_factory().start()
    assert send_file(d.port, path) == 0x0000
    collector.wait_for(lambda c: len(c.events("error")) == 1, timeout=30)
    (event,) = collector.events("error")
    assert event["reason"] == "decode_failed" and event["instance"]
    spool = tmp_path / "state" / "spool"
    assert not list(spool.glob("*.dcm")) and [p.stem for p in (spool / "quarantine").glob("*.dcm")] == [event["instance"]]
    assert d.terminate() == 0
    d.start()
    time.sleep(2)
    assert d.terminate() == 0
    assert len(collector.events("error")) == 1, "a restart resurrected a failed image"
    assert not leaks(collector, d.log.read_text(), phi_tokens())


@pytest.mark.parametrize("what,patch", [
    ("NumberOfFrames is not a number", dict(tag=(0x0028, 0x0008), value=b"x9")),
    ("Rows of 3 bytes", dict(tag=(0x0028, 0x0010), length=3, pad=b"\0")),
])
def test_headers_pydicom_cannot_read_are_cannot_understand(daemon_factory, collector, tmp_path, what, patch):
    """Defect 8: unparseable headers and a garbage NumberOfFrames got 0xA700 (out of resources,
    which invites endless retries) instead of 0xC000."""
    path = patch_element(small_cr(tmp_path / "cr.dcm", NumberOfFrames=1), **patch)
    d = daemon_factory().start()
    assert send_file(d.port, path) == 0xC000
    collector.wait_for(lambda c: len(c.events("rejected")) == 1)
    assert collector.events("rejected")[0]["status"] == 0xC000
    assert send_file(d.port, small_cr(tmp_path / "good.dcm")) == 0x0000  # and it keeps serving
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0


def test_planted_phi_of_good_images_stays_on_the_device(daemon_factory, collector, tmp_path):
    path = small_cr(tmp_path / "cr.dcm")
    d = daemon_factory().start()
    assert send_file(d.port, path) == 0x0000
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0
    from pydicom import dcmread

    ds = dcmread(path)
    assert not leaks(collector, d.log.read_text(), phi_tokens(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
    assert set(PHI)  # the planted values are in the file
