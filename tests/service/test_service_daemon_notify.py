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
