"""The client side of the control socket: one request, one reply, errors people can read.

``edgectl`` and tests use it; the daemon never does. :class:`DaemonUnavailable` means nothing
listens (the daemon is not running), which read-only commands treat as "carry on without it".
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

MAX_LINE = 1 << 20


class ControlError(RuntimeError):
    def __init__(self, message: str, code: str = "error"):
        super().__init__(message)
        self.code = code


class DaemonUnavailable(ControlError):
    """Nothing is listening: the daemon is not running (read-only edgectl commands carry on without it)."""



class ControlClient:
    """Call the daemon. Raises :class:`DaemonUnavailable` when it is not running, :class:`ControlError` otherwise."""

    def __init__(self, path: str | Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout
        self._next_id = 0

    def call(self, cmd: str, args: dict | None = None) -> dict:
        self._next_id += 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except FileNotFoundError:
                raise DaemonUnavailable(
                    f"edged is not running (no control socket at {self.path})", "unavailable"
                ) from None
            except ConnectionRefusedError:
                raise DaemonUnavailable(
                    f"edged is not running (nothing listens on {self.path})", "unavailable"
                ) from None
            except PermissionError:
                raise ControlError(
                    f"permission denied on {self.path}: run edgectl with sudo or as a member of group edged-admin",
                    "forbidden",
                ) from None
            except OSError as exc:
                if exc.errno in (errno.ENOTSOCK, errno.ECONNREFUSED):
                    raise DaemonUnavailable(
                        f"edged is not running ({self.path}: {exc.strerror})", "unavailable"
                    ) from None
                raise ControlError(f"cannot connect to {self.path}: {exc.strerror}") from None
            request = {"id": self._next_id, "cmd": cmd, "args": args or {}}
            sock.sendall(json.dumps(request).encode() + b"\n")
            line = sock.makefile("rb").readline(MAX_LINE + 1)
        except TimeoutError:
            raise ControlError(f"edged did not answer {cmd!r} within {self.timeout:g} s", "timeout") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ControlError(f"edged closed the connection: {exc}", "closed") from None
        finally:
            sock.close()
        if not line:
            raise ControlError("edged closed the connection without answering", "closed")
        reply = json.loads(line)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise ControlError(err.get("message", "request failed"), err.get("code", "error"))
        return reply.get("result") or {}
