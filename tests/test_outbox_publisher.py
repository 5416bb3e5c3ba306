"""The outbox publisher against a real mosquitto: PUBACK decides delivery."""

from __future__ import annotations

import time
from pathlib import Path

from edged.config.schema import MqttConfig
from edged.localbroker import LocalBroker
from edged.mqtt import messages
from edged.mqtt.publisher import Publisher
from edged.outbox.db import Database
from edged.outbox.store import Outbox
from helpers import Collector

TOPICS = messages.Topics("edged/v1", "acl-node")


def wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def publisher(port: int, outbox: Outbox) -> Publisher:
    cfg = MqttConfig(host="127.0.0.1", port=port, resend_after_s=1)
    status = lambda state: messages.status("acl-node", state)  # noqa: E731
    return Publisher(cfg, "edged-acl-node", outbox, TOPICS.status, lambda: status("online"), lambda: status("offline"))


def test_refused_publish_stays_in_the_outbox_until_the_broker_accepts_it(tmp_path: Path, caplog):
    # mosquitto with an ACL that lets this client write events and status but not results:
    # MQTT v5 answers PUBACK 0x87 (not authorized), which must not count as delivered.
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edged/v1/acl-node/events\ntopic readwrite edged/v1/acl-node/status\n"
                   "topic read edged/#\n")
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = LocalBroker(workdir, extra_conf=f"acl_file {acl}\n").start()
    outbox = Outbox(Database(tmp_path / "edged.db"))
    result = {"message_id": "a" * 32, "schema": "edged.result/v1"}
    event = messages.event("acl-node", "skipped", "sop_class", message_id="b" * 32)
    outbox.add_message(TOPICS.results("m"), result)
    outbox.add_message(TOPICS.events, event)
    pub = publisher(broker.port, outbox)
    pub.start()
    try:
        wait(lambda: outbox.pending_count() == 1)  # the event was acknowledged, the result refused
        pending = outbox.due(10, time.time() + 1, set())
        assert [r.message_id for r in pending] == ["a" * 32] and pending[0].attempts >= 1
        assert "refused message" in caplog.text

        broker.stop()  # the gateway admin fixes the ACL; the same broker comes back
        acl.write_text("topic readwrite edged/#\n")
        broker.start()
        collector = Collector(broker.port, topic=TOPICS.results("m"))
        wait(lambda: outbox.pending_count() == 0, timeout=40)
        collector.wait_for(lambda c: len(c.messages) >= 1)
        assert collector.messages[0][1]["message_id"] == "a" * 32
        collector.close()
    finally:
        pub.stop(flush_timeout=2)
        broker.stop()


def test_restart_resends_unacknowledged_rows_and_status_is_retained(tmp_path: Path, broker):
    outbox = Outbox(Database(tmp_path / "edged.db"))
    for i in range(20):
        outbox.add_message(TOPICS.results("m"), {"message_id": f"{i:032x}", "schema": "x"})
    # a previous run sent these but died before the PUBACK: they are due again at start
    outbox.mark_sent([r.id for r in outbox.due(20, time.time() + 1, set())])
    c = Collector(broker.port)
    pub = publisher(broker.port, outbox)
    pub.start()
    try:
        c.wait_for(lambda c: len({p["message_id"] for p in c.of("results/")}) == 20)
        wait(lambda: outbox.pending_count() == 0)
    finally:
        pub.stop()
    c.wait_for(lambda c: c.of("status")[-1]["state"] == "offline")
    late = Collector(broker.port, topic=TOPICS.status)  # a gateway connecting later sees the retained state
    late.wait_for(lambda c: len(c.messages) == 1)
    assert late.messages[0][2] is True and late.messages[0][1]["state"] == "offline"
    late.close()
    c.close()


