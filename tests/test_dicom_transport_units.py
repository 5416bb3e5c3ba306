"""The transport's pieces on their own, fast: the progress meter, slots, refusal events, the
pynetdicom version guard, the spool's accounting of transfers in progress (on a real full
filesystem), the bounded inflate, and the config keys with file, line and key."""

from __future__ import annotations

import errno
import subprocess
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from edged.config.loader import ConfigError, load_config
from edged.sources.dicom import transport
from edged.sources.dicom.inflate import TooLarge, check_inflated_size
from edged.sources.dicom.limits import ConnectionSlots, Lease, ProgressMeter, TransportLimits
from edged.sources.dicom.incoming import GuardedFile
from edged.sources.dicom.refusals import Refusals
from edged.spool.spool import Spool, SpoolFull
from helpers import deflate_bomb, dicom_file


def test_meter_cuts_a_trickle_but_not_a_peer_we_kept_waiting():
    m = ProgressMeter(min_bytes_per_s=1000, window_s=2)
    for _ in range(19):  # 1 byte every 0.1 s of waiting
        m.waited(0.1)
        m.received(1)
        assert not m.too_slow()
    m.waited(0.1)
    assert m.too_slow() and m.total == 19
    m.idle()
    assert not m.too_slow() and m.clock == 0
    # edged busy for 30 s (not waiting on the peer), then 5 KB arrive at once: not the peer's fault
    m.received(5000)
    m.waited(0.001)
    assert not m.too_slow()
    # a steady 1.5 KB/s over many windows is fine; a stall of one window is not
    for _ in range(100):
        m.waited(0.1)
        m.received(150)
    assert not m.too_slow()
    m.waited(2.0)
    assert m.too_slow()


def test_slots_per_host_and_in_all():
    slots = ConnectionSlots(total=3, per_host=2)
    assert slots.take("10.0.0.1") is None and slots.take("10.0.0.1") is None
    assert "per_host" in (slots.take("10.0.0.1") or "")
    assert slots.take("10.0.0.2") is None
    assert "max_associations 3" in (slots.take("10.0.0.3") or "")
    lease = Lease(slots, "10.0.0.1")
    lease.release()
    lease.release()  # once only
    assert slots.live("10.0.0.1") == 1 and slots.live() == 2


def test_limits_pdu_sizes_and_hosts():
    import ipaddress

    lim = TransportLimits(max_pdu=16384, max_associate_rq=65536, allowed=(ipaddress.ip_network("10.1.0.0/16"),))
    assert lim.pdu_limit(0x04, 32768) == 32768 and lim.pdu_limit(0x04, 0) == 16384
    assert lim.pdu_limit(0x01, 32768) == 65536 and lim.pdu_limit(0x07, 32768) == 65536
    assert lim.host_allowed("10.1.2.3") and lim.host_allowed("::ffff:10.1.2.3")
    assert not lim.host_allowed("10.2.0.1") and not lim.host_allowed("fe80::1") and not lim.host_allowed("x")


def test_refusal_events_are_folded_per_peer_and_reason_then_summarised():
    emitted: list[dict] = []
    r = Refusals(lambda *a, **kw: emitted.append({"reason": a[1], **kw}), interval=0.3).start()
    try:
        for _ in range(5):
            r.refuse("10.0.0.9", "too_slow", "slow")
        r.refuse("10.0.0.8", "too_slow", "slow")
        r.refuse("10.0.0.9", "host_not_allowed", "no")
        deadline = time.monotonic() + 3
        while len(emitted) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        r.stop()
    assert [(e["peer"], e["reason"]) for e in emitted[:3]] == [
        ("10.0.0.9", "too_slow"), ("10.0.0.8", "too_slow"), ("10.0.0.9", "host_not_allowed")]
    assert emitted[3]["peer"] == "10.0.0.9" and emitted[3]["detail"].startswith("4 more refusal(s)")
    assert len(emitted) == 4


def test_unverified_pynetdicom_fails_loudly(monkeypatch, tmp_path, capsys):
    transport.check_pynetdicom()  # the installed one is verified
    with pytest.raises(transport.UnsupportedPynetdicom, match=r"pynetdicom 3\.1\.0 is installed.*3\.0\.4"):
        transport.check_pynetdicom("3.1.0")
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.0.99" if name == "pynetdicom" else real(name))
    # `edged check` says so (exit 2) ...
    from edged.cli import main

    assert main(["check", "--set", f"state_dir={tmp_path}"]) == 2
    assert "error: dicom: pynetdicom 3.0.99 is installed" in capsys.readouterr().err
    # ... and the daemon refuses to start before loading any model or touching its state
    from edged.daemon import Daemon

    state = tmp_path / "state"
    with pytest.raises(transport.UnsupportedPynetdicom):
        Daemon(load_config(None, [f"state_dir={state}"])).start()
    assert not state.exists()


