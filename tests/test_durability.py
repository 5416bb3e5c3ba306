"""Nothing acknowledged is ever lost — shown by killing the daemon and the broker.

At-least-once with stable ids: a message may arrive twice, but then with the same
``message_id``; every acknowledged image gets exactly one distinct result id.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from edged.localbroker import free_port
from helpers import Collector, cr_variants, scrape_metrics, storescu


def queued(metrics_port: int) -> float:
    """Requests waiting in the batchers, from the daemon's /metrics."""
    return sum(s.value for samples in scrape_metrics(metrics_port).values() for s in samples
               if s.name == "edged_inference_pending_request_count")


def distinct_results(c: Collector) -> dict[str, dict]:
    return {r["message_id"]: r for r in c.results()}


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (the decode pool's forkserver and workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        kids = []
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:  # threads come and go while this reads
                kids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        found += kids
        todo += kids
    return found


def test_kill9_after_ack_then_restart_delivers_every_result(daemon_factory, broker, tmp_path):
    files = cr_variants(tmp_path, 5)
    c = Collector(broker.port, persistent=True)
    held: list[int] = []
    try:
        # The decode processes are stopped (SIGSTOP), so every image is acknowledged (spooled) and
        # none can reach inference before the kill. (A long queue delay used to hold them, but a
        # request that finds the backend idle leaves at once: whether the next image found it idle
        # was a matter of timing.)
        d = daemon_factory().start()
        held = descendants(d.proc.pid)
        assert held, "no decode process to hold"
        for pid in held:
            os.kill(pid, signal.SIGSTOP)
        sent = storescu(d.port, *files)
        assert sent.returncode == 0, sent.stderr
        d.kill9()
        c.wait_for(lambda c: any(p["state"] == "offline" for p in c.of("status")))  # the broker's LWT
        assert not distinct_results(c)
        assert len(list((tmp_path / "state" / "spool").glob("*.dcm"))) == 5

        d2 = daemon_factory().start()  # same state_dir, its own decode processes
        c.wait_for(lambda c: len(distinct_results(c)) == 5)
        instances = {r["instance"] for r in distinct_results(c).values()}
        assert len(instances) == 5
        assert d2.terminate() == 0
        assert not list((tmp_path / "state" / "spool").glob("*.dcm"))
    finally:
        for pid in held:  # orphans of the killed daemon, still stopped
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        c.close()


def test_broker_outage_during_load_loses_nothing(daemon_factory, broker, tmp_path):
    files = cr_variants(tmp_path, 8)
    c = Collector(broker.port, persistent=True)
    try:
        d = daemon_factory().start()
        assert storescu(d.port, *files[:3]).returncode == 0
        c.wait_for(lambda c: len(distinct_results(c)) == 3)
        broker.stop()
        assert storescu(d.port, *files[3:6]).returncode == 0  # DICOM keeps working without the broker
        time.sleep(1.0)
        broker.start()
        assert storescu(d.port, *files[6:]).returncode == 0
        c.wait_for(lambda c: len(distinct_results(c)) == 8, timeout=90)
        by_instance: dict[str, set[str]] = {}
        for r in c.results():
            by_instance.setdefault(r["instance"], set()).add(r["message_id"])
        assert len(by_instance) == 8
        assert all(len(ids) == 1 for ids in by_instance.values()), "a re-send must keep its message_id"
        assert "disconnected from broker" in d.log.read_text()
        assert d.terminate() == 0
        c.wait_for(lambda c: c.of("status")[-1]["state"] == "offline")
    finally:
        c.close()


def test_broker_down_at_start_then_up(daemon_factory, broker, tmp_path):
    """The daemon starts and acknowledges images with no broker; results flow once it is up."""
    files = cr_variants(tmp_path, 2)
    c = Collector(broker.port, persistent=True)  # its session survives the broker restart
    time.sleep(0.5)
    broker.stop()
    d = daemon_factory().start()
    assert storescu(d.port, *files).returncode == 0
    broker.start()
    try:
        c.wait_for(lambda c: len(distinct_results(c)) == 2, timeout=90)
        assert c.of("status")[-1]["state"] == "online"
    finally:
        c.close()
        assert d.terminate() == 0


def test_sigterm_finishes_queued_work_flushes_and_goes_offline(chexnet_ready, daemon_factory, broker, tmp_path):
    """Images waiting in the batcher (10 s queue delay) when SIGTERM arrives are inferred and
    published before the retained status turns offline; the spool is empty afterwards.

    The reference DenseNet-121 on one thread (~0.1-0.3 s per image here) keeps the backend busy
    with the first image, which found it idle and left at once: the next two arrive while it is
    busy and wait out the delay. (With the ~1 ms tiny model each image found the backend idle
    again and left at once as often as not.)"""
    files = cr_variants(tmp_path, 3)
    c = Collector(broker.port)
    try:
        port = free_port()
        d = daemon_factory(repo=chexnet_ready, models=[{"name": "chexnet", "threads": 1, "batching": {
            "max_batch_size": 64, "max_queue_delay_ms": 10000, "max_queue_size": 64}}],
            telemetry={"prometheus": {"enabled": True, "port": port}}).start()
        assert storescu(d.port, *files).returncode == 0
        assert len(distinct_results(c)) <= 1  # only the first, dispatched on the idle backend, can be out
        deadline = time.monotonic() + 8  # the premise, checked: images are waiting in the batcher
        while queued(port) < 1:
            assert time.monotonic() < deadline, "no image waited in the batcher: nothing to drain"
            time.sleep(0.05)
        assert d.terminate(timeout=30) == 0
        c.wait_for(lambda c: len(distinct_results(c)) == 3 and c.of("status")[-1]["state"] == "offline")
        order = [("results/" in t, p.get("state")) for t, p, _ in c.messages]
        last_result = max(i for i, (is_result, _) in enumerate(order) if is_result)
        assert order.index((False, "offline")) > last_result, "offline was published before the results"
        assert not list((tmp_path / "state" / "spool").glob("*.dcm"))
    finally:
        c.close()


def test_small_queue_override_still_processes_every_acknowledged_image(chexnet_ready, daemon_factory, broker,
                                                                       tmp_path):
    """A config that shrinks the batcher's queue below the manifest's: preprocessing (~8 ms)
    outpaces inference (~20 ms), and every image must still be inferred while the daemon runs."""
    files = cr_variants(tmp_path, 6)
    c = Collector(broker.port)
    try:
        d = daemon_factory(repo=chexnet_ready, models=[{"name": "chexnet", "batching": {
            "max_batch_size": 1, "max_queue_delay_ms": 0, "max_queue_size": 1}}]).start()
        assert storescu(d.port, *files).returncode == 0
        c.wait_for(lambda c: len(distinct_results(c)) == 6, timeout=60)
        assert "Traceback" not in d.log.read_text()
        assert d.terminate() == 0
    finally:
        c.close()