def test_messages_in_flight_across_a_broker_crash_are_delivered_once(tmp_path: Path, broker):
    """paho re-sends unacknowledged QoS 1 messages itself after reconnecting; the publisher must
    not publish those rows again (which would double the traffic when a link comes back)."""
    import signal

    outbox = Outbox(Database(tmp_path / "edged.db"))
    c = Collector(broker.port, topic=TOPICS.results("m"), persistent=True)
    time.sleep(1.5)  # the broker autosaves the subscriber's session every second
    pub = publisher(broker.port, outbox)
    pub.start()
    try:
        wait(lambda: pub.connected.is_set())
        broker.proc.send_signal(signal.SIGSTOP)  # accepts nothing more, acknowledges nothing
        for i in range(10):
            outbox.add_message(TOPICS.results("m"), {"message_id": f"{i:032x}", "schema": "x"})
        pub.wake()
        wait(lambda: len(pub._inflight) == 10)  # published, PUBACKs pending
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait()
        broker.start()
        wait(lambda: outbox.pending_count() == 0, timeout=40)
        time.sleep(2)
        ids = [p["message_id"] for _, p, _ in c.messages]
        assert sorted(set(ids)) == [f"{i:032x}" for i in range(10)]
        assert len(ids) == 10, f"{len(ids)} deliveries for 10 messages"
    finally:
        pub.stop(flush_timeout=2)
        c.close()


def test_publisher_survives_a_full_disk_at_start_and_delivers_once_there_is_room(tmp_path: Path, broker,
                                                                                 small_fs, caplog):
    """Defect (issue #8): with unacknowledged rows and a full disk at start-up, reset_unacked()
    raised "database or disk is full" outside the retry loop and the thread died: the daemon
    kept acknowledging and inferring but published nothing, and results written meanwhile
    stayed stuck until a restart."""
    disk = small_fs(4 << 20)
    outbox = Outbox(Database(disk / "edged.db"))
    for i in range(3):
        outbox.add_message(TOPICS.events, messages.event("acl-node", "skipped", "sop_class", message_id=f"{i:032x}"))
    outbox.mark_sent([1, 2, 3])  # sent by an earlier run, never acknowledged
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    collector = Collector(broker.port, topic=TOPICS.events)
    pub = publisher(broker.port, Outbox(Database(disk / "edged.db", synchronous="NORMAL")))
    pub.start()
    try:
        wait(lambda: "publisher iteration failed" in caplog.text)
        time.sleep(1.5)
        assert pub.is_alive()
        filler.unlink()
        wait(lambda: outbox.pending_count() == 0, timeout=30)
        collector.wait_for(lambda c: len(c.messages) >= 3)
        assert sorted(p["message_id"] for _, p, _ in collector.messages) == [f"{i:032x}" for i in range(3)]
        assert "publisher works again" in caplog.text
    finally:
        pub.stop(flush_timeout=2)
        collector.close()


def test_volatile_newest_wins_per_topic_and_retained_volatile_follows_reconnects(tmp_path: Path):
    """Camera availability is retained but volatile: a change made while the broker was away must
    reach the broker's retained copy after the reconnect; a burst on one topic sends its newest
    payload, never at the cost of another topic's."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = LocalBroker(workdir).start()
    pub = publisher(broker.port, Outbox(Database(tmp_path / "edged.db")))
    cam = TOPICS.camera_availability("door")
    pub.start()
    try:
        wait(lambda: pub.connected.is_set())
        for i in range(50):  # a burst: only the newest per topic waits, and the other topic survives it
            pub.offer(TOPICS.detections("door", "m"), {"schema": "x", "i": i})
        pub.offer(cam, b"online", retain=True, qos=1)
        c = Collector(broker.port, topic="edged/v1/acl-node/cameras/#")
        wait(lambda: any(t == cam and p == "online" for t, p, _ in c.messages))
        c.close()
        broker.stop()
        wait(lambda: not pub.connected.is_set())
        pub.offer(cam, b"offline", retain=True, qos=1)  # while the broker is away
        broker.start()
        wait(lambda: pub.connected.is_set(), 40)
        late = Collector(broker.port, topic="edged/v1/acl-node/cameras/#")  # a new subscriber: retained only
        wait(lambda: [p for t, p, r in late.messages if t == cam])
        assert [(p, r) for t, p, r in late.messages if t == cam] == [("offline", True)]
        late.close()
    finally:
        pub.stop(flush_timeout=2)
        broker.stop()
