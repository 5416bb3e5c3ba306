#!/usr/bin/env python3
"""edged camera benchmark, one run: N RTSP cameras × inferred fps × detector, on this machine.

    python tools/bench_cameras.py [--cameras 1 2 4 8] [--fps 2 5] [--models detector centerface]
                                  [--seconds 15] [--out bench-out]
    python tools/bench_cameras.py --soak 600      # daemon + helper RSS over 10 minutes (MB/h)

An RTSP server on loopback (tools/rtsp_server.py: H.264, 640x360, 15 fps, one encoder per mount)
plays the cameras; the daemon runs in this process (so each of its threads' CPU time can be
read by name) with a real mosquitto; a subscriber here receives the detections. Per config:

* inferred fps per camera and in total, from the cameras' own counters;
* capture → MQTT-received latency p50/p99: ``frame.captured`` (the frame's arrival in the capture
  pipeline on the wall clock, from its PTS) to the subscriber's receipt;
* dropped frames by stage, as a share of what the source produced (15 fps): ``capture`` (dropped
  in GStreamer by ``videorate``, by design: 2 × fps are delivered), ``reader`` (replaced before use),
  ``busy``, ``queue``, ``failed``;
* CPU ms per inferred frame by stage: ``decode`` (the helper processes: depay, decode, convert,
  scale, pipe), ``reader`` (the reader threads), ``preprocess`` (the camera pipeline's workers),
  ``inference`` (the batcher thread and ONNX Runtime's pool), ``other`` (sink, publisher, ...).

Writes ``bench-out/cameras.json`` and ``cameras.png`` and prints a Markdown table. The soak runs
the daemon as its own process (4 cameras, 5 fps, the seeded detector) and fits RSS over time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edged.config.loader import load_config  # noqa: E402
from edged.daemon import Daemon  # noqa: E402
from edged.localbroker import LocalBroker, free_port, wait_listening  # noqa: E402

SOURCE_FPS, WIDTH, HEIGHT = 15, 640, 360


def say(text: str) -> None:
    print(text, flush=True)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Subscriber:
    def __init__(self, port: int):
        self.latencies: list[float] = []
        self.batches: list[int] = []
        self.inference_ms: list[float] = []
        self.recording = False
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-cameras-{os.getpid()}", protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("edged/v1/bench/cameras/+/detections/#", qos=0)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, client, userdata, msg) -> None:
        if not self.recording:
            return
        m = json.loads(msg.payload)
        self.latencies.append((time.time() - ts(m["frame"]["captured"])) * 1000.0)
        self.batches.append(m["timings_ms"]["batch_size"])
        self.inference_ms.append(m["timings_ms"]["inference"])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads by stage (Python thread names; unnamed = ONNX Runtime)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {"reader": 0.0, "preprocess": 0.0, "inference": 0.0, "other": 0.0}
    for t in psutil.Process().threads():
        name, cpu = names.get(t.id, ""), t.user_time + t.system_time
        if name.startswith("camera-") and name.endswith("-reader"):
            out["reader"] += cpu
        elif name.startswith("preprocess-"):
            out["preprocess"] += cpu
        elif name.startswith("batcher-") or not name:
            out["inference"] += cpu
        else:
            out["other"] += cpu
    return out


def helpers_cpu() -> float:
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if any("helper.py" in a for a in p.cmdline()):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure_window(daemon, sub: Subscriber, snap: Callable[[], dict], seconds: float) -> tuple[dict, dict]:
    """Once every camera streams (at most 60 s) and 5 s of warm-up (first batches, steady state):
    ``snap()`` before and after ``seconds`` during which ``sub`` records."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(rt.capture.state == "streaming" for rt in daemon.cameras.runtimes):
        time.sleep(0.2)
    time.sleep(5)
    a = snap()
    sub.recording = True
    time.sleep(seconds)
    sub.recording = False
    return a, snap()


def config(work: Path, broker: int, rtsp: int, n: int, fps: float, model: str) -> list[str]:
    cams = [{"name": f"cam{i}", "uri": f"rtsp://127.0.0.1:{rtsp}/cam{i}", "models": [model], "fps": fps,
             "width": WIDTH, "height": HEIGHT, "latency_ms": 50, "stall_timeout_s": 10} for i in range(n)]
    return [f"state_dir={work}/state", f"cache_dir={work}/cache", "node_id=bench", "dicom.enabled=false",
            f"mqtt.port={broker}", f"power.control_socket={work}/control.sock", f"models=[{{name: {model}}}]",
            f"cameras={json.dumps(cams)}", "capture.state_interval_s=60", "capture.detections_max_rate_hz=60",
            "telemetry.enabled=false", "log_level=warning"]


