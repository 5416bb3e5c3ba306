"""CPU by role (edged/metrics/cpu.py): threads counted by name, kept when they end, children, and
every value only growing; read from the real kernel (/proc), with real threads and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edged.metrics.cpu import CpuByRole, role_of, stat_cpu_s


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(range(1000))


def test_roles_from_thread_names():
    assert role_of("dicom-accept") == role_of("dicom-refusals") == "dicom"
    assert role_of("AcceptorServer@20261130") == "dicom"
    assert role_of("batcher-chexnet") == "inference"
    assert role_of("result-writer") == role_of("mqtt-publisher") == role_of("paho-mqtt-client-x") == "results"
    assert role_of("preprocess-0") == "preprocess"
    assert role_of("MainThread") == role_of("Thread-3 (process_request_thread)") == "other"


def run_thread(cpu: CpuByRole, name: str, seconds: float, retire: bool, started: threading.Event | None = None,
               release: threading.Event | None = None) -> threading.Thread:
    """A thread called ``name`` that burns ``seconds`` of CPU, optionally waits, then ends
    (calling ``cpu.retire()`` first if ``retire``)."""

    def body() -> None:
        burn(seconds)
        if started is not None:
            started.set()
            assert release is not None
            release.wait(10)
        if retire:
            cpu.retire()

    t = threading.Thread(target=body, name=name)
    if name.startswith("AcceptorThread"):  # as GuardedAssociation: the role is an attribute
        t.cpu_role = "dicom"  # type: ignore[attr-defined]
    t.start()
    return t


def test_a_live_thread_then_its_retired_time_counted_once():
    cpu = CpuByRole()
    before = cpu.snapshot().get("dicom", 0.0)
    started, release = threading.Event(), threading.Event()
    t = run_thread(cpu, "AcceptorThread@20261130", 0.3, True, started, release)
    assert started.wait(10)
    live = cpu.snapshot()["dicom"] - before
    assert 0.25 <= live <= 0.45  # /proc's ticks of the live thread
    release.set()
    t.join()
    for _ in range(3):  # retired: thread_time() kept, and never counted a second time
        ended = cpu.snapshot()["dicom"] - before
        assert 0.29 <= ended <= 0.45
        assert ended >= live


def test_a_thread_that_ends_without_retiring_keeps_what_was_last_seen():
    cpu = CpuByRole()
    started, release = threading.Event(), threading.Event()
    t = run_thread(cpu, "batcher-x", 0.3, False, started, release)
    assert started.wait(10)
    seen = cpu.snapshot()["inference"]
    release.set()
    t.join()
    after = [cpu.snapshot()["inference"] for _ in range(3)]
    assert after == sorted(after) and after[0] >= seen >= 0.25


def test_short_threads_land_in_their_role_and_other_takes_the_rest():
    cpu = CpuByRole()
    first = cpu.snapshot()
    for _ in range(4):  # short associations never seen live by a snapshot
        run_thread(cpu, "dicom-dul", 0.05, True).join()
    run_thread(cpu, "unnamed-helper", 0.1, False).join()  # no role, never seen: other
    second = cpu.snapshot()
    assert 0.19 <= second["dicom"] - first.get("dicom", 0.0) <= 0.3
    assert second["other"] - first["other"] >= 0.05
    process = sum(os.times()[:2])
    assert abs(sum(second.values()) - process) < 0.05  # every second of the process in exactly one role
    for role, value in first.items():
        assert second[role] >= value, role


def test_child_processes_counted_under_their_role_and_kept_when_gone():
    cpu = CpuByRole()
    child = subprocess.Popen([sys.executable, "-c", "import time\nend=time.process_time()+0.4\n"
                              "while time.process_time()<end: pass\ninput()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while cpu.snapshot({"decode": [child.pid]}).get("decode", 0.0) < 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        seen = cpu.snapshot({"decode": [child.pid]})["decode"]
    finally:
        child.communicate(b"\n", timeout=20)
    gone = cpu.snapshot({"decode": []})["decode"]  # replaced worker: its last reading stays
    assert gone == seen
    assert cpu.snapshot({})["decode"] == seen


def test_a_renamed_thread_never_makes_a_role_go_down():
    """socketserver's request thread is renamed dicom-accept once it runs: the time a snapshot
    saw under ``other`` stays there, what it spends afterwards counts as dicom."""
    cpu = CpuByRole()
    started, release = threading.Event(), threading.Event()
    t = run_thread(cpu, "Thread-7 (process_request_thread)", 0.2, False, started, release)
    assert started.wait(10)
    before = cpu.snapshot()
    t.name = "dicom-accept"
    after = cpu.snapshot()
    release.set()
    t.join()
    assert after["other"] >= before["other"] >= 0.15
    assert after["dicom"] >= 0.15  # now read under its new name


def test_the_daemon_metric_counts_tensorrt_worker_processes_as_inference():
    """add_cpu_by_role: a served model whose backend runs in a worker process (the TensorRT
    worker's ``pid``) has that process's CPU under ``inference``; a model without one adds none."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from edged.metrics import Metrics
    from edged.metrics.live import add_cpu_by_role

    worker = subprocess.Popen([sys.executable, "-c", "import time\nend=time.process_time()+0.4\n"
                               "while time.process_time()<end: pass\ninput()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while (stat_cpu_s(Path(f"/proc/{worker.pid}/stat")) or 0.0) < 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # until the worker has spent 0.3 s
        daemon = SimpleNamespace(decoders=None, models={"trt": SimpleNamespace(backend=SimpleNamespace(pid=worker.pid)),
                                                         "ort": SimpleNamespace(backend=object())},
                                 camera_models={})
        m = Metrics("n", process=False)
        add_cpu_by_role(m, daemon)
        text = generate_latest(m.registry).decode()
        roles = {s.labels["role"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "edged_cpu_seconds_total"}
        assert roles["inference"] >= 0.3, roles
    finally:
        worker.communicate(b"\n", timeout=20)
