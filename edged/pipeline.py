"""The ingest pipeline: spool → preprocess → batcher → backend → outbox.

Workers take spooled instances (newly received or left over from a previous run), decode and
preprocess them, and hand tensors to each accepting model's batcher. Completions are written by
one writer thread: result message + archive row + ledger in one transaction, and only then is
the spool file removed. A crash anywhere before that commit leaves the spool file, so the
instance is processed again on restart; deterministic message ids make that re-run harmless.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pydicom import dcmread

from edged.backends.base import Backend, BackendInfo
from edged.batcher.dynamic import Completion, DynamicBatcher, QueueFull, Request
from edged.models.manifest import LoadedModel
from edged.mqtt import messages
from edged.outbox.store import ArchiveRow, Outbox, Record
from edged.preprocess.pixels import PixelError, prepare_timed
from edged.privacy import Pseudonymizer
from edged.results import result_message, scores
from edged.sources.dicom.accept import route, source_info
from edged.spool.spool import Spool

log = logging.getLogger("edged.pipeline")


@dataclass
class ServedModel:
    loaded: LoadedModel
    backend: Backend
    batcher: DynamicBatcher
    info: BackendInfo
    inflight: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        # never more in flight than the batcher will queue (its spec may override the manifest's)
        self.inflight = threading.BoundedSemaphore(self.batcher.max_queue_size)

    @property
    def manifest(self):
        return self.loaded.manifest


@dataclass
class _Item:
    """One instance on its way through the models that accepted it."""

    key: str
    study: str
    calling_ae: str
    source: dict
    started: float
    remaining: set[str]
    failed: bool = False  # one model failed: the ledger says so whatever completes last


class Pipeline:
    def __init__(
        self,
        models: dict[str, ServedModel],
        spool: Spool,
        outbox: Outbox,
        pseudo: Pseudonymizer,
        topics: messages.Topics,
        wake_publisher: Callable[[], None],
        workers: int = 1,
        backend_timeout_s: float = 60.0,
        energy_mj: Callable[[float, float], float | None] | None = None,
        on_energy: Callable[[float, int], None] | None = None,
        rescan_s: float = 30.0,
    ):
        self.models, self.spool, self.outbox, self.pseudo = models, spool, outbox, pseudo
        self.topics, self.wake_publisher = topics, wake_publisher
        self.backend_timeout_s = backend_timeout_s
        self.energy_mj = energy_mj
        self.on_energy = on_energy
        self._work: queue.Queue[str | None] = queue.Queue()
        self._done: queue.Queue[tuple[_Item, str, Completion, dict] | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._accepting = True
        self._workers = [threading.Thread(target=self._work_loop, name=f"preprocess-{i}", daemon=True)
                         for i in range(workers)]
        self._writer = threading.Thread(target=self._write_loop, name="result-writer", daemon=True)
        self._rescan = threading.Thread(target=self._rescan_loop, name="spool-rescan", daemon=True)
        self._stopping = threading.Event()
        self.rescan_s = rescan_s
        self.processed = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for m in self.models.values():
            m.batcher.start()
        for t in self._workers:
            t.start()
        self._writer.start()
        left = self.spool.pending()
        if left:
            log.info("recovering %d instance(s) left in the spool", len(left))
        for key in left:
            self.submit(key)
        self._rescan.start()

    def _rescan_loop(self) -> None:
        """Re-offer spooled instances that are in nobody's hands (a transient error while
        processing or recording them): an acknowledged image is retried, not forgotten."""
        while not self._stopping.wait(self.rescan_s):
            for key in self.spool.pending():
                self.submit(key)

    def submit(self, key: str) -> None:
        with self._lock:
            if not self._accepting or key in self._queued:
                return
            self._queued.add(key)
        self._work.put(key)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is in the batchers within ``timeout`` s in all; whatever is still only
        queued (or not finished in time) stays in the spool for the next start."""
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        with self._lock:
            self._accepting = False
        self._stopping.set()
        while True:  # unqueued keys stay spooled for the next start
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
        self._done.put(None)
        self._writer.join(left())

    def healthy(self) -> bool:
        """False when a batcher died or a backend call has hung: the watchdog stops pinging."""
        now = time.monotonic()
        for m in self.models.values():
            busy = m.batcher.busy_since
            if not m.batcher.alive() or (busy is not None and now - busy > self.backend_timeout_s):
                return False
        return all(t.is_alive() for t in self._workers) and self._writer.is_alive()

    # -- preprocessing -------------------------------------------------------------------
    def _work_loop(self) -> None:
        while (key := self._work.get()) is not None:
            handed_on = False
            try:
                handed_on = self._process(key)
            except Exception:
                log.exception("instance %s: unexpected failure; it stays in the spool and is retried", key)
            finally:
                if not handed_on:  # otherwise it stays "queued" until the writer has recorded it
                    self._release(key)

    def _release(self, key: str) -> None:
        with self._lock:
            self._queued.discard(key)

    def _process(self, key: str) -> bool:
        """Preprocess and queue ``key``; True when it was handed to the batchers."""
        started = time.monotonic()
        state, calling = self.outbox.instance(key)
        if state in ("done", "skipped", "failed"):
            self.spool.remove(key)  # results were committed before a crash; only the file was left
            return False
        path = self.spool.path(key)
        if not path.exists():
            return False
        calling = calling or "unknown"
        try:
            ds = dcmread(path)
        except Exception as exc:
            self._fail(key, "", calling, {}, "unreadable", f"dataset does not parse ({type(exc).__name__})")
            return False
        study = self.pseudo.pseudonym("study", str(ds.get("StudyInstanceUID", "")))
        info = source_info(ds, calling).as_dict()
        accepted, refused = route(ds, [m.manifest for m in self.models.values()])
        if not accepted:
            reason = "; ".join(f"{m}: {why}" for m, why in refused.items())
            self._finish_event(key, study, calling, info, "skipped", "no_model", reason, "skipped")
            return False
        item = _Item(key, study, calling, info, started, set(accepted))
        tensors: dict[tuple, tuple] = {}  # models with the same input share one preprocessing
        try:  # every tensor first: an image that fails for one model is failed before any is queued
            for name in accepted:
                m = self.models[name]
                spec = (m.manifest.input, m.manifest.preprocess)
                if spec not in tensors:
                    tensors[spec] = prepare_timed(ds, m.manifest.input, m.manifest.preprocess)
        except PixelError as exc:
            self._fail(key, study, calling, info, exc.reason, str(exc))
            return False
        del ds  # the decoded full-size image is no longer needed while the batch waits
        for name in accepted:
            m = self.models[name]
            tensor, pre_timings = tensors[(m.manifest.input, m.manifest.preprocess)]
            m.inflight.acquire()  # backpressure: never overflow the batcher's bounded queue
            try:
                m.batcher.submit(Request(tensor, self._on_done, context=(item, name, pre_timings)))
            except QueueFull:  # only while stopping: the instance stays in the spool for the next start
                m.inflight.release()
                raise
        return True

    def _on_done(self, c: Completion) -> None:
        item, name, pre = c.request.context
        self.models[name].inflight.release()
        self._done.put((item, name, c, pre))

    # -- writing results -----------------------------------------------------------------
    def _write_loop(self) -> None:
        """Commit completions in groups: one transaction (one fsync) for everything waiting."""
        stopping = False
        while not stopping:
            entries = [self._done.get()]
            while len(entries) < 64:
                try:
                    entries.append(self._done.get_nowait())
                except queue.Empty:
                    break
            if None in entries:
                stopping = True
                entries = [e for e in entries if e is not None]
            try:
                self._write(entries)
            except Exception:
                log.exception("could not record %d result(s); their instances stay in the spool and are retried",
                              len(entries))
                for item, *_ in entries:
                    self._release(item.key)

    def _write(self, entries: list[tuple[_Item, str, Completion, dict]]) -> None:
        records: list[Record] = []
        finished: list[str] = []
        energy: dict[tuple[float, float], float | None] = {}  # per batch window: integrate once
        for item, name, c, pre in entries:
            item.remaining.discard(name)
            last = not item.remaining
            if c.error is not None or c.output is None:
                log.error("instance %s: %s inference failed: %s", item.key, name, c.error)
                item.failed = True
                record = self._event_record(item.key, item.study, item.calling_ae, item.source, "error",
                                            "inference_failed", f"{name}: {c.error}", None, model=name)
            else:
                if self.energy_mj is not None and c.window not in energy:
                    energy[c.window] = self.energy_mj(*c.window)
                record = self._result_record(item, name, c, pre, energy.get(c.window))
            if last:  # the ledger's final word goes with the last record of the instance
                state = "failed" if item.failed else "done"
                record = replace(record, ledger=(item.key, item.study, state, item.calling_ae, None))
                finished.append(item.key)
            records.append(record)
        self.outbox.add_messages(records)
        self.wake_publisher()
        for key in finished:
            self.spool.remove(key)
            self._release(key)
        self.processed += len(finished)

    def _result_record(self, item: _Item, name: str, c: Completion, pre: dict[str, float],
                       batch_energy_mj: float | None) -> Record:
        m = self.models[name]
        timings: dict[str, float | int] = {
            "queue": round(c.queue_ms, 3),
            "decode": round(pre["decode_ms"], 3),
            "preprocess": round(pre["decode_ms"] + pre["transform_ms"], 3),
            "inference": round(c.compute_ms, 3),
            "batch_size": c.batch_size,
            "total": messages.elapsed_ms(item.started),
        }
        if batch_energy_mj is not None:
            per_image = batch_energy_mj / max(c.batch_size, 1)
            timings["energy_mj"] = round(per_image, 3)
            if self.on_energy is not None:
                self.on_energy(per_image, 1)
        label_scores = scores(c.output, m.manifest)
        msg_id = self.pseudo.message_id("result", name, m.manifest.onnx.sha256, item.key)
        payload = result_message(
            node=self.topics.node, message_id=msg_id, manifest=m.manifest, info=m.info, study=item.study,
            instance=item.key, label_scores=label_scores, timings=timings, source=item.source,
        )
        archive = ArchiveRow(name, m.manifest.version, m.manifest.onnx.sha256, m.manifest.clinical,
                             item.study, item.key, label_scores)
        log.info("instance %s: %s done in %.0f ms (batch %d)", item.key, name, timings["total"], c.batch_size)
        return Record(self.topics.results(name), payload, archive=archive)

    def _fail(self, key: str, study: str, calling: str, source: dict, reason: str, detail: str) -> None:
        log.error("instance %s: %s", key, detail)
        self._finish_event(key, study, calling, source, "error", reason, detail, "failed")

    def _event_record(self, key: str, study: str, calling: str, source: dict, type_: str, reason: str,
                      detail: str, state: str | None, **fields: object) -> Record:
        payload = messages.event(
            self.topics.node, type_, reason,
            message_id=self.pseudo.message_id(type_, reason, str(fields.get("model", "")), key),
            instance=key, study=study or None, source=source or None, detail=detail, **fields,
        )
        ledger = (key, study, state, calling, f"{reason}: {detail}") if state else None
        return Record(self.topics.events, payload, ledger)

    def _finish_event(self, key: str, study: str, calling: str, source: dict, type_: str, reason: str,
                      detail: str, state: str | None) -> None:
        self.outbox.add_messages([self._event_record(key, study, calling, source, type_, reason, detail, state)])
        self.wake_publisher()
        if state:
            self.spool.remove(key)
