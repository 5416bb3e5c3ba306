"""The isolated worker for real: ONNX Runtime in a child, tensors through /dev/shm, crashes and hangs."""

from __future__ import annotations

import errno
import mmap
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edged.backends.base import BackendError
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.worker import WorkerBackend, WorkerLoadError, child
from edged.backends.worker.process import WorkerProcess


def ort_worker(model_dir, plain_env, events=None, **kw) -> WorkerBackend:
    defaults = dict(batch_timeout_s=10.0, load_timeout_s=30.0, backoff_initial_s=0.05, backoff_max_s=1.0)
    defaults.update(kw)
    env = plain_env(**defaults.pop("extra_env", {}))
    return WorkerBackend("onnxruntime", {"model": str(model_dir / "model.onnx"), "threads": 1}, name="tiny",
                         python_exe=sys.executable, on_event=events, env=env, **defaults)


@pytest.fixture
def reference(tiny_model):
    ref = OnnxRuntimeBackend(tiny_model / "model.onnx", threads=1)
    ref.load()
    yield ref
    ref.close()


def kinds(events) -> list[str]:
    return [k for k, _ in events.got]


def test_shm_round_trip_equals_in_process_ort(tiny_model, reference, plain_env, make_inputs):
    backend = ort_worker(tiny_model, plain_env)
    backend.load()
    try:
        assert backend.input_spec == reference.input_spec
        assert [o.shape for o in backend.output_specs] == [(-1, 14)]
        assert backend.info.backend == "onnxruntime" and backend.info.detail["worker_pid"] != os.getpid()
        for n in (1, 3, 8):
            x = make_inputs(n, seed=n)
            np.testing.assert_equal(backend.infer(x), reference.infer(x))
        tensor_file = backend._worker.tensor_path
        assert tensor_file.exists() and str(tensor_file).startswith("/dev/shm")
    finally:
        backend.close()
    assert not tensor_file.exists(), "close() must remove the shared tensor file"


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_echo_round_trip_is_exact_and_grows_the_tensor_file(plain_env, dtype):
    backend = WorkerBackend("echo", {"input_shape": [-1, 3, 50, 50], "dtype": dtype}, env=plain_env())
    backend.load()
    try:
        rng = np.random.default_rng(1)
        for n in (1, 40):  # 40 x 3 x 50 x 50 floats do not fit the initial 64 KiB file
            x = (rng.standard_normal((n, 3, 50, 50)) * 60).astype(dtype)
            np.testing.assert_array_equal(backend.infer(x)["output"], x.reshape(n, -1).astype(np.float32))
    finally:
        backend.close()


def test_output_larger_than_announced_is_fetched_after_growing(plain_env):
    worker = WorkerProcess(sys.executable, "grow", plain_env(), None)
    try:
        worker.start("echo", {"input_shape": [-1, 1000]}, 30)
        x = np.arange(20000, dtype=np.float32).reshape(20, 1000)
        out = worker.infer(x, seq=1, out_bytes_hint=0, timeout=10)  # child answers need_space first
        np.testing.assert_array_equal(out["output"], x)
        np.testing.assert_array_equal(out["sum"], x.sum(axis=1))  # every output, in the input's dtype
    finally:
        worker.close()


def test_header_codec_rejects_what_it_must():
    buf = bytearray(4096)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    end = child.write_tensor(buf, 0, arr, seq=7)
    assert end == child.HEADER_SIZE + arr.nbytes
    back, seq = child.read_tensor(buf, 0, expect_seq=7)
    assert seq == 7 and back.dtype == np.float32 and np.array_equal(back, arr)
    with pytest.raises(child.TensorIOError, match="stale"):
        child.read_tensor(buf, 0, expect_seq=8)
    bad = bytearray(buf)
    bad[0:8] = b"NOTMAGIC"
    with pytest.raises(child.TensorIOError, match="magic"):
        child.read_tensor(bad, 0)
    bad = bytearray(buf)
    bad[8:10] = (99).to_bytes(2, "little")
    with pytest.raises(child.TensorIOError, match="version"):
        child.read_tensor(bad, 0)
    bad = bytearray(buf)
    bad[32:40] = (10**6).to_bytes(8, "little")  # nbytes no longer matches the shape
    with pytest.raises(child.TensorIOError, match="nbytes"):
        child.read_tensor(bad, 0)
    with pytest.raises(child.TensorIOError, match="does not fit"):
        child.write_tensor(bytearray(64), 0, arr, seq=1)
    with pytest.raises(child.TensorIOError, match="dtype"):
        child.write_tensor(buf, 0, np.zeros(2, dtype=np.complex64), seq=1)


def test_load_error_is_reported_with_its_code(tmp_path, plain_env):
    backend = WorkerBackend("onnxruntime", {"model": str(tmp_path / "missing.onnx")}, env=plain_env())
    with pytest.raises(WorkerLoadError) as info:
        backend.load()
    assert info.value.code == "load_error" and "missing.onnx" in str(info.value)


