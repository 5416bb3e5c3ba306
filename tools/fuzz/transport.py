"""Transport case families: bounded memory and time per peer (issue #8 items 4, 5 and 7).

These cost seconds and hundreds of megabytes, not milliseconds, so ``make fuzz`` runs a few
of each at full size and the fixed subset runs one small form of each. Each case checks the
promise it is about itself (the runner adds the usual echo, crash and RSS checks):

==================  ===========================================================  =========
family              promise                                                      issue #8
==================  ===========================================================  =========
``partial_upload``  a C-STORE abandoned mid-dataset leaves no file in .incoming   item 7
``giant_pdu``       a PDU far above any negotiated size is not buffered            item 4
``deflate_bomb``    a small deflated dataset does not inflate into memory          item 4
``trickle``         peers sending 1 byte/s do not take every association slot      item 5
``conn_flood``      malformed connections from a refused host do not either       item 5
``slot_hold``       a peer that sends one wrong first PDU and leaves frees its     item 5
                    slot at once (pynetdicom keeps it for the whole ACSE timeout)
==================  ===========================================================  =========

:data:`PENDING` names the families whose fix is being made on another branch: their failures
are reported as expected (and a pending family that passes is reported, so the marker goes).
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from typing import Any

from . import datasets as D
from . import pdu as P
from .attacks import MEMORY_BOUND_MB
from .cases import AttackCase, Outcome, StoreCase
from .families import Gen
from .target import SLOW_HOST

PENDING: dict[str, int] = {}  # families whose fix has not landed yet (issue #8 item N): none since the transport merge
FLOOD_HOST = "127.0.0.9"  # refused by the allow-list
SLOT_DEADLINE = 5.0  # a legitimate echo must get through within this while hostile peers hold sockets


PAST = {"abort": "aborted", "close": "closed the connection", "stall": "stalled and left"}


def partial_upload(g: Gen, size: int = 64 * 1024) -> AttackCase:
    r = g.rng
    who, elems = g.image()
    elems = D.with_elem(elems, D.Elem(0x00091001, "OB", bytes(size)))
    dataset = D.encode(elems, D.EXPLICIT_LE)
    how = r.choice(("abort", "close", "stall"))

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        before = set(ctx.target.incoming.glob("*")) if ctx.target.incoming.exists() else set()
        a = P.RawAssociation(ctx.port, {1: (D.CR, [D.EXPLICIT_LE])}, calling="PARTIAL")
        try:
            out.answers.append(a.open())
            assert a.sock is not None
            a.sock.sendall(P.p_data([(1, 3, P.c_store_rq(D.CR, who.instance_uid))]))
            half = dataset[: len(dataset) // 2]
            for i in range(0, len(half), 16000):
                a.sock.sendall(P.p_data([(1, 0, half[i:i + 16000])]))
            if how == "abort":
                a.sock.sendall(P.abort())
            elif how == "stall":
                time.sleep(0.5)
        except OSError:
            out.answers.append("reset")
        finally:
            a.close()
        time.sleep(1.0)  # the daemon reads what was sent before it sees the end; give it that
        deadline = time.monotonic() + 4.0
        left: set = set()
        while time.monotonic() < deadline:
            left = (set(ctx.target.incoming.glob("*")) if ctx.target.incoming.exists() else set()) - before
            if not left:
                break
            time.sleep(0.1)
        if left:
            out.failures.append(f"{len(left)} partial upload(s) left in spool/.incoming 5 s after the peer {PAST[how]}")
        return out

    return AttackCase("partial_upload", f"{size // 1024} KB dataset, peer {how}s half way", run)


def giant_pdu(g: Gen, mb: int = 512) -> AttackCase:
    r = g.rng
    kind = r.choice(("p_data", "assoc_rq"))
    source = r.choice(("127.0.0.1", FLOOD_HOST))

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        sock = P.connect(ctx.port, source)
        chunk = bytes(1 << 20)
        sent = 0
        try:
            if kind == "assoc_rq":
                sock.sendall(P.pdu(1, b"", length=0xFFFFFFF0))
            else:
                sock.sendall(_rq_ok() + P.pdu(4, b"", length=0xFFFFFFF0))
            sock.settimeout(10)
            while sent < mb:
                sock.sendall(chunk)
                sent += 1
            out.answers.append("all_sent")
            # the daemon handles what it buffered once the stream ends: wait for that (its
            # answer or its close), so its memory peak — or its death — belongs to this case
            sock.shutdown(socket.SHUT_WR)
            out.answers.append(P.read_pdu(sock, 15.0).kind)
        except OSError:
            out.answers.append("cut_by_daemon")
        finally:
            sock.close()
        peak = ctx.peak_growth()
        if peak is not None and peak > MEMORY_BOUND_MB:
            out.failures.append(f"RSS grew {peak:.0f} MB while a peer sent {sent} MB of one {kind} PDU")
        return out

    return AttackCase("giant_pdu", f"{kind} from {source}, {mb} MB", run, heavy=True)


def _rq_ok() -> bytes:
    return P.associate_rq([(1, D.CR, [D.EXPLICIT_LE])], "GIANT")


_BODIES: dict[int, bytes] = {}


def bomb_bytes(instance: str, mb: int) -> bytes:
    """A Deflated Explicit VR LE dataset whose Pixel Data inflates to ``mb`` MB of zeros.

    The header (with this case's instance UID) is its own deflate block ended by a sync flush,
    so the compressed zeros that follow it can be made once and reused."""
    elems = [
        D.Elem(0x00080016, "UI", D.uid(D.CR)), D.Elem(0x00080018, "UI", D.uid(instance)),
        D.Elem(0x00080060, "CS", D.text("CR")), D.Elem(0x00280002, "US", D.us(1)),
        D.Elem(0x00280004, "CS", D.text("MONOCHROME2")), D.Elem(0x00280010, "US", D.us(64)),
        D.Elem(0x00280011, "US", D.us(64)), D.Elem(0x00280100, "US", D.us(16)),
        D.Elem(0x00280101, "US", D.us(12)), D.Elem(0x00280102, "US", D.us(11)), D.Elem(0x00280103, "US", D.us(0)),
    ]
    head = D.encode(elems, D.EXPLICIT_LE) + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW" + struct.pack("<HL", 0, mb << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    prefix = c.compress(head) + c.flush(zlib.Z_SYNC_FLUSH)
    if mb not in _BODIES:
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        zero = bytes(1 << 20)
        _BODIES[mb] = b"".join([body.compress(zero) for _ in range(mb)] + [body.flush()])
    return prefix + _BODIES[mb]


def deflate_bomb(g: Gen, mb: int = 768) -> AttackCase:
    who = g.phi.identity()

    def run(ctx: Any) -> Outcome:
        data = bomb_bytes(who.instance_uid, mb)
        out = ctx.store(StoreCase("deflate_bomb", "", D.CR, who.instance_uid, D.DEFLATED, data))
        peak = ctx.peak_growth()
        if peak is not None and peak > MEMORY_BOUND_MB:
            out.failures.append(f"RSS grew {peak:.0f} MB for a {len(data) // 1024} KB deflated dataset "
                                f"inflating to {mb} MB")
        return out

    return AttackCase("deflate_bomb", f"inflates to {mb} MB", run, heavy=True)


def _hold(ctx: Any, sources: list[str], first: bytes, trickle: bytes, seconds: float) -> tuple[list[socket.socket], str]:
    """Open one connection per source, send ``first`` on each, trickle ``trickle`` one byte a
    second, and meanwhile try a legitimate echo; returns the sockets and the echo's result."""
    socks = []
    for s in sources:
        try:
            c = P.connect(ctx.port, s)
            c.sendall(first)
            socks.append(c)
        except OSError:
            continue
    time.sleep(0.5)
    ok, why = ctx.echo(deadline=SLOT_DEADLINE, wait_for_slot=False)
    echo = "ok" if ok else why
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and trickle:
        for c in socks:
            try:
                c.sendall(trickle[i % len(trickle): i % len(trickle) + 1])
            except OSError:
                pass
        i += 1
        time.sleep(1.0)
    return socks, echo


def trickle(g: Gen, hold_s: float = 0.0, peers: int = 20) -> AttackCase:
    """Slow peers from one allowed host: each associates (until the daemon refuses one, or
    ``peers``) and then sends its C-STORE request at 1 byte/s, never idle long enough for the
    idle timeout. A legitimate peer on another host must still get in; with ``hold_s`` the
    daemon must also have dropped the slow ones by then (a minimum transfer rate)."""

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        rq = P.associate_rq([(1, D.CR, [D.EXPLICIT_LE])], "SLOWPOKE")
        socks = []
        for _ in range(peers):
            try:
                c = P.connect(ctx.port, SLOW_HOST)
                c.sendall(rq)
                answer = P.read_pdu(c, 5.0).kind
            except OSError:
                break
            if answer != "assoc_ac":
                c.close()
                break
            socks.append(c)
        out.answers.append(f"{len(socks)}_slow_associated")
        ok, why = ctx.echo(deadline=SLOT_DEADLINE, wait_for_slot=False)
        out.answers.append("echo_ok" if ok else "echo_refused")
        if not ok:
            out.failures.append(f"a legitimate C-ECHO failed ({why}) while {len(socks)} slow peers held associations")
        message = P.p_data([(1, 3, P.c_store_rq(D.CR, "1.2.3.4.5"))])
        end, i = time.monotonic() + hold_s, 0
        while time.monotonic() < end:
            for c in socks:
                try:
                    c.sendall(message[i % len(message): i % len(message) + 1])
                except OSError:
                    pass
            i += 1
            time.sleep(1.0)
        if hold_s:
            still = sum(1 for c in socks if _open(c))
            if still:
                out.failures.append(f"{still} of {len(socks)} peers trickling at 1 byte/s still connected "
                                    f"after {hold_s:.0f} s")
        for c in socks:
            c.close()
        return out

    return AttackCase("trickle", f"slow peers, {'hold ' + str(int(hold_s)) + ' s' if hold_s else 'slots'}", run,
                      heavy=True)


def conn_flood(g: Gen, peers: int = 15) -> AttackCase:
    """Malformed 6-byte PDU headers from a refused host, held open."""

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        socks, echo = _hold(ctx, [FLOOD_HOST] * peers, P.pdu(1, b"", length=100), b"", 0)
        out.answers.append(f"echo_{echo}")
        if echo != "ok":
            out.failures.append(f"a legitimate C-ECHO failed ({echo}) while {len(socks)} malformed connections "
                                f"from a refused host were open")
        for c in socks:
            c.close()
        return out

    return AttackCase("conn_flood", f"{peers} connections", run, heavy=True)


def slot_hold(g: Gen, peers: int = 12) -> AttackCase:
    """Peers from an allowed host that open with a PDU other than A-ASSOCIATE-RQ (a release
    request, an abort, a P-DATA) and close: each is answered and gone in milliseconds, yet
    pynetdicom's association thread waits for a request until the ACSE timeout, holding a slot."""
    r = g.rng
    first = r.choice((P.RELEASE_RQ, P.abort(), P.p_data([(1, 3, P.c_echo_rq())]), P.pdu(0x07, bytes(100))))

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        for _ in range(peers):
            try:
                c = P.connect(ctx.port, SLOW_HOST)
                c.sendall(first)
                out.answers.append(P.read_pdu(c, 1.0).kind)
                c.close()
            except OSError:
                out.answers.append("reset")
        ok, why = ctx.echo(deadline=SLOT_DEADLINE, wait_for_slot=False)
        out.answers.append("echo_ok" if ok else "echo_refused")
        if not ok:
            out.failures.append(f"a legitimate C-ECHO failed ({why}) right after {peers} peers sent one "
                                f"wrong first PDU each and closed")
        return out

    return AttackCase("slot_hold", f"{peers} peers, first PDU 0x{first[0]:02x}", run, heavy=True)


def _open(sock: socket.socket) -> bool:
    """Still connected? Whatever the daemon sent before closing (an A-ABORT) is read and
    discarded first: a peek would see those bytes and take a closed connection for an open one."""
    try:
        sock.setblocking(False)
        while True:
            if sock.recv(65536) == b"":
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
