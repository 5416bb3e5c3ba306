"""Decoding and preprocessing of spooled images in worker processes, off the receive path.

Receiving runs on pynetdicom's threads in the daemon's process. JPEG 2000 decoding (openjpeg
through pylibjpeg) holds the GIL for the whole decode — half a second for a chest CR — and every
receiving association waits that long for its next chunk: the C-STORE after a J2K image cost
six times the one after an uncompressed image. So images are decoded and turned into tensors in
``pipeline.decode_processes`` worker processes: the daemon sends a path and the model's input
spec, and gets back only the small tensor (600 KB for 224×224×3), never the 7 MB image.

A worker that dies (a decoder crashing on a hostile codestream) fails only its image, with a
transient failure (its source retries it, and gives it up after its attempt limit), and is
replaced for the next one. Errors keep their :class:`PixelError` reason codes.

Why not ``concurrent.futures.ProcessPoolExecutor``: per image it woke a manager thread and a
queue feeder thread in the daemon and pickled through both, ~2 ms of the daemon's CPU per image
(py-spy, issue #14) for what is one request and one answer. Here each worker has its own pipe:
the calling thread takes an idle worker, sends ``(path, spec, preprocess)`` and reads the answer
itself; nothing else runs in the daemon.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edged.preprocess.errors import PixelError, TransientError

log = logging.getLogger("edged.preprocess")


class DecoderCrashed(TransientError):
    """The worker process died while decoding: transient for this image; the worker is replaced."""

    def __init__(self) -> None:
        super().__init__("decoder_crashed", "the decoder process died while decoding this image")


def prepare_file(path: str, input_spec: Any, pp: Any) -> tuple[np.ndarray, dict[str, float]]:
    """Read ``path`` and make the model's input tensor, with every pydicom surprise turned into a
    :class:`PixelError` code. Runs in a worker process (or in-thread without a pool)."""
    from pydicom import dcmread

    from edged.preprocess.pixels import prepare_timed

    try:
        ds = dcmread(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise PixelError("unreadable", f"dataset does not parse ({type(exc).__name__})") from None
    try:
        return prepare_timed(ds, input_spec, pp)
    except (PixelError, MemoryError):
        raise
    except Exception as exc:  # pydicom's own: BytesLengthException, an unknown VR, a codec error
        raise PixelError("decode_failed", f"{type(exc).__name__} while reading the pixels") from None


def _warm() -> None:
    """Import pydicom, the pixel handlers, OpenCV and the request's own types (unpickling the
    first request's pydantic specs imported pydantic and built its models: ~0.1 s of CPU that
    the first image paid) before the first image needs them; and keep each image's strips on
    the worker's own thread (:func:`edged.preprocess.strips.caller_only`: the workers are the
    parallelism, and a second thread per image cost more CPU than it saved)."""
    import cv2  # noqa: F401
    import pydicom.pixels  # noqa: F401

    import edged.models.manifest  # noqa: F401
    import edged.preprocess.pixels  # noqa: F401
    from edged.preprocess import strips

    strips.caller_only()


def _serve(conn: Connection) -> None:
    """A worker process: answer ``(path, input_spec, pp)`` requests until ``None`` or EOF."""
    _warm()
    conn.send("ready")
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        try:
            answer: tuple[bool, Any] = (True, prepare_file(*request))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            answer = (False, exc)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as exc:  # an exception that does not pickle
            conn.send((False, PixelError("decode_failed", f"{type(exc).__name__} while decoding")))


def _short_socket_dir() -> None:
    """Keep the forkserver's socket path within the 108 bytes an AF_UNIX address holds.

    multiprocessing puts that socket in a ``pymp-*`` directory under TMPDIR; with a TMPDIR longer
    than about 70 characters the pool could not start ("AF_UNIX path too long": ``edged demo``
    under a deep TMPDIR, found by the test suite). Then the directory is made under /tmp instead,
    exactly as multiprocessing makes its own (its per-process ``tempdir``, removed at exit).
    """
    import shutil
    import tempfile
    from multiprocessing import process, util

    config = process.current_process()._config  # where util.get_temp_dir() keeps it (3.6–3.13)
    if config.get("tempdir") is not None or len(tempfile.gettempdir()) <= _TMPDIR_MAX:
        return
    tempdir = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    util.Finalize(None, shutil.rmtree, args=(tempdir, True), exitpriority=-100)
    config["tempdir"] = tempdir


#: Longest TMPDIR whose ``/pymp-XXXXXXXX/listener-XXXXXXXX`` socket path fits in sun_path (108).
_TMPDIR_MAX = 107 - len("/pymp-xxxxxxxx/listener-xxxxxxxx")


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child,), name="edged-decode", daemon=True)
        self.process.start()
        child.close()

    def ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout) or self.conn.recv() != "ready":
            raise RuntimeError("a decode worker did not start")

    def stop(self, timeout: float) -> None:
        try:
            self.conn.send(None)
        except (EOFError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class DecodePool:
    """``processes`` decode worker processes, each serving one image at a time."""

    def __init__(self, processes: int):
        self.processes = processes
        self._lock = threading.Lock()
        self._ctx: Any = None
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._workers: list[_Worker] = []
        self._closed = False
        self._started = False
        self.restarts = 0

    def _spawn(self) -> _Worker:
        with self._lock:
            if self._ctx is None:
                _short_socket_dir()
                # forkserver: workers fork from a clean, thread-free server process (forking the
                # daemon itself, with its threads and sockets, is not safe); preloading makes
                # each new worker start with pydicom and OpenCV already imported.
                self._ctx = multiprocessing.get_context("forkserver")
                self._ctx.set_forkserver_preload(["edged.preprocess.pool"])
            worker = _Worker(self._ctx)
            self._workers.append(worker)
        return worker

    def start(self) -> None:
        """Start the workers now (at daemon start-up, not on the first image)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        workers = [self._spawn() for _ in range(self.processes)]
        for worker in workers:
            worker.ready(120)
            self._idle.put(worker)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    def prepare(self, path: Path, input_spec: Any, pp: Any) -> tuple[np.ndarray, dict[str, float]]:
        self.start()
        worker = self._take()
        try:
            worker.conn.send((str(path), input_spec, pp))
            ok, answer = worker.conn.recv()
        except (EOFError, OSError):
            self._replace(worker)
            log.error("a decode worker died while preparing an image; it is replaced")
            raise DecoderCrashed() from None
        self._idle.put(worker)
        if not ok:
            raise answer
        return answer

    def _take(self) -> _Worker:
        """An idle worker, waiting while all are busy; a transient failure once the pool closes."""
        while True:
            if self._closed:
                raise TransientError("decoder_stopped", "the decoder processes are stopping")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            if dead in self._workers:
                self._workers.remove(dead)
            self.restarts += 1
            closed = self._closed
        dead.stop(1)
        if closed:
            return
        worker = self._spawn()
        try:
            worker.ready(120)
        except (RuntimeError, EOFError, OSError):
            log.exception("a replacement decode worker did not start")
        self._idle.put(worker)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers, waiting (up to ``timeout``) for those decoding to finish."""
        with self._lock:
            self._closed = True
            count = len(self._workers)
        deadline = time.monotonic() + timeout
        stopped = 0
        while stopped < count:
            try:
                worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            worker.stop(5)
            stopped += 1
        with self._lock:
            left, self._workers = self._workers, []
        for worker in left:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
