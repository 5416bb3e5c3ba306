"""The control socket: JSON-lines round trips, errors, stale sockets, and SO_PEERCRED with real other users."""

from __future__ import annotations

import ctypes
import errno
import grp
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edged.control import ControlClient, ControlError, ControlServer, DaemonUnavailable, Peer, authorize


def _server(path, **handlers):
    return ControlServer(path, handlers, admin_group="edged-admin-test-absent").start()


def test_round_trip_carries_the_kernel_reported_peer(sockdir):
    seen = []
    server = _server(sockdir / "c.sock", status=lambda args, peer: seen.append(peer) or {"echo": args})
    try:
        client = ControlClient(sockdir / "c.sock", timeout=5)
        assert client.call("status", {"x": [1, 2]}) == {"echo": {"x": [1, 2]}}
        assert client.call("ping") == {"pong": True, "commands": ["status"]}
        peer = seen[0]
        assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
        assert stat.S_IMODE(os.stat(sockdir / "c.sock").st_mode) == 0o660
    finally:
        server.stop()
    assert not (sockdir / "c.sock").exists()


def test_errors_are_answers_and_the_server_keeps_serving(sockdir):
    def boom(args, peer):
        raise RuntimeError("handler bug")

    server = _server(sockdir / "c.sock", boom=boom, ok=lambda a, p: {"fine": True})
    try:
        client = ControlClient(sockdir / "c.sock")
        with pytest.raises(ControlError) as exc:
            client.call("nope")
        assert exc.value.code == "unknown_command" and "known: boom, ok" in str(exc.value)
        with pytest.raises(ControlError) as exc:
            client.call("boom")
        assert exc.value.code == "handler_error" and "handler bug" in str(exc.value)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(sockdir / "c.sock"))
            raw.sendall(b"not json\n" + json.dumps({"id": 7, "cmd": "ok"}).encode() + b"\n")
            reader = raw.makefile("rb")
            first, second = json.loads(reader.readline()), json.loads(reader.readline())
        assert first["error"]["code"] == "bad_request" and second == {"id": 7, "ok": True, "result": {"fine": True}}
        assert client.call("ok") == {"fine": True}
    finally:
        server.stop()


def test_daemon_down_and_stale_socket(sockdir):
    with pytest.raises(DaemonUnavailable, match="no control socket"):
        ControlClient(sockdir / "none.sock").call("status")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockdir / "c.sock"))
    stale.close()  # a crashed daemon leaves the file behind
    with pytest.raises(DaemonUnavailable, match="nothing listens"):
        ControlClient(sockdir / "c.sock").call("status")
    server = _server(sockdir / "c.sock", status=lambda a, p: {"up": True})
    try:
        assert ControlClient(sockdir / "c.sock").call("status") == {"up": True}
        with pytest.raises(ControlError, match="already serves"):
            _server(sockdir / "c.sock")
    finally:
        server.stop()
    (sockdir / "file").write_text("x")
    with pytest.raises(ControlError, match="not a socket"):
        _server(sockdir / "file")


def test_authorize_policy():
    root = Peer(pid=1, uid=0, gid=0, user="root")
    me = Peer(pid=1, uid=4242, gid=4242, user="svc")
    other = Peer(pid=1, uid=5000, gid=5000, user="tech")
    nogroup = grp.getgrnam("nogroup").gr_gid if _has_group("nogroup") else None
    assert authorize(root, "edged-admin-test-absent", daemon_uid=4242)[0]
    assert authorize(me, "edged-admin-test-absent", daemon_uid=4242)[0]
    ok, why = authorize(other, "edged-admin-test-absent", daemon_uid=4242)
    assert not ok and "does not exist" in why
    if nogroup is not None:
        # The peer's primary gid (SO_PEERCRED) is the group.
        assert authorize(Peer(1, 5000, nogroup, "tech"), "nogroup", daemon_uid=4242) == (True, "member of nogroup")
        assert not authorize(other, "nogroup", daemon_uid=4242)[0]


