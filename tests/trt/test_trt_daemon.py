"""The worker inside the running daemon: kill -9 it in the middle of a stream of batches and
every acknowledged image still gets a result (retried) or an error event; the restarts are
visible on MQTT and in the log; the daemon keeps serving."""

from __future__ import annotations

import threading
import time

import psutil

from helpers import cr_variants, storescu


def worker_pids(daemon_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(daemon_pid).children(recursive=True)
            if any("child.py" in part for part in p.cmdline())]


def test_killing_the_worker_mid_stream_loses_nothing(chexnet_ready, daemon_factory, collector, tmp_path):
    d = daemon_factory(repo=chexnet_ready, models=[{"name": "chexnet", "backend": "auto"}],
                       tensorrt={"batch_timeout_s": 20}).start()
    collector.wait_for(lambda c: any(s["state"] == "online" for s in c.of("status")))
    status = [s for s in collector.of("status") if s["state"] == "online"][-1]
    assert "isolated worker" in status["models"][0]["backend_reason"]  # auto → ONNX Runtime, with the reason

    files = cr_variants(tmp_path, 12)
    sender = threading.Thread(target=lambda: [storescu(d.port, f) for f in files])
    sender.start()
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 3 and time.monotonic() < deadline:
        pids = worker_pids(d.proc.pid)
        if pids and collector.results():  # the worker is up and has produced at least one result
            psutil.Process(pids[0]).kill()
            kills += 1
            time.sleep(0.4)
        time.sleep(0.05)
    sender.join()
    assert kills == 3

    def settled(c) -> bool:
        done = {r["instance"] for r in c.results()} | {e["instance"] for e in c.events("error") if "instance" in e}
        return len(done) == 12

    collector.wait_for(settled, timeout=120)
    reasons = [e["reason"] for e in collector.events("backend")]
    assert "worker_crashed" in reasons and "worker_restarted" in reasons
    assert "worker_restarted" in d.log.read_text()
    later = tmp_path / "later"
    later.mkdir()
    assert storescu(d.port, *cr_variants(later, 1)).returncode == 0  # and it keeps serving
    collector.wait_for(lambda c: len({r["instance"] for r in c.results()}
                                     | {e.get("instance") for e in c.events("error")} - {None}) == 13)
    assert d.terminate() == 0
