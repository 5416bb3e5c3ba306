"""The one thread that talks to the broker.

paho-mqtt keeps in-flight QoS 1 messages in memory only, and ``wait_for_publish`` raises
while disconnected even though the message may be delivered later; so delivery is tracked
here, from PUBACKs (MQTT v5 reason code < 0x80) reported to ``on_publish``. Callbacks run on
paho's network thread and only enqueue; all bookkeeping happens on this thread, which avoids
the lock-ordering deadlocks reported against paho.

Every outbox call happens inside the thread's retry loop, the start-up reset included: a full
disk is a state this thread waits out (logging it once), not a reason to die. A connection
that fails (refused, TLS certificate or host name wrong) is logged at once with its reason,
again whenever the reason changes, and not again while it stays the same.

Volatile messages (telemetry, camera detections, camera availability and state) never touch the
outbox: :meth:`offer` keeps the newest payload per topic until the next send, so a topic that
is offered faster than it can be sent loses its older payloads, never other topics' ones.
Retained volatile messages are also remembered and sent again after every (re)connect, so the
broker's retained copy follows a change that happened while it was away.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from edged.config.schema import MqttConfig
from edged.outbox.store import Outbox, encode

log = logging.getLogger("edged.mqtt")


class Publisher(threading.Thread):
    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        outbox: Outbox,
        status_topic: str,
        birth: Callable[[], dict],
        offline: Callable[[], dict],
    ):
        super().__init__(name="mqtt-publisher", daemon=True)
        self.cfg = cfg
        self.outbox = outbox
        self.status_topic = status_topic
        self.birth = birth
        self.offline = offline
        self._acks: queue.Queue[tuple[str, object]] = queue.Queue()
        self._inflight: dict[int, tuple[int, float]] = {}  # paho mid -> (outbox row id, sent at)
        self._stopping = threading.Event()
        # topic -> (payload, qos, retain): newest wins per topic, never stored
        self._volatile: dict[str, tuple[bytes, int, bool]] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}  # re-sent after every (re)connect
        self._volatile_lock = threading.Lock()
        self._wake = threading.Event()
        self.connected = threading.Event()
        self._last_failure: str | None = None
        self._client = self._make_client(client_id)

    # -- paho setup ----------------------------------------------------------------------
    def _make_client(self, client_id: str) -> mqtt.Client:
        c = configured_client(self.cfg, client_id)
        c.will_set(self.status_topic, encode(self.offline()), qos=1, retain=True)
        c.max_inflight_messages_set(self.cfg.max_inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = lambda cl, ud, flags, rc, props: self._acks.put(("connect", rc))
        c.on_disconnect = lambda cl, ud, flags, rc, props: self._acks.put(("disconnect", rc))
        c.on_publish = lambda cl, ud, mid, rc, props: self._acks.put(("puback", (mid, rc)))
        # paho calls this inside its ``except OSError`` around a failed (re)connect and keeps the
        # exception to itself; it is still the one being handled, so its reason can be read here.
        c.on_connect_fail = lambda cl, ud: self._acks.put(("connect_fail", describe_failure(sys.exc_info()[1])))
        return c

    # -- lifecycle -----------------------------------------------------------------------
    def offer(self, topic: str, payload: dict | bytes, *, retain: bool = False, qos: int = 0) -> None:
        """Publish if connected, drop otherwise: for telemetry and detections, which are stale by
        the time a broker comes back and must not fill the outbox during an outage. Only the
        newest payload per topic waits. ``retain``: also remembered and re-sent after reconnects."""
        data = payload if isinstance(payload, bytes) else encode(payload)
        with self._volatile_lock:
            self._volatile.pop(topic, None)  # re-insert: the order of sending follows the offers
            self._volatile[topic] = (data, qos, retain)
            if retain:
                self._retained[topic] = (data, qos)
        self._wake.set()

    def republish_status(self) -> None:
        """Send a fresh retained birth message (after a power-mode change, a model reload)."""
        with self._volatile_lock:
            self._volatile[self.status_topic] = (b"", 1, True)
        self._wake.set()

    def wake(self) -> None:
        """Tell the publisher new rows are in the outbox (it also polls)."""
        self._wake.set()

    def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s,
                                   clean_start=True, properties=props)
        self._client.loop_start()
        reset_done = False
        last_purge = 0.0
        failing = False
        while not self._stopping.is_set():
            try:
                if not reset_done:  # sent by an earlier run, never acknowledged: due again now
                    self.outbox.reset_unacked()
                    reset_done = True
                self._drain_acks(timeout=0.05)
                if self.connected.is_set():
                    self._forget_stale()
                    self._send_due()
                    self._send_volatile()
                if time.monotonic() - last_purge > 600:
                    self.outbox.purge_delivered(self.cfg.delivered_retention_h * 3600)
                    last_purge = time.monotonic()
                if failing:
                    log.warning("publisher works again")
                    failing = False
            except Exception as exc:  # e.g. SQLite "disk is full": keep the thread, retry shortly
                if not failing:
                    log.exception("publisher iteration failed (%s); retrying every second", exc)
                failing = True
                self._stopping.wait(1.0)
            self._wake.wait(0.2)
            self._wake.clear()

    def stop(self, flush_timeout: float = 10.0) -> None:
        """Flush what is due for up to ``flush_timeout`` s, publish ``offline``, disconnect."""
        self._stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=5)
        deadline = time.monotonic() + flush_timeout
        while self.connected.is_set() and time.monotonic() < deadline:
            self._send_due()
            self._drain_acks(timeout=0.1)
            if not self._inflight and self.outbox.pending_count() == 0:
                break
        if self.connected.is_set():
            self._send_volatile()  # e.g. cameras' retained "offline", offered while stopping
            info = self._client.publish(self.status_topic, encode(self.offline()), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(1.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                log.warning("could not confirm the offline status before disconnecting")
        self._client.disconnect()
        self._client.loop_stop()

    # -- work ----------------------------------------------------------------------------
    def _drain_acks(self, timeout: float) -> None:
        delivered: list[int] = []
        try:
            kind, value = self._acks.get(timeout=timeout)
            while True:
                self._handle(kind, value, delivered)
                kind, value = self._acks.get_nowait()
        except queue.Empty:
            pass
        self.outbox.mark_delivered(delivered)

    def _handle(self, kind: str, value: object, delivered: list[int]) -> None:
        if kind == "connect_fail":
            reason = str(value)
            if reason != self._last_failure:
                log.error("cannot connect to broker %s:%s: %s (retrying with backoff)", self.cfg.host, self.cfg.port,
                          reason)
                self._last_failure = reason
            return
        if kind == "connect":
            rc = value
            if getattr(rc, "is_failure", False):
                reason = f"refused: {rc}"
                if reason != self._last_failure:
                    log.error("broker %s:%s refused the connection: %s", self.cfg.host, self.cfg.port, rc)
                    self._last_failure = reason
                return
            log.info("connected to broker %s:%s", self.cfg.host, self.cfg.port)
            self._last_failure = None
            self._client.publish(self.status_topic, encode(self.birth()), qos=1, retain=True)
            with self._volatile_lock:
                for topic, (data, qos) in self._retained.items():
                    self._volatile.setdefault(topic, (data, qos, True))
            # In-flight rows stay in flight: paho re-sends its unacknowledged messages under the
            # same mids, so publishing them again would deliver each twice. _forget_stale() covers
            # anything paho does not re-send; its clock restarts now, when paho re-sends.
            now = time.monotonic()
            self._inflight = {mid: (row_id, now) for mid, (row_id, _) in self._inflight.items()}
            self.connected.set()
        elif kind == "disconnect":
            if self.connected.is_set():
                log.warning("disconnected from broker (%s); outbox keeps %d messages", value, self.outbox.pending_count())
            self.connected.clear()
        elif kind == "puback":
            mid, rc = value  # type: ignore[misc]
            entry = self._inflight.pop(mid, None)
            if entry is None:
                return
            row_id = entry[0]
            if getattr(rc, "is_failure", False):
                log.error("broker refused message row %d: %s; it stays in the outbox", row_id, rc)
            else:
                delivered.append(row_id)

    def _send_volatile(self) -> None:
        with self._volatile_lock:
            due, self._volatile = self._volatile, {}
        for topic, (payload, qos, retain) in due.items():
            if topic == self.status_topic:
                self._client.publish(topic, encode(self.birth()), qos=1, retain=True)
            else:
                self._client.publish(topic, payload, qos=qos, retain=retain)

    def _send_due(self) -> None:
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        resend_before = time.time() - self.cfg.resend_after_s
        sent: list[int] = []
        in_flight = {row_id for row_id, _ in self._inflight.values()}
        for row in self.outbox.due(room, resend_before, in_flight):
            info = self._client.publish(row.topic, row.payload, qos=row.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.debug("publish deferred (rc=%s)", info.rc)
                break
            self._inflight[info.mid] = (row.id, time.monotonic())
            sent.append(row.id)
        self.outbox.mark_sent(sent)

    def _forget_stale(self) -> None:
        """Give up waiting for PUBACKs that should long have come (a message paho dropped across a
        reconnect): the row becomes due again and is re-sent with the same message_id."""
        limit = time.monotonic() - max(30.0, 3 * self.cfg.resend_after_s)
        for mid in [mid for mid, (_, sent) in self._inflight.items() if sent < limit]:
            del self._inflight[mid]


def configured_client(cfg: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho client with the configured credentials and TLS (``edged check --connect`` uses the
    same, so it tries exactly what the daemon will)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if cfg.username_file and cfg.password_file:
        c.username_pw_set(_read_secret(cfg.username_file), _read_secret(cfg.password_file))
    if cfg.tls is not None:
        t = cfg.tls
        c.tls_set(
            ca_certs=str(t.ca_file) if t.ca_file else None,
            certfile=str(t.cert_file) if t.cert_file else None,
            keyfile=str(t.key_file) if t.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        c.tls_insecure_set(t.insecure)
    return c


def describe_failure(exc: BaseException | None) -> str:
    """A connection failure in words: TLS verification and host name errors say so plainly."""
    if exc is None:
        return "connection failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running on that port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker's host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or "connection failed"


def _read_secret(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8").strip()
