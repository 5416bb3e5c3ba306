"""The camera path's parts on their own: pipeline descriptions (the only thing that differs on a
Jetson: CSI, V4L2 and hardware decode run only there), config validation, backoff, detection
decoding, letterbox, tracking, ROI, payload caps, and the capture helper under Python 3.6."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.config.loader import ConfigError, load_config
from edged.models.manifest import OutputSpec
from edged.mqtt import messages
from edged.postprocess.decode import decode_one
from edged.postprocess.detection import nms
from edged.preprocess.frames import prepare_frame
from edged.preprocess.geometry import letterbox
from edged.sources.camera import helper
from edged.sources.camera.capture import backoff_delay
from edged.sources.camera.config import CameraConfig
from edged.sources.camera.pipelines import delivery_rate, describe, loops
from edged.sources.camera.sink import inside
from edged.sources.camera.tracker import Tracker
from helpers import REPO

JETSON = {"nvv4l2decoder": True, "nvvidconv": True}


def cam(uri: str, **kw) -> CameraConfig:
    return CameraConfig(name="c", uri=uri, models=["m"], **{"fps": 5, "width": 640, "height": 360, **kw})


def test_pipeline_descriptions_per_scheme():
    tail = "videorate drop-only=true max-rate=10 ! videoconvert ! videoscale add-borders=false ! " \
           "video/x-raw,format=RGB,width=640,height=360,pixel-aspect-ratio=1/1"
    assert describe(cam("rtsp://10.0.0.7:554/s1"), {}) == (
        'rtspsrc name=src location="rtsp://10.0.0.7:554/s1" latency=200 protocols=tcp ! rtph264depay ! h264parse '
        f"! avdec_h264 ! {tail}")
    assert describe(cam("rtsp://10.0.0.7/s1", codec="h265"), JETSON) == (
        'rtspsrc name=src location="rtsp://10.0.0.7/s1" latency=200 protocols=tcp ! rtph265depay ! h265parse '
        f"! nvv4l2decoder enable-max-performance=1 ! nvvidconv ! video/x-raw,format=BGRx ! {tail}")
    assert "avdec_h264" in describe(cam("rtsp://h/s"), JETSON, decoder="software")
    assert describe(cam("csi://1", flip=2, source_fps=30), JETSON) == (
        "nvarguscamerasrc name=src sensor-id=1 ! video/x-raw(memory:NVMM),width=640,height=360,framerate=30/1,"
        f"format=NV12 ! nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! {tail}")
    assert describe(cam("v4l2:///dev/video2")) == \
        f"v4l2src name=src device=/dev/video2 ! video/x-raw,framerate=30/1 ! {tail}"
    assert describe(cam("v4l2:///dev/video0?format=mjpeg")) == \
        f"v4l2src name=src device=/dev/video0 ! image/jpeg,framerate=30/1 ! jpegdec ! {tail}"
    still = describe(cam("file:///data/door.png?loop=1"))
    assert still.startswith('filesrc name=src location="/data/door.png" ! decodebin ! imagefreeze is-live=true')
    assert still.endswith("framerate=10/1")
    assert describe(cam("file:///data/clip.mp4")).startswith(
        'filesrc name=src location="/data/clip.mp4" ! decodebin ! identity sync=true ! videorate')
    assert loops(cam("file:///data/clip.mp4?loop=1")) and not loops(cam("file:///data/clip.mp4"))
    assert describe(cam("test://ball", width=None, height=None)).startswith(
        "videotestsrc name=src is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1")
    assert delivery_rate(cam("test://ball", fps=0.5)) == 1


def test_the_test_pattern_pipeline_runs_in_the_helper():
    """The description really parses and produces RGB frames of the configured size (system Python)."""
    desc = describe(cam("test://ball", width=96, height=64, fps=10), {})
    out = _helper({"description": desc, "stall_timeout_s": 2}, frames=2)
    kinds = [k for k, *_ in out]
    assert kinds[0] == helper.KIND_INFO and kinds.count(helper.KIND_FRAME) == 2
    _, _, width, height, stride, size = out[1]
    assert (width, height) == (96, 64) and stride >= 96 * 3 and size == stride * 64


def _helper(cfg: dict, frames: int) -> list[tuple]:
    proc = subprocess.Popen(["/usr/bin/python3", str(Path(helper.__file__))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    proc.stdin.write((json.dumps(cfg) + "\n").encode())
    proc.stdin.close()
    records = []
    try:
        while sum(1 for r in records if r[0] == helper.KIND_FRAME) < frames:
            head = proc.stdout.read(helper.HEADER.size)
            if len(head) < helper.HEADER.size:
                break
            magic, version, kind, _, seq, pts, captured, width, height, stride, size = helper.HEADER.unpack(head)
            assert magic == helper.MAGIC and version == helper.VERSION
            proc.stdout.read(size)
            records.append((kind, seq, width, height, stride, size))
    finally:
        proc.terminate()
        proc.stdout.read()
        proc.wait(10)
    return records


@pytest.mark.parametrize("desc,code", [("videotestsrc num-buffers=3 is-live=true ! video/x-raw,width=32,height=32 "
                                        "! videoconvert ! video/x-raw,format=RGB", helper.EXIT_EOS),
                                       ("nosuchelement ! videoconvert", helper.EXIT_SETUP),
                                       ('rtspsrc location="rtsp://127.0.0.1:9/x" ! rtph264depay ! avdec_h264 '
                                        "! videoconvert ! video/x-raw,format=RGB", helper.EXIT_ERROR)],
                         ids=["end_of_stream", "bad_description", "connection_refused"])
def test_helper_exit_codes_say_why_it_ended(desc, code):
    r = subprocess.run(["/usr/bin/python3", str(Path(helper.__file__))], input=json.dumps(
        {"description": desc, "stall_timeout_s": 3}).encode() + b"\n", capture_output=True, timeout=30)
    assert r.returncode == code, (r.returncode, r.stderr[-500:])


def test_helper_keeps_to_python_36_and_probes():
    py36 = next(iter(sorted((Path.home() / ".pyenv/versions").glob("3.6.*/bin/python"))), None)
    if py36 is None:
        pytest.skip("no Python 3.6 here (tools/setup-compat-pythons.sh prepares it in CI)")
    r = subprocess.run([str(py36), "-c", f"import ast, sys; compile(open({str(helper.__file__)!r}).read(), 'h', 'exec')"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(py36), str(Path(helper.__file__)), "--probe"], capture_output=True, text=True)
    probe = json.loads(r.stdout)  # no gi for pyenv's 3.6: the probe says so instead of crashing
    assert probe["python"].startswith("3.6") and (probe.get("error") or probe["gstreamer"])
    r = subprocess.run(["/usr/bin/python3", str(Path(helper.__file__)), "--probe"], capture_output=True, text=True)
    assert json.loads(r.stdout)["elements"]["rtspsrc"] is True


def test_config_errors_name_file_line_and_key(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""models: [{{name: detector}}]
cameras:
  - name: ok-cam
    uri: test://ball
    models: [detector]
  - name: bad name
    uri: ftp://x
    models: [detector]
  - name: c3
    uri: test://ball
    models: [missing]
    roi: [[0, 0], [2, 0], [1, 1]]
  - name: c4
    uri: test://ball
    models: [detector]
    password_file: {secret}
""")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = "\n".join(err.value.problems)
    assert f"{cfg}:6: cameras[1].name" in text and f"{cfg}:7: cameras[1].uri" in text
    assert f"{cfg}:12: cameras[2].roi" in text and f"{cfg}:13: cameras[3]: Value error, username_file" in text
    ok = tmp_path / "ok.yaml"
    ok.write_text("models: [{name: detector}]\ncameras: [{name: c, uri: test://ball, models: [other]}]\n")
    with pytest.raises(ConfigError, match="model.s. other not in models"):
        load_config(ok)


