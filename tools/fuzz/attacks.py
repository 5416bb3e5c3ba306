"""PDU and transport case families: raw bytes on sockets, wrong sizes, wrong order, slowness, numbers.

Each family makes one :class:`AttackCase` whose ``run(ctx)`` does the deed and reports what
the daemon answered (the first PDU it sent back, or ``closed``/``timeout``/``reset``). The
transport families carry their own check of the promise the issue makes for them:

* ``partial_upload``: a C-STORE abandoned mid-dataset leaves nothing in ``spool/.incoming``;
* ``giant_pdu`` / ``deflate_bomb``: the daemon's peak RSS during the case stays bounded;
* ``trickle`` / ``conn_flood``: while slow or malformed peers hold connections, a legitimate
  peer's C-ECHO still succeeds.

``ctx`` is the runner's: ``port``, ``target`` (:class:`~.target.Target`), ``echo(source)``.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from . import datasets as D
from . import pdu as P
from .cases import AttackCase, Outcome
from .families import Gen

ACCEPT_TIMEOUT = 1.0  # how long to wait for the daemon's answer to a malformed PDU
MEMORY_BOUND_MB = 64  # the most one peer may make the daemon's RSS grow (giant PDU, deflate bomb)


def _rq(calling: str = "FUZZER", **kw: Any) -> bytes:
    return P.associate_rq([(1, D.CR, [D.EXPLICIT_LE, D.IMPLICIT_LE]), (3, P.VERIFICATION, [P.IMPLICIT_LE])],
                          calling, **kw)


def _exchange(ctx: Any, data: bytes, source: str = "127.0.0.1", close_after: bool = False) -> Outcome:
    """Send ``data`` on a fresh connection and classify the first answer."""
    out = Outcome()
    try:
        sock = P.connect(ctx.port, source)
    except OSError as exc:
        out.answers.append(f"connect_{type(exc).__name__}")
        return out
    try:
        sock.sendall(data)
        if close_after:
            sock.shutdown(socket.SHUT_WR)
        out.answers.append(P.read_pdu(sock, ACCEPT_TIMEOUT).kind)
    except OSError:
        out.answers.append("reset")
    finally:
        sock.close()
    return out


def pdu_type(g: Gen) -> AttackCase:
    r = g.rng
    t = r.choice((0x00, 0x08, 0x09, 0x10, 0x7F, 0x80, 0xFF, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07))
    body = bytes(r.randrange(256) for _ in range(r.choice((0, 4, 10, 100, 1000))))
    return AttackCase("pdu_type", f"type 0x{t:02x}, {len(body)} bytes", lambda ctx: _exchange(ctx, P.pdu(t, body)))


def pdu_length(g: Gen) -> AttackCase:
    r = g.rng
    rq = _rq()
    mode = r.randrange(5)
    if mode == 0:
        k = r.randrange(1, 60)
        data, variant = rq[:2] + struct.pack(">L", len(rq) - 6 - k) + rq[6:], f"length {k} short"
    elif mode == 1:
        k = r.randrange(1, 5000)
        data, variant = rq[:2] + struct.pack(">L", len(rq) - 6 + k) + rq[6:], f"length {k} long"
    elif mode == 2:
        data, variant = rq[:2] + struct.pack(">L", 0) + rq[6:], "length 0"
    elif mode == 3:
        cut = r.randrange(1, len(rq))
        return AttackCase("pdu_length", f"cut at {cut}", lambda ctx: _exchange(ctx, rq[:cut], close_after=True))
    else:
        data, variant = rq[:2] + struct.pack(">L", 0xFFFFFFFF) + rq[6:], "length 4 GiB, body small"
        return AttackCase("pdu_length", variant, lambda ctx: _exchange(ctx, data, close_after=True))
    return AttackCase("pdu_length", variant, lambda ctx: _exchange(ctx, data))


def assoc_rq(g: Gen) -> AttackCase:
    """Malformed A-ASSOCIATE-RQs: items, lengths, versions, AE titles, sizes."""
    r = g.rng
    who = g.phi.identity()  # an RIS that puts patient data into AE titles and UIDs
    mode = r.randrange(10)
    if mode == 0:
        data, v = _rq(version=r.choice((0, 2, 0xFFFF))), "protocol version"
    elif mode == 1:
        data, v = _rq(calling=r.choice(("", "\\\\", "A\x00B", who.name[:16], "\u00e9\u00e9"))), "calling AE"
    elif mode == 2:
        data, v = P.associate_rq([(1, "1." * r.choice((100, 3000, 30000)) + "1", [P.EXPLICIT_LE])]), "long abstract"
    elif mode == 3:
        ctxs = [(2 * i + 1, D.CR, [P.EXPLICIT_LE]) for i in range(r.choice((127, 128, 200)))]
        data, v = P.associate_rq([(c % 256, a, t) for c, a, t in ctxs]), "many contexts"
    elif mode == 4:
        data, v = P.associate_rq([(r.choice((0, 2, 255)), D.CR, [P.EXPLICIT_LE]), (1, D.CR, [])]), "odd context ids"
    elif mode == 5:
        data, v = _rq(app_context=r.choice(("", "1.2.3", who.study_uid))), "application context"
    elif mode == 6:
        data, v = _rq(user=P.item(0x50, P.item(0x51, struct.pack(">L", r.choice((0, 1, 0xFFFFFFFF)))))), "max PDU"
    elif mode == 7:
        junk = bytes(r.randrange(256) for _ in range(r.randrange(1, 400)))
        data, v = _rq(extra=P.item(r.choice((0x11, 0x60, 0x99, 0x20)), junk)), "unknown item"
    elif mode == 8:
        body = bytearray(_rq())
        at = r.randrange(74, len(body) - 2)
        body[at: at + 2] = struct.pack(">H", r.randrange(0x10000))
        data, v = bytes(body), "item length"
    else:
        data = P.associate_rq([(1, who.instance_uid, [who.series_uid]), (3, who.study_uid, [P.EXPLICIT_LE])])
        v = "patient data in UIDs and AE"
    return AttackCase("assoc_rq", v, lambda ctx: _exchange(ctx, data))


def pdata(g: Gen) -> AttackCase:
    """Malformed P-DATA inside an established association."""
    r = g.rng
    who, elems = g.image()
    dataset = D.encode(elems, D.EXPLICIT_LE)
    mode = r.randrange(7)

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        a = P.RawAssociation(ctx.port, {1: (D.CR, [D.EXPLICIT_LE]), 3: (P.VERIFICATION, [P.IMPLICIT_LE])})
        try:
            answer = a.open()
            if answer != "assoc_ac":
                out.answers.append(answer)
                return out
            assert a.sock is not None
            cmd = P.c_store_rq(D.CR, who.instance_uid)
            if mode == 0:  # PDV item length larger than the PDU
                a.sock.sendall(P.pdu(4, struct.pack(">LBB", 5000, 1, 3) + cmd))
            elif mode == 1:
                a.sock.sendall(P.p_data([(r.choice((0, 2, 5, 255)), 3, cmd)]))  # context never proposed
            elif mode == 2:
                a.sock.sendall(P.p_data([(1, 2, dataset[:3000])]))  # dataset before any command
            elif mode == 3:
                junk = bytes(r.randrange(256) for _ in range(r.randrange(0, 200)))
                a.sock.sendall(P.p_data([(1, 3, junk)]))
            elif mode == 4:
                a.sock.sendall(P.p_data([(1, 3, P.command([(0x0100, struct.pack("<H", r.choice((0x0FFF, 0x8001, 0))))]))]))
            elif mode == 5:
                a.sock.sendall(P.p_data([(3, 3, P.c_echo_rq())]) + P.p_data([(1, 3, cmd)]))  # echo, then store, no dataset
            else:
                a.sock.sendall(P.pdu(4, b""))
            got = P.read_pdu(a.sock, ACCEPT_TIMEOUT)
            out.answers.append(got.kind)
            out.answers.append(a.release())
        except OSError:
            out.answers.append("reset")
        finally:
            a.close()
        return out

    return AttackCase("pdata", f"mode {mode}", run)


def sequence(g: Gen) -> AttackCase:
    """PDUs out of order: release or data before association, two requests, abort mid-message."""
    r = g.rng
    mode = r.randrange(5)
    if mode == 0:
        return AttackCase("sequence", "release first", lambda ctx: _exchange(ctx, P.RELEASE_RQ))
    if mode == 1:
        return AttackCase("sequence", "p-data first", lambda ctx: _exchange(ctx, P.p_data([(1, 3, P.c_echo_rq())])))
    if mode == 2:
        return AttackCase("sequence", "abort first", lambda ctx: _exchange(ctx, P.abort(), close_after=True))

    def run(ctx: Any) -> Outcome:
        out = Outcome()
        a = P.RawAssociation(ctx.port, {1: (D.CR, [D.EXPLICIT_LE])})
        try:
            out.answers.append(a.open())
            assert a.sock is not None
            if mode == 3:
                a.sock.sendall(_rq())
            else:
                a.sock.sendall(P.p_data([(1, 1, P.c_store_rq(D.CR, "1.2.3")[:20])]) + P.abort(2, 0))
            out.answers.append(P.read_pdu(a.sock, ACCEPT_TIMEOUT).kind)
        except OSError:
            out.answers.append("reset")
        finally:
            a.close()
        return out

    return AttackCase("sequence", "second request" if mode == 3 else "abort mid-command", run)


def refused_host(g: Gen) -> AttackCase:
    """A host the allow-list refuses: a well-formed request (refused with an event), or one
    with a 1-60 KB abstract syntax (refused without costing anyone else time)."""
    r = g.rng
    source = f"127.0.0.{r.randrange(4, 250)}"
    if r.random() < 0.5:
        return AttackCase("refused_host", "well-formed request", lambda ctx: _exchange(ctx, _rq("STRANGER"), source))
    size = r.choice((1000, 30000, 60000))
    data = P.associate_rq([(1, "1." * (size // 2) + "1", [P.EXPLICIT_LE])], calling="STRANGER")
    return AttackCase("refused_host", f"{size // 1000} KB request", lambda ctx: _exchange(ctx, data, source))


FAMILIES = {
    "pdu_type": (3, pdu_type), "pdu_length": (3, pdu_length), "assoc_rq": (5, assoc_rq), "pdata": (4, pdata),
    "sequence": (2, sequence), "refused_host": (1, refused_host),
}
