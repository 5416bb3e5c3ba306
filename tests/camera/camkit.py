"""What the camera tests share: the RTSP server process, camera config entries, helper PIDs."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from edged.localbroker import free_port, wait_listening
from helpers import REPO

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = REPO / "tools" / "rtsp_server.py"


class RtspServer:
    """tools/rtsp_server.py as a process: stop (SIGSTOP), cont, kill and start again on its port."""

    def __init__(self, workdir: Path, cameras: int = 1, width: int = 320, height: int = 180, fps: int = 15,
                 user: str | None = None, password_file: Path | None = None, picture: Path | None = None):
        self.port = free_port()
        self.args = ["--port", str(self.port), "--cameras", str(cameras), "--width", str(width), "--height",
                     str(height), "--fps", str(fps)]
        if picture:
            self.args += ["--picture", str(picture)]
        if user:
            self.args += ["--user", user, "--password-file", str(password_file)]
        self.log = workdir / f"rtsp-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def url(self, i: int = 0) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam{i}"

    def start(self) -> "RtspServer":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), *self.args], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, 20, "rtsp_server")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def camera(name: str, uri: str, models: list[str], **kw) -> dict:
    return {"name": name, "uri": uri, "models": models, **kw}


def helper_pids(daemon_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(daemon_pid).children(recursive=True)
            if any("helper.py" in part for part in p.cmdline())]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
