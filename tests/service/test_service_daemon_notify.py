"""The real daemon speaks sd_notify over a real AF_UNIX datagram socket: READY only once the
SCP answers C-ECHO, periodic WATCHDOG while the pipeline progresses, none while the backend
hangs, STOPPING on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from edged.localbroker import free_port
from helpers import ECHOSCU, REPO


class NotifySocket:
    """What systemd would see: every datagram with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.echo_ok_at_ready: bool | None = None
        self.port = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data))
            if "READY=1" in data.split("\n"):
                # the promise READY makes: a modality can associate right now
                echo = subprocess.run([ECHOSCU, "-aec", "EDGED", "127.0.0.1", str(self.port)], capture_output=True)
                self.echo_ok_at_ready = echo.returncode == 0

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [(t, line) for t, m in self.messages for line in m.split("\n") if line.startswith(key + "=")]

    def wait_for(self, key: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.lines(key):
            assert time.monotonic() < deadline, f"no {key} in {self.messages}"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def start_daemon(tmp_path: Path, tiny_repo: Path, notify: NotifySocket, **extra) -> subprocess.Popen:
    notify.port = free_port()
    cfg = {"node_id": "notify", "state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "model_repository": str(tiny_repo), "models": [{"name": "chexnet-tiny", **extra.pop("model", {})}],
           "dicom": {"bind": "127.0.0.1", "port": notify.port}, "mqtt": {"enabled": False},
           "power": {"control_socket": str(tmp_path / "c.sock")}, **extra}
    (tmp_path / "edged.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(tmp_path / "edged.yaml")],
                            cwd=REPO, env=env, stdout=log, stderr=log)


def test_ready_after_echo_watchdog_while_healthy_stopping_on_sigterm(tmp_path, tiny_repo):
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(tmp_path, tiny_repo, notify)
    try:
        notify.wait_for("READY")
        deadline = time.monotonic() + 30
        while notify.echo_ok_at_ready is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notify.echo_ok_at_ready is True
        statuses = [line for _, line in notify.lines("STATUS")]
        assert any("loading model chexnet-tiny" in s for s in statuses)
        ready_at = notify.lines("READY")[0][0]
        time.sleep(2.2)
        pings = [t for t, _ in notify.lines("WATCHDOG")]
        assert len([t for t in pings if t >= ready_at]) >= 3  # every WatchdogSec/2 = 0.5 s
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        notify.wait_for("STOPPING")
        assert notify.lines("STOPPING")[0][0] > notify.lines("READY")[0][0]
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


def test_no_watchdog_while_the_backend_hangs(tmp_path, tiny_repo):
    """SIGSTOP the backend worker in the middle of serving: pings stop once the batch has been in
    the backend longer than pipeline.backend_timeout_s, and resume after the worker is replaced."""
    import psutil

    from helpers import cr_variants, storescu

    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(tmp_path, tiny_repo, notify, model={"backend": "auto"},
                        pipeline={"backend_timeout_s": 1}, tensorrt={"batch_timeout_s": 6})
    try:
        notify.wait_for("READY")
        worker = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                      if any("child.py" in part for part in p.cmdline()))
        worker.suspend()
        hung_at = time.monotonic()
        assert storescu(notify.port, *cr_variants(tmp_path, 1)).returncode == 0  # acknowledged: spooled
        time.sleep(5.0)
        pings = [t for t, _ in notify.lines("WATCHDOG")]
        assert not [t for t in pings if hung_at + 2.0 < t < hung_at + 5.0], "pinged while the backend hung"
        time.sleep(4.0)  # batch timeout (6 s) → worker killed and restarted → batch retried
        pings = [t for t, _ in notify.lines("WATCHDOG")]
        assert [t for t in pings if t > hung_at + 6.5], "pings did not resume after the worker restart"
        log = (tmp_path / "daemon.log").read_text()
        assert "withholding watchdog pings" in log and "worker_timeout" in log
        assert "done in" in log  # the hung image still got its result
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
