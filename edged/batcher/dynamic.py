"""A dynamic batcher per model, with Triton's semantics — minus the idle wait.

A batch leaves when it holds ``max_batch_size`` requests, or when its oldest request has
waited ``max_queue_delay_ms`` (0: send whatever is queued). One exception: a request that
arrives while the backend is idle and nothing else is queued leaves at once. The delay exists
to let a batch fill while requests keep coming; for a lone image on an idle device (tens of
radiographs a day, a few at a time) it buys nothing but latency. Requests that arrive while a
batch is in the backend queue and batch as Triton does.

The queue is bounded: a request that does not fit is refused at once with :class:`QueueFull`
— cameras drop the frame, the DICOM path never gets here because it bounds its own in-flight
work. Each completion carries its own queue time and the batch's compute time and window (for
energy per inference).
With a ``windows`` recorder (:class:`edged.power.accounting.EnergyAccounting`) the window's edges
come from it, so the energy of batches that overlap — two models at once — can be shared between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edged.backends.base import Backend, BackendError, check_outputs
from edged.models.manifest import BatchingSpec

log = logging.getLogger("edged.batcher")


class QueueFull(Exception):
    """Exceeds maximum queue size (Triton's wording)."""


@dataclass
class Request:
    tensor: np.ndarray
    on_done: Callable[["Completion"], None]
    context: Any = None
    enqueued_at: float = field(default_factory=time.monotonic)
    immediate: bool = False  # set by submit(): it found the backend idle and the queue empty


@dataclass(frozen=True)
class Completion:
    request: Request
    outputs: dict[str, np.ndarray] | None  # this request's row of every raw output, or None on error
    error: str | None
    queue_ms: float
    compute_ms: float
    batch_size: int
    window: tuple[float, float]  # monotonic start/end of the backend call
    index: int = 0  # position in its batch (metrics count an execution once, at 0)


class WindowRecorder(Protocol):
    """Records inference windows: ``begin() -> (token, start)``, ``end(token) -> end`` (monotonic)."""

    def begin(self) -> tuple[int, float]: ...

    def end(self, token: int) -> float: ...


class DynamicBatcher:
    def __init__(self, name: str, backend: Backend, spec: BatchingSpec, windows: WindowRecorder | None = None):
        self.name = name
        self.backend = backend
        self.windows = windows
        self.max_batch_size = spec.max_batch_size
        self.max_queue_delay_s = spec.max_queue_delay_ms / 1000.0
        self.max_queue_size = spec.max_queue_size
        self._queue: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self.busy_since: float | None = None  # monotonic start of the running backend call
        self._busy = False  # a batch has left the queue and not yet completed (guarded by _cond)
        self.stats = {"requests": 0, "batches": 0, "rejected": 0, "failed": 0}

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def retune(self, max_batch_size: int | None = None, max_queue_delay_ms: float | None = None) -> None:
        """Apply new batching settings (e.g. after a power-mode change); takes effect at the next batch."""
        with self._cond:
            if max_batch_size is not None:
                self.max_batch_size = max(1, int(max_batch_size))
            if max_queue_delay_ms is not None:
                self.max_queue_delay_s = max(0.0, float(max_queue_delay_ms)) / 1000.0
            self._cond.notify_all()
        log.info("%s: batching now max_batch_size=%d max_queue_delay_ms=%.1f",
                 self.name, self.max_batch_size, self.max_queue_delay_s * 1000)

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull(f"{self.name}: batcher is stopping")
            if len(self._queue) >= self.max_queue_size:
                self.stats["rejected"] += 1
                raise QueueFull(f"{self.name}: exceeds maximum queue size ({self.max_queue_size})")
            request.immediate = not self._busy and not self._queue
            self._queue.append(request)
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop; with ``drain`` the queued requests are still inferred first."""
        with self._cond:
            self._stopping = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
            else:
                dropped = []
            self._cond.notify_all()
        for req in dropped:
            _complete(req, None, "batcher stopped", 0.0, 0, (0.0, 0.0))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the batching loop ---------------------------------------------------------------
    def _next_batch(self) -> list[Request] | None:
        with self._cond:
            while True:
                if self._queue:
                    if len(self._queue) >= self.max_batch_size or self._stopping or self._queue[0].immediate:
                        break
                    wait = self._queue[0].enqueued_at + self.max_queue_delay_s - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
            n = min(self.max_batch_size, len(self._queue))
            self._busy = True
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._infer(batch)
            finally:
                with self._cond:
                    self._busy = False

    def _infer(self, batch: list[Request]) -> None:
        token, start = self.windows.begin() if self.windows is not None else (0, time.monotonic())
        self.busy_since = start
        outputs, error = None, None
        try:
            outputs = check_outputs(self.backend.infer(np.stack([r.tensor for r in batch])),
                                    self.backend.output_specs, len(batch))
        except BackendError as exc:
            error = str(exc)
        except Exception as exc:  # a backend bug must not kill the batcher thread
            log.exception("%s: backend failed", self.name)
            error = f"backend failure: {type(exc).__name__}"
        end = self.windows.end(token) if self.windows is not None else time.monotonic()
        self.busy_since = None
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        if error:
            self.stats["failed"] += len(batch)
        compute_ms = (end - start) * 1000.0
        for i, req in enumerate(batch):
            out = {k: v[i] for k, v in outputs.items()} if outputs is not None and error is None else None
            _complete(req, out, error, (start - req.enqueued_at) * 1000.0, compute_ms, (start, end), len(batch), i)


def _complete(req: Request, out, error, queue_ms, compute_ms, window, batch_size: int = 0, index: int = 0) -> None:
    try:
        req.on_done(Completion(req, out, error, queue_ms, compute_ms, batch_size, window, index))
    except Exception:
        log.exception("completion callback failed")
