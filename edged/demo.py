"""``edged demo``: the whole data path on loopback, in under a minute, with no config.

Starts (or uses) a broker, runs the daemon with the reference model, sends the sample chest
radiograph through a real C-STORE association, prints the MQTT result and exits 0.

It lives beside a real installation without touching it: its state, cache, broker and control
socket are in one temporary directory (never ``/run/edged/control.sock`` or ``/var/lib/edged``),
its DICOM port is a free one, and the directory is removed when the demo ends, however it ends.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts

from edged.config.loader import load_config
from edged.daemon import Daemon
from edged.localbroker import LocalBroker


def sample_file() -> Path:
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_UNCR.dcm")
    except Exception:
        path = None
    if not path:
        raise FileNotFoundError("the sample chest CR comes from pydicom-data: pip install pydicom-data")
    return Path(path)


def ensure_reference_model(cfg) -> None:
    from edged.models.manifest import load_manifest
    from edged.models.synth import write_model

    model = load_manifest(cfg.manifest_path(cfg.models[0]))
    if not model.onnx_path.exists():
        print(f"generating the reference model into {model.onnx_path} …", flush=True)
        write_model("densenet121", model.folder, manifest=False)
    model.verify_onnx()


def send(path: Path, port: int, ae_title: str = "EDGED") -> int:
    ae = AE(ae_title="DEMO_MODALITY")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError("association with the daemon failed")
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


def run_demo(broker: str | None = None, dicom_file: Path | None = None, timeout: float = 120.0) -> int:
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="edged-demo-"))
    temp_before = tempfile.tempdir  # the daemon points tempfile at its spool; put it back afterwards
    try:
        return _run(state, broker, dicom_file, timeout)
    finally:
        tempfile.tempdir = temp_before
        shutil.rmtree(state, ignore_errors=True)


def _run(state: Path, broker: str | None, dicom_file: Path | None, timeout: float) -> int:
    local = None
    if broker:
        host, _, port = broker.rpartition(":")
        host, port_n = host or "127.0.0.1", int(port)
    else:
        (state / "broker").mkdir()
        local = LocalBroker(state / "broker").start()
        host, port_n = "127.0.0.1", local.port
        print(f"started mosquitto on 127.0.0.1:{port_n}")
    try:
        return _demo(state, host, port_n, dicom_file, timeout)
    finally:
        if local:
            local.stop()


def _demo(state: Path, host: str, port_n: int, dicom_file: Path | None, timeout: float) -> int:
    cfg = load_config(None, [f"state_dir={state}/state", f"cache_dir={state}/cache", "node_id=demo",
                             "dicom.bind=127.0.0.1", "dicom.port=0", f"mqtt.host={host}", f"mqtt.port={port_n}",
                             f"power.control_socket={state}/control.sock"])
    ensure_reference_model(cfg)
    results: queue.Queue[dict] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edged-demo-viewer", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, msg: results.put(json.loads(msg.payload))
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edged/v1/demo/results/#", qos=1)
    sub.connect(host, port_n)
    sub.loop_start()
    daemon = Daemon(cfg)
    try:
        daemon.start()
        path = dicom_file or sample_file()
        t0 = time.monotonic()
        status = send(path, daemon.scp.port, cfg.dicom.ae_title)
        print(f"C-STORE {path.name} → status 0x{status:04X}")
        result = results.get(timeout=timeout)
        print(f"result received over MQTT after {(time.monotonic() - t0) * 1000:.0f} ms:\n")
        print(json.dumps(result, indent=2))
        print("\n" + _table(result))
        return 0
    except queue.Empty:
        print("no result arrived within the timeout", file=sys.stderr)
        return 1
    finally:
        daemon.stop()
        sub.loop_stop()
        sub.disconnect()


def _table(result: dict) -> str:
    m = result["model"]
    lines = [f"{m['name']} {m['version']} on {m['backend']}/{m['precision']}"
             f" — clinical: {str(result['clinical']).lower()} (seeded weights: NOT for diagnosis)"]
    for label, score in sorted(result["scores"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {label:<20} {score:6.3f} {'█' * int(round(score * 30))}")
    t = result["timings_ms"]
    lines.append(f"  timings ms: preprocess {t['preprocess']:.1f}, queue {t['queue']:.1f}, "
                 f"inference {t['inference']:.1f} (batch {t['batch_size']}), total {t['total']:.1f}")
    return "\n".join(lines)
