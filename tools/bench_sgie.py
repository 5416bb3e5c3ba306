#!/usr/bin/env python3
"""edged secondary-classifier benchmark (detect → crop → classify), on this machine.

    python tools/bench_sgie.py [--objects 0 1 4 16] [--cameras 2] [--fps 5] [--seconds 15] [--out bench-out]

For each object count an RTSP test camera (tools/rtsp_server.py ``--picture``) serves a looped
640×640 picture with that many faces (tools/test_pictures.py: copies of the astronaut's head; the
coffee for none) to ``--cameras`` cameras; the daemon runs in this process with CenterFace and the
seeded crop classifier ``cropcls`` on every face (square crops, 20 % margin), a real mosquitto,
and a subscriber here. Per object count:

* end-to-end latency per frame, p50/p99: ``frame.captured`` → the detections message (which waits
  for its crops, at most ``capture.secondary_wait_ms``) received here;
* faces found per frame, crops classified per second, mean classifier batch size (crops of all
  cameras and frames share its one batcher) and batches formed;
* CPU per crop: the process's CPU time (all threads) beyond the 0-object run's per frame, divided
  by the crops: what one more face costs here (crop, resize, normalize, inference, bookkeeping),
  and the preprocess threads' share of it;
* drops: frames (busy + queue) and crops (``secondary``), as counted by the cameras.

Inference time per face *on the device* (the source study's figure: a TensorRT engine on the GPU
or a DLA core) is not measured here: ``edged selftest`` (group ``secondary``) times it on a Jetson.
Writes ``bench-out/sgie.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

import test_pictures  # noqa: E402
from bench_cameras import Subscriber, measure_window, say, thread_cpu  # noqa: E402
from edged.config.loader import load_config  # noqa: E402
from edged.daemon import Daemon  # noqa: E402
from edged.localbroker import LocalBroker, free_port, wait_listening  # noqa: E402

SIZE = 640


class FaceSubscriber(Subscriber):
    def __init__(self, port: int):
        super().__init__(port)
        self.faces: list[int] = []
        self.classified: list[int] = []

    def _on(self, client, userdata, msg) -> None:
        super()._on(client, userdata, msg)
        if self.recording:
            dets = json.loads(msg.payload)["detections"]
            self.faces.append(len(dets))
            self.classified.append(sum("secondary" in d for d in dets))


def config(work: Path, broker: int, rtsp: int, cameras: int, fps: float) -> list[str]:
    sec = [{"model": "cropcls", "labels": ["face"], "crop": "square", "margin": 0.2, "min_box_px": 16}]
    cams = [{"name": f"cam{i}", "uri": f"rtsp://127.0.0.1:{rtsp}/cam{i}", "fps": fps, "latency_ms": 50,
             "models": [{"name": "centerface", "secondary": sec}]} for i in range(cameras)]
    return [f"state_dir={work}/state", f"cache_dir={work}/cache", "node_id=bench", "dicom.enabled=false",
            f"mqtt.port={broker}", f"power.control_socket={work}/control.sock",
            "models=[{name: centerface}, {name: cropcls}]", f"cameras={json.dumps(cams)}",
            "capture.state_interval_s=60", "capture.detections_max_rate_hz=60", "telemetry.enabled=false",
            "log_level=warning"]


def run_one(work: Path, broker: int, objects: int, cameras: int, fps: float, seconds: float) -> dict:
    picture = test_pictures.faces(objects, work / f"faces-{objects}.png", SIZE)
    port = free_port()
    server = subprocess.Popen(["/usr/bin/python3", str(REPO / "tools" / "rtsp_server.py"), "--port", str(port),
                               "--cameras", str(cameras), "--width", str(SIZE), "--height", str(SIZE), "--fps", "15",
                               "--picture", str(picture)], stdout=subprocess.DEVNULL,
                              stderr=open(work / "rtsp.log", "ab"))
    wait_listening(port, server, 20, "rtsp_server")
    daemon = Daemon(load_config(None, config(work / f"run-{objects}", broker, port, cameras, fps)))
    sub = FaceSubscriber(broker)
    daemon.start()
    try:
        rts, cls = daemon.cameras.runtimes, daemon.camera_models["cropcls"].batcher

        def snap() -> dict:
            t = psutil.Process().cpu_times()
            return {"t": time.monotonic(), "cpu": t.user + t.system, "threads": thread_cpu(),
                    "inferred": sum(rt.inferred.get("centerface", 0) for rt in rts),
                    "crops": sum(rt.crops.get("classified", 0) for rt in rts),
                    "drops": {k: sum(rt.capture.counters.drops.get(k, 0) for rt in rts)
                              for k in ("busy", "queue", "secondary")},
                    "batches": cls.stats["batches"], "requests": cls.stats["requests"]}

        a, b = measure_window(daemon, sub, snap, seconds)
    finally:
        daemon.stop()
        sub.close()
        server.terminate()
        server.wait(10)
    dt, frames = b["t"] - a["t"], max(1, b["inferred"] - a["inferred"])
    crops, batches = b["crops"] - a["crops"], b["batches"] - a["batches"]
    lat = sub.latencies
    return {
        "objects": objects, "cameras": cameras, "fps": fps, "seconds": round(dt, 1),
        "frames_per_s": round(frames / dt, 2), "faces_per_frame": round(float(np.mean(sub.faces)), 2) if sub.faces else 0,
        "classified_per_frame": round(float(np.mean(sub.classified)), 2) if sub.classified else 0,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
                       "p99": round(float(np.percentile(lat, 99)), 1) if lat else None, "n": len(lat)},
        "crops_per_s": round(crops / dt, 1), "secondary_batches": batches,
        "secondary_batch_mean": round((b["requests"] - a["requests"]) / batches, 2) if batches else None,
        "cpu_ms_per_frame": round((b["cpu"] - a["cpu"]) * 1000.0 / frames, 2),
        "preprocess_ms_per_frame": round((b["threads"]["preprocess"] - a["threads"]["preprocess"]) * 1000.0 / frames, 2),
        "crops_per_frame": round(crops / frames, 2),
        "drops": {k: b["drops"][k] - a["drops"][k] for k in a["drops"]},
    }


def add_cpu_per_crop(rows: list[dict]) -> None:
    """Marginal CPU of one crop: CPU per frame beyond the 0-object run's, per crop of the frame."""
    base = next((r for r in rows if r["objects"] == 0), None)
    for r in rows:
        if base is None or not r["crops_per_frame"]:
            r["cpu_ms_per_crop"] = r["preprocess_ms_per_crop"] = None
            continue
        r["cpu_ms_per_crop"] = round((r["cpu_ms_per_frame"] - base["cpu_ms_per_frame"]) / r["crops_per_frame"], 2)
        r["preprocess_ms_per_crop"] = round((r["preprocess_ms_per_frame"] - base["preprocess_ms_per_frame"])
                                            / r["crops_per_frame"], 2)


