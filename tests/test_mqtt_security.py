"""Credentials from files and TLS against a real mosquitto that requires both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edged.localbroker import LocalBroker, free_port
from helpers import DaemonProcess, cr_variants, storescu, write_config


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path: Path):
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr", cwd=pki)
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=pki)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge-node", "s3cret pass"], check=True)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    port = free_port()
    broker = LocalBroker(workdir, port=free_port(), extra_conf=(
        f"listener {port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
        f"password_file {passwd}\nallow_anonymous false\nper_listener_settings false\n"))
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.tls_port = port
    broker.start()
    yield broker, pki
    broker.stop()


def test_daemon_publishes_over_tls_with_credentials_from_files(tls_broker, tiny_repo, tmp_path):
    broker, pki = tls_broker
    (tmp_path / "user").write_text("edge-node\n")
    (tmp_path / "pass").write_text("s3cret pass\n")
    port = free_port()
    cfg = write_config(
        tmp_path / "edged.yaml", node_id="tls-node", state_dir=str(tmp_path / "state"),
        cache_dir=str(tmp_path / "cache"), model_repository=str(tiny_repo), models=[{"name": "chexnet-tiny"}],
        dicom={"bind": "127.0.0.1", "port": port},
        mqtt={"host": "127.0.0.1", "port": broker.tls_port, "username_file": str(tmp_path / "user"),
              "password_file": str(tmp_path / "pass"), "tls": {"ca_file": str(pki / "ca.crt")}},
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log").start()
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.tls_port), "--cafile",
                            str(pki / "ca.crt"), "-u", "edge-node", "-P", "s3cret pass", "-C", "1", "-W", "60",
                            "-t", "edged/v1/tls-node/results/#"], stdout=subprocess.PIPE, text=True)
    try:
        assert storescu(port, *cr_variants(tmp_path, 1)).returncode == 0
        out, _ = sub.communicate(timeout=90)
        assert '"schema":"edged.result/v1"' in out
        assert "s3cret" not in d.log.read_text()
    finally:
        sub.kill()
        assert d.terminate() == 0


@pytest.mark.parametrize("mistake", ["another CA", "wrong host name"])
def test_tls_failures_are_logged_at_once_with_the_reason(tls_broker, tiny_repo, tmp_path, mistake):
    """Defect (issue #8): a wrong CA or host name logged nothing for 12 s and more."""
    import time

    broker, pki = tls_broker
    ca = pki / "ca.crt"
    host = "127.0.0.1"
    if mistake == "another CA":
        other = tmp_path / "other"
        other.mkdir()
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
                "-keyout", "ca.key", "-out", "ca.crt", cwd=other)
        ca = other / "ca.crt"
    else:
        host = "localhost"  # the certificate names IP:127.0.0.1 only
    (tmp_path / "user").write_text("edge-node\n")
    (tmp_path / "pass").write_text("s3cret pass\n")
    cfg = write_config(
        tmp_path / "edged.yaml", node_id="tls-node", state_dir=str(tmp_path / "state"),
        cache_dir=str(tmp_path / "cache"), model_repository=str(tiny_repo), models=[{"name": "chexnet-tiny"}],
        dicom={"bind": "127.0.0.1", "port": free_port()},
        mqtt={"host": host, "port": broker.tls_port, "username_file": str(tmp_path / "user"),
              "password_file": str(tmp_path / "pass"), "tls": {"ca_file": str(ca)}},
    )
    d = DaemonProcess(cfg, tmp_path / "daemon.log").start()
    try:
        deadline = time.monotonic() + 5
        while "TLS certificate not accepted" not in d.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = d.log.read_text()
        assert "cannot connect to broker" in log and "TLS certificate not accepted" in log, log[-2000:]
        assert ("hostname" if mistake == "wrong host name" else "certificate") in log.split("TLS certificate not accepted")[1][:200].lower()
        assert log.count("TLS certificate not accepted") == 1, "the same reason is logged once, not every retry"
    finally:
        assert d.terminate() == 0
