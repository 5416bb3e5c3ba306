"""One camera's capture: its helper process, a reader that keeps only the newest frame, the stall
watchdog, and reconnection with exponential backoff and jitter.

Promises, each kept by a test:

* The newest frame wins. The reader thread drains the helper's pipe continuously and keeps one
  frame; a frame replaced before anyone took it is a counted ``reader`` drop. Nothing queues, so
  the frame the scheduler takes is never older than one delivery period plus the pipeline's own
  latency, however slow inference is.
* A stall is noticed within ``stall_timeout_s``: the helper exits with its own no-frame timer,
  and the supervisor here SIGKILLs a helper that delivers nothing for that long (one that hangs
  in a driver, or was stopped). Either way the camera is ``stalled``.
* A helper that dies (error, end of stream, crash, stall) is started again after a delay that
  doubles from ``backoff.initial_s`` to ``backoff.max_s``, each ± ``backoff.jitter``; the delay
  starts over once frames flow again. Memory does not grow across reconnects: each attempt is a
  new process whose pipe and threads end with it.
* Each loss is reported once (``offline``, ``stalled`` or ``restarted`` for a crashed helper),
  each recovery once (``reconnected``, with the outage's length and attempts); the first frames
  after start are ``online``. Failed attempts during an outage are visible in the state only.
* Credentials are read from their files at each start, handed to the helper on its stdin, and
  scrubbed from anything the helper says before it is logged or published.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.sources.camera import helper as proto
from edged.sources.camera.config import CameraConfig

log = logging.getLogger("edged.camera")
HELPER = Path(proto.__file__).resolve()
MAX_FRAME_BYTES = 4096 * 4096 * 4
F_SETPIPE_SZ = 1031  # Linux fcntl


@dataclass
class Frame:
    seq: int
    pts_ns: int
    captured: float  # wall clock (s since the epoch)
    received: float  # monotonic
    pixels: np.ndarray  # (H, W, 3) RGB uint8, a view on the bytes read
    lag_s: float = 0.0  # capture → received by the daemon
    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]


@dataclass
class Counters:
    """Plain attributes for whoever reports them (state messages, metrics)."""

    frames_in: int = 0
    drops: dict[str, int] = field(default_factory=lambda: {"reader": 0, "busy": 0, "queue": 0, "failed": 0})
    reconnects: int = 0
    restarts: int = 0
    attempts: int = 0  # failed helper runs since the last frame


def backoff_delay(attempt: int, initial: float, maximum: float, jitter: float, rng: random.Random) -> float:
    """Delay before attempt ``attempt`` (1 = the first retry): initial·2^(attempt-1), capped, ± jitter."""
    base = min(maximum, initial * 2 ** max(0, attempt - 1))
    return max(0.0, base * (1.0 + rng.uniform(-jitter, jitter)))


class Capture:
    """Started with :meth:`start`; the source reads :meth:`take`, :attr:`state`, :attr:`counters`."""

    def __init__(self, cam: CameraConfig, description: str, python: Path, *,
                 on_event: Callable[["Capture", str, dict], None], on_state: Callable[["Capture"], None],
                 loop: bool = False, rng: random.Random | None = None):
        self.cam, self.description, self.python, self.loop = cam, description, python, loop
        self.on_event, self.on_state = on_event, on_state
        self.rng = rng or random.Random()
        self.state = "connecting" if cam.enabled else "disabled"
        self.counters = Counters()
        self.decoder: str | None = None
        self.resolution: tuple[int, int] | None = None  # (width, height) of the frames delivered
        self.last_error: str | None = None  # a reason code
        self.last_attempt: float | None = None  # wall clock
        self.next_attempt: float | None = None
        self.backoff_s: float | None = None  # the delay chosen before next_attempt
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._taken = 0  # seq of the last frame handed out
        self._last_frame = 0.0  # monotonic time of the newest frame
        self._arrivals: collections.deque[float] = collections.deque(maxlen=256)
        self._proc: subprocess.Popen | None = None
        self._killed_for_stall = False
        self._ever_online = False
        self._down_since: float | None = None  # monotonic start of the current outage
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=f"camera-{cam.name}", daemon=True)

    # -- what the source uses ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.cam.name

    def start(self) -> None:
        if self.cam.enabled:
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._end_helper(signal.SIGTERM)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def take(self) -> Frame | None:
        """The newest frame not handed out before, or None."""
        with self._lock:
            frame = self._latest
            if frame is None or frame.seq <= self._taken:
                return None
            self._taken = frame.seq
            self._latest = None
            return frame

    def fps_in(self, window: float = 5.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._arrivals if now - t <= window]
        return round(len(recent) / window, 2) if recent else 0.0

    def frame_age_s(self) -> float | None:
        return round(time.monotonic() - self._last_frame, 3) if self._last_frame else None

    # -- the supervisor ------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self.last_attempt, self.next_attempt, self.backoff_s = time.time(), None, None
            self._set_state("connecting")
            cause, detail = self._run_once()
            if self._stopping.is_set():
                break
            self._lost(cause, detail)
            self.counters.attempts += 1
            delay = backoff_delay(self.counters.attempts, self.cam.backoff.initial_s, self.cam.backoff.max_s,
                                  self.cam.backoff.jitter, self.rng)
            self.backoff_s, self.next_attempt = round(delay, 3), time.time() + delay
            self._set_state("stalled" if cause == "stall" else "backoff")
            self._stopping.wait(delay)
        self._set_state("stopped")

    def _run_once(self) -> tuple[str, str]:
        """Run one helper to its end; returns (cause code, detail without secrets)."""
        user, password = self._credentials()
        self._killed_for_stall = False
        try:
            proc = subprocess.Popen([str(self.python), str(HELPER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True, start_new_session=True)
        except OSError as exc:
            return "setup", f"cannot start {self.python}: {exc.strerror}"
        self._proc = proc
        try:
            fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # a smaller pipe only means more wake-ups
        cfg = {"description": self.description, "stall_timeout_s": self.cam.stall_timeout_s,
               "first_frame_timeout_s": max(self.cam.stall_timeout_s, 15.0), "loop": self.loop,
               "username": user, "password": password}
        try:
            proc.stdin.write((json.dumps(cfg) + "\n").encode())
            proc.stdin.close()
        except OSError:
            pass
        started = time.monotonic()
        errors: list[str] = []
        reader = threading.Thread(target=self._read, args=(proc, errors), name=f"camera-{self.name}-reader",
                                  daemon=True)
        stderr = threading.Thread(target=self._drain_stderr, args=(proc,), daemon=True)
        reader.start()
        stderr.start()
        while proc.poll() is None and not self._stopping.is_set():
            since = self._last_frame if self._last_frame > started else started
            limit = self.cam.stall_timeout_s if self._last_frame > started else cfg["first_frame_timeout_s"] + 2.0
            if time.monotonic() - since > limit:
                log.warning("camera %s: no frame for %.1f s; killing its capture helper", self.name, limit)
                self._killed_for_stall = True
                self._end_helper(signal.SIGKILL)
                break
            self._stopping.wait(0.1)
        reader.join(5.0)
        try:
            code = proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self._end_helper(signal.SIGKILL)
            code = proc.wait()
        stderr.join(1.0)
        self._proc = None
        detail = self._scrub("; ".join(errors))[:300]
        if self._killed_for_stall or code == proto.EXIT_STALL:
            return "stall", detail or f"no frame for {self.cam.stall_timeout_s:g} s"
        if code in (proto.EXIT_ERROR, proto.EXIT_EOS, proto.EXIT_SETUP):
            return proto.EXIT_CODES[code], detail or proto.EXIT_CODES[code].replace("_", " ")
        if code == proto.EXIT_OK and self._stopping.is_set():
            return "stopped", ""
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        tail = self._scrub(" | ".join(list(self._stderr)[-3:]))[:300]
        return "crashed", f"capture helper {why}" + (f": {tail}" if tail else "")

    def _end_helper(self, sig: int) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(sig)
            except OSError:
                pass

    def _read(self, proc: subprocess.Popen, errors: list[str]) -> None:
        """The reader thread: every record off the pipe; frames replace the newest one."""
        out = proc.stdout
        try:
            while True:
                head = out.read(proto.HEADER.size)
                if len(head) < proto.HEADER.size:
                    return
                magic, version, kind, _, seq, pts, captured, width, height, stride, size = proto.HEADER.unpack(head)
                if magic != proto.MAGIC or version != proto.VERSION or size > MAX_FRAME_BYTES:
                    errors.append("capture helper protocol error")
                    self._end_helper(signal.SIGKILL)
                    return
                data = out.read(size)
                if len(data) < size:
                    return
                if kind == proto.KIND_FRAME:
                    self._frame(seq, pts, captured, width, height, stride, data)
                elif kind == proto.KIND_INFO:
                    info = json.loads(data)
                    self.decoder = ",".join(info.get("decoders") or []) or "none"
                elif kind == proto.KIND_ERROR:
                    info = json.loads(data)
                    errors.append(f"{info.get('stage')}: {info.get('message')}")
        except (OSError, ValueError) as exc:
            errors.append(f"reading the capture helper failed: {type(exc).__name__}")

    def _frame(self, seq: int, pts: int, captured: float, width: int, height: int, stride: int, data: bytes) -> None:
        if width * 3 > stride or stride * height != len(data):
            return
        pixels = np.frombuffer(data, np.uint8).reshape(height, stride)[:, :width * 3].reshape(height, width, 3)
        now = time.monotonic()
        frame = Frame(seq, pts, captured, now, pixels, max(0.0, time.time() - captured))
        self.resolution = (width, height)
        with self._lock:
            if self._latest is not None:
                self.counters.drops["reader"] += 1
            self._latest = frame
            self._last_frame = now
            self._arrivals.append(now)
            self.counters.frames_in += 1
        if self.state != "streaming":
            self._recovered()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip()[:300])

    # -- transitions ---------------------------------------------------------------------
    def _recovered(self) -> None:
        attempts = self.counters.attempts
        self.counters.attempts = 0
        self.last_error = None
        if not self._ever_online:
            self._ever_online = True
            self._down_since = None
            self._set_state("streaming")
            self.on_event(self, "online", {"decoder": self.decoder})
            return
        outage = time.monotonic() - self._down_since if self._down_since else 0.0
        self._down_since = None
        self.counters.reconnects += 1
        self._set_state("streaming")
        self.on_event(self, "reconnected", {"outage_s": round(outage, 2), "attempts": attempts})

    def _lost(self, cause: str, detail: str) -> None:
        self.last_error = cause
        first_failure = self._down_since is None
        if first_failure:
            self._down_since = time.monotonic()
        if cause == "crashed":
            self.counters.restarts += 1
        if not first_failure:
            log.info("camera %s: attempt failed (%s)", self.name, cause)
            return
        reason = {"stall": "stalled", "crashed": "restarted"}.get(cause, "offline")
        level = logging.INFO if cause == "end_of_stream" else logging.WARNING
        log.log(level, "camera %s: %s (%s)", self.name, reason, detail)
        self.on_event(self, reason, {"cause": cause, "detail": detail})

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(self)

    def _credentials(self) -> tuple[str | None, str | None]:
        if self.cam.username_file is None or self.cam.password_file is None:
            return None, None
        try:
            return (Path(self.cam.username_file).read_text(encoding="utf-8").strip(),
                    Path(self.cam.password_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            log.error("camera %s: cannot read its credential files (%s)", self.name, exc.strerror)
            return None, None

    def _scrub(self, text: str) -> str:
        """Text from the helper with the camera's credentials removed (defence in depth)."""
        user, password = self._credentials() if self.cam.username_file else (None, None)
        for secret in (password, user):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text
