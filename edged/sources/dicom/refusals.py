"""Refusals of DICOM peers: a log line for each at once, a ``rejected`` event without making anyone wait.

An operator must see why a modality was turned away (host not allowed, too many connections,
PDU too large, transfer too slow, TLS handshake failed…). But a peer opening a thousand
connections a second must neither write a thousand events (SQLite commits, MQTT messages) nor
make the accept loop wait for one. So:

* the log line is written in the calling thread, at once; its template is per reason, so the
  log's rate limiter (:mod:`edged.service.logsetup`) folds a flood of one kind without hiding
  another kind;
* the event goes through a bounded queue to one thread; per (peer, reason) at most one event
  per ``interval`` seconds leaves; the refusals held back meanwhile leave as one more event
  when the interval is over ("N more refusals …"); a full queue drops and counts (logged).

Neither carries anything from the peer's payload: the peer's IP address, a calling AE title
already checked against its VR (:func:`edged.sources.dicom.vocab.ae_title`), a reason code and a
detail that edged wrote from numbers and codes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("edged.dicom")


class Refusals:
    def __init__(self, emit: Callable[..., object], interval: float = 10.0, max_pending: int = 256,
                 clock: Callable[[], float] = time.monotonic, count: Callable[[str], None] | None = None):
        self._emit, self.interval, self._clock = emit, interval, clock
        self._count = count  # metrics: every refusal, folded or not
        self._queue: queue.Queue[tuple[str, str, str, str | None] | None] = queue.Queue(max_pending)
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], list] = {}  # key -> [count, last detail, last calling AE]
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "Refusals":
        self._thread = threading.Thread(target=self._run, name="dicom-refusals", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None

    def refuse(self, peer: str, reason: str, detail: str, *, calling_ae: str | None = None,
               level: int = logging.WARNING, event: bool = True) -> None:
        """Log now; queue the event unless one for (peer, reason) left less than ``interval`` ago
        (or ``event`` is False: a connection that asked for nothing, such as a port probe)."""
        who = f"{peer} (AE {calling_ae})" if calling_ae else peer
        log.log(level, "DICOM peer %s refused: " + reason + ": %s", who, detail)
        if self._count is not None:
            self._count(reason)
        if not event:
            return
        key = (peer, reason)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                held = self._held.setdefault(key, [0, detail, calling_ae])
                held[0] += 1
                held[1], held[2] = detail, calling_ae
                return
            self._last[key] = now
            if len(self._last) > 4096:  # forget peers quiet for a while
                self._last = {k: t for k, t in self._last.items() if now - t < self.interval or k in self._held}
        self._put(peer, reason, detail, calling_ae)

    def _put(self, peer: str, reason: str, detail: str, calling_ae: str | None) -> None:
        try:
            self._queue.put_nowait((peer, reason, detail, calling_ae))
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def flush_held(self) -> None:
        """One event per (peer, reason) whose interval is over and that held refusals back."""
        now = self._clock()
        due = []
        with self._lock:
            for key, (count, detail, calling_ae) in list(self._held.items()):
                if now - self._last.get(key, 0.0) >= self.interval:
                    del self._held[key]
                    self._last[key] = now
                    due.append((key, count, detail, calling_ae))
        for (peer, reason), count, detail, calling_ae in due:
            self._put(peer, reason, f"{count} more refusal(s) in the last {self.interval:g} s; the last: {detail}",
                      calling_ae)

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=min(1.0, self.interval))
            except queue.Empty:
                self.flush_held()
                continue
            if item is None:
                return
            peer, reason, detail, calling_ae = item
            self._emit("rejected", reason, peer=peer, calling_ae=calling_ae, detail=detail)
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning("%d refusal event(s) not queued: too many refusals at once", dropped)
            self.flush_held()
