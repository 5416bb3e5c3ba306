"""Energy per inference, and the inference counts telemetry reports.

A batch's energy is the board's energy over the batch's inference window (from
:class:`~edged.power.energy.EnergyMeter`), divided by the batch size. Every image of a batch
shares one window, so the window is integrated once and remembered for the batch's other
images. Images are counted whether or not power is readable: telemetry's ``inference.images``
says how many images were inferred since the last sample on every host.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from edged.power.energy import EnergyMeter


class EnergyAccounting:
    def __init__(self, meter: EnergyMeter | None):
        self.meter = meter if meter is not None and meter.available else None
        self._windows: OrderedDict[tuple[float, float], float | None] = OrderedDict()
        self._lock = threading.Lock()
        self._energy_mj = 0.0
        self._images = 0
        self._metered = 0  # images whose energy is in _energy_mj

    def per_image_mj(self, window: tuple[float, float], batch_size: int) -> float | None:
        """This image's share of its batch's energy; None without a power source or coverage."""
        if self.meter is None or batch_size <= 0:
            return None
        with self._lock:
            if window in self._windows:
                energy = self._windows[window]
            else:
                energy = self.meter.energy_mj(*window)
                self._windows[window] = energy
                while len(self._windows) > 256:  # only recent batches can still have images to write
                    self._windows.popitem(last=False)
        return None if energy is None else energy / batch_size

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
