"""Test helpers: real DICOM files, an MQTT collector, the daemon as a real process, DCMTK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from pydicom.data import get_testdata_file

from edged.localbroker import wait_listening

REPO = Path(__file__).resolve().parents[1]
STORESCU = "/usr/bin/storescu"  # DCMTK by absolute path: pynetdicom's console scripts shadow it in a venv
ECHOSCU = "/usr/bin/echoscu"


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path, f"test file {name} not found (pydicom-data installed?)"
    return Path(path)


class Collector:
    """Subscribes to ``edged/#`` and keeps every message (topic, payload dict, retain flag)."""

    def __init__(self, port: int, topic: str = "edged/#", persistent: bool = False):
        self.messages: list[tuple[str, dict, bool]] = []
        self.invalid: list[tuple[str, str]] = []
        self.sizes: list[tuple[str, int]] = []  # (topic, bytes) of every message
        self.received: list[tuple[float, str]] = []  # (monotonic arrival, topic) of every message
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{os.getpid()}-{port}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        props = None
        if persistent:  # the broker keeps our queue across our reconnects and its own restarts
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        self.sizes.append((msg.topic, len(msg.payload)))
        self.received.append((time.monotonic(), msg.topic))
        if msg.topic.endswith("/availability"):  # plain text, as availability topics are by convention
            payload = msg.payload.decode("utf-8", "replace")
            if payload not in ("online", "offline"):
                self.invalid.append((msg.topic, f"availability {payload[:40]!r}"))
            with self._cond:
                self.messages.append((msg.topic, payload, bool(msg.retain)))
                self._cond.notify_all()
            return
        payload = json.loads(msg.payload)
        try:
            validate_message(msg.topic, payload)
        except Exception as exc:  # recorded, asserted at teardown: a callback must not raise
            self.invalid.append((msg.topic, str(exc)[:500]))
        with self._cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self._cond.notify_all()

    def of(self, kind: str) -> list[dict]:
        with self._cond:
            return [p for t, p, _ in self.messages if f"/{kind}" in t]

    def wait_for(self, predicate: Callable[["Collector"], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = [t for t, _, _ in self.messages]
                    raise AssertionError(f"timed out; got {len(topics)} messages: {topics[-20:]}")
                self._cond.wait(min(left, 0.5))

    def timed(self, topic_part: str) -> list[tuple[float, object]]:
        """(arrival time, payload) of every message whose topic contains ``topic_part``."""
        with self._cond:
            return [(t, p) for (t, _), (topic, p, _) in zip(self.received, self.messages) if topic_part in topic]

    def results(self) -> list[dict]:
        return self.of("results/")

    def events(self, type_: str | None = None) -> list[dict]:
        return [e for e in self.of("events") if type_ is None or e["type"] == type_]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cr_variants(tmp_path: Path, n: int) -> list[Path]:
    """``n`` copies of the chest CR, each a distinct instance (new SOP Instance UID)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(dicom_file("RG1_UNCR.dcm"))
    study = generate_uid()
    out = []
    for i in range(n):
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / f"cr-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def write_config(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    return path


class DaemonProcess:
    """``edged run -c FILE`` as a real process, as systemd would run it."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None):
        self.config, self.log, self.env = config, log, env or {}
        self.proc: subprocess.Popen | None = None
        cfg = yaml.safe_load(config.read_text())
        self.port = cfg["dicom"]["port"]

    def start(self, timeout: float = 60.0) -> "DaemonProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        try:
            wait_listening(self.port, self.proc, timeout, "edged")
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}:\n{self.log.read_text()[-3000:]}") from None
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def storescu(port: int, *files: Path, aet: str = "MODALITY", aec: str = "EDGED", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """DCMTK's storescu exactly as a modality would run it."""
    if not Path(STORESCU).exists():
        pytest.fail("DCMTK storescu missing: apt-get install dcmtk (make test does this)")
    return subprocess.run([STORESCU, "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


SCHEMAS = Path(__file__).resolve().parents[1] / "edged" / "schemas"


def schema_validator(name: str):
    """A jsonschema validator for ``edged/schemas/<name>.schema.json`` (cross-file refs resolved)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = [json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")]
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()), registry=registry)


def message_kind(topic: str) -> str:
    if "/results/" in topic:
        return "result"
    if "/cameras/" in topic:
        return "detections" if "/detections/" in topic else "camera_" + topic.rsplit("/", 1)[-1]
    return topic.rsplit("/", 1)[-1].rstrip("s")


def validate_message(topic: str, payload: dict) -> None:
    kind = message_kind(topic)
    if (SCHEMAS / f"{kind}.schema.json").exists():
        schema_validator(kind).validate(payload)


PHI = {  # planted in test datasets; none of it may ever reach a payload or a log line
    "PatientName": "DOE^JANE^Q",
    "PatientID": "PID4711SECRET",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC998877",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "InstitutionName": "ST ELSEWHERE HOSPITAL",
}


def phi_tokens(*uids: str) -> list[str]:
    """Strings whose appearance anywhere outside the device is a leak."""
    return ["DOE", "JANE", "PID4711SECRET", "19610203", "ACC998877", "HOUSE", "GREGORY", "ELSEWHERE", *uids]


def small_cr(path: Path, rows: int = 256, columns: int = 256, **attrs) -> Path:
    """A small, valid chest CR (MONOCHROME2, 12 of 16 bits) with planted PHI and fresh UIDs.
    ``attrs`` override or add attributes (None deletes one)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    rng = np.random.default_rng(rows * columns)
    ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def patch_element(path: Path, tag: tuple[int, int], vr: bytes | None = None, length: int | None = None,
                  pad: bytes = b"", value: bytes | None = None) -> Path:
    """Corrupt one element of an explicit VR little endian file in place: its VR code, its
    16-bit length (the following elements then shift or get swallowed), its value bytes (same
    length) and ``pad`` bytes inserted after its value."""
    import struct

    data = bytearray(path.read_bytes())
    head = struct.pack("<HH", *tag)
    at = data.index(head, 132)  # after the preamble and DICM
    old_len = struct.unpack("<H", data[at + 6:at + 8])[0]
    if vr is not None:
        data[at + 4:at + 6] = vr
    if length is not None:
        data[at + 6:at + 8] = struct.pack("<H", length)
    end = at + 8 + old_len
    if value is not None:
        assert len(value) == old_len
        data[at + 8:end] = value
    data[end:end] = pad
    path.write_bytes(bytes(data))
    return path


def send_file(port: int, path: Path, syntaxes: list[str] | None = None, aet: str = "MODALITY",
              sop_class: str | None = None) -> int | None:
    """A pynetdicom SCU sending a file's bytes as they are (no re-encoding), like a router. With
    ``sop_class`` and ``syntaxes`` given the file is not read first (it may not parse)."""
    from pydicom import dcmread
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=aet)
    if sop_class is None or not syntaxes:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        sop_class, syntaxes = sop_class or meta.MediaStorageSOPClassUID, syntaxes or [meta.TransferSyntaxUID]
    ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGED")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def deflate_bomb(template: Path, folder: Path, side: int = 4096) -> Path:
    """``template`` as a Deflated Explicit VR LE file of ``side``² zero pixels: a few tens of KB
    that inflate to ``2·side²`` bytes (32 MB at 4096)."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    ds = dcmread(template)
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb = folder / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    return bomb


def scrape_metrics(port: int) -> dict[str, list]:
    """The daemon's /metrics on ``port``, parsed: ``{family name: samples}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def metric_value(families: dict, sample_name: str, **labels: str) -> float | None:
    """The first sample called ``sample_name`` whose labels include ``labels``; None if none."""
    for s in (s for family in families.values() for s in family):
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None
