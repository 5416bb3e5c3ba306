"""The control socket: JSON-lines round trips, errors, stale sockets, and SO_PEERCRED with real other users."""

from __future__ import annotations

import grp
import json
import os
import socket
import stat

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
        assert authorize(Peer(1, 5000, 5000, "tech", frozenset({nogroup})), "nogroup", daemon_uid=4242) == (
            True,
            "member of nogroup",
        )
        assert not authorize(other, "nogroup", daemon_uid=4242)[0]


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _call_as(uid: int, gid: int, path: str) -> dict:
    """Fork, drop to uid/gid (no supplementary groups), call the socket, and return what the client saw."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only os._exit
        try:
            os.close(read_fd)
            os.setgroups([])
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
        denied = _call_as(nobody, 4242, str(sockdir / "c.sock"))
        assert denied["ok"] is False and denied["code"] == "forbidden" and "permission denied" in denied["message"]
        # ... and if the file were opened up by mistake, SO_PEERCRED still refuses.
        os.chmod(sockdir / "c.sock", 0o666)
        refused = _call_as(nobody, 4242, str(sockdir / "c.sock"))
        assert (
            refused["ok"] is False and refused["code"] == "forbidden" and "not in group nogroup" in refused["message"]
        )
    finally:
        server.stop()
