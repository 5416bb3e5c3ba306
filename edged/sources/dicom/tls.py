"""DICOM TLS: the server context and a handshake bounded in time.

The profile is DICOM's BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.12, RFC 8996 /
RFC 9325): TLS 1.2 or 1.3 only (1.3 preferred: OpenSSL picks the highest version both sides
offer), and for TLS 1.2 only ECDHE/DHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-
Poly1305). DCMTK's default "Non-downgrading BCP 195" profile and any current TLS stack connect.
Client certificates are optional (a client that presents one must chain to ``ca_file``) or
required (``require_client_cert``).

pynetdicom 3.0 wraps each accepted socket and runs the handshake *in its accept loop*, with no
timeout: one client that connects and says nothing blocks every other peer. edged does the
handshake in the connection's own thread (:mod:`edged.sources.dicom.transport`) with
:func:`handshake`, which gives up after ``timeout`` seconds. Its failures carry a short reason
("timed out", OpenSSL's reason such as ``PEER_DID_NOT_RETURN_A_CERTIFICATE`` or the certificate
verification message) for the log line and the ``rejected`` event, never a certificate's subject.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


class HandshakeFailed(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context for the profile above. Raises ``ssl.SSLError``/``OSError`` when the
    files do not load (the config schema turns that into an error with file, line and key)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs ca_file (the CA that signs the client certificates)")
    return ctx


def handshake(ctx: ssl.SSLContext, raw: socket.socket, timeout: float) -> ssl.SSLSocket:
    """Wrap ``raw`` and complete the server handshake within ``timeout`` seconds in all, or
    raise :class:`HandshakeFailed` (the socket is closed). Since Python 3.5 a socket's timeout is
    "the maximum total duration of the handshake" (``SSLSocket.do_handshake``), so a client
    dribbling its ClientHello a byte at a time does not stretch it."""
    raw.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        raise HandshakeFailed("tls_handshake_failed", f"cannot start TLS: {type(exc).__name__}") from None
    try:
        tls.do_handshake()
    except (socket.timeout, TimeoutError):
        tls.close()
        raise HandshakeFailed("tls_handshake_timeout", f"no TLS handshake within {timeout:g} s") from None
    except ssl.SSLEOFError:  # connected and left (a port probe, a client that gave up): no event
        tls.close()
        raise HandshakeFailed("tls_closed", "closed by the client before the TLS handshake completed") from None
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise HandshakeFailed("tls_handshake_failed",
                              f"client certificate rejected: {exc.verify_message or exc.reason}") from None
    except ssl.SSLError as exc:
        tls.close()
        raise HandshakeFailed("tls_handshake_failed", str(exc.reason or type(exc).__name__)) from None
    except OSError as exc:
        tls.close()
        raise HandshakeFailed("tls_handshake_failed",
                              f"connection lost during the handshake ({exc.strerror or type(exc).__name__})") from None
    return tls


def describe(tls: ssl.SSLSocket) -> str:
    cipher = tls.cipher()
    return f"{tls.version()} {cipher[0] if cipher else ''}".strip()