def test_backoff_doubles_to_its_cap_with_bounded_jitter():
    rng = random.Random(1)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)):
        values = [backoff_delay(attempt, 1.0, 10.0, 0.2, rng) for _ in range(200)]
        assert base * 0.8 <= min(values) and max(values) <= base * 1.2
        assert max(values) - min(values) > base * 0.2  # really jittered
    assert backoff_delay(3, 1.0, 10.0, 0.0, rng) == 4.0


def test_letterbox_round_trip_and_frame_tensor():
    geo = letterbox(640, 360, 640, 384)
    assert (geo.pad_x, geo.pad_y, geo.inner_w, geo.inner_h) == (0, 12, 640, 360)
    assert geo.to_frame(320, 12 + 180) == (0.5, 0.5)
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[..., 0] = 255
    from edged.models.manifest import InputSpec, PreprocessSpec

    spec = InputSpec(name="x", height=384, width=640)
    tensor, timings = prepare_frame(frame, spec, PreprocessSpec(keep_aspect=True, pixel_range=255, mean=(0.0,),
                                                                 std=(1.0,), color="bgr"))
    assert tensor.shape == (3, 384, 640) and timings["decode_ms"] == 0.0
    assert tensor[2, 100, 100] == 255 and tensor[0, 100, 100] == 0  # bgr: red is the last channel
    assert tensor[:, :12].max() == 0 and tensor[:, -12:].max() == 0  # black bands
    tensor, _ = prepare_frame(frame, spec, PreprocessSpec(keep_aspect=True))  # ImageNet normalization
    assert np.isclose(tensor[0, 100, 100], (1.0 - 0.485) / 0.229, atol=1e-5)


