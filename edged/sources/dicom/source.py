"""Everything DICOM after the bytes are durable: describe, route, skip, hand work on, retry, quarantine.

The SCP (:mod:`scp`) answers the modality; this module owns what an acknowledged instance
becomes. It describes an instance once from its header (study pseudonym, PHI-free source facts,
the models that accept it), turns it into a source-neutral :class:`WorkItem` for the pipeline,
and hears every outcome back (it is the items' sink; results go on to the durable writer).

Promises, each kept by a test:

* ``skipped`` has one reason vocabulary (:data:`~accept.SKIP_REASONS`: the first refusing
  model's code; ``detail`` lists every model's) and one message id per instance, whether the
  SCP decides it at reception or a restart decides it for a spooled file.
* Every acknowledged image ends with an outcome: a result per model, or an ``error`` event. An
  unexpected exception is an ``internal_error``, never an endless retry. Transient failures are
  retried with exponential backoff up to ``max_attempts`` attempts; attempts are counted in the
  ledger *before* each one starts, so an image that crashes the whole process is also given up
  after ``max_attempts`` restarts, not retried forever.
* A failed image's file moves to the spool's quarantine after its event is committed; a
  restart does not resurrect it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread

from edged.models.manifest import ModelManifest
from edged.outbox.emitter import EventEmitter
from edged.outbox.store import Outbox, Record
from edged.preprocess.pool import DecodePool, prepare_file
from edged.privacy import Pseudonymizer
from edged.sources.dicom.accept import Vocabulary, route, source_info, value
from edged.sources.work import Prepared, WorkItem
from edged.spool.spool import Spool

if TYPE_CHECKING:
    from edged.outbox.writer import ResultWriter
    from edged.pipeline import Pipeline

log = logging.getLogger("edged.dicom")


@dataclass(frozen=True)
class Described:
    """What the header says, PHI-free: enough to route and to fill every payload."""

    study: str
    info: dict
    accepted: list[str]
    refused: dict[str, str]


@dataclass
class _Attempt:
    calling_ae: str
    attempt: int


class DicomSource:
    def __init__(self, spool: Spool, outbox: Outbox, events: EventEmitter, pseudo: Pseudonymizer,
                 manifests: list[ModelManifest], pipeline: Pipeline, *, max_attempts: int = 3,
                 retry_backoff_s: float = 10.0, rescan_s: float = 30.0, attempts: Outbox | None = None,
                 decoders: DecodePool | None = None):
        self.spool, self.outbox, self.events, self.pseudo = spool, outbox, events, pseudo
        self.manifests, self.pipeline = manifests, pipeline
        self.words = Vocabulary(manifests)
        self.max_attempts, self.retry_backoff_s, self.rescan_s = max_attempts, retry_backoff_s, rescan_s
        # attempt counters need no fsync: a count lost on power loss is one more attempt
        self.attempts = attempts or outbox
        self.writer: ResultWriter | None = None
        self.decoders = decoders  # None: decode in the pipeline's threads
        self._lock = threading.Lock()
        self._held: set[str] = set()  # keys submitted and not yet settled
        self._due: dict[str, float] = {}  # key -> monotonic time of its next attempt
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._rescan_loop, name="spool-rescan", daemon=True)

    def attach(self, writer: ResultWriter) -> None:
        self.writer = writer

    # -- describing and skipping (the one place for both) -----------------------------------
    def describe(self, ds: Dataset, calling_ae: str) -> Described:
        study_uid = value(ds, "StudyInstanceUID")
        study = self.pseudo.pseudonym("study", str(study_uid)[:64] if isinstance(study_uid, str) else "")
        accepted, refused = route(ds, self.manifests, self.words)
        return Described(study, source_info(ds, calling_ae, self.words).as_dict(), accepted, refused)

    def skipped_record(self, key: str, d: Described, calling_ae: str) -> Record:
        """The ``skipped`` event with the ledger's final state, for one commit."""
        reason = next(iter(d.refused.values())).split(":")[0] if d.refused else "no_model"
        detail = "; ".join(f"{m}: {why}" for m, why in d.refused.items()) or "no model is served"
        return self.events.record("skipped", reason, message_id=self.pseudo.message_id("skipped", key),
                                  ledger=(key, d.study, "skipped", d.info.get("calling_ae", calling_ae), reason),
                                  instance=key, study=d.study, source=d.info, detail=detail)

    # -- taking work -----------------------------------------------------------------------
    def start(self) -> None:
        left = self.spool.pending()
        if left:
            log.info("recovering %d instance(s) left in the spool", len(left))
        for key in left:
            self.offer(key)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def accept(self, key: str, d: Described, calling_ae: str) -> None:
        """A freshly spooled instance (the SCP described it already)."""
        if self._hold(key):
            self._submit(key, d, calling_ae)

    def no_decoder(self, key: str, d: Described, calling_ae: str, syntax: str) -> None:
        """A spooled image in a transfer syntax this device cannot decode: an ``error`` event
        (``no_decoder``) and quarantine at once, instead of a decode attempt per retry."""
        log.error("instance %s from %s: no decoder for %s on this device", key, calling_ae, syntax)
        self._fail(key, d, calling_ae, "no_decoder",
                   f"no decoder for {syntax} on this device: install its pylibjpeg plugin, or have the sender "
                   f"transcode (Orthanc: GDCM plugin; dicom.accept_undecodable: false refuses the syntax)")

    def offer(self, key: str) -> None:
        """A spooled instance nobody holds (recovery, rescan, a duplicate's re-offer)."""
        if not self._hold(key):
            return
        try:
            self._offer(key)
        except Exception as exc:  # e.g. the disk is full: try again soon, without counting an attempt
            log.error("instance %s: could not be offered (%s); trying again in %.0f s", key, exc,
                      self.retry_backoff_s)
            with self._lock:
                self._held.discard(key)
                self._due[key] = time.monotonic() + self.retry_backoff_s

    def _offer(self, key: str) -> None:
        state, calling = self.outbox.instance(key)
        if state in ("done", "skipped", "failed"):  # results committed before a crash; only the file was left
            self._settle_file(key, state)
            return
        path = self.spool.path(key)
        if not path.exists():
            self._release(key)
            return
        calling = calling or "unknown"
        try:
            ds = dcmread(path, defer_size=64 * 1024)
            d = self.describe(ds, calling)
        except Exception as exc:
            self._fail(key, None, calling, "unreadable", f"the spooled dataset does not parse ({type(exc).__name__})")
            return
        if not d.accepted:
            self.events.commit([self.skipped_record(key, d, calling)])
            log.info("instance %s skipped: %s", key, "; ".join(d.refused.values()))
            self.spool.remove(key)
            self._release(key)
            return
        self._submit(key, d, calling)

    def _submit(self, key: str, d: Described, calling_ae: str) -> None:
        attempt = self.attempts.begin_attempt(key)
        if attempt > self.max_attempts:
            self._fail(key, d, calling_ae, "too_many_attempts",
                       f"given up after {self.max_attempts} attempts (the daemon may have crashed on it)")
            return
        item = self._item(key, d, calling_ae, attempt)
        if not self.pipeline.submit(item):  # stopping: stays spooled for the next start
            self.attempts.undo_attempt(key)
            self._release(key)

    def _item(self, key: str, d: Described, calling_ae: str, attempt: int) -> WorkItem:
        path = self.spool.path(key)

        def prepare(manifest: ModelManifest) -> Prepared:
            if self.decoders is None:
                return prepare_file(str(path), manifest.input, manifest.preprocess)
            return self.decoders.prepare(path, manifest.input, manifest.preprocess)

        return WorkItem(key, tuple(d.accepted), d.info, prepare, self, group=d.study,
                        context=_Attempt(calling_ae, attempt))

    # -- outcomes: the items' sink ----------------------------------------------------------
    def completed(self, item: WorkItem, model, completion, pre: dict[str, float], last: bool,
                  incomplete: bool) -> None:
        assert self.writer is not None, "attach() a ResultWriter before serving"
        self.writer.completed(item, model, completion, pre, last, incomplete)

    def failed(self, item: WorkItem, reason: str, detail: str, transient: bool) -> None:
        if transient and not self.final_attempt(item):
            self.retry(item, reason)
            return
        log.error("instance %s: %s", item.key, detail)
        d = Described(item.group or "", item.source, list(item.models), {})
        self._fail(item.key, d, item.context.calling_ae, reason, detail)

    def dropped(self, item: WorkItem, model) -> None:  # not live: never dropped
        log.error("instance %s: dropped by %s, which should not happen; it is retried", item.key, model.name)
        self.retry(item, "dropped")

    # -- what the result writer needs -------------------------------------------------------
    def final_attempt(self, item: WorkItem) -> bool:
        return item.context.attempt >= self.max_attempts

    def settled(self, item: WorkItem, state: str) -> None:
        self._settle_file(item.key, state)

    def retry(self, item: WorkItem, reason: str) -> None:
        if reason == "stopping" or self._stopping.is_set():
            self.attempts.undo_attempt(item.key)  # an interrupted attempt does not count
            self._release(item.key)
            return
        delay = self.retry_backoff_s * 2 ** (item.context.attempt - 1)
        log.warning("instance %s: attempt %d failed (%s); next in %.0f s", item.key, item.context.attempt,
                    reason, delay)
        with self._lock:
            self._held.discard(item.key)
            self._due[item.key] = time.monotonic() + delay

    # -- internals -------------------------------------------------------------------------
    def _fail(self, key: str, d: Described | None, calling_ae: str, reason: str, detail: str) -> None:
        """A permanent failure: the event and the ledger in one commit, then quarantine."""
        model = ",".join(d.accepted) if d else None
        record = self.events.record(
            "error", reason, message_id=self.pseudo.message_id("error", reason, model or "", key),
            ledger=(key, d.study if d else "", "failed", calling_ae, reason),
            instance=key, study=(d.study or None) if d else None, source=(d.info or None) if d else None,
            detail=detail, model=model or None,
        )
        try:
            self.events.commit([record])
        except Exception as exc:  # the disk is full: the file stays, the rescan tries again
            log.error("instance %s: could not record its failure (%s); retried later", key, exc)
            self._release(key)
            return
        self._settle_file(key, "failed")

    def _settle_file(self, key: str, state: str) -> None:
        if state == "failed":
            where = self.spool.quarantine(key)
            if where is not None:
                log.warning("instance %s quarantined in %s", key, where.parent)
        else:
            self.spool.remove(key)
        self._release(key)

    def _hold(self, key: str) -> bool:
        with self._lock:
            if key in self._held or key in self._due:
                return False
            self._held.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._lock:
            self._held.discard(key)

    def _rescan_loop(self) -> None:
        """Due retries every second; every ``rescan_s`` anything spooled that nobody holds (an
        offer lost to a transient error) — an acknowledged image is retried, never forgotten."""
        last_scan = time.monotonic()
        while not self._stopping.wait(1.0):
            now = time.monotonic()
            with self._lock:
                due = [k for k, t in self._due.items() if t <= now]
                for k in due:
                    del self._due[k]
            for key in due:
                self.offer(key)
            if now - last_scan >= self.rescan_s:
                last_scan = now
                for key in self.spool.pending():
                    self.offer(key)

    def held(self) -> int:
        with self._lock:
            return len(self._held) + len(self._due)
