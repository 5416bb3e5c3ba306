"""The middle of the data path: work items → preprocess → each model's batcher → the item's sink.

Sources (the DICOM SCP, cameras) hand over :class:`~edged.sources.work.WorkItem` s; workers
make each model's input tensor through the item's own ``prepare`` (models with the same input
and pixel pipeline share one tensor), then queue it on every accepting model's batcher. What
happens to results is the item's sink's business: the durable result writer for acknowledged
images, the detection publisher for frames. Nothing here reads a file or knows a protocol.

Every item gets an outcome. A failure while preparing is reported to the sink with a reason
code (``decode_failed``…, ``internal_error`` for anything unexpected), never swallowed into a
log line. Backpressure follows the item: an acknowledged image waits for room in its model's
queue, a live frame (or crop) is dropped (and the sink told) when there is none — checked
before it is made into a tensor, so a busy device spends no preprocessing on what it drops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from edged.batcher.dynamic import Completion, QueueFull, Request
from edged.batcher.served import ServedModel
from edged.preprocess.errors import PixelError, TransientError
from edged.sources.work import Prepared, WorkItem

log = logging.getLogger("edged.pipeline")


@dataclass
class _Progress:
    """How many of an item's models still owe an outcome (guarded by the pipeline's lock)."""

    remaining: int
    incomplete: bool = False


class Observer(Protocol):
    """What metrics hear from the pipeline (:class:`edged.metrics.Metrics` implements it): every
    (item, model) completion, and every request that never reached its batch."""

    def inference(self, model: ServedModel, completion: Completion) -> None: ...

    def failure_before_batch(self, model: ServedModel, reason: str) -> None: ...


class Pipeline:
    def __init__(self, models: dict[str, ServedModel], workers: int = 1, backend_timeout_s: float = 60.0,
                 observer: Observer | None = None):
        self.models = models
        self.observer = observer
        self.backend_timeout_s = backend_timeout_s
        self._work: queue.Queue[WorkItem | None] = queue.Queue()
        self._lock = threading.Lock()
        self._accepting = True
        self._workers = [threading.Thread(target=self._work_loop, name=f"preprocess-{i}", daemon=True)
                         for i in range(workers)]
        self.submitted = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()
        for t in self._workers:
            t.start()

    def submit(self, item: WorkItem) -> bool:
        """Queue ``item`` for preprocessing; False once stopping (the source keeps it)."""
        with self._lock:
            if not self._accepting:
                return False
            self.submitted += 1
        self._work.put(item)
        return True

    def pending(self) -> int:
        return self._work.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is in the batchers within ``timeout`` s in all. Items still only queued
        are dropped here: their sources keep them (a spooled image stays in the spool)."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        with self._lock:
            self._accepting = False
        while True:
            try:
                self._work.get_nowait()
            except queue.Empty:
                break
        for _ in self._workers:
            self._work.put(None)
        for t in self._workers:
            t.join(left())
        for m in self.models.values():
            m.batcher.stop(drain=True, timeout=left())

    def healthy(self) -> bool:
        """False when a batcher died, a backend call has hung, or a worker thread died."""
        now = time.monotonic()
        for m in self.models.values():
            busy = m.batcher.busy_since
            if not m.batcher.alive() or (busy is not None and now - busy > self.backend_timeout_s):
                return False
        return all(t.is_alive() for t in self._workers)

    # -- preprocessing -------------------------------------------------------------------
    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            try:
                self._process(item)
            except Exception:  # a sink bug: the item's source still holds it (rescan, retry)
                log.exception("item %s: could not be handed on", item.key)

    def _prepare(self, item: WorkItem, models: list[ServedModel]) -> dict[tuple, Prepared] | None:
        """Every model's tensor first, so an item that fails for one model fails before any is queued."""
        tensors: dict[tuple, Prepared] = {}
        try:
            for m in models:
                spec = (m.manifest.input, m.manifest.preprocess)
                if spec not in tensors:
                    tensors[spec] = item.prepare(m.manifest)
            return tensors
        except PixelError as exc:
            item.sink.failed(item, exc.reason, exc.message, False)
        except TransientError as exc:
            item.sink.failed(item, exc.reason, exc.message, True)
        except MemoryError:
            item.sink.failed(item, "out_of_memory", "not enough memory to decode the image", True)
        except Exception as exc:
            log.exception("item %s: unexpected failure while preparing it", item.key)
            item.sink.failed(item, "internal_error", f"{type(exc).__name__} while preparing the image", False)
        finally:
            item.discard()  # the decoded full-size image is not needed while the batch waits
        return None

    def _process(self, item: WorkItem) -> None:
        unknown = [name for name in item.models if name not in self.models]
        if unknown:
            item.sink.failed(item, "no_model", f"not served here: {', '.join(unknown)}", False)
            return
        models = [self.models[name] for name in item.models]
        if not item.live:
            self._hand_on(item, models, self._prepare(item, models), _Progress(len(models)))
            return
        # a live item takes its queue room first: a frame or crop that a full queue would drop
        # is not made into a tensor only to be thrown away; room not used is always given back
        held = [m for m in models if m.try_reserve()]
        try:
            full = [m for m in models if m not in held]
            progress = _Progress(len(models))
            if not held:
                item.discard()
                for m in full:
                    self._drop(item, m, progress)
                return
            tensors = self._prepare(item, held)
            if tensors is not None:
                for m in full:
                    self._drop(item, m, progress)
            elif self.observer is not None:
                for m in full:  # the item failed before any queue: counted as before, per model
                    self.observer.failure_before_batch(m, "preprocess")
            self._hand_on(item, list(held), tensors, progress, held)
        finally:
            for m in held:
                m.release()

    def _hand_on(self, item: WorkItem, models: list[ServedModel], tensors: dict[tuple, Prepared] | None,
                 progress: _Progress, held: list[ServedModel] | None = None) -> None:
        """Queue each model's tensor; ``held``: models whose room is already reserved (live
        items), removed from it as their request is queued."""
        if tensors is None:
            if self.observer is not None:
                for m in models:
                    self.observer.failure_before_batch(m, "preprocess")
            return
        for m in models:
            tensor, pre = tensors[(m.manifest.input, m.manifest.preprocess)]
            if held is None:
                m.reserve()  # backpressure: never overflow the batcher's bounded queue
            try:
                m.batcher.submit(Request(tensor, self._on_done, context=(item, m, pre, progress)))
            except QueueFull:  # only while stopping: the source keeps the item for later
                if held is None:
                    m.release()  # (a held room is given back by the caller)
                if item.live:
                    item.sink.dropped(item, m)
                self._settle_unsent(item, progress)
            else:
                if held is not None:
                    held.remove(m)  # the queued request owns the room now (released on completion)

    def _drop(self, item: WorkItem, m: ServedModel, progress: _Progress) -> None:
        """A live item that found ``m``'s queue full: dropped for that model, never waited for."""
        if self.observer is not None:
            self.observer.failure_before_batch(m, "dropped")
        item.sink.dropped(item, m)
        self._settle_unsent(item, progress)

    def _settle_unsent(self, item: WorkItem, progress: _Progress) -> None:
        """A model that never got the item: nothing will complete for it."""
        with self._lock:
            progress.remaining -= 1
            progress.incomplete = True
            nothing_left = progress.remaining == 0
        if nothing_left and not item.live:
            item.sink.failed(item, "stopping", "the daemon stopped before the image was queued", True)

    def _on_done(self, c: Completion) -> None:
        item, m, pre, progress = c.request.context
        m.release()
        if self.observer is not None:
            try:
                self.observer.inference(m, c)
            except Exception:  # counting must never cost a result
                log.exception("metrics: could not count a completion of %s", m.name)
        with self._lock:
            progress.remaining -= 1
            last, incomplete = progress.remaining == 0, progress.incomplete
        item.sink.completed(item, m, c, pre, last, incomplete)
