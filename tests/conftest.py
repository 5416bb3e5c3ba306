"""Shared fixtures: a real mosquitto, real DICOM files, the daemon as a real process.

Nothing here mocks mosquitto, pynetdicom, pydicom or onnxruntime; the only doubles in the
suite are for Jetson-only interfaces (see tests/power, tests/trt).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edged.localbroker import LocalBroker, free_port, port_slice
from helpers import REPO, Collector, DaemonProcess, write_config


def _own_ports_per_worker() -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker picks its free ports from
    its own slice of the range (of ``EDGED_FREE_PORTS`` if the caller set one): a port one worker
    picked for a daemon still starting is invisible to the other's bind check, and two servers
    on one port fail a test at random. A restarted worker (``gw2`` of 2) takes a slice again."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not worker[2:].isdigit() or not count.isdigit():
        return
    os.environ["EDGED_FREE_PORTS"] = "{}-{}".format(*port_slice(int(worker[2:]), int(count)))


_own_ports_per_worker()


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the tiny DenseNet (same family and pipeline as CheXNet, ~1 ms)."""
    from edged.models.synth import write_model

    repo = tmp_path_factory.mktemp("engines")
    write_model("tiny", repo / "chexnet-tiny")
    return repo


@pytest.fixture(scope="session")
def chexnet_ready() -> Path:
    """The reference CheXNet ONNX, generated once if missing (deterministic, pinned sha256)."""
    subprocess.run([sys.executable, str(REPO / "tools" / "make_models.py")], check=True, stdout=subprocess.DEVNULL)
    return REPO / "engines"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = LocalBroker(workdir).start()
    yield b
    b.stop()


@pytest.fixture
def collector(broker: LocalBroker) -> Iterator[Collector]:
    c = Collector(broker.port)
    time.sleep(0.3)
    yield c
    c.close()
    assert not c.invalid, f"messages that break the JSON Schemas: {c.invalid}"


@pytest.fixture
def daemon_factory(tmp_path: Path, broker: LocalBroker, tiny_repo: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(repo: Path | None = None, model: str = "chexnet-tiny", env: dict[str, str] | None = None,
             **extra) -> DaemonProcess:
        cfg = {
            "node_id": "test-node",
            "state_dir": str(tmp_path / "state"),
            "cache_dir": str(tmp_path / "cache"),
            "log_level": "info",
            "model_repository": str(repo or tiny_repo),
            "dicom": {"bind": "127.0.0.1", "port": free_port(), **extra.pop("dicom", {})},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "resend_after_s": 2, **extra.pop("mqtt", {})},
            "models": extra.pop("models", [{"name": model}]),
            "power": {"control_socket": str(tmp_path / "control.sock"), **extra.pop("power", {})},
            **extra,
        }
        d = DaemonProcess(write_config(tmp_path / f"edged-{len(started)}.yaml", **cfg), tmp_path / "daemon.log", env)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.alive():
            d.kill9()


@pytest.fixture
def small_fs(tmp_path: Path):
    """``small_fs(bytes)`` → a directory on a fresh tmpfs of that size: a disk that really fills.
    Skips (saying why) where this process may not mount."""
    mounts: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / f"small-fs-{len(mounts)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): a full disk needs one")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def listener(tmp_path: Path):
    """edged's guarded DICOM listener (transport.serve) serving C-ECHO; yields (port, server, AE,
    ended associations: "released"/"aborted" as they end)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    from edged.sources.dicom import transport
    from edged.sources.dicom.limits import TransportLimits
    from edged.sources.dicom.refusals import Refusals
    from edged.spool.spool import Spool

    ae = AE(ae_title="EDGED")
    ae.add_supported_context(Verification)
    ended: list = []
    guard = transport.Guard(TransportLimits(), Refusals(lambda *a, **k: None), Spool(tmp_path / "spool", 1 << 30))
    port = free_port()
    handlers = [(evt.EVT_RELEASED, lambda e: ended.append("released")),
                (evt.EVT_ABORTED, lambda e: ended.append("aborted"))]
    server = transport.serve(ae, ("127.0.0.1", port), handlers, guard)
    try:
        yield port, server, ae, ended
    finally:
        server.shutdown()