def run_one(work: Path, broker: int, rtsp: int, n: int, fps: float, model: str, seconds: float) -> dict:
    cfg = load_config(None, config(work, broker, rtsp, n, fps, model))
    daemon = Daemon(cfg)
    sub = Subscriber(broker)
    daemon.start()
    try:
        rts = daemon.cameras.runtimes

        def snap() -> dict:
            return {"t": time.monotonic(), "threads": thread_cpu(), "helpers": helpers_cpu(),
                    "in": [rt.capture.counters.frames_in for rt in rts],
                    "inferred": [rt.inferred.get(model, 0) for rt in rts],
                    "drops": [dict(rt.capture.counters.drops) for rt in rts]}

        a, b = measure_window(daemon, sub, snap, seconds)
    finally:
        daemon.stop()
        sub.close()
    dt = b["t"] - a["t"]
    inferred = [y - x for x, y in zip(a["inferred"], b["inferred"])]
    delivered = sum(y - x for x, y in zip(a["in"], b["in"]))
    produced = SOURCE_FPS * n * dt
    total = max(1, sum(inferred))
    drops = {k: sum(db[k] - da[k] for da, db in zip(a["drops"], b["drops"])) for k in a["drops"][0]}
    cpu = {k: (b["threads"][k] - a["threads"][k]) * 1000.0 / total for k in a["threads"]}
    cpu["decode"] = (b["helpers"] - a["helpers"]) * 1000.0 / total
    lat = sub.latencies
    return {
        "cameras": n, "fps": fps, "model": model, "seconds": round(dt, 1),
        "inferred_fps_per_camera": [round(i / dt, 2) for i in inferred],
        "inferred_fps_total": round(sum(inferred) / dt, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if lat else None,
                       "p99": round(float(np.percentile(lat, 99)), 1) if lat else None, "n": len(lat)},
        "batch_size_mean": round(float(np.mean(sub.batches)), 2) if sub.batches else None,
        "batch_inference_ms_p50": round(float(np.percentile(sub.inference_ms, 50)), 1) if sub.inference_ms else None,
        "drop_ratio": {"capture": round(max(0.0, 1 - delivered / produced), 3),
                       **{k: round(v / produced, 3) for k, v in drops.items()}},
        "cpu_ms_per_frame": {k: round(v, 2) for k, v in cpu.items()},
    }


def check_targets(r: dict) -> dict:
    c = r["cpu_ms_per_frame"]
    non_inference = c["decode"] + c["reader"] + c["preprocess"]
    bound = 1000.0 / r["fps"] + 2 * (r["batch_inference_ms_p50"] or 0)
    return {"latency_p99_bound_ms": round(bound, 1),
            "latency_ok": r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] <= bound,
            "non_inference_ratio": round(non_inference / c["inference"], 3) if c["inference"] else None,
            "cpu_ok": c["inference"] > 0 and non_inference <= 0.25 * c["inference"]}


