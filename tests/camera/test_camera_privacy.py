"""Privacy of the camera path: credentials only from files and never in a log line, payload or
error; every camera message under its size cap, so no picture can leave."""

from __future__ import annotations

import subprocess
import sys

import pytest

from camkit import camera, wait_until
from edged.mqtt.messages import MAX_BYTES
from helpers import REPO, message_kind

pytestmark = pytest.mark.slow
PASSWORD = "Sw0rdfish-4711-camera"


def test_credentials_reach_the_camera_and_nothing_else(daemon_factory, collector, rtsp, camera_repo, tmp_path):
    (tmp_path / "cam.user").write_text("operator\n")
    (tmp_path / "cam.pass").write_text(PASSWORD + "\n")
    (tmp_path / "wrong.pass").write_text("Wr0ng-" + PASSWORD + "\n")
    server = rtsp(width=160, height=96, fps=10, user="operator", password_file=tmp_path / "cam.pass")
    d = daemon_factory(repo=camera_repo, models=[{"name": "chexnet-tiny"}, {"name": "detector-tiny"}],
                       cameras=[camera("gate", server.url(), ["detector-tiny"], fps=5, latency_ms=50,
                                       username_file=str(tmp_path / "cam.user"), password_file=str(tmp_path / "cam.pass")),
                                camera("side", server.url(), ["detector-tiny"], fps=5, latency_ms=50,
                                       username_file=str(tmp_path / "cam.user"),
                                       password_file=str(tmp_path / "wrong.pass"), backoff={"initial_s": 0.5})],
                       capture={"state_interval_s": 1}, log_level="debug").start()
    wait_until(lambda: collector.of("cameras/gate/detections/detector-tiny"), 30, "the camera with credentials")
    refused = wait_until(lambda: [e for e in collector.events("camera") if e.get("camera") == "side"], 30,
                         "the camera with a wrong password reported")
    assert refused[0]["reason"] == "offline" and "Unauthorized" in refused[0]["detail"]
    assert d.terminate() == 0

    log = d.log.read_text()
    assert PASSWORD not in log and "operator" not in log
    for topic, payload, _ in collector.messages:
        assert PASSWORD not in str(payload) and "operator" not in str(payload), topic
        assert "127.0.0.1" not in str(payload) or "/status" in topic, f"a camera address in {topic}"
    caps = {"detections": "detections", "camera_state": "camera_state", "camera_availability": "availability",
            "event": "event"}
    for topic, size in collector.sizes:
        cap = caps.get(message_kind(topic))
        assert cap is None or size <= MAX_BYTES[cap], (topic, size)


def test_inline_credentials_are_refused_without_being_repeated(tmp_path):
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"models: [{{name: detector}}]\ncameras:\n  - name: c1\n    uri: rtsp://admin:{PASSWORD}@10.1.2.3/s1\n"
                   "    models: [detector]\n")
    r = subprocess.run([sys.executable, "-m", "edged", "check", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2
    assert f"{cfg}:4: cameras[0].uri" in r.stderr and "username_file" in r.stderr
    assert PASSWORD not in r.stderr + r.stdout
