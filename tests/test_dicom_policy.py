"""Association policy: a refused called AE title is logged and reported like a refused calling AE."""

from __future__ import annotations

from helpers import cr_variants, storescu


def test_wrong_called_ae_is_logged_and_reported(daemon_factory, collector, tmp_path):
    d = daemon_factory(dicom={"ae_title": "EDGED_WARD3"}).start()
    r = storescu(d.port, *cr_variants(tmp_path, 1), aet="CR_ROOM_1", aec="EDGED")
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr
    collector.wait_for(lambda c: len(c.events("rejected")) == 1)
    (event,) = collector.events("rejected")
    assert event["reason"] == "called_ae_not_recognized"
    assert event["calling_ae"] == "CR_ROOM_1" and event["peer"] == "127.0.0.1"
    assert "addressed to AE title EDGED; this node is EDGED_WARD3" in event["detail"]
    assert storescu(d.port, *cr_variants(tmp_path, 1), aec="EDGED_WARD3").returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert d.terminate() == 0
    log = d.log.read_text()
    assert "DICOM peer 127.0.0.1 (AE CR_ROOM_1) refused: called_ae_not_recognized: association addressed to AE title EDGED; " \
           "this node is EDGED_WARD3" in log


def test_any_called_ae_when_not_required(daemon_factory, collector, tmp_path):
    d = daemon_factory(dicom={"require_called_ae": False}).start()
    assert storescu(d.port, *cr_variants(tmp_path, 1), aec="ANYTHING").returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1)
    assert not collector.events("rejected")
    assert d.terminate() == 0
