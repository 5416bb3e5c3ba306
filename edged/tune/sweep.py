"""One sweep point measured against the real backend, and the store that makes a sweep resumable.

A point is ``(max_batch_size, max_queue_delay_ms, concurrency)``: ``concurrency`` closed-loop
clients each submit one synthetic request of the model's input shape to a real
:class:`~edged.batcher.dynamic.DynamicBatcher` in front of the real backend, wait for its
completion and submit the next, for ``seconds``. Latency is what a client saw (submit to
completion: queue + inference), throughput is completions per second of wall time — what
perf_analyzer reports for Triton, measured through edged's own batcher so the batching
semantics are the daemon's.

Every measured point is written to the partial store at once (atomically), keyed by everything
that decides its value (model digest, backend, mode, point, duration): an interrupted sweep
loses at most the point it was in, and a rerun measures only what is missing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edged.backends.base import Backend
from edged.batcher.dynamic import Completion, DynamicBatcher, Request
from edged.models.manifest import BatchingSpec


@dataclass(frozen=True)
class Point:
    model: str
    mode: str  # power mode key (an nvpmodel ID or "none")
    max_batch_size: int
    max_queue_delay_ms: float
    concurrency: int
    requests: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float

    def meets(self, slo_ms: float) -> bool:
        return self.p99_ms <= slo_ms


class Interrupted(Exception):
    """The sweep was asked to stop (SIGINT/SIGTERM); what was measured is saved."""


def measure(backend: Backend, sample: np.ndarray, model: str, mode: str, batch: int, delay_ms: float,
            concurrency: int, seconds: float, stop: threading.Event) -> Point:
    """Measure one point; raises :class:`Interrupted` when ``stop`` is set meanwhile."""
    spec = BatchingSpec(max_batch_size=batch, max_queue_delay_ms=delay_ms, max_queue_size=max(64, concurrency))
    batcher = DynamicBatcher(f"tune-{model}", backend, spec)
    batcher.start()
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        while not stop.is_set() and time.monotonic() < end:
            done = threading.Event()
            box: list[Completion] = []
            t0 = time.monotonic()
            batcher.submit(Request(sample, lambda c: (box.append(c), done.set())))
            done.wait()
            elapsed = (time.monotonic() - t0) * 1000.0
            with lock:
                if box[0].error:
                    errors.append(box[0].error)
                    return
                latencies.append(elapsed)
                batches.append(box[0].batch_size)

    started = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.05)
    finally:
        wall = time.monotonic() - started
        stop_now = stop.is_set()
        batcher.stop(drain=not stop_now, timeout=10.0)
    if stop_now:
        raise Interrupted()
    if errors:
        raise RuntimeError(f"{model}: the backend failed during the sweep: {errors[0]}")
    lat = np.asarray(latencies)
    return Point(model, mode, batch, delay_ms, concurrency, len(lat), round(len(lat) / wall, 2),
                 round(float(np.percentile(lat, 50)), 3), round(float(np.percentile(lat, 99)), 3),
                 round(float(np.mean(batches)), 2))


def choose(points: list[Point], slo_ms: float) -> Point | None:
    """The best throughput whose p99 meets the SLO; ties go to the lower p99, then the smaller batch."""
    ok = [p for p in points if p.meets(slo_ms)]
    return max(ok, key=lambda p: (p.throughput_per_s, -p.p99_ms, -p.max_batch_size)) if ok else None


class PartialStore:
    """Measured points on disk (JSON), keyed so that a changed model, backend or duration is re-measured."""

    def __init__(self, path: Path):
        self.path = path
        self.points: dict[str, dict] = {}
        if path.exists():
            try:
                self.points = json.loads(path.read_text()).get("points", {})
            except (OSError, ValueError):
                self.points = {}  # a torn or foreign file: measure again rather than trust it

    @staticmethod
    def key(identity: str, mode: str, batch: int, delay_ms: float, concurrency: int, seconds: float) -> str:
        return f"{identity}|mode {mode}|b{batch}|d{delay_ms:g}|c{concurrency}|s{seconds:g}"

    def get(self, key: str) -> Point | None:
        raw = self.points.get(key)
        try:
            return Point(**raw) if raw is not None else None
        except TypeError:
            return None

    def put(self, key: str, point: Point) -> None:
        self.points[key] = asdict(point)
        write_atomic(self.path, json.dumps({"points": self.points}, indent=1, sort_keys=True))


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename: a reader (or a power cut) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
