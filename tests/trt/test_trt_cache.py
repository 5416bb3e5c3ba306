"""The engine cache: complete keys, invalidation, corruption, two builders at once, stale locks, prune."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from edged.backends.tensorrt.cache import DeviceId, EngineCache, EngineKey
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.engines import EngineManager
from edged.backends.tensorrt import lock as lock_module
from edged.backends.tensorrt.lock import FileLock, LockTimeout
from edged.backends.selection import load_trt
from edged.models.manifest import load_manifest, sha256_file

XAVIER = {"ok": True, "tensorrt": "8.5.2.2", "gpu": {"name": "Xavier", "compute_capability": "7.2"},
          "model": "NVIDIA Jetson Xavier NX Developer Kit", "compatible": "nvidia,p3509-0000+p3668-0001,nvidia,tegra194"}
ORIN = dict(XAVIER, gpu={"name": "Orin", "compute_capability": "8.7"}, model="NVIDIA Jetson AGX Orin",
            compatible="nvidia,p3737-0000+p3701-0000,nvidia,tegra234")


def key(**kw) -> EngineKey:
    base = dict(model="chexnet", model_sha256="ab" * 32, trt_version="8.5.2.2", device=DeviceId.from_probe(XAVIER),
                precision="fp16", dla_core=None, batch=(1, 8, 8), builder_flags=("workspace_mb=256",))
    base.update(kw)
    return EngineKey(**base)


def fake_build(content: bytes, counter: list | None = None):
    def build(plan: Path, log: Path) -> dict:
        if counter is not None:
            counter.append(plan)
        plan.write_bytes(content)
        return {"build_seconds": 0.0}

    return build


def test_device_id_and_readable_names():
    dev = DeviceId.from_probe(XAVIER)
    assert dev == DeviceId("7.2", "tegra194", "NVIDIA Jetson Xavier NX Developer Kit", "")
    stem = key().stem()
    assert stem.startswith("chexnet_abababab_trt8.5.2.2_sm72-tegra194_gpu_fp16_b1-8_")
    assert key(dla_core=1, batch=(4, 4, 4)).stem().split("_")[4:7] == ["dla1", "fp16", "b4-4"]


@pytest.mark.parametrize("change", [
    {"trt_version": "10.3.0.30"},  # JetPack upgrade
    {"device": DeviceId.from_probe(ORIN)},  # same SD card in another module
    {"model_sha256": "cd" * 32},  # new model weights
    {"precision": "int8", "calibration_hash": "ee" * 32},
    {"dla_core": 0, "batch": (2, 2, 2)},
    {"builder_flags": ("workspace_mb=512",)},
])
def test_any_key_change_is_a_miss_and_a_new_file(change, tmp_path):
    cache = EngineCache(tmp_path)
    old = key()
    entry, built, _ = cache.get_or_build(old, fake_build(b"plan-old"))
    assert built and cache.lookup(old)[0] is not None
    new = key(**change)
    assert cache.lookup(new) == (None, "not built yet")
    entry2, built2, _ = cache.get_or_build(new, fake_build(b"plan-new"))
    assert built2 and entry2.engine != entry.engine and entry.engine.read_bytes() == b"plan-old"
    meta = json.loads(entry2.meta_path.read_text())
    assert meta["key"] == new.as_dict() and meta["engine_sha256"] == sha256_file(entry2.engine)


def test_hit_does_not_build_and_metadata_for_another_key_is_a_miss(tmp_path):
    cache = EngineCache(tmp_path)
    calls: list = []
    cache.get_or_build(key(), fake_build(b"p", calls))
    entry, built, why = cache.get_or_build(key(), fake_build(b"p", calls))
    assert not built and why == "cached" and len(calls) == 1
    meta = json.loads(entry.meta_path.read_text())
    meta["key"]["trt_version"] = "8.2.1.8"  # e.g. a file copied in from another device
    entry.meta_path.write_text(json.dumps(meta))
    assert cache.lookup(key()) == (None, "metadata belongs to a different key")


def test_corrupt_engine_file_is_rebuilt(tmp_path):
    cache = EngineCache(tmp_path)
    entry, _, _ = cache.get_or_build(key(), fake_build(b"good plan"))
    entry.engine.write_bytes(b"good plaX")  # same size, one flipped byte (bad SD card)
    hit, why = cache.lookup(key())
    assert hit is None and "sha256" in why
    assert cache.verify(next(cache.entries())) == ["sha256 differs from metadata (corrupt or replaced)"]
    entry2, built, why = cache.get_or_build(key(), fake_build(b"good plan"))
    assert built and "sha256" in why and entry2.engine.read_bytes() == b"good plan"
    assert "building: engine file does not match" in entry2.log.read_text()


def test_engine_tensorrt_refuses_is_invalidated_and_rebuilt(model_copy, tmp_path, doubles_env, events):
    """Metadata and sha256 agree, yet deserialize_cuda_engine returns None: drop it, rebuild, serve."""
    env = doubles_env("8.5")
    cfg = TensorRTConfig(worker_python=sys.executable, load_timeout_s=60)
    manager = EngineManager(load_manifest(model_copy), XAVIER, cfg, tmp_path, max_batch=2, env=env, on_event=events)
    engines = manager.ensure()
    (_, entry), = engines.entries
    entry.engine.write_bytes(b"a plan from somewhere else")
    meta = json.loads(entry.meta_path.read_text())
    meta.update(engine_sha256=sha256_file(entry.engine), engine_bytes=entry.engine.stat().st_size)
    entry.meta_path.write_text(json.dumps(meta))
    events.got.clear()
    backend, engines = load_trt(manager, cfg, events, env)
    try:
        assert backend.info.backend == "tensorrt"
        assert [k for k, _ in events.got] == ["engine_invalidated", "engine_built"]
        assert "magicTag" in events.got[0][1]["reason"]
        assert "engine invalidated" in entry.log.read_text()
    finally:
        backend.close()


HELPER = textwrap.dedent("""
    import os, sys, time, json
    from pathlib import Path
    from edged.backends.tensorrt.cache import EngineCache, EngineKey, DeviceId
    key = EngineKey("m", "ab" * 32, "8.5.2.2", DeviceId("7.2"), "fp16", None, (1, 8, 8))
    def build(plan, log):
        with open(sys.argv[2], "a") as f:
            f.write("%d\\n" % os.getpid())
        time.sleep(1.0)
        plan.write_bytes(b"plan by %d" % os.getpid())
        return {}
    entry, built, why = EngineCache(sys.argv[1]).get_or_build(key, build)
    print(json.dumps({"built": built, "why": why, "sha": entry.meta["engine_sha256"]}))