def test_membership_comes_from_the_group_database(monkeypatch):
    """Primary gid from passwd and members listed for the group count; nothing is read from /proc."""
    from edged.control import server as control

    admin = grp.struct_group(("edged-admin-t", "x", 7777, ["alice"]))
    users = {
        5001: pwd.struct_passwd(("alice", "x", 5001, 5001, "", "/", "/bin/sh")),
        5002: pwd.struct_passwd(("bob", "x", 5002, 7777, "", "/", "/bin/sh")),
        5003: pwd.struct_passwd(("carol", "x", 5003, 5003, "", "/", "/bin/sh")),
    }

    def getpwuid(uid):
        if uid not in users:
            raise KeyError(uid)
        return users[uid]

    def getgrouplist(name, base):  # what NSS answers: the base group plus every group listing the user
        return [base] + ([admin.gr_gid] if name in admin.gr_mem else [])

    monkeypatch.setattr(control.grp, "getgrnam", lambda name: admin)
    monkeypatch.setattr(control.pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(control.os, "getgrouplist", getgrouplist)
    real_read_text = Path.read_text

    def no_proc(self, *a, **kw):
        assert not str(self).startswith("/proc/"), f"authorize read {self}"
        return real_read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", no_proc)
    assert authorize(Peer(10, 5001, 5001, "alice"), "edged-admin-t", daemon_uid=1) == (True, "member of edged-admin-t")
    assert authorize(Peer(10, 5002, 5002, "bob"), "edged-admin-t", daemon_uid=1)[0]  # passwd primary group
    assert not authorize(Peer(10, 5003, 5003, "carol"), "edged-admin-t", daemon_uid=1)[0]
    assert not authorize(Peer(10, 5004, 5004, "5004"), "edged-admin-t", daemon_uid=1)[0]  # no passwd entry


def _own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def test_chown_refused_by_a_filter_is_reported_as_such(sockdir, monkeypatch, caplog):
    """The daemon is in the group, yet chown() fails with EPERM: the warning must say filter, not membership."""
    from edged.control import server as control

    def denied(path, uid, gid):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(control.os, "chown", denied)
    caplog.set_level("WARNING", logger="edged.control")
    server = ControlServer(sockdir / "c.sock", {}, admin_group=_own_group()).start()
    server.stop()
    [message] = [r.getMessage() for r in caplog.records if r.name == "edged.control"]
    assert "chown failed with EPERM" in message and "seccomp" in message and "@chown" in message
    assert "not in group" not in message and "not a member" not in message


def test_chown_refused_for_a_group_we_are_not_in(sockdir, monkeypatch, caplog):
    from edged.control import server as control

    group = _own_group()
    monkeypatch.setattr(
        control.os, "chown", lambda p, u, g: (_ for _ in ()).throw(PermissionError(errno.EPERM, "nope"))
    )
    monkeypatch.setattr(control.os, "getgroups", lambda: [])
    monkeypatch.setattr(control.os, "getegid", lambda: 4242)
    monkeypatch.setattr(control, "_has_cap_chown", lambda: False)
    caplog.set_level("WARNING", logger="edged.control")
    ControlServer(sockdir / "c.sock", {}, admin_group=group).start().stop()
    [message] = [r.getMessage() for r in caplog.records if r.name == "edged.control"]
    assert f"is not in group {group} and has no CAP_CHOWN" in message and "SupplementaryGroups=" in message


def test_other_chown_errors_are_logged_not_raised(sockdir, monkeypatch, caplog):
    from edged.control import server as control

    monkeypatch.setattr(
        control.os, "chown", lambda p, u, g: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system"))
    )
    caplog.set_level("WARNING", logger="edged.control")
    server = ControlServer(sockdir / "c.sock", {"status": lambda a, p: {"up": True}}, admin_group=_own_group())
    server.start()
    try:
        assert ControlClient(sockdir / "c.sock").call("status") == {"up": True}
        assert stat.S_IMODE(os.stat(sockdir / "c.sock").st_mode) == 0o660
    finally:
        server.stop()
    assert any("chown failed with EROFS" in r.getMessage() for r in caplog.records)


_SECCOMP_CHILD = r"""
import ctypes, errno, grp, logging, os, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
ctx = ctypes.c_void_p(lib.seccomp_init(0x7FFF0000))  # SCMP_ACT_ALLOW
for name in (b"chown", b"fchown", b"fchownat", b"lchown"):  # what the unit's ~@privileged denies
    nr = lib.seccomp_syscall_resolve_name(name)
    if nr >= 0:
        assert lib.seccomp_rule_add(ctx, 0x00050000 | errno.EPERM, nr, 0) == 0  # SCMP_ACT_ERRNO(EPERM)
assert lib.seccomp_load(ctx) == 0
from edged.control import ControlServer
path, group = sys.argv[1], grp.getgrgid(os.getegid()).gr_name
ControlServer(path, {}, admin_group=group).start().stop()
"""


def test_chown_under_a_real_seccomp_filter(sockdir):
    """What SystemCallFilter=~@privileged + SystemCallErrorNumber=EPERM does to the daemon, for real."""
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 not installed")
    proc = subprocess.run(
        [sys.executable, "-c", _SECCOMP_CHILD, str(sockdir / "c.sock")],
        check=False, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "chown failed with EPERM" in proc.stdout and "seccomp" in proc.stdout, proc.stdout


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


STRANGER = _free_uid(4243)  # a uid with no passwd entry: in no group by the database


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _call_as(uid: int, gid: int, path: str, groups: tuple[int, ...] = ()) -> dict:
    """Fork, drop to uid/gid with ``groups`` as supplementary groups, call the socket, return what the client saw."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only os._exit
        try:
            os.close(read_fd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                out = {"ok": True, "result": ControlClient(path, timeout=5).call("whoami")}
            except ControlError as exc:
                out = {"ok": False, "code": exc.code, "message": str(exc)}
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0 or not _has_group("nogroup"), reason="needs root to act as another user")
def test_so_peercred_refuses_strangers_and_admits_the_admin_group(sockdir):
    nobody, nogroup = 65534, grp.getgrnam("nogroup").gr_gid
    server = ControlServer(
        sockdir / "c.sock", {"whoami": lambda a, peer: peer.as_dict()}, admin_group="nogroup"
    ).start()
    try:
        assert os.stat(sockdir / "c.sock").st_gid == nogroup  # group-owned by the admin group, mode 0660
        admitted = _call_as(nobody, nogroup, str(sockdir / "c.sock"))
        assert admitted == {
            "ok": True,
            "result": {
                "pid": admitted["result"]["pid"],
                "uid": nobody,
                "gid": nogroup,
                "user": admitted["result"]["user"],
            },
        }
        # A user outside the group cannot even open the 0660 file ...
        denied = _call_as(STRANGER, 4242, str(sockdir / "c.sock"))
        assert denied["ok"] is False and denied["code"] == "forbidden" and "permission denied" in denied["message"]
        # ... and if the file were opened up by mistake, SO_PEERCRED still refuses.
        os.chmod(sockdir / "c.sock", 0o666)
        refused = _call_as(STRANGER, 4242, str(sockdir / "c.sock"))
        assert (
            refused["ok"] is False and refused["code"] == "forbidden" and "not in group nogroup" in refused["message"]
        )
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not _has_group("nogroup"), reason="needs root to act as another user")
def test_membership_is_the_group_database_not_the_peer_process(sockdir):
    """/proc/<peer>/status is hidden under ProtectProc=invisible and racy: the group database decides.

    A process holding the group only as a supplementary group, for a uid the database does not
    put in it, is refused; nobody, whose passwd primary group is nogroup, is admitted even from
    a process running with another gid.
    """
    nogroup = grp.getgrnam("nogroup").gr_gid
    server = ControlServer(
        sockdir / "c.sock", {"whoami": lambda a, peer: peer.as_dict()}, admin_group="nogroup"
    ).start()
    try:
        held = _call_as(STRANGER, 4242, str(sockdir / "c.sock"), groups=(nogroup,))  # the 0660 file lets it in
        assert held["ok"] is False and held["code"] == "forbidden" and "not in group nogroup" in held["message"]
        if pwd.getpwnam("nobody").pw_gid == nogroup:
            os.chmod(sockdir / "c.sock", 0o666)  # so that only SO_PEERCRED + the database decide
            listed = _call_as(65534, 4242, str(sockdir / "c.sock"))
            assert listed["ok"] is True and listed["result"]["uid"] == 65534
    finally:
        server.stop()
