"""``WorkerBackend``: a Backend whose model runs in an isolated child process.

Policy, in one place: a batch that meets a crashed or hung worker is retried exactly once on a
freshly started worker (a crash is usually the process, not the batch); if that also fails the
batch fails with ``BackendError`` and the batcher turns it into per-request errors, so nothing
is silently lost and the daemon keeps serving. Restarts back off exponentially so a worker that
dies on start-up (bad engine, missing library) does not spin; a successful batch resets the
back-off. Every crash, timeout and restart is reported through ``on_event`` (the daemon
publishes it and logs it) and logged here.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edged.backends.base import (
    Backend,
    BackendError,
    BackendInfo,
    Outputs,
    TensorSpec,
    check_outputs,
)
from edged.backends.worker import child
from edged.backends.worker.process import (
    WorkerFailure,
    WorkerProcess,
    WorkerReplyError,
    sweep_stale_tensor_files,
)

EventCallback = Callable[[str, dict], None]
log = logging.getLogger("edged.worker")


class WorkerLoadError(BackendError):
    """The host refused to load (``code`` e.g. ``deserialize_failed``, ``load_error``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _spec(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"])


class WorkerBackend(Backend):
    """Run ``host`` (``onnxruntime``, ``echo`` or ``external`` with ``params['module']``) in a child.

    ``python_exe`` is the interpreter of the child: the Jetson system Python for TensorRT,
    ``sys.executable`` for ONNX Runtime. ``batch_timeout_s`` bounds one batch, ``load_timeout_s``
    the start-up (engine deserialization on a Nano takes seconds, not minutes).
    """

    def __init__(
        self,
        host: str,
        params: dict[str, Any],
        *,
        python_exe: str | None = None,
        name: str = "model",
        batch_timeout_s: float = 30.0,
        load_timeout_s: float = 120.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        on_event: EventCallback | None = None,
        env: dict[str, str] | None = None,
        tensor_dir: str | Path | None = None,
    ):
        self.host = host
        self.params = dict(params)
        self.python_exe = python_exe or sys.executable
        self.name = name
        self.batch_timeout_s = batch_timeout_s
        self.load_timeout_s = load_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_event = on_event
        self.env = env
        self.tensor_dir = Path(tensor_dir) if tensor_dir else None
        self.restarts = 0
        self._worker: WorkerProcess | None = None
        self._desc: dict | None = None
        self._lock = threading.RLock()
        self._failures = 0  # consecutive failed batches/starts; drives the back-off
        self._not_before = 0.0  # monotonic time before which no restart is attempted
        self._last_backoff = 0.0
        self._seq = 0
        self._closed = False

    # -- Backend seam --------------------------------------------------------------------------
    def load(self) -> None:
        """Start the worker; idempotent. Raises WorkerLoadError/BackendError when it cannot."""
        with self._lock:
            self._closed = False
            if self._worker is None:
                for path in sweep_stale_tensor_files(self.tensor_dir):
                    log.info("removed %s left by a daemon that died", path)
                try:
                    self._start()
                except WorkerFailure as exc:
                    raise BackendError(f"{self.name}: worker failed to start: {exc}") from exc

    @property
    def info(self) -> BackendInfo:
        d = self._described()["info"]
        w = self._worker
        detail = dict(d.get("detail", {}))
        detail.update(
            worker_pid=w.pid if w else None,
            worker_python=self.python_exe,
            worker_python_version=(w.hello.get("python") if w else None),
            worker_restarts=self.restarts,
        )
        return BackendInfo(d["backend"], d["precision"], d["device"], detail)

    @property
    def input_spec(self) -> TensorSpec:
        return _spec(self._described()["input"])

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(d) for d in self._described()["outputs"])

    @property
    def pid(self) -> int | None:
        return self._worker.pid if self._worker else None

    def infer(self, batch: np.ndarray) -> Outputs:
        with self._lock:
            if self._closed or self._desc is None:
                raise BackendError(f"{self.name}: backend {'closed' if self._closed else 'not loaded'}")
            batch = np.ascontiguousarray(batch)
            last: WorkerFailure | None = None
            for attempt in (1, 2):
                try:
                    self._ensure_worker(retrying=attempt == 2)
                    out = self._infer_once(batch)
                except WorkerFailure as exc:
                    last = exc
                    self._on_failure(exc, batch.shape[0], attempt)
                    continue
                except (WorkerReplyError, child.TensorIOError) as exc:  # refused/unsendable batch: retry won't help
                    raise BackendError(f"{self.name}: {exc}") from exc
                self._failures = 0
                return check_outputs(out, self.output_specs, batch.shape[0])
            raise BackendError(f"{self.name}: batch of {batch.shape[0]} failed twice: {last}") from last

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    # -- internals -----------------------------------------------------------------------------
    def _described(self) -> dict:
        if self._desc is None:
            raise BackendError(f"{self.name}: backend not loaded")
        return self._desc

    def _emit(self, kind: str, fields: dict) -> None:
        fields = dict(fields, model=self.name)
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:  # a broken event sink must not break inference
                log.exception("on_event(%s) failed", kind)

    def _start(self) -> None:
        worker = WorkerProcess(self.python_exe, self.name, self.env, self.tensor_dir)
        try:
            desc = worker.start(self.host, self.params, self.load_timeout_s)
        except WorkerReplyError as exc:
            worker.close()
            raise WorkerLoadError(exc.code, f"{self.name}: {exc}") from exc
        except BaseException:
            worker.kill()
            raise
        self._worker, self._desc = worker, desc
        log.info("%s: worker %d started (%s, Python %s)", self.name, worker.pid, self.host, worker.hello.get("python"))

    def _ensure_worker(self, retrying: bool) -> None:
        if self._worker is not None:
            return
        wait = self._not_before - time.monotonic()
        if wait > self.batch_timeout_s:
            raise BackendError(
                f"{self.name}: worker restarting after {self._failures} consecutive failures; next attempt in {wait:.1f} s"
            )
        if wait > 0:
            time.sleep(wait)
        old_restarts = self.restarts
        self.restarts += 1
        try:
            self._start()
        except WorkerLoadError:  # raised out of infer(); WorkerFailure goes through _on_failure
            self._schedule_backoff()
            raise
        assert self._worker is not None
        fields = {"pid": self._worker.pid, "restart": old_restarts + 1, "backoff_s": round(self._last_backoff, 3),
                  "consecutive_failures": self._failures, "retrying_batch": retrying}
        log.warning("%s: worker restarted as pid %d (restart %d, back-off %.2f s)", self.name,
                    self._worker.pid, fields["restart"], self._last_backoff)
        self._emit("worker_restarted", fields)

    def _schedule_backoff(self) -> None:
        self._failures += 1
        self._last_backoff = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (self._failures - 1))
        self._not_before = time.monotonic() + self._last_backoff

    def _on_failure(self, exc: WorkerFailure, batch_size: int, attempt: int) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()
        fields = dict(exc.fields, batch_size=batch_size, attempt=attempt, error=str(exc),
                      will_retry=attempt == 1)
        if exc.kind == "timeout":
            log.error("%s: %s; killed it", self.name, exc)
            self._emit("worker_timeout", fields)
        else:
            log.error("%s: %s", self.name, exc)
            self._emit("worker_crashed", fields)
        self._schedule_backoff()

    def _infer_once(self, batch: np.ndarray) -> Outputs:
        worker = self._worker
        assert worker is not None
        self._seq += 1
        hint = 0
        for spec in self._described()["outputs"]:  # a guess; the child asks for more if needed
            per_sample = int(np.prod([d for d in spec["shape"][1:] if d > 0] or [1]))
            hint += child.HEADER_SIZE + child.align(batch.shape[0] * per_sample * np.dtype(spec["dtype"]).itemsize)
        return worker.infer(batch, self._seq, hint, self.batch_timeout_s)
