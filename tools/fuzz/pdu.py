"""DICOM upper-layer PDUs as bytes (PS3.8 §9.3) and a raw association client.

pynetdicom refuses to send what the fuzzer needs to send (invalid UIDs in a command set, a
command on a context of another SOP class, PDUs with wrong lengths), so this module encodes
PDUs and DIMSE command sets by hand with :mod:`struct`, and :class:`RawAssociation` speaks
just enough of the protocol to associate, store and release over a plain socket — every
read bounded in size and time, so a misbehaving daemon shows up as a classified answer
(``closed``, ``timeout``, ``abort``…), never as a hang of the fuzzer itself.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPL_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"  # fuzzer's implementation class (a UID root, no patient)

PDU_NAMES = {1: "assoc_rq", 2: "assoc_ac", 3: "assoc_rj", 4: "p_data", 5: "release_rq", 6: "release_rp",
             7: "abort"}


def _uid(uid: str | bytes) -> bytes:
    raw = uid.encode("latin-1") if isinstance(uid, str) else uid
    return raw + b"\x00" if len(raw) % 2 else raw


def item(type_: int, body: bytes, length: int | None = None) -> bytes:
    """A variable item: type, reserved, 2-byte length (``length`` overrides the true one)."""
    return struct.pack(">BBH", type_, 0, len(body) if length is None else length & 0xFFFF) + body


def pdu(type_: int, body: bytes, length: int | None = None, reserved: int = 0) -> bytes:
    """A PDU: type, reserved, 4-byte length (``length`` overrides the true one)."""
    return struct.pack(">BBL", type_ & 0xFF, reserved & 0xFF, len(body) if length is None else length) + body


def ae(title: str | bytes) -> bytes:
    raw = title.encode("latin-1") if isinstance(title, str) else title
    return raw[:16].ljust(16, b" ")


def presentation_context(cid: int, abstract: str | bytes, syntaxes: list[str | bytes]) -> bytes:
    body = struct.pack(">BBBB", cid, 0, 0, 0) + item(0x30, _uid(abstract))
    body += b"".join(item(0x40, _uid(ts)) for ts in syntaxes)
    return item(0x20, body)


def user_info(max_pdu: int = 65536, impl_uid: str = IMPL_CLASS_UID, version: bytes = b"EDGED_FUZZ") -> bytes:
    body = item(0x51, struct.pack(">L", max_pdu)) + item(0x52, _uid(impl_uid)) + item(0x55, version)
    return item(0x50, body)


def associate_rq(contexts: list[tuple[int, str | bytes, list[str | bytes]]], calling: str | bytes = "FUZZER",
                 called: str | bytes = "EDGED", *, version: int = 1, app_context: str | bytes = APP_CONTEXT,
                 extra: bytes = b"", max_pdu: int = 65536, user: bytes | None = None) -> bytes:
    head = struct.pack(">HH", version, 0) + ae(called) + ae(calling) + bytes(32)
    items = item(0x10, _uid(app_context))
    items += b"".join(presentation_context(cid, a, ts) for cid, a, ts in contexts)
    items += user_info(max_pdu) if user is None else user
    return pdu(0x01, head + items + extra)


def p_data(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """P-DATA-TF with PDVs (context id, message control header, fragment)."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, cid, mch) + data for cid, mch, data in pdvs)
    return pdu(0x04, body)


RELEASE_RQ = pdu(0x05, bytes(4))
RELEASE_RP = pdu(0x06, bytes(4))


def abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(0x07, struct.pack(">BBBB", 0, 0, source, reason))


# -- DIMSE command sets (Implicit VR Little Endian, group 0000) -------------------------------
def _elem(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", group, elem, len(value)) + value


def command(fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_elem(0, e, v) for e, v in sorted(fields))
    return _elem(0, 0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(sop_class: str | bytes, instance: str | bytes, message_id: int = 1) -> bytes:
    return command([(0x0002, _uid(sop_class)), (0x0100, struct.pack("<H", 0x0001)),
                    (0x0110, struct.pack("<H", message_id & 0xFFFF)), (0x0700, struct.pack("<H", 0)),
                    (0x0800, struct.pack("<H", 0x0000)), (0x1000, _uid(instance))])


def c_echo_rq(message_id: int = 1) -> bytes:
    return command([(0x0002, _uid(VERIFICATION)), (0x0100, struct.pack("<H", 0x0030)),
                    (0x0110, struct.pack("<H", message_id)), (0x0800, struct.pack("<H", 0x0101))])


def command_status(data: bytes) -> int | None:
    """(0000,0900) Status of a received command set, or None."""
    at = 0
    while at + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHL", data, at)
        if (group, elem) == (0, 0x0900) and length >= 2:
            return struct.unpack_from("<H", data, at + 8)[0]
        at += 8 + length
    return None


REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context not supported",
                  (1, 3): "calling AE not recognized", (1, 7): "called AE not recognized",
                  (2, 1): "no reason given", (2, 2): "protocol version not supported",
                  (3, 1): "temporary congestion", (3, 2): "Local limit exceeded"}


def reject_reason(body: bytes) -> str:
    """The source and reason of an A-ASSOCIATE-RJ body (PS3.8 §9.3.4)."""
    if len(body) < 4:
        return "malformed reject"
    return REJECT_REASONS.get((body[2], body[3]), f"source {body[2]} reason {body[3]}")


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Received:
    kind: str  # assoc_ac, assoc_rj, p_data, release_rp, abort, closed, timeout, reset, too_big, unknown_XX
    body: bytes = b""


def read_pdu(sock: socket.socket, timeout: float, limit: int = 1 << 20) -> Received:
    """The next PDU from the peer, classified; at most ``limit`` bytes of body are read."""
    deadline = time.monotonic() + timeout
    head = _read_exact(sock, 6, deadline)
    if isinstance(head, Received):
        return head
    type_, _, length = struct.unpack(">BBL", head)
    if length > limit:
        return Received("too_big")
    body = _read_exact(sock, length, deadline)
    if isinstance(body, Received):
        return body
    return Received(PDU_NAMES.get(type_, f"unknown_{type_:02x}"), body)


def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes | Received:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return Received("timeout")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 65536))
        except socket.timeout:
            return Received("timeout")
        except OSError:
            return Received("reset")
        if not chunk:
            return Received("closed")
        buf += chunk
    return bytes(buf)