def test_kill_9_between_batches_restarts_and_serves(tiny_model, reference, plain_env, events, make_inputs, caplog):
    caplog.set_level("INFO", logger="edged.worker")
    backend = ort_worker(tiny_model, plain_env, events)
    backend.load()
    try:
        first = backend.pid
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        x = make_inputs(4)
        np.testing.assert_equal(backend.infer(x), reference.infer(x))
        assert backend.pid != first and backend.restarts == 1
        assert kinds(events) == ["worker_crashed", "worker_restarted"]
        crashed = events.got[0][1]
        assert crashed["pid"] == first and crashed["will_retry"] and crashed["model"] == "tiny"
        assert events.got[1][1]["retrying_batch"] is True
        logged = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
        assert any(f"worker {first} killed by SIGKILL" in m for m in logged)
        assert any(f"worker restarted as pid {backend.pid}" in m for m in logged)
    finally:
        backend.close()


def _kill_when_busy(backend: WorkerBackend, count: int, delay: float) -> threading.Thread:
    """Kill the worker ``count`` times, each ``delay`` s after a (new) worker got its batch."""

    def run() -> None:
        seen = set()
        deadline = time.monotonic() + 20
        while len(seen) < count and time.monotonic() < deadline:
            pid = backend.pid
            if pid and pid not in seen:
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
                seen.add(pid)
            time.sleep(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_kill_9_mid_batch_retries_on_a_new_worker(tiny_model, reference, plain_env, events, make_inputs):
    # The fault hook makes each batch take 0.8 s inside the child, so the kill lands mid-batch.
    backend = ort_worker(tiny_model, plain_env, events, extra_env={child.FAULT_DELAY_ENV: "0.8"})
    backend.load()
    try:
        killer = _kill_when_busy(backend, 1, 0.3)
        x = make_inputs(5)
        np.testing.assert_equal(backend.infer(x), reference.infer(x))
        killer.join()
        assert kinds(events) == ["worker_crashed", "worker_restarted"]
        assert "SIGKILL" in events.got[0][1]["error"] and events.got[0][1]["batch_size"] == 5
    finally:
        backend.close()


def test_second_crash_fails_the_batch_cleanly_and_backoff_grows(tiny_model, reference, plain_env, events, make_inputs):
    backend = ort_worker(tiny_model, plain_env, events, extra_env={child.FAULT_DELAY_ENV: "0.6"},
                         backoff_initial_s=0.2, backoff_max_s=5.0)
    backend.load()
    try:
        killer = _kill_when_busy(backend, 2, 0.2)
        with pytest.raises(BackendError, match="failed twice"):
            backend.infer(make_inputs(2))
        killer.join()
        assert kinds(events) == ["worker_crashed", "worker_restarted", "worker_crashed"]
        # The daemon keeps serving: the next batch starts a worker after a longer back-off.
        t0 = time.monotonic()
        x = make_inputs(2, seed=3)
        np.testing.assert_equal(backend.infer(x), reference.infer(x))
        restarts = [f for k, f in events.got if k == "worker_restarted"]
        assert [r["backoff_s"] for r in restarts] == [0.2, 0.4]
        assert time.monotonic() - t0 >= 0.3  # it really waited (0.4 s minus the time since the crash)
        assert restarts[1]["retrying_batch"] is False
    finally:
        backend.close()


def test_backoff_longer_than_batch_timeout_fails_fast(tiny_model, plain_env, events, make_inputs):
    backend = ort_worker(tiny_model, plain_env, events, backoff_initial_s=30.0, backoff_max_s=60.0, batch_timeout_s=5.0)
    backend.load()
    try:
        os.kill(backend.pid, signal.SIGKILL)
        time.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="next attempt in"):
            backend.infer(make_inputs(1))
        assert time.monotonic() - t0 < 3, "must not sleep through a 30 s back-off"
        assert kinds(events) == ["worker_crashed"]
    finally:
        backend.close()


def test_hang_sigstop_times_out_and_restarts(tiny_model, reference, plain_env, events, make_inputs):
    backend = ort_worker(tiny_model, plain_env, events, batch_timeout_s=1.5)
    backend.load()
    try:
        stopped = backend.pid
        os.kill(stopped, signal.SIGSTOP)
        x = make_inputs(3)
        t0 = time.monotonic()
        np.testing.assert_equal(backend.infer(x), reference.infer(x))
        assert 1.4 < time.monotonic() - t0 < 10
        assert kinds(events) == ["worker_timeout", "worker_restarted"]
        assert events.got[0][1]["pid"] == stopped and events.got[0][1]["timeout_s"] == 1.5
        with pytest.raises(ProcessLookupError):  # the stopped worker was killed, not leaked
            for _ in range(50):
                os.kill(stopped, 0)
                time.sleep(0.05)
    finally:
        backend.close()


