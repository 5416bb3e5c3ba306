"""A private mosquitto on a free loopback port: for ``edged demo`` and the tests.

Restartable on the same port and persistence directory, so tests can take the broker away in
the middle of a load and bring it back, as a hospital gateway does during maintenance.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port nothing is bound to, picked at random *below* the kernel's ephemeral
    range. A port the kernel hands out (bind to 0) comes from that range, and between this check
    and the server's own bind the kernel may give the same port to an outgoing connection (a
    client's local port): the server then fails with "Address already in use"."""
    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait until ``proc`` accepts TCP connections on 127.0.0.1:``port``; fail early if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} within {timeout}s")


class LocalBroker:
    def __init__(self, workdir: Path | None = None, port: int | None = None, extra_conf: str = ""):
        self.binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if self.binary is None:
            raise FileNotFoundError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edged-broker-"))
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.workdir}/\nautosave_interval 1\nuser root\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n" + extra_conf
        )
        self.conf = conf

    def start(self, timeout: float = 10.0) -> "LocalBroker":
        log = open(self.workdir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, timeout, f"mosquitto (see {self.workdir}/mosquitto.log)")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