def test_incoming_bytes_count_against_the_quota(tmp_path):
    spool = Spool(tmp_path / "spool", quota_bytes=1000, reserve_free_bytes=0)
    a = str(spool.incoming / "a.dcm")
    spool.grow_incoming(a, 600)
    with pytest.raises(SpoolFull, match="with the transfers in progress"):
        spool.grow_incoming(str(spool.incoming / "b.dcm"), 500)
    Path(a).write_bytes(b"x" * 600)
    assert spool.adopt("k" * 32, Path(a))  # its own 600 are not counted twice
    assert spool.incoming_bytes() == 0
    with pytest.raises(SpoolFull):
        spool.grow_incoming(str(spool.incoming / "c.dcm"), 500)
    spool.remove("k" * 32)
    spool.grow_incoming(str(spool.incoming / "c.dcm"), 500)
    spool.drop_incoming(str(spool.incoming / "c.dcm"))
    assert spool.incoming_bytes() == 0
    # a quarantined file leaves the quota too
    Path(a).write_bytes(b"x" * 900)
    assert spool.adopt("q" * 32, Path(a))
    with pytest.raises(SpoolFull):
        spool.grow_incoming(str(spool.incoming / "d.dcm"), 200)
    assert spool.quarantine("q" * 32) is not None
    spool.grow_incoming(str(spool.incoming / "d.dcm"), 900)


@pytest.fixture
def full_fs(tmp_path: Path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


class RacedSpool(Spool):
    """The disk's free space was checked, then another process filled it before our write."""

    def grow_incoming(self, path: str, nbytes: int) -> None:
        with self._lock:
            self._incoming[path] = self._incoming.get(path, 0) + nbytes
            self._incoming_total += nbytes


def test_a_write_that_meets_a_full_disk_ends_the_stream_not_the_association(full_fs):
    """ENOSPC from the kernel (a 1 MB tmpfs): the stream stops, its bytes are freed, the rest is
    dropped quietly, and the failure says spool_full."""
    spool = RacedSpool(full_fs / "spool", quota_bytes=1 << 30, reserve_free_bytes=0)
    path = spool.incoming / "x.dcm"
    g = GuardedFile(spool, open(path, "wb"), str(path))
    for _ in range(64):  # 2 MB into 1 MB
        g.write(b"\x01" * 32768)
        g.file.flush()
    assert g.failure is not None and g.failure.startswith("spool_full: no room")
    assert errno.errorcode[errno.ENOSPC] not in g.failure  # a sentence, not an errno name
    assert not path.exists() and spool.incoming_bytes() == 0
    g.close()
    assert g.discard() is None


def test_inflating_stops_at_the_limit_in_bounded_memory(tmp_path):
    bomb = deflate_bomb(dicom_file("RG1_UNCR.dcm"), tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            check_inflated_size(bomb, 8 << 20)
        assert check_inflated_size(bomb, 64 << 20) > 32 << 20
        assert tracemalloc.get_traced_memory()[1] < 2 << 20
    finally:
        tracemalloc.stop()
    # bytes after the end of the deflate stream (padding, or a peer's garbage) end the count
    with open(bomb, "ab") as f:
        f.write(b"\x00\x01" * 70000)
    assert check_inflated_size(bomb, 64 << 20) > 32 << 20


def config_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edged.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def test_transport_config_errors_name_file_line_and_key(tmp_path):
    f = tmp_path / "edged.yaml"
    key = tmp_path / "k.pem"
    key.write_text("not a key\n")
    problems = config_problems(tmp_path, f"""\
        dicom:
          max_pdu_size: 0
          max_associations: 4
          max_associations_per_host: 6
          tls:
            cert_file: {tmp_path}/missing.pem
            key_file: {key}
        """)
    text = "\n".join(problems)
    assert f"{f}:2: dicom.max_pdu_size:" in text and "no longer accepted" in text
    assert f"{f}:6: dicom.tls.cert_file:" in text
    problems = config_problems(tmp_path, """\
        dicom:
          max_associations: 4
          max_associations_per_host: 6
        """)
    assert f"{f}:2: dicom:" in problems[0] or f"{f}:1: dicom:" in problems[0]
    assert "max_associations_per_host (6) is more than max_associations (4)" in problems[0]
    problems = config_problems(tmp_path, f"""\
        dicom:
          tls:
            cert_file: {key}
            key_file: {key}
            require_client_cert: true
        """)
    assert f"{f}:2: dicom.tls:" in problems[0] and "require_client_cert needs ca_file" in problems[0]
    problems = config_problems(tmp_path, f"""\
        dicom:
          tls: {{cert_file: {key}, key_file: {key}}}
        """)
    assert f"{f}:2: dicom.tls:" in problems[0] and "do not load" in problems[0]
