"""DICOM TLS (issue #8, item 10): DCMTK's storescu and pynetdicom store over TLS with client
certificates this test makes with the openssl CLI; a client that stalls its handshake blocks
nobody and is cut at handshake_timeout_s; every failed handshake is logged at once, with its
reason, and becomes a ``rejected`` event."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from helpers import dicom_file, storescu
from rawpeer import RawPeer

CR = dicom_file("RG1_UNCR.dcm")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(cwd: Path, name: str, ca: str, usage: str, san: str = "") -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN=edged-test-{name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                     f"extendedKeyUsage={usage}\n{san}")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site CA with a server and a client certificate, and a rogue CA with its own client."""
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=edged-test-{ca}", cwd=d)
    issue(d, "server", "ca", "serverAuth", "subjectAltName=IP:127.0.0.1\n")
    issue(d, "client", "ca", "clientAuth")
    issue(d, "rogue", "rogue-ca", "clientAuth")
    return d


def client_context(certs: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
    return ctx


def echo_tls(port: int, ctx: ssl.SSLContext) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGED", tls_args=(ctx, "127.0.0.1"))
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def wait_log(d, text: str, timeout: float = 3.0) -> float:
    start = time.monotonic()
    while text not in d.log.read_text():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{text!r} not logged within {timeout} s:\n{d.log.read_text()[-2000:]}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_dicom_tls_with_client_certificates(daemon_factory, collector, certs):
    tls = {"cert_file": str(certs / "server.pem"), "key_file": str(certs / "server.key"),
           "ca_file": str(certs / "ca.pem"), "require_client_cert": True, "handshake_timeout_s": 3}
    d = daemon_factory(dicom={"tls": tls}).start()
    wait_log(d, "(TLS, client certificates required)")

    # A client that connects and never starts its handshake holds up nobody...
    stalled = RawPeer(d.port)
    t0 = time.monotonic()
    r = storescu(d.port, CR, extra=("+tls", str(certs / "client.key"), str(certs / "client.pem"),
                                    "+cf", str(certs / "ca.pem")))
    assert r.returncode == 0, r.stderr[-2000:]
    assert echo_tls(d.port, client_context(certs, "client"))
    assert stalled.closed_within(0.05) is None, "served only after the stalled handshake was given up"
    # ...and is cut once its handshake time is up.
    assert stalled.closed_within(6) is not None
    assert time.monotonic() - t0 >= 2.9
    wait_log(d, "refused: tls_handshake_timeout: no TLS handshake within 3 s")

    # Refused handshakes: logged at once with the reason.
    assert not echo_tls(d.port, client_context(certs, None))
    assert wait_log(d, "PEER_DID_NOT_RETURN_A_CERTIFICATE") < 2
    assert not echo_tls(d.port, client_context(certs, "rogue"))
    assert wait_log(d, "client certificate rejected: unable to get local issuer certificate") < 2
    failed = d.log.read_text().count("refused: tls_handshake_failed")
    plain = storescu(d.port, CR)  # no TLS at all: OpenSSL's reason, e.g. WRONG_VERSION_NUMBER
    assert plain.returncode != 0
    deadline = time.monotonic() + 2
    while d.log.read_text().count("refused: tls_handshake_failed") == failed:
        assert time.monotonic() < deadline, "a plain-TCP client's failed handshake was not logged"
        time.sleep(0.05)

    collector.wait_for(lambda c: len(c.results()) == 1 and {e["reason"] for e in c.events("rejected")} >=
                       {"tls_handshake_timeout", "tls_handshake_failed"})
    for e in collector.events("rejected"):
        assert e["peer"] == "127.0.0.1" and "edged-test" not in e["detail"]  # no certificate subjects
        assert e["reason"] != "tls_closed"  # a port probe (the harness's readiness check) is logged, no event
    log = d.log.read_text()
    assert "Traceback" not in log and "edged-test" not in log
    assert d.terminate() == 0


def test_client_certificates_optional_with_a_ca(certs):
    """ca_file without require_client_cert: a client without a certificate is served, one with a
    certificate the CA did not sign is not."""
    import socket
    import threading

    from edged.sources.dicom.tls import HandshakeFailed, handshake, server_context

    ctx = server_context(certs / "server.pem", certs / "server.key", certs / "ca.pem", require_client_cert=False)

    def attempt(client: ssl.SSLContext) -> str | None:
        a, b = socket.socketpair()
        outcome: list[str | None] = []

        def serve() -> None:
            try:
                handshake(ctx, a, 3).close()
                outcome.append(None)
            except HandshakeFailed as exc:
                outcome.append(exc.reason)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with client.wrap_socket(b, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"x")  # TLS 1.3: the server's verdict on a client certificate comes after
        except (ssl.SSLError, OSError):
            pass
        t.join(5)
        return outcome[0]

    assert attempt(client_context(certs, None)) is None
    assert attempt(client_context(certs, "client")) is None
    assert "client certificate rejected" in (attempt(client_context(certs, "rogue")) or "")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_dribbled_handshake_is_cut_at_its_deadline(certs):
    """A client that sends its ClientHello a byte every 0.3 s: a socket timeout (per wait) would
    never fire; the handshake's deadline is for the whole of it."""
    import socket
    import threading

    from edged.sources.dicom.tls import HandshakeFailed, handshake, server_context

    ctx = server_context(certs / "server.pem", certs / "server.key")
    a, b = socket.socketpair()
    stop = threading.Event()

    def dribble() -> None:
        data = b"\x16\x03\x01\x02\x00" + b"\x01" * 512  # a TLS record header, then its body slowly
        for byte in data:
            if stop.wait(0.3):
                return
            try:
                b.send(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=dribble, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(HandshakeFailed) as err:
        handshake(ctx, a, 1.0)
    stop.set()
    assert err.value.code == "tls_handshake_timeout"
    assert time.monotonic() - start < 2.0
    b.close()
