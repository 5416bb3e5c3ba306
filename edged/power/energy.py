"""Energy over a time window, from power samples taken by a background thread.

The batcher knows when a batch's inference started and ended (``time.monotonic()``); the
rails only give instantaneous power. :class:`EnergyMeter` samples total power every
``interval_s`` into a ring buffer and integrates it (trapezoids) over any recent window::

    t0 = time.monotonic(); outputs = backend.infer(batch); t1 = time.monotonic()
    mj = meter.energy_mj(t0, t1)            # None when there is no power source or no coverage
    per_image = meter.per_image_mj(t0, t1, len(batch))

It is *board* energy (module input, or the flagged sum of rails; CPU package on RAPL), so it
includes the idle floor and whatever else runs: comparable across modes on one device, not an
attribution to the model alone. INA3221 values refresh every few ms to tens of ms, so windows
shorter than a couple of sample intervals are estimates.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable

from edged.power.rails import PowerSource


class EnergyMeter:
    def __init__(
        self,
        source: PowerSource | None,
        *,
        interval_s: float = 0.05,
        window_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.interval_s = interval_s
        self.clock = clock
        self.max_gap_s = 2.5 * interval_s  # how far a value is held past the last (or before the first) sample
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(8, int(window_s / interval_s) + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.total_is_sum = False
        self.scope: str | None = None

    @property
    def available(self) -> bool:
        return self.source is not None

    def add_sample(self, t: float, mw: float) -> None:
        """Record total power ``mw`` at monotonic time ``t`` (the sampler thread calls this; tests may too)."""
        with self._lock:
            if self._samples and t <= self._samples[-1][0]:
                return
            self._samples.append((t, mw))

    def sample_once(self) -> None:
        if self.source is None:
            return
        reading = self.source.read()
        if reading is not None and reading.total_mw is not None:
            self.total_is_sum, self.scope = reading.total_is_sum, reading.scope
            self.add_sample(self.clock(), reading.total_mw)

    def _run(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # a sysfs hiccup must not kill the sampler; the next tick retries
                pass
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - self.clock()))

    def start(self) -> EnergyMeter:
        """Start the background sampler (no-op without a source)."""
        if self.source is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edged-energy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def energy_mj(self, t0: float, t1: float) -> float | None:
        """Energy in mJ between monotonic times ``t0`` and ``t1`` (mW × s = mJ).

        None when there is no source, the window is inverted, or the samples do not cover it
        (older than the ring buffer, or more than ``max_gap_s`` beyond the newest sample).
        """
        if t1 < t0:
            return None
        with self._lock:
            samples = list(self._samples)
        if not samples or t0 < samples[0][0] - self.max_gap_s or t1 > samples[-1][0] + self.max_gap_s:
            return None
        if t1 == t0:
            return 0.0
        # Hold the first/last value at the edges, then integrate the piecewise-linear power curve.
        points = [(min(t0, samples[0][0]), samples[0][1]), *samples, (max(t1, samples[-1][0]), samples[-1][1])]
        times = [p[0] for p in points]

        def power_at(t: float) -> float:
            i = bisect.bisect_right(times, t)
            if i <= 0:
                return points[0][1]
            if i >= len(points):
                return points[-1][1]
            (ta, pa), (tb, pb) = points[i - 1], points[i]
            return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)

        knots = [t0, *[t for t in times if t0 < t < t1], t1]
        values = [power_at(t) for t in knots]
        return sum((knots[i + 1] - knots[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(knots) - 1))

    def per_image_mj(self, t0: float, t1: float, images: int) -> float | None:
        """``energy_mj(t0, t1) / images`` — what goes into a result's ``energy_mj_per_image``."""
        energy = self.energy_mj(t0, t1)
        return None if energy is None or images <= 0 else energy / images

    def average_mw(self, t0: float, t1: float) -> float | None:
        energy = self.energy_mj(t0, t1)
        return None if energy is None or t1 <= t0 else energy / (t1 - t0)
