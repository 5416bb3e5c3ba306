"""The durable result writer: results of acknowledged images, committed in groups.

For every (image, model) outcome the writer commits, in one SQLite transaction per group of
whatever is waiting (one fsync per batch, not per image): the result message and its archive
row, or the error event; and with the image's last outcome, the ledger's final state. Only
after the commit is the image's source told (``settled``), so a spool file disappears only
once its results are durable. A crash before the commit leaves the spool file: the image is
processed again on restart, and deterministic message ids make that harmless.

Failures after acknowledgement follow one rule: transient ones (a backend that failed the
batch) are retried by the source, with backoff, up to its attempt limit; the last attempt's
failure becomes an ``error`` event (``inference_failed``) and the image's ledger state
``failed``. A commit that fails (disk full) is retried with backoff, in memory, without
re-running inference, for as long as the daemon runs; the watchdog keeps pinging (disk full is
a state, not a hang) and :attr:`stalled_reason` says why nothing is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from edged.batcher.dynamic import Completion
from edged.batcher.served import ServedModel
from edged.mqtt import messages
from edged.outbox.emitter import EventEmitter
from edged.outbox.store import ArchiveRow, Outbox, Record
from edged.postprocess.decode import decode_one
from edged.power.accounting import EnergyAccounting
from edged.privacy import Pseudonymizer
from edged.sources.work import WorkItem
from edged.sr.outbox import SrJob

SrDerive = Callable[[WorkItem, ServedModel, dict], "SrJob | None"]

log = logging.getLogger("edged.results")


class Settle(Protocol):
    """What the writer needs from an item's source: whether this is its last attempt, and to be
    told the item is settled (results durable) or must be tried again."""

    def final_attempt(self, item: WorkItem) -> bool: ...

    def settled(self, item: WorkItem, state: str) -> None: ...

    def retry(self, item: WorkItem, reason: str) -> None: ...


class Observer(Protocol):
    """Metrics: each result, once committed, with the seconds since its item arrived."""

    def request_done(self, model: ServedModel, seconds: float) -> None: ...


@dataclass
class _Entry:
    item: WorkItem
    model: ServedModel
    completion: Completion
    pre: dict[str, float]
    last: bool
    incomplete: bool


@dataclass
class _ItemState:
    failed: str | None = None  # the reason code of a permanent failure
    retry: str | None = None
    records: list[Record] = field(default_factory=list)


class ResultWriter:
    def __init__(self, outbox: Outbox, events: EventEmitter, pseudo: Pseudonymizer, topics: messages.Topics,
                 source: Settle, accounting: EnergyAccounting | None = None, max_group: int = 64,
                 observer: Observer | None = None, sr: SrDerive | None = None):
        self.outbox, self.events, self.pseudo, self.topics = outbox, events, pseudo, topics
        self.observer = observer
        self.sr = sr  # DICOM SR jobs, committed with their results (edged.sr.derive)
        self._timed: list[tuple[ServedModel, float]] = []  # results of the group being built: model, arrival
        self.source = source
        self.accounting = accounting or EnergyAccounting(None)
        self.max_group = max_group
        self._done: queue.Queue[_Entry | None] = queue.Queue()
        self._states: dict[int, _ItemState] = {}  # id(item) -> what it has so far (writer thread only)
        self._thread = threading.Thread(target=self._loop, name="result-writer", daemon=True)
        self._stopping = threading.Event()
        self.stalled_reason: str | None = None
        self.settled_count = 0
        self.on_commit: Callable[[], None] = lambda: None  # e.g. wake the SR sender

    # -- the sink side (called from batcher threads) --------------------------------------
    def completed(self, item: WorkItem, model: ServedModel, completion: Completion, pre: dict[str, float],
                  last: bool, incomplete: bool) -> None:
        self._done.put(_Entry(item, model, completion, pre, last, incomplete))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what has completed; a commit that keeps failing is abandoned at ``timeout``
        (its images stay in the spool and are processed again at the next start)."""
        self._done.put(None)
        self._thread.join(timeout)
        self._stopping.set()
        self._thread.join(2.0)

    # -- the writer thread -----------------------------------------------------------------
    def _loop(self) -> None:
        stopping = False
        while not stopping:
            entries = [self._done.get()]
            while len(entries) < self.max_group:
                try:
                    entries.append(self._done.get_nowait())
                except queue.Empty:
                    break
            if None in entries:
                stopping = True
                entries = [e for e in entries if e is not None]
            self._timed = []
            try:
                records, settled, retries = self._build(entries)
            except Exception:  # a bug while building must not kill the writer: retry those items
                log.exception("could not build %d result record(s); their images are retried", len(entries))
                for e in entries:
                    self._states.pop(id(e.item), None)
                    if e.last:
                        self.source.retry(e.item, "internal_error")
                continue
            if self._commit(records):
                self.on_commit()
                self._observe()
                for item, state in settled:
                    self.source.settled(item, state)
                    self.settled_count += 1
                for item, reason in retries:
                    self.source.retry(item, reason)

    def _observe(self) -> None:
        if self.observer is None:
            return
        now = time.monotonic()
        for model, arrived in self._timed:
            try:
                self.observer.request_done(model, now - arrived)
            except Exception:  # counting must never cost a result
                log.exception("metrics: could not time a result of %s", model.name)

    def _commit(self, records: list[Record]) -> bool:
        delay = 0.5
        while True:
            try:
                self.events.commit(records)
                if self.stalled_reason:
                    log.warning("results are written again (%s is over)", self.stalled_reason)
                self.stalled_reason = None
                return True
            except Exception as exc:
                if self.stalled_reason is None:
                    log.error("could not record %d result(s) (%s); retrying with backoff, their images stay "
                              "in the spool", len(records), exc)
                self.stalled_reason = f"outbox commit failing: {exc}"
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, 30.0)

    def _build(self, entries: list[_Entry]) -> tuple[list[Record], list[tuple[WorkItem, str]], list[tuple[WorkItem, str]]]:
        records: list[Record] = []
        settled: list[tuple[WorkItem, str]] = []
        retries: list[tuple[WorkItem, str]] = []
        for e in entries:
            state = self._states.setdefault(id(e.item), _ItemState())
            c = e.completion
            if c.error is not None or c.outputs is None:
                if self.source.final_attempt(e.item):
                    log.error("item %s: %s inference failed on the last attempt: %s", e.item.key, e.model.name, c.error)
                    state.failed = "inference_failed"
                    state.records.append(self._error(e.item, e.model.name, "inference_failed", str(c.error)))
                else:
                    log.warning("item %s: %s inference failed (%s); it is retried", e.item.key, e.model.name, c.error)
                    state.retry = "inference_failed"
            else:
                try:
                    state.records.extend(self._result(e))
                except Exception as exc:  # a decoder that cannot read these outputs: permanent
                    log.exception("item %s: %s outputs could not be decoded", e.item.key, e.model.name)
                    state.failed = "output_decode_failed"
                    state.records.append(self._error(e.item, e.model.name, "output_decode_failed",
                                                     f"{type(exc).__name__} while decoding the outputs"))
            if not e.last:
                continue
            del self._states[id(e.item)]
            if state.retry or e.incomplete:
                records.extend(state.records)  # what succeeded is kept (same message ids next time)
                retries.append((e.item, state.retry or "stopping"))
                continue
            final = "failed" if state.failed else "done"
            if not state.records:  # cannot happen with a model per item, but never settle silently
                state.records.append(self._error(e.item, "", "internal_error", "no outcome recorded"))
                final, state.failed = "failed", "internal_error"
            source = e.item.source
            ledger = (e.item.key, e.item.group or "", final, str(source.get("calling_ae", "")), state.failed)
            state.records[-1] = replace(state.records[-1], ledger=ledger)
            records.extend(state.records)
            settled.append((e.item, final))
        return records, settled, retries

    def _result(self, e: _Entry) -> list[Record]:
        """The result record (with its DICOM SR job, if the model has one); an SR that cannot be
        built is an ``error`` event next to the result, never a lost result."""
        m, c, item = e.model, e.completion, e.item
        assert c.outputs is not None
        outputs = decode_one(m.manifest.decoded_outputs, c.outputs)
        timings: dict[str, Any] = {
            "queue": round(c.queue_ms, 3),
            "decode": round(e.pre.get("decode_ms", 0.0), 3),
            "preprocess": round(e.pre.get("decode_ms", 0.0) + e.pre.get("transform_ms", 0.0), 3),
            "inference": round(c.compute_ms, 3),
            "batch_size": c.batch_size,
            "total": messages.elapsed_ms(item.arrived),
        }
        energy = self.accounting.per_image_mj(c.window, c.batch_size)
        energy_scope = None
        if energy is not None:
            timings["energy_mj"] = round(energy, 3)
            scope = self.accounting.scope()
            if scope is not None:
                energy_scope = {**scope, "concurrent_batches": self.accounting.concurrency(c.window)}
        self.accounting.count(1, energy)
        self._timed.append((m, item.arrived))
        msg_id = self.pseudo.message_id("result", m.name, m.manifest.onnx.sha256, item.key)
        payload = messages.result(node=self.topics.node, message_id=msg_id, manifest=m.manifest, info=m.info,
                                  study=item.group, instance=item.key, outputs=outputs, timings=timings,
                                  source=item.source, energy=energy_scope)
        archive = ArchiveRow(m.name, m.manifest.version, m.manifest.onnx.sha256, m.manifest.clinical,
                             item.group or "", item.key, payload["scores"], backend=m.info.backend,
                             precision=m.info.precision, device=m.info.device, timings=timings)
        log.info("instance %s: %s done in %.0f ms (batch %d)", item.key, m.name, timings["total"], c.batch_size)
        records = [Record(self.topics.results(m.name), payload, archive=archive)]
        if self.sr is not None:
            try:
                records[0] = replace(records[0], sr=self.sr(item, m, payload))
            except Exception as exc:
                log.error("instance %s: %s DICOM SR not built (%s)", item.key, m.name, type(exc).__name__)
                records.append(self._error(item, m.name, "sr_build_failed",
                                           f"the DICOM SR could not be built ({type(exc).__name__})"))
        return records

    def _error(self, item: WorkItem, model: str, reason: str, detail: str) -> Record:
        return self.events.record(
            "error", reason, message_id=self.pseudo.message_id("error", reason, model, item.key),
            instance=item.key, study=item.group, source=item.source or None,
            detail=f"{model}: {detail}" if model else detail, model=model or None,
        )
