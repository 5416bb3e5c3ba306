"""The dynamic batcher has Triton's semantics: size or delay closes a batch, the queue is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edged.backends.base import Backend, BackendError, BackendInfo, TensorSpec
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.batcher.dynamic import Completion, DynamicBatcher, QueueFull, Request
from edged.models.manifest import BatchingSpec


class RecordingBackend(Backend):
    """Sums each input; records batch sizes; can be told to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def load(self) -> None: ...

    info = BackendInfo("test", "fp32", "cpu")
    input_spec = TensorSpec("x", (-1, 2), "float32")
    output_specs = (TensorSpec("y", (-1, 1), "float32"), TensorSpec("n", (-1,), "int32"))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.gate.wait(10)
        self.batches.append(len(batch))
        if self.fail:
            raise BackendError("device lost")
        return {"y": batch.sum(axis=1, keepdims=True), "n": np.arange(len(batch), dtype=np.int32)}


def run(batcher: DynamicBatcher, n: int, spacing: float = 0.0) -> list[Completion]:
    done: list[Completion] = []
    all_done = threading.Event()

    def on_done(c: Completion) -> None:
        done.append(c)
        if len(done) == n:
            all_done.set()

    for i in range(n):
        batcher.submit(Request(np.array([i, 1], np.float32), on_done, context=i))
        time.sleep(spacing)
    assert all_done.wait(5)
    return done


def test_full_batches_leave_without_waiting_for_the_delay():
    be = RecordingBackend()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=4, max_queue_delay_ms=10_000, max_queue_size=16))
    b.start()
    be.gate.clear()
    b.submit(Request(np.zeros(2, np.float32), lambda c: None))  # keeps the backend busy: the rest queue
    time.sleep(0.05)
    threading.Timer(0.1, be.gate.set).start()
    done = run(b, 8)  # would take 10 s if full batches waited for the delay (run() gives up then)
    assert be.batches == [1, 4, 4]
    assert sorted(c.request.context for c in done) == list(range(8))
    assert all(float(c.outputs["y"][0]) == c.request.context + 1 for c in done)  # each gets its own row
    assert sorted(int(c.outputs["n"]) for c in done) == sorted([0, 1, 2, 3] * 2)  # of every output, in its own dtype
    assert all(c.outputs["n"].dtype == np.int32 for c in done)
    assert all(c.batch_size == 4 and c.compute_ms >= 0 and c.window[1] >= c.window[0] for c in done)
    b.stop()


def test_delay_closes_a_partial_batch_and_zero_delay_sends_at_once():
    be = RecordingBackend()
    be.gate.clear()  # the backend is busy with a first request while three more arrive
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=8, max_queue_delay_ms=200, max_queue_size=16))
    b.start()
    done: list[Completion] = []
    b.submit(Request(np.zeros(2, np.float32), done.append, context="first"))
    time.sleep(0.05)
    for i in range(3):
        b.submit(Request(np.array([i, 1], np.float32), done.append, context=i))
    be.gate.set()
    deadline = time.monotonic() + 5
    while len(done) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert be.batches == [1, 3]  # requests queued under load wait for the batch to fill or the delay
    assert all(c.queue_ms >= 150 for c in done if c.request.context == 0)
    b.retune(max_queue_delay_ms=0)
    be.batches.clear()
    run(b, 2, spacing=0.05)
    assert be.batches == [1, 1]
    b.stop()


def test_a_lone_request_on_an_idle_backend_does_not_wait_for_the_delay():
    """Issue #14: an image on an idle device waited the full max_queue_delay_ms for a batch of one."""
    be = RecordingBackend()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=8, max_queue_delay_ms=500, max_queue_size=16))
    b.start()
    waits = []
    for _ in range(5):  # each alone, on an idle backend
        (c,) = run(b, 1)
        assert c.batch_size == 1
        waits.append(c.queue_ms)
        time.sleep(0.05)
    b.stop()
    # None waited for the 500 ms delay; on two cores shared with the other test worker, waking the
    # batcher thread alone can take several ms, so the issue's ≤ 5 ms holds for the best of five
    # (docs/performance.md measures it on a quiet machine: 0.08-0.34 ms).
    assert max(waits) < 100 and min(waits) <= 5.0, waits


def test_under_load_batches_still_form():
    be = RecordingBackend()
    be.gate.clear()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=4, max_queue_delay_ms=50, max_queue_size=32))
    b.start()
    done: list[Completion] = []
    for i in range(9):
        b.submit(Request(np.array([i, 1], np.float32), done.append, context=i))
        if i == 0:
            time.sleep(0.05)  # the first is in the (blocked) backend; the rest queue behind it
    be.gate.set()
    deadline = time.monotonic() + 5
    while len(done) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert be.batches == [1, 4, 4]
    b.stop()


def test_queue_is_bounded_with_a_clear_rejection():
    be = RecordingBackend()
    be.gate.clear()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2))
    b.start()
    noop = lambda c: None  # noqa: E731
    b.submit(Request(np.zeros(2, np.float32), noop))
    time.sleep(0.1)  # taken by the (blocked) backend
    b.submit(Request(np.zeros(2, np.float32), noop))
    b.submit(Request(np.zeros(2, np.float32), noop))
    with pytest.raises(QueueFull, match="exceeds maximum queue size"):
        b.submit(Request(np.zeros(2, np.float32), noop))
    assert b.stats["rejected"] == 1
    be.gate.set()
    b.stop()


def test_backend_errors_fail_every_request_of_the_batch_and_the_batcher_survives():
    be = RecordingBackend()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=4, max_queue_delay_ms=50, max_queue_size=16))
    b.start()
    be.fail = True
    failed = run(b, 3)
    assert all(c.error == "device lost" and c.outputs is None for c in failed)
    be.fail = False
    ok = run(b, 2)
    assert all(c.error is None for c in ok) and b.alive()
    b.stop()


def test_stop_drains_queued_requests():
    be = RecordingBackend()
    b = DynamicBatcher("m", be, BatchingSpec(max_batch_size=2, max_queue_delay_ms=10_000, max_queue_size=16))
    b.start()
    done: list[Completion] = []
    b.submit(Request(np.zeros(2, np.float32), done.append))
    b.stop(drain=True)
    assert len(done) == 1 and done[0].error is None


def test_onnxruntime_batches_equal_single_inference(tiny_repo):
    ort = OnnxRuntimeBackend(tiny_repo / "chexnet-tiny" / "model.onnx", threads=1)
    ort.load()
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32)
    b = DynamicBatcher("tiny", ort, BatchingSpec(max_batch_size=5, max_queue_delay_ms=500, max_queue_size=8))
    b.start()
    done: dict[int, Completion] = {}
    ev = threading.Event()

    def on_done(c: Completion) -> None:
        done[c.request.context] = c
        if len(done) == 5:
            ev.set()

    for i in range(5):
        b.submit(Request(x[i], on_done, context=i))
    assert ev.wait(10)
    assert {c.batch_size for c in done.values()} == {5}
    for i in range(5):
        np.testing.assert_allclose(done[i].outputs["logits"], ort.infer(x[i:i + 1])["logits"][0], rtol=1e-5, atol=1e-5)
    b.stop()