def table(rows: list[dict]) -> str:
    out = ["| model | cams | fps | inferred fps/cam (min–max) | total | p50 ms | p99 ms (bound) | batch | "
           "drops capture/reader/busy/queue | CPU ms/frame decode/reader/pre/inf/other | non-inf/inf |",
           "|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        per, d, c, t = r["inferred_fps_per_camera"], r["drop_ratio"], r["cpu_ms_per_frame"], r["targets"]
        out.append(f"| {r['model']} | {r['cameras']} | {r['fps']:g} | {min(per):.2f}–{max(per):.2f} | "
                   f"{r['inferred_fps_total']:.1f} | {r['latency_ms']['p50']} | {r['latency_ms']['p99']} "
                   f"({t['latency_p99_bound_ms']:.0f}){'' if t['latency_ok'] else ' ✗'} | {r['batch_size_mean']} | "
                   f"{d['capture']:.2f}/{d['reader']:.2f}/{d['busy']:.2f}/{d['queue']:.2f} | "
                   f"{c['decode']:.1f}/{c['reader']:.1f}/{c['preprocess']:.1f}/{c['inference']:.1f}/{c['other']:.1f} | "
                   f"{t['non_inference_ratio']}{'' if t['cpu_ok'] else ' ✗'} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model in sorted({r["model"] for r in rows}):
        for fps in sorted({r["fps"] for r in rows}):
            sel = [r for r in rows if r["model"] == model and r["fps"] == fps]
            xs = [r["cameras"] for r in sel]
            axes[0].plot(xs, [r["inferred_fps_total"] for r in sel], "o-", label=f"{model} @ {fps:g} fps")
            axes[1].plot(xs, [r["latency_ms"]["p99"] for r in sel], "o-", label=f"{model} @ {fps:g} fps")
    axes[0].set(xlabel="RTSP cameras", ylabel="inferred frames/s (total)", title="throughput")
    axes[1].set(xlabel="RTSP cameras", ylabel="capture → MQTT p99 (ms)", title="latency")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def soak(work: Path, broker: int, rtsp: int, seconds: float) -> dict:
    cfg_path = work / "soak.yaml"
    data: dict = {}
    for item in config(work, broker, rtsp, 4, 5, "detector"):
        key, _, value = item.partition("=")
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    cfg_path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg_path)], cwd=REPO,
                            stdout=open(work / "soak.log", "ab"), stderr=subprocess.STDOUT)
    samples = []
    try:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(10)
            p = psutil.Process(proc.pid)
            helpers = [c for c in p.children(recursive=True) if any("helper.py" in a for a in c.cmdline())]
            samples.append((time.monotonic() - start, p.memory_info().rss / 1e6,
                            sum(h.memory_info().rss for h in helpers) / 1e6))
    finally:
        proc.terminate()
        proc.wait(60)
    steady = [s for s in samples if s[0] >= 60] or samples
    t = np.array([s[0] for s in steady]) / 3600.0
    slope = lambda ys: float(np.polyfit(t, ys, 1)[0]) if len(t) > 2 else float("nan")  # noqa: E731
    return {"seconds": seconds, "cameras": 4, "fps": 5, "model": "detector", "samples": samples,
            "daemon_rss_mb": {"first": steady[0][1], "last": steady[-1][1], "mb_per_h": round(slope([s[1] for s in steady]), 1)},
            "helpers_rss_mb": {"first": steady[0][2], "last": steady[-1][2], "mb_per_h": round(slope([s[2] for s in steady]), 1)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--fps", type=float, nargs="+", default=[2, 5])
    ap.add_argument("--models", nargs="+", default=["detector", "centerface"])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--soak", type=float, help="run only the RSS soak for this many seconds")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edged-bench-cameras-"))
    (work / "broker").mkdir()
    broker = LocalBroker(work / "broker").start()
    rtsp_port = free_port()
    server = subprocess.Popen(["/usr/bin/python3", str(REPO / "tools" / "rtsp_server.py"), "--port", str(rtsp_port),
                               "--cameras", str(max(args.cameras if not args.soak else [4])), "--width", str(WIDTH),
                               "--height", str(HEIGHT), "--fps", str(SOURCE_FPS)],
                              stdout=subprocess.DEVNULL, stderr=open(work / "rtsp.log", "ab"))
    wait_listening(rtsp_port, server, 20, "rtsp_server")
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    try:
        if args.soak:
            res = soak(work, broker.port, rtsp_port, args.soak)
            (args.out / "cameras-soak.json").write_text(json.dumps({"machine": machine, **res}, indent=1))
            say(f"soak {res['seconds']:.0f} s, 4 cameras x 5 fps, detector: daemon RSS {res['daemon_rss_mb']}, "
                f"helpers RSS {res['helpers_rss_mb']}")
            return 0
        rows = []
        for model in args.models:
            for fps in args.fps:
                for n in args.cameras:
                    say(f"{model}: {n} camera(s) at {fps:g} fps ...")
                    r = run_one(work / f"{model}-{n}-{fps:g}", broker.port, rtsp_port, n, fps, model, args.seconds)
                    r["targets"] = check_targets(r)
                    rows.append(r)
                    say(f"  {r['inferred_fps_total']:.1f} frames/s, p99 {r['latency_ms']['p99']} ms, "
                        f"cpu {r['cpu_ms_per_frame']}")
        (args.out / "cameras.json").write_text(json.dumps({"machine": machine, "source": {
            "width": WIDTH, "height": HEIGHT, "fps": SOURCE_FPS, "codec": "h264"}, "results": rows}, indent=1))
        say("\n" + table(rows))
        if plot(rows, args.out / "cameras.png"):
            say(f"\nwrote {args.out / 'cameras.json'} and {args.out / 'cameras.png'}")
        return 0
    finally:
        server.terminate()
        server.wait(10)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