def table(rows: list[dict]) -> str:
    out = ["| faces | frames/s | faces found/frame | classified/frame | p50 ms | p99 ms | crops/s | "
           "classifier batches (mean size) | CPU ms/frame | CPU ms/crop (preprocess) | drops busy/queue/secondary |",
           "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|"]
    for r in rows:
        d = r["drops"]
        per_crop = "—" if r["cpu_ms_per_crop"] is None else f"{r['cpu_ms_per_crop']} ({r['preprocess_ms_per_crop']})"
        out.append(f"| {r['objects']} | {r['frames_per_s']} | {r['faces_per_frame']} | {r['classified_per_frame']} | "
                   f"{r['latency_ms']['p50']} | {r['latency_ms']['p99']} | {r['crops_per_s']} | "
                   f"{r['secondary_batches']} ({r['secondary_batch_mean'] or '—'}) | {r['cpu_ms_per_frame']} | "
                   f"{per_crop} | {d['busy']}/{d['queue']}/{d['secondary']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, nargs="+", default=[0, 1, 4, 16])
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--fps", type=float, default=5)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edged-bench-sgie-"))
    (work / "broker").mkdir()
    broker = LocalBroker(work / "broker").start()
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        rows = []
        for n in args.objects:
            say(f"{n} face(s), {args.cameras} camera(s) at {args.fps:g} fps ...")
            rows.append(run_one(work, broker.port, n, args.cameras, args.fps, args.seconds))
            say(f"  {rows[-1]}")
        add_cpu_per_crop(rows)
        machine["load_after"] = os.getloadavg()
        (args.out / "sgie.json").write_text(json.dumps({"machine": machine, "results": rows}, indent=1))
        say("\n" + table(rows))
        say(f"\nwrote {args.out / 'sgie.json'}")
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
