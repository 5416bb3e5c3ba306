"""sd_notify over a real AF_UNIX datagram socket set as NOTIFY_SOCKET (path and abstract)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edged.service.sdnotify import MAX_STATUS, Notifier, WatchdogPinger

if TYPE_CHECKING:
    from conftest import NotifyReceiver

REPO = Path(__file__).resolve().parents[2]


def test_each_message_is_one_datagram_from_our_pid(notify_socket: NotifyReceiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": notify_socket.name})
    assert n.enabled
    assert n.status("loading models 1/2")
    assert n.extend_timeout(90_000_000)
    assert n.ready(status="ready: 1 model, SCP on :11112")
    assert n.watchdog()
    assert n.stopping("draining batcher")
    got = [notify_socket.recv() for _ in range(5)]
    assert [g[0] for g in got if g] == [
        "STATUS=loading models 1/2",
        "EXTEND_TIMEOUT_USEC=90000000",
        "READY=1\nSTATUS=ready: 1 model, SCP on :11112",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=draining batcher",
    ]
    assert {g[1] for g in got if g} == {os.getpid()}, "NotifyAccess=main checks the sender PID"
    assert notify_socket.recv(0.05) is None


def test_status_is_one_bounded_line(path_notify_socket: NotifyReceiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_notify_socket.name})
    n.status("building engine chexnet\nfp16 3/4,   45%\r\n")
    assert path_notify_socket.recv()[0] == "STATUS=building engine chexnet fp16 3/4, 45%"
    n.status("x" * 5000)
    text = path_notify_socket.recv()[0]
    assert text.startswith("STATUS=xxx") and len(text) == len("STATUS=") + MAX_STATUS


def test_bad_assignments_are_rejected_not_sent(path_notify_socket: NotifyReceiver) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_notify_socket.name})
    with pytest.raises(ValueError):
        n.notify("READY=1\nWATCHDOG=1")  # a caller smuggling a second assignment
    with pytest.raises(ValueError):
        n.extend_timeout(0)
    with pytest.raises(ValueError):
        n.extend_timeout(1.5)  # type: ignore[arg-type]
    assert path_notify_socket.recv(0.05) is None


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.status("x") is False
    assert n.watchdog_interval() is None
    assert WatchdogPinger(n, lambda: True).start() is False


def test_unsupported_socket_forms_disable_notifications(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled and n.ready() is False
    assert "notifications disabled" in caplog.text


def test_a_vanished_socket_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/tmp/edged-no-such-dir/notify"})
    assert n.watchdog() is False and n.watchdog() is False
    assert caplog.text.count("sd_notify to /tmp/edged-no-such-dir/notify failed") == 1


def test_watchdog_interval_follows_sd_watchdog_enabled() -> None:
    me = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "60000000"}).watchdog_interval() == 60.0
    assert Notifier({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": me}).watchdog_interval() == 60.0
    assert Notifier({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval() is None


def test_unset_environment_keeps_children_from_notifying(monkeypatch: pytest.MonkeyPatch,
                                                         path_notify_socket: NotifyReceiver) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_notify_socket.name)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    n = Notifier(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert n.enabled and n.watchdog_interval() == 2.0
    assert n.ready()
    assert path_notify_socket.recv()[0] == "READY=1"


def test_pinger_pings_only_while_progress_is_ok(notify_socket: NotifyReceiver) -> None:
    """A hung backend (progress_ok False) stops the pings; recovery resumes them."""
    n = Notifier({"NOTIFY_SOCKET": notify_socket.name, "WATCHDOG_USEC": "100000"})
    healthy = threading.Event()
    healthy.set()
    pinger = WatchdogPinger(n, healthy.is_set)
    assert pinger.interval == pytest.approx(0.05), "interval is half of WatchdogSec"
    with pinger:
        first = [notify_socket.recv(1.0) for _ in range(3)]
        assert [f[0] for f in first if f] == ["WATCHDOG=1"] * 3

        healthy.clear()  # the backend hangs
        time.sleep(pinger.interval * 1.5)  # let a tick that was already past the check finish
        notify_socket.drain()
        assert notify_socket.recv(pinger.interval * 6) is None, "no WATCHDOG while hung"
        assert pinger.healthy is False and pinger.pings_withheld >= 3

        healthy.set()  # the batch finished after all
        again = notify_socket.recv(1.0)
        assert again is not None and again[0] == "WATCHDOG=1"
        assert pinger.healthy is True
    sent = pinger.pings_sent
    time.sleep(pinger.interval * 3)
    assert pinger.pings_sent == sent, "stop() ends the thread"


def test_a_raising_progress_check_counts_as_no_progress(path_notify_socket: NotifyReceiver,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("batcher state unreadable")

    pinger = WatchdogPinger(Notifier({"NOTIFY_SOCKET": path_notify_socket.name}), broken, interval=1.0)
    assert pinger.tick() is False and pinger.tick() is False
    assert path_notify_socket.recv(0.1) is None
    assert caplog.text.count("progress check raised") == 1


DAEMON_LIKE = textwrap.dedent("""
    import signal, sys, threading, time
    from edged.service.sdnotify import Notifier, WatchdogPinger

    n = Notifier(unset_environment=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    n.status("warming up")
    time.sleep(0.2)  # "loading models"
    pinger = WatchdogPinger(n, lambda: True)
    pinger.start()
    n.ready("serving")
    stop.wait(30)
    pinger.stop()
    n.stopping("shutting down")
""")


def test_a_process_reads_the_environment_like_under_systemd(path_notify_socket: NotifyReceiver) -> None:
    """READY after warm-up, WATCHDOG while serving, STOPPING on SIGTERM, all from the main PID."""
    env = dict(os.environ, NOTIFY_SOCKET=path_notify_socket.name, WATCHDOG_USEC="200000",
               PYTHONPATH=str(REPO))
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_LIKE], env=env)
    try:
        seen: list[str] = []
        while not any(s.startswith("READY=1") for s in seen):
            item = path_notify_socket.recv(10)
            assert item is not None, f"no READY=1; got {seen}"
            assert item[1] == proc.pid
            seen.append(item[0])
        assert seen[0] == "STATUS=warming up", "status before ready"
        pings = [path_notify_socket.recv(2) for _ in range(2)]
        assert all(p and p[0] == "WATCHDOG=1" for p in pings)
        proc.terminate()
        assert proc.wait(10) == 0
        tail = path_notify_socket.drain(0.2)
        assert tail[-1] == "STOPPING=1\nSTATUS=shutting down"
    finally:
        proc.kill()
        proc.wait()
