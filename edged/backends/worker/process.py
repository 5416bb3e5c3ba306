"""One running worker child: start it, talk JSON lines to it, share one tensor file, kill it.

Kept apart from the restart/retry policy in :mod:`edged.backends.worker.backend` so that
policy reads as policy. A child that dies abnormally (a signal, a non-zero exit) leaves its last
stderr lines in the error: an abort inside TensorRT or CUDA says why only there. Everything here can fail in exactly two ways the policy cares about:
``WorkerDied`` (EOF, broken pipe, non-zero exit, or it could not be started at all: the process
is gone) and ``WorkerTimeout`` (it did not answer in time: we kill it, since a hung CUDA call
never comes back).
"""

from __future__ import annotations

import collections
import json
import logging
import mmap
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from edged.backends.base import BackendError
from edged.backends.worker import child

CHILD_PATH = Path(child.__file__).resolve()
log = logging.getLogger("edged.worker")


class WorkerFailure(BackendError):
    """The worker process is unusable; ``kind`` is ``crashed`` or ``timeout``.

    A BackendError, so that one escaping a caller that uses ``WorkerProcess`` directly is still
    the error the serving code handles (``WorkerBackend`` turns it into retries and events).
    """

    kind = "crashed"

    def __init__(self, message: str, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.fields = fields or {}


class WorkerDied(WorkerFailure):
    kind = "crashed"


class WorkerTimeout(WorkerFailure):
    kind = "timeout"


class WorkerReplyError(Exception):
    """The worker is alive but refused a request (bad input, load error, deserialize_failed)."""

    def __init__(self, code: str, message: str, reply: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reply = reply or {}


def shm_dir() -> Path:
    """/dev/shm keeps tensors in RAM; elsewhere a temp dir still works (page cache)."""
    return Path("/dev/shm") if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())


def sweep_stale_tensor_files(folder: Path | None = None) -> list[Path]:
    """Remove tensor files left by daemons that died without closing (the pid is in the name)."""
    removed = []
    for path in (folder or shm_dir()).glob("edged-*.tensors"):
        try:
            pid = int(path.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed.append(path)
        except (ValueError, IndexError, PermissionError):
            continue
    return removed


class WorkerProcess:
    """A started child plus its tensor file. Not thread-safe: the backend serializes calls."""

    def __init__(self, python_exe: str, name: str, env: dict[str, str] | None, tensor_dir: Path | None):
        self.python_exe = python_exe
        self.name = name
        self.tensor_path = (tensor_dir or shm_dir()) / f"edged-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tensors"
        self._replies: queue.Queue[dict | None] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._next_id = 0
        self._mm: mmap.mmap | None = None
        try:
            self._fd = os.open(self.tensor_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:  # /dev/shm full or read-only, EMFILE
            raise WorkerDied(f"cannot create tensor file {self.tensor_path}: {exc}", {"pid": None}) from exc
        try:
            self._resize(1 << 16)
            self.proc = subprocess.Popen(
                [python_exe, "-u", "-B", str(CHILD_PATH)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # Ctrl-C on the daemon's terminal must not kill the worker first
                close_fds=True,
            )
        except BaseException as exc:
            # Nothing owns the tensor file yet: without this a restart loop that keeps failing
            # (ENOMEM, a Python removed by an upgrade) fills /dev/shm (RAM) and the fd table.
            self._discard_tensor_file()
            if isinstance(exc, OSError):
                raise WorkerDied(f"cannot start worker {python_exe}: {exc}", {"pid": None, "errno": exc.errno}) from exc
            raise
        self.pid = self.proc.pid
        self._readers = [
            threading.Thread(target=self._read_stdout, name=f"worker-{self.pid}-out", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"worker-{self.pid}-err", daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.hello: dict = {}

    # -- plumbing ------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._replies.put(json.loads(line))
            except ValueError:
                self._stderr_tail.append(f"(garbled protocol line) {line[:200]!r}")
        self._replies.put(None)  # EOF: the child is gone or closed its end

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(line)
            log.debug("worker %s[%d]: %s", self.name, self.pid, line)

    def _resize(self, size: int) -> None:
        if self._mm is not None and len(self._mm) >= size:
            return
        if self._mm is not None:
            self._mm.close()
        os.ftruncate(self._fd, size)
        self._mm = mmap.mmap(self._fd, size)

    def _died(self, what: str) -> WorkerDied:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}" if code is not None else "closed its pipes"
        for t in self._readers[1:]:  # the stderr reader ends with the process: wait for its last lines
            t.join(timeout=1.0)
        tail = list(self._stderr_tail)[-5:]
        said = ""
        if code is None or code != 0:  # an abort or crash says why on stderr (std::terminate, CUDA, Python)
            said = "; it said: " + " | ".join(line for line in tail[-3:] if line.strip()) if tail else ""
        return WorkerDied(f"worker {self.pid} {how} {what}{said}",
                          {"pid": self.pid, "exit_code": code, "stderr_tail": tail})

    def request(self, msg: dict, timeout: float) -> dict:
        """Send one request and wait for its reply; raise WorkerDied / WorkerTimeout / WorkerReplyError."""
        self._next_id += 1
        msg = dict(msg, id=self._next_id)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(f"before {msg['op']}") from None
        return self._wait_reply(self._next_id, msg["op"], timeout)

    def _wait_reply(self, want_id: int | None, op: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                reply = self._replies.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise WorkerTimeout(
                    f"worker {self.pid} did not answer {op} within {timeout:g} s", {"pid": self.pid, "timeout_s": timeout}
                ) from None
            if reply is None:
                raise self._died(f"during {op}")
            if want_id is not None and reply.get("id") != want_id:
                continue  # a late answer to a request we already gave up on
            if not reply.get("ok", True):
                raise WorkerReplyError(reply.get("code", "error"), reply.get("error", "worker error"), reply)
            return reply

    # -- operations ----------------------------------------------------------------------------
    def start(self, host: str, params: dict, timeout: float) -> dict:
        """Wait for the child's hello, then load the host; returns the host description."""
        self.hello = self._wait_reply(None, "start", timeout)
        return self.request({"op": "load", "host": host, "params": params, "shm": str(self.tensor_path)}, timeout)

    def infer(self, batch, seq: int, out_bytes_hint: int, timeout: float) -> dict:
        """Write ``batch`` to the tensor file, run it, read every output tensor back by name."""
        out_offset = child.align(child.block_size(batch.shape, batch.dtype.name))
        self._resize(out_offset + max(out_bytes_hint, child.HEADER_SIZE))
        assert self._mm is not None
        child.write_tensor(self._mm, 0, batch, seq)
        reply: dict = {}
        for _ in range(2):
            try:
                reply = self.request({"op": "infer", "seq": seq, "out_offset": out_offset}, timeout)
                break
            except WorkerReplyError as exc:
                if exc.code != "need_space":
                    raise
                # Outputs larger than guessed: grow the file and ask again (input stays valid).
                self._resize(int(exc.reply["need"]))
        outputs = {}
        try:
            for placed in reply.get("outputs") or []:
                outputs[str(placed["name"])], _ = child.read_tensor(self._mm, int(placed["offset"]), expect_seq=seq)
        except (child.TensorIOError, KeyError, TypeError, ValueError) as exc:
            # the child said "done" but left no valid tensor: it is broken
            raise WorkerDied(f"worker {self.pid} returned an invalid output tensor: {exc}", {"pid": self.pid}) from exc
        if not outputs:
            raise WorkerDied(f"worker {self.pid} returned no outputs", {"pid": self.pid})
        return outputs

    def kill(self) -> None:
        """SIGKILL the whole process group: works on hung and on SIGSTOPped workers alike."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("worker %d survived SIGKILL for 5 s", self.pid)
        self._release()

    def close(self, timeout: float = 5.0) -> None:
        """Ask politely, then kill; always remove the tensor file."""
        if self.proc.poll() is None:
            try:
                self.request({"op": "close"}, timeout)
                self.proc.wait(timeout=timeout)
            except (WorkerFailure, WorkerReplyError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def _release(self) -> None:
        for t in self._readers:  # the pipes hit EOF once the process is gone
            t.join(timeout=1.0)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._discard_tensor_file()

    def _discard_tensor_file(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self.tensor_path.unlink()
        except FileNotFoundError:
            pass
