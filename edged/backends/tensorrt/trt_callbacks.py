"""Everything TensorRT calls back into during a build: logger, INT8 calibrator, progress monitor.

Runs inside the builder process under the Jetson system Python (3.6 syntax, numpy >= 1.13),
loaded by path from ``trt_build.py``.

The promise: **no callback ever raises.** TensorRT calls these through pybind11 trampolines
declared ``noexcept``; on TensorRT 8.0/8.2 (JetPack 4.6.x) those have no try/catch, so a Python
exception escaping one calls ``std::terminate`` and the builder dies by SIGABRT with nothing
useful said. 8.5+ catch and print, but then silently return a default (``get_batch`` → "no more
data", which truncates calibration; ``step_complete`` → cancel). So every callback catches
everything, records what went wrong, and returns what keeps the build sane; the build decides
afterwards (``Calibrator.failures``: a calibration that lost batches fails the build instead of
shipping an engine calibrated on part of the data).

The build log is buffered (one write per 64 KiB, not one flush per line: a verbose Nano build
says hundreds of thousands of lines to eMMC) and capped (``cap_bytes``; the last lines past the
cap are kept in memory and appended at the end, since errors come last). A log that cannot be
written (full disk, read-only storage) is dropped with a warning; the build goes on.
"""
import collections
import os
import threading
import time


class BuildLog(object):
    """The build log file: buffered, capped, and never the reason a build fails."""

    def __init__(self, path, cap_bytes, tail_lines=200):
        self.path, self.cap = path, int(cap_bytes)
        self.written = self.dropped = 0
        self.error = None
        self.tail = collections.deque(maxlen=tail_lines)
        self.lock = threading.Lock()
        self.f = None
        try:
            self.f = open(path, "a", buffering=1 << 16)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc):
        self.error = "%s: %s" % (type(exc).__name__, exc)
        f, self.f = self.f, None
        if f is not None:
            try:
                f.close()
            except Exception:
                pass

    def write(self, label, text):
        line = "%s [%s] %s\n" % (time.strftime("%H:%M:%S"), label, text)
        try:
            with self.lock:
                if self.written + len(line) > self.cap:
                    self.dropped += 1
                    self.tail.append(line)
                    return
                self.written += len(line)
                if self.f is not None:
                    self.f.write(line)
        except Exception as exc:
            self._fail(exc)

    def close(self):
        try:
            with self.lock:
                if self.f is not None and self.dropped:
                    self.f.write("... %d lines dropped: the log is capped at %d bytes; the last %d follow\n"
                                 % (self.dropped, self.cap, len(self.tail)))
                    self.f.writelines(self.tail)
                if self.f is not None:
                    self.f.close()
                    self.f = None
        except Exception as exc:
            self._fail(exc)

    def summary(self):
        return {"path": self.path, "bytes": self.written, "dropped_lines": self.dropped, "error": self.error}


def make_logger(trt, log, keep):
    """An ILogger writing every TensorRT message to ``log`` and keeping the last errors in ``keep``."""
    names = {}
    for name in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"):
        names[getattr(trt.Logger, name)] = name

    class BuildLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            try:
                label = names.get(severity, str(severity))
                if label in ("INTERNAL_ERROR", "ERROR"):
                    keep.append(str(msg))
                    del keep[:-50]
                log.write(label, msg)
            except BaseException:  # noexcept trampoline: raising here would abort the builder on 8.0/8.2
                pass

    return BuildLogger()


class Heartbeat(object):
    """TensorRT < 10 reports no progress; a Nano build can take an hour, so say we are alive."""

    def __init__(self, emit, interval):
        self.emit, self.interval = emit, interval
        self.stop = threading.Event()
        self.t0 = time.time()
        self.thread = threading.Thread(target=self.run)
        self.thread.daemon = True

    def run(self):
        while not self.stop.wait(self.interval):
            self.emit({"event": "progress", "text": "building engine: %d s elapsed" % (time.time() - self.t0),
                       "fraction": None})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def make_progress_monitor(trt, emit):
    """TensorRT 10's IProgressMonitor: top-level phases give a fraction, nested ones give text.

    ``step_complete`` returns True whatever happens: False (or an exception, which the 10.x
    trampoline turns into False) would cancel the build.
    """

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps = {}
            self.top = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                self.steps[phase_name] = max(int(num_steps), 1)
                if parent_phase is None:
                    self.top = phase_name
                emit({"event": "progress", "text": phase_name, "fraction": 0.0 if parent_phase is None else None})
            except BaseException:
                pass

        def step_complete(self, phase_name, step):
            try:
                if phase_name == self.top:
                    emit({"event": "progress", "text": phase_name,
                          "fraction": min(1.0, float(step + 1) / self.steps.get(phase_name, 1))})
            except BaseException:
                pass
            return True

        def phase_finish(self, phase_name):
            try:
                self.steps.pop(phase_name, None)
            except BaseException:
                pass

    return Monitor()


def atomic_write(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_calibrator(trt, cuda, data, batch, cache_path, emit):
    """Entropy calibrator over the tensors the daemon preprocessed with the model's own pipeline.

    ``data`` is an (N, C, H, W) array (memory-mapped); device memory comes from ``cuda``
    (pycuda.driver) in the CUDA context current now, which must be the one the Builder uses.
    """
    import numpy as np

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pos = self.batches = 0
            self.reused = self.written = False
            self.failures = []  # (callback, error): the build fails on get_batch/get_batch_size ones
            self.warnings = []
            self.dev = cuda.mem_alloc(int(np.prod(data.shape[1:])) * batch * 4)

        def _failed(self, where, exc):
            self.failures.append((where, "%s: %s" % (type(exc).__name__, exc)))

        def get_batch_size(self):
            return batch

        def get_batch(self, names, p_str=None):
            try:
                if self.pos + batch > data.shape[0]:
                    return None
                chunk = np.ascontiguousarray(data[self.pos:self.pos + batch], dtype=np.float32)
                cuda.memcpy_htod(self.dev, chunk)
                self.pos += batch
                self.batches += 1
                emit({"event": "progress", "text": "calibrating: %d/%d images" % (self.pos, data.shape[0]),
                      "fraction": None})
                return [int(self.dev)]
            except BaseException as exc:
                self._failed("get_batch", exc)
                return None  # ends calibration; the build is failed afterwards

        def read_calibration_cache(self):
            try:
                if os.path.exists(cache_path):
                    with open(cache_path, "rb") as f:
                        blob = f.read()
                    if blob:
                        self.reused = True
                        emit({"event": "progress", "text": "reusing calibration cache", "fraction": None})
                        return blob
            except BaseException as exc:  # unreadable: calibrate again
                self.warnings.append("calibration cache %s unreadable (%s: %s); calibrating again"
                                     % (cache_path, type(exc).__name__, exc))
            return None

        def write_calibration_cache(self, cache):
            try:
                atomic_write(cache_path, bytes(cache))
                self.written = True
            except BaseException as exc:  # the engine is still right; the next build calibrates again
                self.warnings.append("calibration cache not saved to %s (%s: %s); the next build calibrates again"
                                     % (cache_path, type(exc).__name__, exc))

        def summary(self):
            return {"reused_cache": self.reused, "batches": self.batches, "cache_written": self.written,
                    "cache": cache_path}

    return Calibrator()
