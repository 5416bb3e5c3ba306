"""Four RTSP cameras on one model while DICOM images arrive: batches form across cameras, every
camera gets its share, and the DICOM path neither sees camera models nor waits for them."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from camkit import camera, wait_until
from edged.localbroker import free_port
from helpers import cr_variants, scrape_metrics, storescu

pytestmark = pytest.mark.slow


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_four_cameras_batch_fairly_while_dicom_is_served(daemon_factory, collector, rtsp, camera_repo, tmp_path):
    server = rtsp(cameras=4, width=160, height=96, fps=10)
    names = [f"cam{i}" for i in range(4)]
    port = free_port()
    d = daemon_factory(repo=camera_repo, models=[{"name": "chexnet-tiny"}, {"name": "detector-tiny", "threads": 1,
                                                  "batching": {"max_batch_size": 4, "max_queue_delay_ms": 30,
                                                               "max_queue_size": 8}}],
                       cameras=[camera(n, server.url(i), ["detector-tiny"], fps=5, latency_ms=50)
                                for i, n in enumerate(names)],
                       capture={"state_interval_s": 1},
                       telemetry={"prometheus": {"enabled": True, "port": port}}).start()
    online = lambda: {t.split("/")[-2] for t, p, _ in collector.messages  # noqa: E731
                      if t.endswith("/availability") and p == "online"}
    wait_until(lambda: online() >= set(names), 40, "four cameras online")
    time.sleep(2)
    first = {n: collector.of(f"cameras/{n}/state")[-1] for n in names}

    # DICOM while the cameras run: a result per image from the DICOM model only
    files = cr_variants(tmp_path, 3)
    sent = storescu(d.port, *files)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(collector.results()) >= 3, 60, "three DICOM results")
    assert {r["model"]["name"] for r in collector.results()} == {"chexnet-tiny"}
    time.sleep(4)
    last = {n: collector.of(f"cameras/{n}/state")[-1] for n in names}

    rates = {}
    for n in names:
        a, b = first[n], last[n]
        seconds = _ts(b["time"]) - _ts(a["time"])
        rates[n] = (b["frames"]["inferred"]["detector-tiny"] - a["frames"]["inferred"]["detector-tiny"]) / seconds
    mean = sum(rates.values()) / len(rates)
    print("inferred fps per camera:", {n: round(r, 2) for n, r in rates.items()})
    assert mean > 3.0, rates  # ~5 fps asked for
    for n, r in rates.items():
        assert abs(r - mean) <= 0.2 * mean, f"{n} inferred {r:.2f} fps, the mean is {mean:.2f}: {rates}"
    batches = [m["timings_ms"]["batch_size"] for n in names for m in collector.of(f"cameras/{n}/detections/")]
    assert max(batches) > 1, f"no batch formed across cameras: {batches}"

    status = [p for t, p, _ in collector.messages if t.endswith("/status") and p["state"] == "online"][-1]
    assert {(m["name"], m["source"]) for m in status["models"]} == {("chexnet-tiny", "dicom"),
                                                                     ("detector-tiny", "camera")}

    # /metrics counts what the state messages count, per camera, model and drop reason
    before = {n: collector.of(f"cameras/{n}/state")[-1] for n in names}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in scrape_metrics(port).values() for s in family}
    time.sleep(1.5)  # a state message taken after the scrape
    after = {n: collector.of(f"cameras/{n}/state")[-1] for n in names}
    for n in names:
        assert samples[("edged_camera_streaming", (("camera", n),))] == 1
        inferred = samples[("edged_camera_frames_inferred_total", (("camera", n), ("model", "detector-tiny")))]
        lo, hi = (s["frames"]["inferred"]["detector-tiny"] for s in (before[n], after[n]))
        assert lo <= inferred <= hi, (n, lo, inferred, hi)
        received = samples[("edged_camera_frames_received_total", (("camera", n),))]
        assert received >= inferred > 0
        for reason in before[n]["drops"]:
            assert ("edged_camera_frames_dropped_total", (("camera", n), ("reason", reason))) in samples
    assert d.terminate() == 0
