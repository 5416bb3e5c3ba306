"""Jetson power: nvpmodel profiles and control, platform detection, telemetry and energy metering.

Entry points for the daemon (see each module for the why):

* :func:`edged.power.context.open_power` → :class:`PowerContext` (platform, mode table, nvpmodel).
* :meth:`edged.power.table.PowerTable.batching` and :func:`edged.power.table.effective_batching`
  for power-aware batching after a mode change.
* :class:`edged.power.telemetry.TelemetrySampler` for ``{prefix}/{node}/telemetry`` payloads.
* :class:`edged.power.energy.EnergyMeter` and :class:`edged.power.accounting.EnergyAccounting`
  for a result's ``energy_mj`` (aligned to samples, shared between concurrent batches).
* :class:`edged.power.prometheus.PowerCollector`: the power and thermal gauges of /metrics.

For edgectl and ``edged selftest``: :mod:`edged.power.nvpmodel` (switching),
:mod:`edged.power.verify` (what a switch changed on the board), :mod:`edged.power.reboot` (will
nvpmodel ask for a reboot), :mod:`edged.power.clocks` (jetson_clocks) and
:func:`edged.power.checks.power_checks` (the power rows of the self-test).
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
