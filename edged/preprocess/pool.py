"""Decoding and preprocessing of spooled images in worker processes, off the receive path.

Receiving runs on pynetdicom's threads in the daemon's process. JPEG 2000 decoding (openjpeg
through pylibjpeg) holds the GIL for the whole decode — half a second for a chest CR — and every
receiving association waits that long for its next chunk: the C-STORE after a J2K image cost
six times the one after an uncompressed image. So images are decoded and turned into tensors in
``pipeline.decode_processes`` worker processes: the daemon sends a path and the model's input
spec, and gets back only the small tensor (600 KB for 224×224×3), never the 7 MB image.

A worker that dies (a decoder crashing on a hostile codestream) breaks the pool: the image gets
a transient failure (its source retries it, and gives it up after its attempt limit), and the
pool is started again for the next one. Errors keep their :class:`PixelError` reason codes.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from edged.preprocess.errors import PixelError, TransientError

log = logging.getLogger("edged.preprocess")


class DecoderCrashed(TransientError):
    """The worker process died while decoding: transient for this image, fatal for the pool."""

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
    """Import pydicom, the pixel handlers and OpenCV before the first image needs them."""
    import cv2  # noqa: F401
    import pydicom.pixels  # noqa: F401

    import edged.preprocess.pixels  # noqa: F401


class DecodePool:
    def __init__(self, processes: int):
        self.processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # forkserver: workers fork from a clean, thread-free server process (forking the
                # daemon itself, with its threads and sockets, is not safe); preloading makes
                # each new worker start with pydicom and OpenCV already imported.
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(["edged.preprocess.pool"])
                self._pool = ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_warm)
            return self._pool

    def start(self) -> None:
        """Start the workers now (at daemon start-up, not on the first image)."""
        ex = self._executor()
        for f in [ex.submit(_warm) for _ in range(self.processes)]:
            f.result(timeout=120)

    def prepare(self, path: Path, input_spec: Any, pp: Any) -> tuple[np.ndarray, dict[str, float]]:
        ex = self._executor()
        try:
            return ex.submit(prepare_file, str(path), input_spec, pp).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is ex:
                    self._pool = None
                    self.restarts += 1
            ex.shutdown(wait=False, cancel_futures=True)
            log.error("a decode worker died while preparing an image; the pool is started again")
            raise DecoderCrashed() from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
