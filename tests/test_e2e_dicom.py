"""storescu → edged (a real process) → mosquitto: results, skips, duplicates, allow-lists."""

from __future__ import annotations

import re
import subprocess
import sys

from pydicom import dcmread

from helpers import ECHOSCU, dicom_file, storescu

UID_LIKE = re.compile(r"\b\d+(\.\d+){3,}\b")


def assert_phi_free(payload: dict, *sources) -> None:
    """No name, ID, birth date, accession number or UID of the sent files appears anywhere."""
    text = repr(payload)
    assert not UID_LIKE.search(text), f"UID-like string in {text}"
    for src in sources:
        ds = dcmread(src, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                   "SeriesInstanceUID", "SOPInstanceUID", "StudyID", "InstitutionName", "StudyDate"):
            value = str(ds.get(kw, "") or "").strip()
            if len(value) >= 4:
                assert value not in text, f"{kw} leaked"


def test_chest_cr_result_reaches_mosquitto_sub(daemon_factory, broker):
    d = daemon_factory().start()
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-C", "1", "-W", "60", "-t",
                            "edged/v1/test-node/results/#"], stdout=subprocess.PIPE, text=True)
    import time
    time.sleep(0.5)
    cr = dicom_file("RG1_UNCR.dcm")
    sent = storescu(d.port, cr)
    assert sent.returncode == 0, sent.stderr
    out, _ = sub.communicate(timeout=90)
    import json
    result = json.loads(out)
    assert result["schema"] == "edged.result/v1"
    assert result["clinical"] is False and result["model"]["clinical"] is False
    assert set(result["scores"]) == {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                     "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
                                     "Fibrosis", "Pleural_Thickening", "Hernia"}
    assert result["source"]["modality"] == "CR" and result["source"]["view_position"] == "PA"
    assert result["source"]["photometric"] == "MONOCHROME1"
    assert_phi_free(result, cr)
    assert d.terminate() == 0


def test_echo_skips_and_duplicates(daemon_factory, collector):
    d = daemon_factory().start()
    echo = subprocess.run([ECHOSCU, "-aet", "MODALITY", "-aec", "EDGED", "127.0.0.1", str(d.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    ext, ct, cr = dicom_file("RG3_UNCR.dcm"), dicom_file("CT_small.dcm"), dicom_file("RG1_UNCR.dcm")
    for f in (ext, ct, cr, cr):
        r = storescu(d.port, f)
        assert r.returncode == 0, r.stderr
    collector.wait_for(lambda c: len(c.results()) >= 1 and len(c.events("skipped")) >= 2
                       and len(c.events("duplicate")) >= 1)
    skipped = {e["reason"]: e for e in collector.events("skipped")}
    assert "body_part" in skipped and "sop_class" in skipped, skipped
    assert "EXTREMITY" in skipped["body_part"]["detail"]
    for e in collector.events():
        assert_phi_free(e, ext, ct, cr)
    assert len(collector.results()) == 1  # the same instance twice: inferred once
    assert d.terminate() == 0


def test_two_models_each_publish_one_result_per_image(daemon_factory, collector, tmp_path):
    """Two models accept chest CRs (different weights and resize): each image yields one result
    per model on its own topic, and leaves the spool only after both. A manifest that does not
    match its network is refused at start with one clear error."""
    import yaml

    from edged.models.synth import write_model
    from helpers import cr_variants

    repo = tmp_path / "engines"
    write_model("tiny", repo / "chexnet-tiny")
    write_model("tiny", repo / "second", seed=1)
    manifest = yaml.safe_load((repo / "second" / "model.yaml").read_text())
    manifest["name"] = "second"
    manifest.setdefault("preprocess", {})["resize"] = "linear"  # its own preprocessing
    (repo / "second" / "model.yaml").write_text(yaml.safe_dump(manifest))
    wrong = dict(manifest, name="wrong", input=dict(manifest["input"], height=96, width=96))
    write_model("tiny", repo / "wrong", seed=1, manifest=False)
    (repo / "wrong" / "model.yaml").write_text(yaml.safe_dump(wrong))
    bad = daemon_factory(repo=repo, models=[{"name": "wrong"}])
    bad_run = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(bad.config)], capture_output=True,
                             text=True, timeout=120)
    assert bad_run.returncode == 2  # nothing to serve: a configuration to fix, not a crash to restart
    assert "model wrong: the network's input is (-1, 3, 64, 64) but the manifest says NCHW (3, 96, 96)" in bad_run.stderr
    d = daemon_factory(repo=repo, models=[{"name": "chexnet-tiny"}, {"name": "second"}]).start()
    assert storescu(d.port, *cr_variants(tmp_path, 2)).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 4)
    by_model = {}
    for t, p, _ in collector.messages:
        if "/results/" in t:
            by_model.setdefault(t.rsplit("/", 1)[1], set()).add(p["instance"])
    assert by_model == {"chexnet-tiny": by_model["second"], "second": by_model["chexnet-tiny"]}
    assert len(by_model["second"]) == 2
    assert d.terminate() == 0
    assert not list((tmp_path / "state" / "spool").glob("*.dcm"))
