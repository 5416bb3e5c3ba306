"""Everything the daemon says: every MQTT message (raw bytes, validated against the JSON
Schemas, scanned for PHI) and its log (scanned incrementally as it grows).

The outcome index maps instance pseudonyms to what was published about them, de-duplicated
on ``message_id`` (delivery is at least once: a re-send after a reconnect is not a second
outcome).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .phi import PhiScanner

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from helpers import schema_validator  # noqa: E402  (the suite's own schema loader)

OUTCOME_EVENTS = ("skipped", "error", "duplicate")


class Observer:
    def __init__(self, port: int, scanner: PhiScanner):
        self.scanner = scanner
        self.count = 0
        self.bytes = 0
        self.invalid: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.events: Counter[tuple[str, str]] = Counter()  # (type, reason)
        self.rejected_status: Counter[int] = Counter()  # rejected events by the status they report
        # instance pseudonym -> {kind -> set of message ids}; kind: "result:<model>" or an event type
        self.by_instance: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self._seen: set[str] = set()
        self._validators = {k: schema_validator(k) for k in ("result", "event", "status", "telemetry")}
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-observer-{port}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edged/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._take(msg.topic, msg.payload)
        except Exception as exc:  # a callback must not raise; an unparseable payload is a finding
            with self._cond:
                self.invalid.append(f"{msg.topic}: {type(exc).__name__}: {str(exc)[:200]}")

    def _take(self, topic: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        with self._cond:
            self.count += 1
            self.bytes += len(raw)
            self.scanner.scan(f"mqtt {topic}", topic + "\n" + text)
        payload = json.loads(raw)
        kind = "result" if "/results/" in topic else topic.rsplit("/", 1)[-1].rstrip("s")
        validator = self._validators.get(kind)
        errors = [] if validator is None else [e.message for e in validator.iter_errors(payload)]
        with self._cond:
            self.kinds[kind] += 1
            if errors:
                self.invalid.append(f"{topic}: {errors[0][:200]}")
            mid = payload.get("message_id")
            if mid is not None and mid in self._seen:
                return
            if mid is not None:
                self._seen.add(mid)
            if kind == "event":
                self.events[(payload.get("type", "?"), payload.get("reason", "?"))] += 1
                if payload.get("type") == "rejected" and "status" in payload:
                    self.rejected_status[int(payload["status"])] += 1
                if payload.get("type") in OUTCOME_EVENTS and "instance" in payload:
                    self.by_instance[payload["instance"]][payload["type"]].add(mid or "")
            elif kind == "result":
                self.by_instance[payload["instance"]][f"result:{payload['model']['name']}"].add(mid or "")
            self._cond.notify_all()

    def wait_quiet(self, predicate, timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked on every message and twice a second)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LogTail:
    """Scans the daemon's log as it grows (whole lines only), so a long run keeps no copy."""

    def __init__(self, path: Path, scanner: PhiScanner):
        self.path, self.scanner = path, scanner
        self.offset = 0
        self.lines = 0
        self.tracebacks = 0
        self.errors = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if not end:
            return
        self.offset += end
        text = data[:end].decode("utf-8", "replace")
        self.lines += text.count("\n")
        self.tracebacks += text.count("Traceback (most recent call last)")
        self.errors += text.count(" ERROR ")
        self.scanner.scan("log", text)