def _centernet_spec(**kw) -> OutputSpec:
    return OutputSpec(name="faces", decode="centernet", tensors=("hm", "scale", "off"), labels=("face",), stride=4, **kw)


def test_centernet_decoding_maps_boxes_back_to_the_frame():
    hm, scale, off = np.zeros((1, 1, 96, 160), np.float32), np.zeros((1, 2, 96, 160), np.float32), \
        np.zeros((1, 2, 96, 160), np.float32)
    hm[0, 0, 50, 80] = 0.9  # centre at input (80.5*4, 50.5*4) = (322, 202)
    scale[0, :, 50, 80] = np.log(40 / 4)  # 40x40 input pixels
    hm[0, 0, 51, 80] = 0.6  # a weaker neighbour, suppressed by NMS
    scale[0, :, 51, 80] = np.log(40 / 4)
    geo = letterbox(640, 360, 640, 384)
    out = decode_one((_centernet_spec(),), {"hm": hm[0], "scale": scale[0], "off": off[0]}, geo)["faces"]
    assert len(out) == 1 and out[0]["score"] == 0.9
    x0, y0, x1, y1 = out[0]["box"]
    assert np.allclose([x0 * 640, y0 * 360, x1 * 640, y1 * 360], [302, 170, 342, 210], atol=0.1)


def test_yolo_decoding_has_per_class_nms_and_a_threshold():
    spec = OutputSpec(name="objects", decode="yolo", tensors=("out",), labels=("person", "car"), score_threshold=0.5,
                      nms_iou=0.5)
    out = np.zeros((6, 4), np.float32)
    out[:4, 0] = [100, 100, 40, 40]  # person 0.9
    out[:4, 1] = [102, 100, 40, 40]  # person 0.8, overlaps the first: suppressed
    out[:4, 2] = [101, 100, 40, 40]  # car 0.7, overlaps too but another class: kept
    out[:4, 3] = [300, 300, 40, 40]  # person 0.4: below the threshold
    out[4, :] = [0.9, 0.8, 0.1, 0.4]
    out[5, :] = [0.1, 0.1, 0.7, 0.1]
    dets = decode_one((spec,), {"out": out}, letterbox(640, 640, 640, 640))["objects"]
    assert [(d["label"], d["score"]) for d in dets] == [("person", 0.9), ("car", 0.7)]
    assert np.allclose(dets[0]["box"], [80 / 640, 80 / 640, 120 / 640, 120 / 640])
    assert list(nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5)) == []


def test_detection_keys_belong_to_detection_decoders():
    with pytest.raises(ValueError, match="only apply to detection decoders"):
        OutputSpec(name="x", decode="sigmoid", labels=("a",), score_threshold=0.3)
    with pytest.raises(ValueError, match="centernet reads tensors"):
        OutputSpec(name="x", decode="centernet", tensors=("a", "b"), labels=("face",))
    with pytest.raises(ValueError, match="yolo needs one label"):
        OutputSpec(name="x", decode="yolo", tensors=("a",))


def test_tracker_announces_confirmed_objects_once_and_ends_them():
    t = Tracker(timeout_s=1.0, update_s=2.0, min_frames=2)
    det = lambda x: {"label": "person", "score": 0.8, "box": [x, 0.1, x + 0.2, 0.5]}  # noqa: E731
    assert t.update([det(0.1)], 0.0) == []  # one frame: a candidate only
    ((kind, obj),) = t.update([d := det(0.12)], 0.5)
    assert kind == "new" and d["object"] == obj.id
    assert t.update([det(0.17)], 1.0) == []  # moving, but not yet update_s since the report
    assert t.update([det(0.2)], 1.8) == []
    assert t.update([det(0.24)], 2.6) == [("update", obj)]  # update_s later and moved > 0.1
    assert t.update([det(0.25)], 3.4) == []  # no news: no update
    assert [(k, o.id) for k, o in t.expire(10.0)] == [("end", obj.id)]
    assert t.update([det(0.7)], 11.0) == [] and t.expire(20.0) == []  # unconfirmed: no end either


