"""Local control socket: AF_UNIX stream, one JSON object per line, peers checked with SO_PEERCRED.

Protocol (one request line → one response line; a connection may send several requests)::

    → {"id": 1, "cmd": "status", "args": {}}
    ← {"id": 1, "ok": true, "result": {...}}
    ← {"id": 1, "ok": false, "error": {"code": "forbidden", "message": "..."}}

Error codes: ``forbidden``, ``bad_request``, ``unknown_command``, ``handler_error``. ``ping`` is
built in and lists the registered commands.

Who may talk: root, the daemon's own uid, and members of the admin group (``edged-admin``).
The uid and primary gid are what the kernel reports for the peer (SO_PEERCRED), not what the
client claims; membership beyond the primary gid is taken from the group database (passwd
primary group and ``/etc/group``/NSS members of the peer's user name), never from
``/proc/<pid>/status``: under the unit's ``ProtectProc=invisible`` the daemon cannot see other
users' processes there, and a pid read after the fact may already belong to another process.
So a user removed from the group in the database is refused at once, even from a session
that still holds the group (one just added needs a new login before the 0660 file lets them in).

The socket file is mode 0660 and group-owned by the admin group, so the file permissions keep
everyone else out; SO_PEERCRED is the second, authoritative check. Handing the file to the
group needs ``chown()`` on it: the daemon user must be a member of the group (the kernel lets a
process without CAP_CHOWN only chgrp its own files to its own groups) and the syscall filter
must allow ``@chown`` (systemd/edged.service re-allows it after ``~@privileged``). When that
fails, the warning names the errno and which rule refused, and the socket keeps the daemon's
own group (root and the daemon user can still use it).

What the commands can do is up to the handlers (edged/control/handlers.py); an admitted peer is
trusted with them. ``power.changed`` in particular is a statement, not a query: any admitted
peer (root, the daemon user, an ``edged-admin`` member) can send one with fields of its
choosing, which makes the daemon re-read the mode, retune and re-warm every model when the
mode differs from the one it knew, and publish a power event carrying the caller's
``who``/``to``/``outcome``/``reason`` verbatim.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edged.control.client import MAX_LINE, ControlError

log = logging.getLogger("edged.control")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str

    def as_dict(self) -> dict:
        return {"pid": self.pid, "uid": self.uid, "gid": self.gid, "user": self.user}


Handler = Callable[[dict, Peer], dict]


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_of(conn: socket.socket) -> Peer:
    """The peer's pid, uid and gid as the kernel recorded them when it connected (SO_PEERCRED)."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid=pid, uid=uid, gid=gid, user=_user(uid))


def _member_by_database(uid: int, gid: int) -> bool:
    """Whether the group database puts ``uid``'s user in group ``gid``: its passwd primary group or
    a member of the group (``getgrouplist``, which asks NSS the same way a login does)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return False  # a uid without a user name belongs to no group by name
    try:
        return gid in os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        return gid == entry.pw_gid


def authorize(peer: Peer, admin_group: str, daemon_uid: int | None = None) -> tuple[bool, str]:
    """root, the daemon's uid, or a member of ``admin_group``: the peer's primary gid (SO_PEERCRED)
    is the group, or the group database makes its user a member. /proc is never consulted."""
    daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
    if peer.uid == 0:
        return True, "root"
    if peer.uid == daemon_uid:
        return True, "daemon user"
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False, f"uid {peer.uid} ({peer.user}) is not root and group {admin_group} does not exist"
    if peer.gid == group.gr_gid or _member_by_database(peer.uid, group.gr_gid):
        return True, f"member of {admin_group}"
    return False, f"uid {peer.uid} ({peer.user}) is not root and not in group {admin_group}"


def _has_cap_chown() -> bool | None:
    """Whether this process holds CAP_CHOWN (bit 0 of CapEff in its own /proc status); None if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _chgrp_failure(path: Path, group: str, gid: int, exc: OSError) -> str:
    """Why the socket could not be handed to ``group``: the errno, and which rule refused it.

    Without CAP_CHOWN the kernel lets a process chgrp a file it owns only to one of its own
    groups; with CAP_CHOWN, to any group. An EPERM although one of those holds came from
    somewhere else: a seccomp filter (systemd's ``SystemCallFilter=~@privileged`` denies
    ``@chown`` with ``SystemCallErrorNumber=EPERM``) or a security module.
    """
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    member = gid == os.getegid() or gid in os.getgroups()
    cap = _has_cap_chown()
    if exc.errno == errno.EPERM and (member or cap):
        allowed_by = f"the daemon is in group {group}" if member else "the daemon holds CAP_CHOWN"
        cause = (
            f"{allowed_by}, so the kernel's ownership rules allow it; a seccomp filter or security module "
            "refused chown() (under systemd: SystemCallFilter= must allow @chown, which ~@privileged removes)"
        )
    elif exc.errno == errno.EPERM:
        cause = f"the daemon (uid {os.geteuid()}) is not in group {group}" + (
            " and has no CAP_CHOWN" if cap is False else ""
        ) + " (under systemd: SupplementaryGroups= must list it)"
    else:
        cause = exc.strerror or "unexpected error"
    return (
        f"cannot give {path} to group {group}: chown failed with {code}: {cause}; the socket keeps the "
        f"daemon's own group, so members of {group} who are not also in that group cannot use it"
    )