""")


def test_two_processes_never_build_the_same_engine(tmp_path, plain_env):
    builds = tmp_path / "builds.txt"
    procs = [subprocess.Popen([sys.executable, "-c", HELPER, str(tmp_path / "cache"), str(builds)],
                              stdout=subprocess.PIPE, text=True, env=plain_env()) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert len(builds.read_text().split()) == 1, "exactly one process may build"
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["sha"] == results[1]["sha"]
    waiter = next(r for r in results if not r["built"])
    assert waiter["why"] in ("built by another process while we waited", "cached")
    assert not list((tmp_path / "cache").glob("*.lock")) and not list((tmp_path / "cache").glob(".*.tmp"))


FORKER = textwrap.dedent("""
    import os, sys, time
    from edged.backends.tensorrt.lock import FileLock
    lock = FileLock(sys.argv[1])
    lock.acquire()
    pid = os.fork()
    if pid == 0:          # the forked child inherits the locked descriptor and outlives us
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    os._exit(0)           # the holder dies without releasing
""")


def test_stale_lock_left_by_a_dead_holder_is_broken(tmp_path, plain_env):
    path = tmp_path / "x.lock"
    out = subprocess.run([sys.executable, "-c", FORKER, str(path)], capture_output=True, text=True, env=plain_env(),
                         timeout=30)
    orphan = int(out.stdout.split()[0])
    try:
        t0 = time.monotonic()
        with FileLock(path, timeout_s=10) as lock:
            assert lock.broke_stale
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_live_holder_is_waited_for_never_broken(tmp_path):
    path = tmp_path / "y.lock"
    with FileLock(path):
        with pytest.raises(LockTimeout, match=f"held by pid {os.getpid()}"):
            FileLock(path, timeout_s=0.3).acquire()


def test_prune_removes_other_versions_orphans_and_temp_files(tmp_path):
    cache = EngineCache(tmp_path)
    current, _, _ = cache.get_or_build(key(), fake_build(b"current"))
    old, _, _ = cache.get_or_build(key(trt_version="8.2.1.8"), fake_build(b"old"))
    (tmp_path / "orphan.engine").write_bytes(b"no metadata")
    stale_tmp = tmp_path / ".half.plan.tmp"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    fresh_tmp = tmp_path / ".building-now.plan.tmp"
    fresh_tmp.write_bytes(b"x")

    def keep(e):
        return e.meta["key"]["trt_version"] == "8.5.2.2"

    planned = cache.prune(keep, dry_run=True)
    assert old.engine in planned and old.engine.exists(), "dry run removes nothing"
    gone = set(cache.prune(keep))
    assert gone == {old.engine, old.meta_path, old.log, tmp_path / "orphan.engine", stale_tmp}
    assert current.engine.exists() and fresh_tmp.exists()
    assert [e.engine for e in cache.entries()] == [current.engine]


def _stale_lock_file(path: Path) -> None:
    """A lock file whose recorded holder is dead and whose flock nobody holds (holder SIGKILLed)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "start": "1", "host": socket.gethostname(), "since": time.time()}))


