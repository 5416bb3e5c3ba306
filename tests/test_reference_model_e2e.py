"""The reference CheXNet end to end: the JPEG 2000 twin of the chest CR scores the same."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, dicom_file, storescu


def test_j2k_twin_gives_the_same_scores(chexnet_ready, daemon_factory, collector):
    d = daemon_factory(repo=chexnet_ready, model="chexnet").start()
    unc, j2k = dicom_file("RG1_UNCR.dcm"), dicom_file("RG1_J2KR.dcm")
    # DCMTK storescu cannot transcode JPEG 2000: with -xv it proposes J2K lossless, edged
    # accepts it (it has the decoder) and the file travels as is.
    sent = storescu(d.port, unc, j2k, extra=("-xv",))
    assert sent.returncode == 0, sent.stderr
    collector.wait_for(lambda c: len(c.results()) == 2, timeout=120)
    by_j2k = {"JPEG 2000" in r["source"]["transfer_syntax"]: r for r in collector.results()}
    a, b = by_j2k[False], by_j2k[True]
    assert a["study"] == b["study"] and a["instance"] != b["instance"]
    for label, score in a["scores"].items():
        assert abs(score - b["scores"][label]) < 1e-4, label
    spread = max(a["scores"].values()) - min(a["scores"].values())
    assert spread > 0.01, "scores must not be saturated or constant (the comparison would be vacuous)"
    assert a["model"]["name"] == "chexnet" and a["model"]["clinical"] is False
    assert d.terminate() == 0


def test_edged_demo_prints_a_result(chexnet_ready):
    run = subprocess.run([sys.executable, "-m", "edged", "demo"], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "status 0x0000" in run.stdout
    assert '"schema": "edged.result/v1"' in run.stdout
    assert "Cardiomegaly" in run.stdout and "clinical: false" in run.stdout


def test_dcmtk_compressed_twins_give_the_same_scores(daemon_factory, collector, tmp_path):
    """JPEG lossless (SV1), JPEG-LS lossless and RLE copies (new UIDs: +ua) made by DCMTK's own encoders, sent by
    storescu proposing those syntaxes, decode to the same tensor as the uncompressed original."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    original = tmp_path / "original.dcm"
    ds = dcmread(dicom_file("RG1_UNCR.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(original, enforce_file_format=True)
    twins = {}
    for tool, args, propose in (("dcmcjpeg", ("+e1",), "-xs"), ("dcmcjpls", ("+el",), "-xt"), ("dcmcrle", (), "-xr")):
        out = tmp_path / f"{tool}.dcm"
        subprocess.run([f"/usr/bin/{tool}", *args, "+ua", str(original), str(out)], check=True, capture_output=True)
        twins[tool] = (out, propose)
    d = daemon_factory().start()
    assert storescu(d.port, original).returncode == 0
    for out, propose in twins.values():
        sent = storescu(d.port, out, extra=(propose,))
        assert sent.returncode == 0, sent.stderr
    collector.wait_for(lambda c: len(c.results()) == 4)
    syntaxes = {r["source"]["transfer_syntax"] for r in collector.results()}
    assert len(syntaxes) == 4, syntaxes  # really four encodings on the wire
    scores = [r["scores"] for r in collector.results()]
    for other in scores[1:]:
        for label, value in scores[0].items():
            assert abs(value - other[label]) < 1e-5, label
    assert d.terminate() == 0
