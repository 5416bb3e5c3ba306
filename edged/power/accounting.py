"""Energy per inference, shared fairly between batches that run at the same time.

Every batcher brackets its backend call with :meth:`EnergyAccounting.begin` / :meth:`end`, so
the accounting knows every inference window, finished or still running. A batch's energy is the
board's energy over its window where it ran alone, plus, where ``n`` batches (of any models) ran
at once, ``1/n`` of the board's energy over that stretch: two models inferring together no longer
each claim the whole board. Divided by the batch size, that is a result's ``energy_mj``.

The board's energy comes from :class:`~edged.power.energy.EnergyMeter`, which waits (bounded)
for the power sample that closes the window. Clock reads for window edges happen under one lock,
so a batch that started before another one ended is always seen by it. Windows are kept for as
long as the meter keeps samples. Every image of a batch shares one window, so a window is
integrated once and remembered. Images are counted whether or not power is readable: telemetry's
``inference.images`` says how many images were inferred since the last sample on every host.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from edged.power.energy import EnergyMeter


class EnergyAccounting:
    def __init__(self, meter: EnergyMeter | None, *, clock: Callable[[], float] = time.monotonic,
                 keep_s: float = 120.0):
        self.meter = meter if meter is not None and meter.available else None
        self.clock = clock
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._running: dict[int, list[float | None]] = {}  # token -> [start, end or None]
        self._shares: OrderedDict[tuple[float, float], tuple[float | None, int]] = OrderedDict()
        self._energy_mj = 0.0
        self._images = 0
        self._metered = 0  # images whose energy is in _energy_mj

    # -- inference windows (called by every batcher) --------------------------------------
    def begin(self) -> tuple[int, float]:
        """A backend call starts now: ``(token, start)``."""
        with self._lock:
            now = self.clock()
            token = next(self._tokens)
            self._running[token] = [now, None]
            self._forget(now - self.keep_s)
            return token, now

    def _forget(self, cutoff: float) -> None:
        """Drop windows that ended before ``cutoff``. Windows are kept in start order, and one
        that started after ``cutoff`` cannot have ended before it: only the old ones are looked
        at (a full scan per batch cost O(batches in keep_s), thousands, on every call)."""
        old = []
        for token, (start, end) in self._running.items():
            if start is not None and start >= cutoff:
                break
            if end is not None and end < cutoff:
                old.append(token)
        for token in old:
            del self._running[token]

    def end(self, token: int) -> float:
        """The call that :meth:`begin` returned ``token`` for has ended: its end time."""
        with self._lock:
            now = self.clock()
            if token in self._running:
                self._running[token][1] = now
            return now

    # -- energy ---------------------------------------------------------------------------
    def share_mj(self, window: tuple[float, float]) -> tuple[float | None, int]:
        """This batch's share of the board's energy over ``window``, and the most batches that ran at once."""
        if self.meter is None:
            return None, 1
        t0, t1 = window
        self.meter.wait_for(t1)
        with self._lock:
            others = [(s, e) for s, e in self._running.values() if s is not None and s < t1 and (e is None or e > t0)]
        if not any(s == t0 and e == t1 for s, e in others):
            others.append((t0, t1))  # a window nobody registered still runs itself
        cuts = sorted({t0, t1} | {t for s, e in others for t in (s, e) if t is not None and t0 < t < t1})
        total, most = 0.0, 1
        for a, b in zip(cuts, cuts[1:]):
            n = sum(1 for s, e in others if s <= a and (e is None or e >= b))
            energy = self.meter.energy_mj(a, b)
            if energy is None:
                return None, most
            total += energy / max(n, 1)
            most = max(most, n)
        return total, most

    def per_image_mj(self, window: tuple[float, float], batch_size: int) -> float | None:
        """This image's share of its batch's energy; None without a power source or coverage."""
        if self.meter is None or batch_size <= 0:
            return None
        energy, _ = self._cached(window)
        return None if energy is None else energy / batch_size

    def concurrency(self, window: tuple[float, float]) -> int:
        """How many batches (this one included) ran at once at most during ``window``."""
        return self._cached(window)[1] if self.meter is not None else 1

    def _cached(self, window: tuple[float, float]) -> tuple[float | None, int]:
        with self._lock:
            if window in self._shares:
                return self._shares[window]
        share = self.share_mj(window)
        with self._lock:
            self._shares[window] = share
            while len(self._shares) > 256:  # only recent batches can still have images to write
                self._shares.popitem(last=False)
        return share

    def scope(self) -> dict | None:
        """What the energy figures cover (:meth:`PowerReading.energy_scope`); None without a reading."""
        return self.meter.scope() if self.meter is not None else None

    # -- telemetry counts -----------------------------------------------------------------
    def count(self, images: int, energy_mj: float | None = None) -> None:
        with self._lock:
            self._images += images
            if energy_mj is not None:
                self._energy_mj += energy_mj
                self._metered += images

    def take(self) -> tuple[int, float | None]:
        """Images since the last call, and their mean energy in mJ (None when none was metered)."""
        with self._lock:
            images, energy, metered = self._images, self._energy_mj, self._metered
            self._images, self._energy_mj, self._metered = 0, 0.0, 0
        return images, (round(energy / metered, 3) if metered and energy else None)
