"""What a PACS or router in front of edged runs into: idle associations, a device without a
JPEG 2000 decoder, and which room an image came from when a router forwards it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from edged.sources.dicom.idle import problems
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from helpers import dicom_file, phi_tokens, send_file, small_cr, storescu

pytestmark = pytest.mark.slow

# Stands in for a venv without pylibjpeg-openjpeg: pylibjpeg's entry points still resolve (they
# come from the installed distribution's metadata), but pydicom needs openjpeg >= 2.0 and so
# reports no JPEG 2000 decoder, exactly as on a device where the wheel is missing.
NO_OPENJPEG = '''__version__ = "0.0.0"


def _absent(*args, **kwargs):
    raise RuntimeError("no JPEG 2000 decoder on this device")


decode = decode_pixel_data = encode_pixel_data = _absent
'''


# Pillow (here because the test extra's matplotlib needs it; edged does not) also decodes JPEG 2000
# through pydicom when its wheel carries openjpeg: absent on the device, so absent here too.
NO_PILLOW = 'raise ImportError("no Pillow on this device")\n'


def _without_openjpeg(tmp_path: Path) -> dict[str, str]:
    """The daemon's environment on a device whose venv lacks pylibjpeg-openjpeg (the JPEG 2000
    decoder) and Pillow (which edged does not install)."""
    for name, text in (("openjpeg", NO_OPENJPEG), ("PIL", NO_PILLOW)):
        shadow = tmp_path / "no-openjpeg" / name
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(text)
    env = {"PYTHONPATH": str(shadow.parent)}
    probe = subprocess.run([sys.executable, "-c", "from pydicom.pixels import get_decoder; from pydicom.uid import "
                            "JPEG2000Lossless as u; print(get_decoder(u).is_available)"],
                           env={**__import__("os").environ, **env}, capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr
    return env


def test_idle_rule_defaults_and_warnings():
    assert problems(90) == []  # the default covers Orthanc (5 s) and 60 s routers with 10 s to spare
    assert "Orthanc" in problems(12)[0]
    assert "routers" in problems(30)[0]


def test_an_idle_association_is_closed_with_a_warning_that_names_the_rule(tmp_path, daemon_factory, collector):
    """A sender whose close delay exceeds edged's idle timeout meets a closed association; the
    warning says which setting to compare. Within the timeout, the association is reused."""
    d = daemon_factory(dicom={"network_timeout_s": 2}).start()
    ae = AE(ae_title="ROUTER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", d.port, ae_title="EDGED")
    assert assoc.is_established
    assert assoc.send_c_store(small_cr(tmp_path / "a.dcm", 32, 32)).Status == 0
    time.sleep(1.0)  # shorter than the idle timeout: reused
    assert assoc.send_c_store(small_cr(tmp_path / "b.dcm", 32, 32)).Status == 0
    time.sleep(3.5)  # longer: edged has closed it
    assert not assoc.is_established
    log = d.log.read_text()
    assert "association from ROUTER closed after 2 s without a request (dicom.network_timeout_s)" in log
    assert "dicom.network_timeout_s is 2 s" in log  # said at start, too
    collector.wait_for(lambda c: len(c.results()) == 2, 30)


def test_a_device_without_a_j2k_decoder_accepts_and_reports_no_decoder(tmp_path, daemon_factory, collector):
    """A router's study must not fail on one JPEG 2000 image: it is acknowledged, reported as
    error/no_decoder and quarantined, and the rest of the study is inferred. With
    accept_undecodable: false the context is refused instead, so a transcoding router converts."""
    env = _without_openjpeg(tmp_path)
    d = daemon_factory(env=env).start()
    j2k, plain = dicom_file("RG1_J2KR.dcm"), small_cr(tmp_path / "plain.dcm", 64, 64)
    assert send_file(d.port, j2k, aet="PACS") == 0x0000  # a router sends the file as it has it
    assert storescu(d.port, plain, aet="PACS").returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 1 and len(c.events("error")) == 1, 60)
    (event,) = collector.events("error")
    assert event["reason"] == "no_decoder" and "JPEG 2000" in event["detail"]
    assert event["source"]["transfer_syntax"].startswith("JPEG 2000")
    assert len(list((tmp_path / "state" / "spool" / "quarantine").glob("*"))) == 1
    assert not collector.events("rejected")
    d.terminate()

    d2 = daemon_factory(env=env, dicom={"accept_undecodable": False}).start()
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", [JPEG2000Lossless])
    assoc = ae.associate("127.0.0.1", d2.port, ae_title="EDGED")
    assert assoc.is_established
    assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == ["1.2.840.10008.5.1.4.1.1.1"]
    assoc.release()  # refused: a transcoding router (Orthanc with the GDCM plugin) converts instead
    collector.wait_for(lambda c: len(c.events("rejected")) == 1, 30)
    assert collector.events("rejected")[0]["reason"] == "presentation_context"


def test_the_originating_modality_is_visible_through_a_router(tmp_path, daemon_factory, collector):
    """calling_ae is the router; origin_ae names the room from Station AE Title (or Performed
    Station AE Title), checked as an AE title — a value that breaks the VR is 'invalid'."""
    d = daemon_factory().start()
    files = [small_cr(tmp_path / "a.dcm", 32, 32, StationAETitle="CR_ROOM_3"),
             small_cr(tmp_path / "b.dcm", 32, 32, PerformedStationAETitle="DX_ER_1"),
             small_cr(tmp_path / "c.dcm", 32, 32, StationAETitle="X" * 40),
             small_cr(tmp_path / "d.dcm", 32, 32)]
    assert storescu(d.port, *files, aet="ROUTER").returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 4, 60)
    origins = sorted(str(r["source"].get("origin_ae")) for r in collector.results())
    assert origins == ["CR_ROOM_3", "DX_ER_1", "None", "invalid"]
    assert {r["source"]["calling_ae"] for r in collector.results()} == {"ROUTER"}
    log = d.log.read_text()
    for token in phi_tokens():
        assert token not in log


def test_pacs_settings_fail_fast_with_file_line_and_key(tmp_path):
    from edged.config.loader import load_config
    from edged.config.yamlsrc import ConfigError

    bad_pem = tmp_path / "ca.pem"
    bad_pem.write_text("not a certificate\n")
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""dicom:
  storage_commitment:
    peers:
      - {{ae_title: ORTHANC, host: 10.0.0.5, port: 4242}}
      - {{ae_title: ORTHANC, host: 10.0.0.6, port: 4242}}
  sr_destination:
    ae_title: "A\\\\B"
    host: 10.0.0.5
    port: 4242
    tls: {{ca_file: {bad_pem}}}
models:
  - name: chexnet
    sr: true
""")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = "\n".join(err.value.problems)
    assert "edged.yaml:3: dicom.storage_commitment.peers: Value error, AE title listed twice: ORTHANC" in text
    assert "dicom.sr_destination.ae_title" in text and "backslash" in text
    assert "dicom.sr_destination.tls" in text and "do not load" in text
    ok = tmp_path / "ok.yaml"
    ok.write_text("models:\n  - name: chexnet\n    sr: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(ok)
    assert "sr: true but dicom.sr_destination is not set" in "\n".join(err.value.problems)


def test_edged_check_warns_about_an_idle_timeout_that_cuts_a_senders_close_delay(tmp_path, tiny_repo):
    from helpers import REPO, write_config

    cfg = write_config(tmp_path / "edged.yaml", node_id="n", state_dir=str(tmp_path / "state"),
                       cache_dir=str(tmp_path / "cache"), model_repository=str(tiny_repo),
                       models=[{"name": "chexnet-tiny"}], mqtt={"enabled": False},
                       dicom={"network_timeout_s": 30}, power={"control_socket": str(tmp_path / "ctl.sock")})
    run = subprocess.run([sys.executable, "-m", "edged", "check", "-c", str(cfg)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr  # a warning, not an error: a site without such senders may want it
    assert "warning: dicom.network_timeout_s is 30 s" in run.stderr and "routers" in run.stderr