def test_roi_polygon():
    triangle = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    assert inside(triangle, 0.2, 0.2) and not inside(triangle, 0.8, 0.8) and inside(None, 0.9, 0.9)


def test_no_valid_camera_payload_comes_near_a_picture():
    """The largest payload the detections schema allows stays under its cap; a larger one is refused."""
    model = {"name": "m" * 64, "version": "v" * 32, "sha256": "f" * 64, "backend": "onnxruntime", "precision": "fp32",
             "device": "cpu", "clinical": False}
    det = {"label": "L" * 64, "score": 0.123456789, "box": [0.123456789] * 4, "object": "a" * 32}
    payload = {"schema": "edged.detections/v1", "node": "n" * 64, "camera": "c" * 48,
               "time": "2026-11-29T20:30:40.094Z", "clinical": False, "model": model,
               "frame": {"seq": 2 ** 63, "captured": "2026-11-29T20:30:40.094Z", "width": 8192, "height": 8192,
                         "age_ms": 123456.7},
               "detections": [det] * 100, "timings_ms": {"preprocess": 1.123, "queue": 1.123, "inference": 1.123,
                                                         "batch_size": 8, "age_at_inference": 1234.5}}
    from helpers import schema_validator

    schema_validator("detections").validate(payload)
    assert len(messages.encode_capped("detections", payload)) <= messages.MAX_BYTES["detections"]
    with pytest.raises(messages.PayloadTooLarge):
        messages.encode_capped("detections", {**payload, "detections": [det] * 200})
    assert messages.MAX_BYTES["detections"] < 32_000  # smaller than any useful picture


def test_the_example_pipeline_strings_carry_no_secret(tmp_path):
    user, pw = tmp_path / "u", tmp_path / "p"
    user.write_text("admin")
    pw.write_text("hunter2")
    c = cam("rtsp://10.0.0.7/s1", username_file=user, password_file=pw)
    assert "hunter2" not in describe(c) and "admin" not in describe(c)


def test_selftest_lists_the_cameras_it_can_open(tmp_path, pictures):
    """A test pattern and a picture open; a V4L2 device and a CSI sensor do not exist here."""
    from edged.sources.camera.check import camera_rows

    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""models: [{{name: detector}}]
cameras:
  - {{name: pattern, uri: "test://ball", models: [detector], width: 160, height: 90}}
  - {{name: picture, uri: "file://{pictures}/coffee.png", models: [detector]}}
  - {{name: usb0, uri: "v4l2:///dev/video9", models: [detector]}}
  - {{name: csi0, uri: "csi://0", models: [detector]}}
""")
    rows = camera_rows(load_config(cfg))
    table = {r["target"]: r["status"] for r in rows}
    assert table == {"capture helper": "PASS", "pattern": "PASS", "picture": "PASS", "usb0": "FAIL",
                     "csi0": "FAIL"}, rows
    notes = {r["target"]: r["note"] for r in rows}
    assert "nvarguscamerasrc no" in notes["capture helper"] and "rtspsrc yes" in notes["capture helper"]
    assert "160x90" in notes["pattern"] and "600x400" in notes["picture"] and "nvarguscamerasrc" in notes["csi0"]


def test_check_refuses_a_camera_naming_a_dicom_model(tmp_path):
    cfg = tmp_path / "edged.yaml"
    cfg.write_text("models: [{name: chexnet}]\ncameras: [{name: c, uri: 'test://ball', models: [chexnet]}]\n")
    r = subprocess.run([sys.executable, "-m", "edged", "check", "-c", str(cfg)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 2 and "cameras: c names model chexnet, whose manifest serves dicom only" in r.stderr


def test_log_redaction_removes_credentials_in_urls():
    from edged.service.redact import redact_phi

    text = redact_phi("camera error: rtsp://admin:S3cret!x@10.0.0.7:554/s1 refused; see http://host/x")
    assert "S3cret" not in text and "admin" not in text and "rtsp://[redacted]@10.0.0.7:554/s1" in text
    assert "http://host/x" in text