def test_bad_input_fails_the_batch_without_restarting(tiny_model, plain_env, events):
    backend = ort_worker(tiny_model, plain_env, events)
    backend.load()
    try:
        pid = backend.pid
        with pytest.raises(BackendError, match="infer_error|INVALID|Got invalid"):
            backend.infer(np.zeros((2, 3, 32, 32), dtype=np.float32))
        with pytest.raises(BackendError, match="cannot cross the worker boundary"):
            backend.infer(np.zeros((2, 3, 64, 64), dtype=np.complex64))
        assert backend.pid == pid and events.got == []
    finally:
        backend.close()


def test_library_output_on_stdout_cannot_corrupt_the_protocol(plain_env):
    """fd 1 of the child points at stderr; only the private channel carries JSON."""
    backend = WorkerBackend("echo", {"input_shape": [-1, 2]}, env=plain_env())
    backend.load()
    try:
        assert os.readlink(f"/proc/{backend.pid}/fd/1") == os.readlink(f"/proc/{backend.pid}/fd/2")
        np.testing.assert_array_equal(backend.infer(np.ones((1, 2), np.float32))["output"], np.ones((1, 2)))
    finally:
        backend.close()


def test_tensor_file_is_a_real_shared_mapping(plain_env):
    """The daemon's mmap and the child's see the same bytes (no copies through pipes)."""
    worker = WorkerProcess(sys.executable, "map", plain_env(), None)
    try:
        worker.start("echo", {"input_shape": [-1, 4]}, 30)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        worker.infer(x, seq=5, out_bytes_hint=1024, timeout=10)
        with open(worker.tensor_path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            got, seq = child.read_tensor(mm, 0, expect_seq=5)
        assert seq == 5 and np.array_equal(got, x)
    finally:
        worker.close()


def test_tensor_files_of_dead_daemons_are_swept(tmp_path, plain_env):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    leftover = tmp_path / f"edged-old-{dead.stdout.strip()}-deadbeef.tensors"
    mine = tmp_path / f"edged-live-{os.getpid()}-cafebabe.tensors"
    leftover.write_bytes(b"x")
    mine.write_bytes(b"x")
    backend = WorkerBackend("echo", {}, env=plain_env(), tensor_dir=tmp_path)
    backend.load()
    backend.close()
    assert not leftover.exists() and mine.exists()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_worker_that_cannot_be_started_leaks_no_tensor_file_or_fd(tmp_path, plain_env):
    """E.g. the Jetson Python removed by an upgrade: load() fails as a BackendError, every time, cleanly."""
    backend = WorkerBackend("echo", {"input_shape": [-1, 4]}, python_exe=str(tmp_path / "no-such-python3.6"),
                            env=plain_env(), tensor_dir=tmp_path / "shm")
    (tmp_path / "shm").mkdir()
    fds = _open_fds()
    for _ in range(3):
        with pytest.raises(BackendError, match="worker failed to start: cannot start worker .*no-such-python3.6"):
            backend.load()
    assert list((tmp_path / "shm").iterdir()) == []
    assert _open_fds() == fds


def test_popen_failure_raises_worker_died_and_removes_the_tensor_file(tmp_path, plain_env, monkeypatch):
    from edged.backends.worker import process

    def no_memory(*args, **kw):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(process.subprocess, "Popen", no_memory)
    fds = _open_fds()
    with pytest.raises(process.WorkerDied, match="Cannot allocate memory") as info:
        WorkerProcess(sys.executable, "nomem", plain_env(), tmp_path)
    assert isinstance(info.value, BackendError) and info.value.fields["errno"] == errno.ENOMEM
    assert list(tmp_path.iterdir()) == [] and _open_fds() == fds


def test_a_worker_that_aborts_keeps_what_it_said(tmp_path, plain_env):
    """On TensorRT 8.0/8.2 an exception in a callback is std::terminate: SIGABRT, and the reason
    only on stderr. The load error carries it instead of a bare "killed by SIGABRT"."""
    host = tmp_path / "aborting_host.py"
    host.write_text("import os, sys\n"
                    "def create_host(params):\n"
                    "    sys.stderr.write(\"terminate called after throwing an instance of "
                    "'pybind11::error_already_set'\\n  what():  OSError: [Errno 28] No space left on device\\n\")\n"
                    "    sys.stderr.flush()\n"
                    "    os.abort()\n")
    backend = WorkerBackend("external", {"module": str(host)}, name="aborting", python_exe=sys.executable,
                            env=plain_env(), load_timeout_s=30)
    with pytest.raises(BackendError) as info:
        backend.load()
    message = str(info.value)
    assert "SIGABRT" in message and "No space left on device" in message and "terminate called" in message
