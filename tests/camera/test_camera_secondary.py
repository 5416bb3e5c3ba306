"""Secondary classifiers (detect → crop → classify) on one daemon with the real RTSP test camera
serving a picture of two faces, a looped picture of 16 faces, real CenterFace, the seeded crop
classifier and a real slow classifier (DenseNet-121 on 224×224 crops, one thread, one-crop queue):

* every face CenterFace finds at least ``min_box_px`` large gets exactly one result per configured
  classifier; the small face gets none (counted ``too_small``);
* object events carry each classifier's mean scores and the number of crops they rest on;
* the slow classifier drops crops (counted ``secondary``) while the detector keeps the camera's
  rate, the frame's message waits no longer than ``secondary_wait_ms``, and a DICOM image sent
  meanwhile gets its result.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from camkit import camera, wait_until
from edged.localbroker import free_port
from edged.mqtt.messages import MAX_BYTES
from helpers import cr_variants, storescu

pytestmark = pytest.mark.slow
WAIT_MS = 1000


@pytest.fixture(scope="module")
def sgie_repo(tmp_path_factory: pytest.TempPathFactory, chexnet_ready: Path) -> Path:
    """CenterFace, chexnet-tiny (DICOM), the seeded crop classifier twice (two names, two seeds)
    and ``slowcls``: the reference DenseNet-121 with a manifest that serves camera crops."""
    from edged.models.synth import write_model
    from edged.models.synth_crops import write_classifier

    repo = tmp_path_factory.mktemp("sgie-engines")
    write_model("tiny", repo / "chexnet-tiny")
    write_classifier("crop-classifier", repo / "cropcls")
    write_classifier("crop-classifier", repo / "cropcls-b", seed=1, name="cropcls-b")
    (repo / "centerface").mkdir()
    for name in ("model.yaml", "model.onnx"):
        os.symlink(chexnet_ready / "centerface" / name, repo / "centerface" / name)
    slow = yaml.safe_load((chexnet_ready / "chexnet" / "model.yaml").read_text())
    slow.update(name="slowcls", sources=["camera"], batching={"max_batch_size": 1, "max_queue_delay_ms": 0,
                                                              "max_queue_size": 1})
    slow.pop("accept", None)
    (repo / "slowcls").mkdir()
    (repo / "slowcls" / "model.yaml").write_text(yaml.safe_dump(slow))
    os.symlink(chexnet_ready / "chexnet" / "model.onnx", repo / "slowcls" / "model.onnx")
    return repo


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_faces_are_classified_small_ones_skipped_and_a_slow_classifier_only_drops(
        daemon_factory, collector, rtsp, sgie_repo, tmp_path):
    import test_pictures

    server = rtsp(cameras=1, width=640, height=384, fps=10, picture=test_pictures.two_sizes(tmp_path / "two.png"))
    crowd = test_pictures.faces(16, tmp_path / "crowd.png")
    two = [{"model": "cropcls", "labels": ["face"], "crop": "square", "margin": 0.2, "min_box_px": 64},
           {"model": "cropcls-b", "labels": ["face"], "crop": "letterbox", "min_box_px": 64}]
    d = daemon_factory(
        repo=sgie_repo,
        models=[{"name": "chexnet-tiny"}, {"name": "centerface", "threads": 1}, {"name": "cropcls", "threads": 1},
                {"name": "cropcls-b", "threads": 1}, {"name": "slowcls", "threads": 1}],
        cameras=[camera("faces", server.url(0), [{"name": "centerface", "secondary": two}], fps=2, latency_ms=50),
                 camera("crowd", f"file://{crowd}?loop=1",
                        [{"name": "centerface", "secondary": [{"model": "slowcls", "labels": ["face"],
                                                                "min_box_px": 16}]}], fps=2)],
        capture={"state_interval_s": 1, "secondary_wait_ms": WAIT_MS},
        telemetry={"prometheus": {"enabled": True, "port": (port := free_port())}}).start()

    frames = wait_until(lambda: collector.of("cameras/faces/detections/centerface")[3:], 60, "frames of two faces")
    for message in frames:
        faces = message["detections"]
        assert len(faces) == 2, faces  # the RTSP picture has a 122 px and a 36 px face
        big, small = sorted(faces, key=lambda f: f["box"][0])  # the large head is on the left
        assert (big["box"][2] - big["box"][0]) * 640 >= 64 > (small["box"][2] - small["box"][0]) * 640
        assert set(big["secondary"]) == {"cropcls", "cropcls-b"}, big
        assert all(set(s) == {"class_a", "class_b"} and abs(sum(s.values()) - 1) < 1e-3
                   for s in big["secondary"].values())
        assert "secondary" not in small
        assert message["timings_ms"]["secondary_wait"] < WAIT_MS + 500

    new = lambda: [e for e in collector.events("object") if e["camera"] == "faces" and e["reason"] == "new"]  # noqa: E731
    wait_until(lambda: len(new()) >= 2, 20, "two new objects")
    new = new()
    classified = [e["object"] for e in new if "secondary" in e["object"]]
    assert len(classified) == 1, new  # the large face; the small one has no secondary results
    for result in classified[0]["secondary"].values():
        assert result["crops"] >= 1 and set(result["scores"]) == {"class_a", "class_b"}
    assert set(classified[0]["secondary"]) == {"cropcls", "cropcls-b"}

    # the slow classifier: DICOM is still served, the crowd's crops drop, its frames keep the rate
    sent = storescu(d.port, *cr_variants(tmp_path, 1))
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: collector.results(), 60, "the DICOM result")
    start = {n: collector.of(f"cameras/{n}/state")[-1] for n in ("faces", "crowd")}
    time.sleep(6)
    end = {n: collector.of(f"cameras/{n}/state")[-1] for n in ("faces", "crowd")}
    rate = {n: (end[n]["frames"]["inferred"]["centerface"] - start[n]["frames"]["inferred"]["centerface"])
            / (_ts(end[n]["time"]) - _ts(start[n]["time"])) for n in start}
    print("inferred fps:", rate, "crowd drops:", end["crowd"]["drops"], "crops:", end["crowd"]["frames"].get("crops"))
    assert end["crowd"]["drops"]["secondary"] > 10, end["crowd"]
    assert end["faces"]["drops"].get("secondary", 0) == 0 and end["faces"]["frames"]["crops"]["too_small"] > 0
    assert rate["crowd"] >= 0.7 * rate["faces"] and rate["faces"] > 1.0, rate
    crowd_frames = collector.of("cameras/crowd/detections/centerface")[2:]
    assert crowd_frames and all(len(m["detections"]) == 16 for m in crowd_frames)
    assert all(m["timings_ms"]["secondary_wait"] < WAIT_MS + 500 for m in crowd_frames)
    assert any(sum("secondary" in f for f in m["detections"]) < 16 for m in crowd_frames)  # dropped crops

    # camera metrics on /metrics: the cameras' own counters, per camera, stage and outcome
    from helpers import metric_value, scrape_metrics

    m = scrape_metrics(port)
    assert metric_value(m, "edged_camera_frames_received_total", camera="faces") >= end["faces"]["frames"]["in"]
    assert metric_value(m, "edged_camera_frames_inferred_total", camera="crowd", model="centerface") >= \
        end["crowd"]["frames"]["inferred"]["centerface"] > 0
    assert metric_value(m, "edged_camera_frames_dropped_total", camera="crowd", reason="reader") >= \
        end["crowd"]["drops"]["reader"]
    assert metric_value(m, "edged_camera_secondary_crops_total", camera="crowd", outcome="dropped") >= \
        end["crowd"]["drops"]["secondary"] > 10
    assert metric_value(m, "edged_camera_secondary_crops_total", camera="faces", outcome="too_small") > 0
    assert metric_value(m, "edged_camera_streaming", camera="faces") == 1
    assert d.terminate() == 0
    assert max(size for topic, size in collector.sizes if "/detections/" in topic) <= MAX_BYTES["detections"]
