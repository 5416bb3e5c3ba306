"""Fixtures for the service tests: a real NOTIFY_SOCKET receiver and systemd tool lookup."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator

import pytest


class NotifyReceiver:
    """The service manager's end of sd_notify: an AF_UNIX datagram socket with SO_PASSCRED.

    Like systemd, it reads the sender's PID from SCM_CREDENTIALS, which is what
    NotifyAccess=main is enforced with.
    """

    def __init__(self, abstract: bool):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._dir: str | None = None
        if abstract:
            name = f"edged-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.name = "@" + name
        else:
            # sun_path is limited to 108 bytes: keep it short rather than under pytest's tmp_path.
            self._dir = tempfile.mkdtemp(prefix="edged-ns-", dir="/tmp")
            self.name = os.path.join(self._dir, "notify")
            self.sock.bind(self.name)

    def recv(self, timeout: float = 2.0) -> tuple[str, int] | None:
        """One datagram as (text, sender pid), or None when nothing arrives in ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (socket.timeout, BlockingIOError):
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        return data.decode("utf-8"), pid

    def drain(self, quiet: float = 0.05) -> list[str]:
        """Everything queued now (waiting up to ``quiet`` s for stragglers)."""
        out = []
        while (item := self.recv(quiet)) is not None:
            out.append(item[0])
        return out

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=request.param == "abstract")
    yield receiver
    receiver.close()


@pytest.fixture
def path_notify_socket() -> Iterator[NotifyReceiver]:
    receiver = NotifyReceiver(abstract=False)
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian/Ubuntu package `systemd`)")
    return tool
