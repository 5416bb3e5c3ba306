"""Jetson power: nvpmodel profiles and control, platform detection, telemetry and energy metering.

Entry points for the daemon (see each module for the why):

* :func:`edged.power.context.open_power` → :class:`PowerContext` (platform, mode table, nvpmodel).
* :meth:`edged.power.table.PowerTable.batching` and :func:`edged.power.table.effective_batching`
  for power-aware batching after a mode change.
* :class:`edged.power.telemetry.TelemetrySampler` for ``{prefix}/{node}/telemetry`` payloads.
* :class:`edged.power.energy.EnergyMeter` for ``energy_mj_per_image``.
* :class:`edged.power.prometheus.PowerCollector`: the power and thermal gauges of /metrics.
"""

from edged.power.config import PowerConfig, PrometheusConfig, TelemetryConfig
from edged.power.context import PowerContext, open_power
from edged.power.energy import EnergyMeter
from edged.power.table import PowerTable, effective_batching
from edged.power.telemetry import TelemetrySampler

__all__ = [
    "EnergyMeter",
    "PowerConfig",
    "PowerContext",
    "PowerTable",
    "PrometheusConfig",
    "TelemetryConfig",
    "TelemetrySampler",
    "effective_batching",
    "open_power",
]