class ControlServer:
    """Serve ``handlers`` (``cmd -> handler(args, peer) -> result dict``) on ``path`` in background threads."""

    def __init__(
        self,
        path: str | Path,
        handlers: dict[str, Handler],
        *,
        admin_group: str = "edged-admin",
        mode: int = 0o660,
        idle_timeout_s: float = 30.0,
        max_clients: int = 16,
    ):
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.admin_group = admin_group
        self.mode = mode
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(max_clients)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _clear_stale(self) -> None:
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not stat.S_ISSOCK(self.path.lstat().st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # nobody listens: a stale socket from a crashed daemon
            return
        finally:
            probe.close()
        raise ControlError(f"another process already serves {self.path}; is edged running twice?")

    def start(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        # Permissions are set before listen(): until then a connect() is refused, so there is no window.
        try:
            gid = grp.getgrnam(self.admin_group).gr_gid
        except KeyError:
            log.warning(
                "group %s does not exist: only root and the daemon user can use %s", self.admin_group, self.path
            )
        else:
            try:
                os.chown(self.path, -1, gid)
            except OSError as exc:
                log.warning("%s", _chgrp_failure(self.path, self.admin_group, gid, exc))
        os.chmod(self.path, self.mode)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._accept_loop, name="edged-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        """End the accept loop's wait now, not at its next 0.5 s timeout (every stop, every test)."""
        waker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            waker.settimeout(0.5)
            waker.connect(str(self.path))
        except OSError:
            pass  # the loop still ends at its timeout
        finally:
            waker.close()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            if self._stopping.is_set():  # the stop's own wake-up, or a client too late
                conn.close()
                return
            if not self._slots.acquire(blocking=False):
                self._reply(conn, None, error=("busy", "too many control connections"))
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="edged-control-conn", daemon=True).start()

    @staticmethod
    def _reply(
        conn: socket.socket, req_id: object, result: dict | None = None, error: tuple[str, str] | None = None
    ) -> None:
        msg = {"id": req_id, "ok": error is None}
        if error is None:
            msg["result"] = result
        else:
            msg["error"] = {"code": error[0], "message": error[1]}
        try:
            conn.sendall(json.dumps(msg, default=str).encode() + b"\n")
        except OSError:
            pass

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout_s)
            peer = peer_of(conn)
            allowed, why = authorize(peer, self.admin_group)
            reader = conn.makefile("rb")
            if not allowed:
                # Read the request first: closing on an unread request would reset the connection and
                # the client would see "connection reset" instead of the reason.
                log.warning("control socket: refused pid %d: %s", peer.pid, why)
                first = reader.readline(MAX_LINE + 1)
                try:
                    req_id = json.loads(first).get("id") if first else None
                except (ValueError, AttributeError):
                    req_id = None
                self._reply(
                    conn, req_id, error=("forbidden", f"not allowed: {why}; use sudo or join group {self.admin_group}")
                )
                return
            while not self._stopping.is_set():
                line = reader.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._reply(conn, None, error=("bad_request", "request line too long"))
                    return
                self._handle(conn, line, peer)
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()
            self._slots.release()

    def _handle(self, conn: socket.socket, line: bytes, peer: Peer) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError("expected an object with a string 'cmd'")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as exc:
            self._reply(conn, None, error=("bad_request", str(exc)))
            return
        req_id, cmd = req.get("id"), req["cmd"]
        if cmd == "ping" and "ping" not in self.handlers:
            self._reply(conn, req_id, {"pong": True, "commands": sorted(self.handlers)})
            return
        handler = self.handlers.get(cmd)
        if handler is None:
            self._reply(
                conn,
                req_id,
                error=("unknown_command", f"unknown command {cmd!r}; known: {', '.join(sorted(self.handlers))}"),
            )
            return
        try:
            result = handler(args, peer)
        except Exception as exc:  # a handler bug answers the client; it never takes the socket down
            log.exception("control command %s failed", cmd)
            self._reply(conn, req_id, error=("handler_error", f"{type(exc).__name__}: {exc}"))
            return
        self._reply(conn, req_id, result if isinstance(result, dict) else {"value": result})
