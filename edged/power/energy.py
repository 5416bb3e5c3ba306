"""Energy over a time window, from power samples taken by a background thread.

The batcher knows when a batch's inference started and ended (monotonic time); the rails only
give power now and then. :class:`EnergyMeter` samples total power into a ring buffer and
integrates the piecewise-linear power curve over any recent window::

    mj = meter.wait_energy_mj(t0, t1)   # None without a source, or when no sample closes the window in time

Soundness rules, because inference windows are short next to how often rails change:

* **Never faster than the source refreshes.** The sampling interval is at least the source's
  ``refresh_s`` (the INA3221 ``update_interval``, 430 ms on Xavier/Orin as NVIDIA configures it;
  jtop's service interval): reading faster only records the same value at new times.
* **Samples are placed where they were measured.** A value that averages the last refresh period
  (INA3221, jtop) or the time since the previous read (RAPL) is stamped at the centre of that
  period, not at the moment it was read.
* **A window needs a sample on each side.** Energy is interpolated between the samples around the
  window, never extrapolated from the last one: a batch that just ended waits (bounded by
  ``max_wait_s``) for the sample after it; without one the figure is None, not a guess.

It is *board* energy of the source's scope (module input, a sum of rails, jtop's total, or the
CPU package on RAPL; :meth:`scope` says which), idle floor included: comparable across modes on
one device, not the model's alone. Windows shorter than the refresh period are estimates from
the surrounding averages. Sharing a window between concurrent batches is
:class:`edged.power.accounting.EnergyAccounting`'s job.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable

from edged.power.rails import PowerReading, PowerSource


class EnergyMeter:
    def __init__(
        self,
        source: PowerSource | None,
        *,
        interval_s: float = 0.05,
        window_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 1.0,
    ):
        self.source = source
        self.clock = clock
        self.refresh_s: float | None = getattr(source, "refresh_s", None) if source is not None else None
        self.interval_s = max(interval_s, self.refresh_s or 0.0)
        if self.refresh_s:
            self.lag_s = self.refresh_s / 2
        elif getattr(source, "averages_between_reads", False):
            self.lag_s = self.interval_s / 2
        else:
            self.lag_s = 0.0
        self.max_wait_s = max_wait_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(8, int(window_s / self.interval_s) + 1))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_reading: PowerReading | None = None

    @property
    def available(self) -> bool:
        return self.source is not None

    @property
    def total_is_sum(self) -> bool:
        return bool(self.last_reading and self.last_reading.total_is_sum)

    def scope(self) -> dict | None:
        """What the energy covers (``{"kind", "rails", "source"}``), once a reading was taken."""
        return self.last_reading.energy_scope() if self.last_reading is not None else None

    def add_sample(self, t: float, mw: float) -> None:
        """Record total power ``mw`` measured around monotonic time ``t`` (already centred)."""
        with self._cond:
            if self._samples and t <= self._samples[-1][0]:
                return
            self._samples.append((t, mw))
            self._cond.notify_all()

    def sample_once(self) -> None:
        if self.source is None:
            return
        reading = self.source.read()
        if reading is not None and reading.total_mw is not None:
            self.last_reading = reading
            self.add_sample(self.clock() - self.lag_s, reading.total_mw)

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

    def wait_for(self, t: float, timeout: float | None = None) -> bool:
        """Wait until a sample at or after ``t`` exists; False on timeout (default :attr:`max_wait_s`)."""
        if self.source is None and not self._samples:
            return False
        deadline = self.clock() + (self.max_wait_s if timeout is None else timeout)
        with self._cond:
            while not (self._samples and self._samples[-1][0] >= t):
                left = deadline - self.clock()
                if left <= 0 or self._thread is None:
                    return bool(self._samples and self._samples[-1][0] >= t)
                self._cond.wait(min(left, 0.05))
        return True

    def wait_energy_mj(self, t0: float, t1: float, timeout: float | None = None) -> float | None:
        """:meth:`energy_mj` once the sample after ``t1`` is in (or None after ``timeout``)."""
        self.wait_for(t1, timeout)
        return self.energy_mj(t0, t1)

    def energy_mj(self, t0: float, t1: float) -> float | None:
        """Energy in mJ between monotonic times ``t0`` and ``t1`` (mW × s = mJ).

        None when there is no source, the window is inverted, or the samples do not bracket it
        (a sample at or before ``t0`` and one at or after ``t1``).
        """
        if t1 < t0:
            return None
        with self._cond:
            samples = list(self._samples)
        if not samples or samples[0][0] > t0 or samples[-1][0] < t1:
            return None
        if t1 == t0:
            return 0.0
        times = [t for t, _ in samples]

        def power_at(t: float) -> float:
            i = bisect.bisect_right(times, t)
            if i <= 0:
                return samples[0][1]
            if i >= len(samples):
                return samples[-1][1]
            (ta, pa), (tb, pb) = samples[i - 1], samples[i]
            return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)

        knots = [t0, *[t for t in times if t0 < t < t1], t1]
        values = [power_at(t) for t in knots]
        return sum((knots[i + 1] - knots[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(knots) - 1))

    def per_image_mj(self, t0: float, t1: float, images: int) -> float | None:
        """``energy_mj(t0, t1) / images`` — the whole window for one batch (see EnergyAccounting for sharing)."""
        energy = self.energy_mj(t0, t1)
        return None if energy is None or images <= 0 else energy / images

    def average_mw(self, t0: float, t1: float) -> float | None:
        energy = self.energy_mj(t0, t1)
        return None if energy is None or t1 <= t0 else energy / (t1 - t0)
