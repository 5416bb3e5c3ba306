"""A private mosquitto on a free loopback port: for ``edged demo`` and the tests.

Restartable on the same port and persistence directory, so tests can take the broker away in
the middle of a load and bring it back, as a hospital gateway does during maintenance.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port nothing is bound to, picked at random *below* the kernel's ephemeral
    range. A port the kernel hands out (bind to 0) comes from that range, and between this check
    and the server's own bind the kernel may give the same port to an outgoing connection (a
    client's local port): the server then fails with "Address already in use".

    The same check cannot see a port this process picked a moment ago for a server that has not
    bound it yet (a daemon takes seconds to start), so recent picks are not handed out again; and
    ``EDGED_FREE_PORTS=LOW-HIGH`` confines the picks, so that processes started side by side (the
    parallel test workers, tests/conftest.py) draw from ranges that cannot meet.
    """
    low, high = _pick_range()
    pick = random.SystemRandom()
    tries = 0
    for _ in range(2000):
        port = pick.randrange(low, high)
        if port in _RECENT:
            continue
        tries += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                if tries >= 200:
                    break
                continue
        _RECENT.append(port)
        return port
    if os.environ.get("EDGED_FREE_PORTS"):  # never leave the range another process relies on
        raise RuntimeError(f"no free port in EDGED_FREE_PORTS={os.environ['EDGED_FREE_PORTS']}")
    with socket.socket() as s:  # a crowded range: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _RECENT.append(port)
    return port


#: Ports returned lately: not returned again while their servers may still be starting.
_RECENT: deque[int] = deque(maxlen=512)


def _pick_range() -> tuple[int, int]:
    """``[low, high)`` to pick from: ``EDGED_FREE_PORTS`` if set, else 12000 ports below the
    ephemeral range."""
    configured = os.environ.get("EDGED_FREE_PORTS", "")
    if configured:
        first, _, last = configured.partition("-")
        try:
            low, high = int(first), int(last) + 1
        except ValueError:
            raise ValueError(f"EDGED_FREE_PORTS must be LOW-HIGH, not {configured!r}") from None
        if not 1024 <= low < high <= 65536:
            raise ValueError(f"EDGED_FREE_PORTS must be LOW-HIGH within 1024-65535, not {configured!r}")
        return low, high
    top = _ephemeral_low()
    return max(1024, top - 12000), top


def port_slice(index: int, count: int) -> tuple[int, int]:
    """Slice ``index`` of ``count`` disjoint slices of the pick range, as ``(low, high)``
    inclusive: what one of ``count`` processes started side by side should set as
    ``EDGED_FREE_PORTS``. ``index`` wraps around (a restarted worker may be numbered past
    ``count``)."""
    low, high = _pick_range()
    size = (high - low) // count
    if size < 1:
        raise ValueError(f"{high - low} ports cannot be cut into {count} slices")
    first = low + (index % count) * size
    return first, first + size - 1


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
