"""Faults of a real RTSP camera (a gst-rtsp-server on loopback), seen where a gateway sees them:
on MQTT. A frozen server (SIGSTOP, sockets open), a capture helper killed with -9, a server that
goes away and comes back 10 s later."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest

from camkit import camera, helper_pids, wait_until

pytestmark = pytest.mark.slow
STALL = 2.0
BACKOFF = {"initial_s": 0.5, "max_s": 4.0, "jitter": 0.2}


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_stall_crash_and_outage_of_an_rtsp_camera(daemon_factory, collector, rtsp, camera_repo):
    server = rtsp(width=160, height=96, fps=10)
    d = daemon_factory(repo=camera_repo, models=[{"name": "chexnet-tiny"}, {"name": "detector-tiny"}],
                       cameras=[camera("door", server.url(), ["detector-tiny"], fps=4, stall_timeout_s=STALL,
                                       latency_ms=50, backoff=BACKOFF)],
                       capture={"state_interval_s": 1}).start()

    def availability() -> list[tuple[float, str]]:
        return collector.timed("/cameras/door/availability")

    def last_availability() -> str | None:
        a = availability()
        return a[-1][1] if a else None

    def camera_events(reason: str) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in collector.timed("/events") if e["type"] == "camera" and e["reason"] == reason]

    wait_until(lambda: last_availability() == "online", 30, "the camera online")
    assert camera_events("online")
    wait_until(lambda: collector.of("cameras/door/detections/detector-tiny"), 10, "detections")

    # 1. the server freezes with its sockets open: stalled within stall_timeout_s + 2 s
    t0 = time.monotonic()
    server.signal(signal.SIGSTOP)
    stalled = wait_until(lambda: camera_events("stalled"), STALL + 5, "a stalled event")
    assert stalled[0][0] - t0 <= STALL + 2.0, f"stalled reported after {stalled[0][0] - t0:.2f} s"
    # the availability message is a message of its own: it may arrive just after the event
    offline = wait_until(lambda: [t for t, v in availability() if v == "offline" and t > t0], STALL + 5,
                         "offline availability")
    assert offline[0] - t0 <= STALL + 2.0, f"offline after {offline[0] - t0:.2f} s"
    server.signal(signal.SIGCONT)
    wait_until(lambda: camera_events("reconnected"), 30, "reconnected after SIGCONT")
    wait_until(lambda: last_availability() == "online", 5, "online again")

    # 2. the capture helper is killed: a restarted event, then frames again
    (pid,) = helper_pids(d.proc.pid)
    os.kill(pid, signal.SIGKILL)
    restarted = wait_until(lambda: camera_events("restarted"), 10, "a restarted event")
    assert "signal 9" in restarted[0][1]["detail"]
    wait_until(lambda: len(camera_events("reconnected")) >= 2, 20, "frames after the restart")
    assert helper_pids(d.proc.pid) and helper_pids(d.proc.pid) != [pid]

    # 2b. a helper that hangs (stopped: it can say nothing itself) is found by the daemon's watchdog
    (pid,) = helper_pids(d.proc.pid)
    before = len(camera_events("stalled"))
    t2 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    hung = wait_until(lambda: camera_events("stalled")[before:], STALL + 5, "the hung helper found")
    assert hung[0][0] - t2 <= STALL + 2.0
    wait_until(lambda: len(camera_events("reconnected")) >= 3, 20, "frames after the hung helper")
    assert pid not in helper_pids(d.proc.pid)

    # 3. the server goes away: offline at once; back 10 s later: recovers with the configured backoff
    t1 = time.monotonic()
    server.kill()
    lost = wait_until(lambda: [t for t, v in availability() if v == "offline" and t > t1], 5, "offline")
    assert lost[0] - t1 <= 2.0, f"offline after {lost[0] - t1:.2f} s"
    assert wait_until(lambda: [e for t, e in camera_events("offline") if t > t1], 5, "an offline event")
    time.sleep(10)
    server.start()
    back = wait_until(lambda: [e for t, e in camera_events("reconnected") if t > t1], 20, "reconnected")
    wait_until(lambda: last_availability() == "online", 5, "online after the outage")
    assert back[0]["fields"]["attempts"] >= 3

    # every backoff the state reported during the outage follows initial·2^(n-1) capped at max, ± jitter
    states = [s for t, s in collector.timed("/cameras/door/state") if t > t1 and s["state"] == "backoff"]
    seen = {}
    for s in states:
        n = s["attempts"]
        base = min(BACKOFF["max_s"], BACKOFF["initial_s"] * 2 ** (n - 1))
        assert base * (1 - BACKOFF["jitter"]) - 0.01 <= s["backoff_s"] <= base * (1 + BACKOFF["jitter"]) + 0.01, s
        assert _ts(s["next_attempt"]) > _ts(s["last_attempt"])
        seen[n] = s
    assert len(seen) >= 3, f"backoff states seen for attempts {sorted(seen)}"
    starts = sorted(_ts(s["last_attempt"]) for s in seen.values())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == sorted(gaps) or max(gaps) >= BACKOFF["max_s"] * (1 - BACKOFF["jitter"]), gaps

    state = wait_until(lambda: [s for _, s in collector.timed("/cameras/door/state") if s["reconnects"] >= 4], 5,
                       "the state counting four reconnects")[-1]
    assert state["restarts"] >= 1 and state["state"] == "streaming"
    assert d.terminate() == 0
    assert last_availability() == "offline"