@pytest.mark.parametrize("pause_at", ["after_flock", "before_pid_write"])
def test_taking_over_a_stale_lock_file_never_admits_two_holders(pause_at, tmp_path, monkeypatch):
    """A new holder flocked the stale file but has not written its pid yet; a waiter reads the
    dead pid in that window. Exactly one of them may end up holding the lock."""
    path = tmp_path / "x.lock"
    _stale_lock_file(path)
    in_window, waiter_done = threading.Event(), threading.Event()
    holders: list[FileLock] = []
    taker_thread: list[threading.Thread] = []

    def pause() -> None:
        if threading.current_thread() is taker_thread[0] and not in_window.is_set():
            in_window.set()
            waiter_done.wait(1.0)  # bounded: after the fix the waiter may be blocked on us

    real_flock, real_ftruncate = lock_module.fcntl.flock, lock_module.os.ftruncate

    def flock(fd, op):
        real_flock(fd, op)
        if pause_at == "after_flock" and op & fcntl.LOCK_EX:  # the taker's first flock is the lock file's
            pause()

    def ftruncate(fd, size):  # the holder record is rewritten (truncate + write) right after this
        if pause_at == "before_pid_write":
            pause()
        return real_ftruncate(fd, size)

    monkeypatch.setattr(lock_module.fcntl, "flock", flock)
    monkeypatch.setattr(lock_module.os, "ftruncate", ftruncate)

    def take(lock: FileLock, done: threading.Event | None = None) -> None:
        try:
            lock.acquire()
            holders.append(lock)
        except LockTimeout:
            pass
        finally:
            if done is not None:
                done.set()

    taker, waiter = FileLock(path, timeout_s=1.5, poll_s=0.01), FileLock(path, timeout_s=1.5, poll_s=0.01)
    taker_thread.append(threading.Thread(target=take, args=(taker,)))
    taker_thread[0].start()
    assert in_window.wait(5)
    waiter_thread = threading.Thread(target=take, args=(waiter, waiter_done))
    waiter_thread.start()
    taker_thread[0].join(10)
    waiter_thread.join(10)
    try:
        assert len(holders) == 1, f"{len(holders)} holders at once"
        assert json.loads(path.read_text())["pid"] == os.getpid(), "the holder's pid must be in the file at the path"
    finally:
        for lock in holders:
            lock.release()
    assert not path.exists() and not Path(f"{path}.break").exists(), "release leaves no lock files behind"


def test_prune_skips_a_key_whose_build_is_in_progress(tmp_path):
    cache = EngineCache(tmp_path)
    building = key(trt_version="10.3.0.30")
    started, release = threading.Event(), threading.Event()

    def slow_build(plan: Path, log: Path) -> dict:
        (tmp_path / f".{building.stem()}.json.123.tmp").write_text("{}")  # a write in progress, looks old
        os.utime(tmp_path / f".{building.stem()}.json.123.tmp", (time.time() - 7200, time.time() - 7200))
        started.set()
        release.wait(10)  # an hour-long Nano build
        with open(log, "a") as f:
            f.write("TensorRT: engine built\n")
        plan.write_bytes(b"plan")
        return {}

    builder = threading.Thread(target=lambda: cache.get_or_build(building, slow_build))
    builder.start()
    try:
        assert started.wait(10)
        assert cache.prune(lambda e: True) == [], "the build's log and temp files are in use"
        assert cache.paths(building).log.exists() and (tmp_path / f"{building.stem()}.lock").exists()
        busy: list[str] = []
        assert cache.prune(lambda e: True, dry_run=True, on_busy=busy.append) == []
        assert cache.prune(lambda e: True, on_busy=busy.append) == []
        assert busy == [building.stem()] * 2
    finally:
        release.set()
        builder.join(10)
    assert cache.lookup(building)[0] is not None
    assert "building: not built yet" in cache.paths(building).log.read_text()


def test_prune_removes_lock_files_left_by_killed_processes(tmp_path):
    cache = EngineCache(tmp_path)
    current, _, _ = cache.get_or_build(key(), fake_build(b"current"))
    stem = key().stem()
    _stale_lock_file(tmp_path / f"{stem}.lock")  # its builder was SIGKILLed mid-build
    (tmp_path / f"{stem}.lock.break").write_text("")
    (tmp_path / "gone_long_ago.lock.break").write_text("")  # from a key pruned earlier
    stale = {tmp_path / f"{stem}.lock", tmp_path / f"{stem}.lock.break", tmp_path / "gone_long_ago.lock.break"}
    assert set(cache.prune(lambda e: True, dry_run=True)) == stale
    assert all(p.exists() for p in stale), "dry run removes nothing"
    assert set(cache.prune(lambda e: True)) == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([current.engine.name, current.meta_path.name,
                                                                   current.log.name])