def accepted_contexts(ac_body: bytes) -> tuple[dict[int, str], int]:
    """From an A-ASSOCIATE-AC body: accepted context id → transfer syntax, and the peer's max PDU."""
    out: dict[int, str] = {}
    max_pdu = 16382
    at = 68
    while at + 4 <= len(ac_body):
        type_, _, length = struct.unpack_from(">BBH", ac_body, at)
        body = ac_body[at + 4: at + 4 + length]
        if type_ == 0x21 and len(body) >= 8 and body[2] == 0:
            ts_len = struct.unpack_from(">H", body, 6)[0]
            out[body[0]] = body[8: 8 + ts_len].rstrip(b"\x00").decode("latin-1")
        elif type_ == 0x50:
            sub = 0
            while sub + 4 <= len(body):
                st, _, sl = struct.unpack_from(">BBH", body, sub)
                if st == 0x51 and sl == 4:
                    max_pdu = struct.unpack_from(">L", body, sub + 4)[0] or (1 << 30)
                sub += 4 + sl
        at += 4 + length
    return out, max_pdu


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    """A TCP connection to the daemon from ``source`` (any 127/8 address: a distinct peer host)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class RawAssociation:
    """One association over a raw socket. ``contexts`` maps context id → (abstract, syntaxes)."""

    port: int
    contexts: dict[int, tuple[str | bytes, list[str | bytes]]]
    calling: str = "FUZZER"
    source: str = "127.0.0.1"
    timeout: float = 10.0
    sock: socket.socket | None = None
    accepted: dict[int, str] = field(default_factory=dict)
    peer_max_pdu: int = 16382
    reject: bytes = b""  # body of an A-ASSOCIATE-RJ

    def open(self, rq: bytes | None = None) -> str:
        """Connect and associate; the answer's kind (``assoc_ac`` on success)."""
        self.sock = connect(self.port, self.source, self.timeout)
        rq = rq or associate_rq([(cid, a, ts) for cid, (a, ts) in self.contexts.items()], self.calling)
        self.sock.sendall(rq)
        answer = read_pdu(self.sock, self.timeout)
        if answer.kind == "assoc_ac":
            self.accepted, self.peer_max_pdu = accepted_contexts(answer.body)
        elif answer.kind == "assoc_rj":
            self.reject = answer.body
        return answer.kind

    def send_message(self, cid: int, cmd: bytes, dataset: bytes | None) -> None:
        assert self.sock is not None
        self.sock.sendall(p_data([(cid, 0x03, cmd)]))
        if dataset is None:
            return
        frag = max(256, min(self.peer_max_pdu, 1 << 20) - 12)
        chunks = [dataset[i:i + frag] for i in range(0, len(dataset), frag)] or [b""]
        for n, chunk in enumerate(chunks):
            self.sock.sendall(p_data([(cid, 0x02 if n == len(chunks) - 1 else 0x00, chunk)]))

    def response_status(self) -> tuple[str, int | None]:
        """Read until a command arrives: ("status", code) or (kind of what came instead, None)."""
        assert self.sock is not None
        while True:
            got = read_pdu(self.sock, self.timeout)
            if got.kind != "p_data":
                return got.kind, None
            at, body = 0, got.body
            while at + 6 <= len(body):
                length, _cid, mch = struct.unpack_from(">LBB", body, at)
                if mch & 0x01:
                    return "status", command_status(body[at + 6: at + 4 + length])
                at += 4 + length

    def store(self, cid: int, sop_class: str | bytes, instance: str | bytes, dataset: bytes,
              message_id: int = 1) -> tuple[str, int | None]:
        self.send_message(cid, c_store_rq(sop_class, instance, message_id), dataset)
        return self.response_status()

    def release(self) -> str:
        if self.sock is None:
            return "closed"
        try:
            self.sock.sendall(RELEASE_RQ)
            return read_pdu(self.sock, min(self.timeout, 5.0)).kind
        except OSError:
            return "reset"
        finally:
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
