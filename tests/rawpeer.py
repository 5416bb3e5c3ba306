"""A DICOM peer on a raw socket, for what no well-behaved SCU does: oversized or malformed PDUs,
trickled bytes, transfers cut off halfway. PDUs are built with pynetdicom's own encoders (so
the well-formed parts are right) and framed by hand (so the bad parts are exactly as meant)."""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO

from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
ECHO_CX, CR_CX = 1, 3


def associate_rq(calling: str = "MODALITY", called: str = "EDGED", max_pdu: int = 16384) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = calling, called
    contexts = []
    for cx_id, (uid, syntaxes) in ((ECHO_CX, (Verification, [IMPLICIT])),
                                   (CR_CX, (ComputedRadiographyImageStorage, [EXPLICIT]))):
        cx = build_context(uid, syntaxes)
        cx.context_id = cx_id
        contexts.append(cx)
    prim.presentation_context_definition_list = contexts
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_pdu
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = "1.2.826.0.1.3680043.9.9999"
    prim.user_information = [ml, ic]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def p_data(cx_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (control: 0 dataset, 1 command, +2 last fragment)."""
    item = struct.pack(">LBB", len(data) + 2, cx_id, control) + data
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


def _command(primitive, message) -> bytes:
    message.primitive_to_message(primitive)
    fragments = message.encode_msg(1, 0)
    pdata = next(fragments)
    (_, pdv), = pdata.presentation_data_value_list
    return pdv[1:]  # the encoded command set, without its control header


def echo_command() -> bytes:
    rq = C_ECHO()
    rq.MessageID = 7
    rq.AffectedSOPClassUID = Verification
    return _command(rq, C_ECHO_RQ())


def store_command(sop_class: str, sop_instance: str) -> bytes:
    rq = C_STORE()
    rq.MessageID = 8
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = sop_instance
    rq.Priority = 2
    rq.DataSet = BytesIO(b"\0")
    return _command(rq, C_STORE_RQ())


class RawPeer:
    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next PDU (type, body), or None when the connection is closed or reset."""
        self.sock.settimeout(timeout)
        try:
            head = self._exact(6)
            if head is None:
                return None
            kind, _, length = struct.unpack(">BBL", head)
            body = self._exact(length)
            return None if body is None else (kind, body)
        except (ConnectionResetError, BrokenPipeError):
            return None

    def _exact(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def associate(self, calling: str = "MODALITY") -> None:
        self.send(associate_rq(calling))
        reply = self.read_pdu()
        assert reply is not None and reply[0] == 0x02, f"association not accepted: {reply}"

    def echo(self) -> int:
        self.send(p_data(ECHO_CX, 0x03, echo_command()))
        return self.status()

    def status(self, timeout: float = 10.0) -> int:
        """Status of the next DIMSE response (its command set in one PDV)."""
        reply = self.read_pdu(timeout)
        assert reply is not None and reply[0] == 0x04, f"no P-DATA response: {reply}"
        data = reply[1][6:]  # PDV length(4), context(1), control(1)
        at = data.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")  # (0000,0900) Status, implicit VR LE, length 2
        assert at >= 0, "no Status in the response"
        return struct.unpack("<H", data[at + 8:at + 10])[0]

    def closed_within(self, timeout: float) -> float | None:
        """Seconds until the other side closed (EOF or reset), None if it did not. Reads and
        discards whatever arrives meanwhile (an A-ABORT, say)."""
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start
            except TimeoutError:
                return None
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
