"""The power, thermal and load gauges of ``/metrics``, from the latest telemetry sample.

A ``prometheus_client`` collector over whatever ``get_sample()`` returns (the daemon passes
the sample it last published), so a scrape never triggers extra sysfs reads and MQTT and
``/metrics`` agree. The endpoint itself (loopback only, with the daemon's other metrics and the
health URLs) is :mod:`edged.metrics.http`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Rows = list[tuple[dict, "float | None"]]


class PowerCollector(Collector):
    def __init__(self, get_sample: Callable[[], dict | None]):
        self.get_sample = get_sample

    def describe(self) -> list[Metric]:
        return []  # the families depend on the host (rails, zones): nothing to reserve up front

    def collect(self) -> Iterator[Metric]:
        sample = self.get_sample() or {}
        power = sample.get("power") or {}
        cpu = sample.get("cpu") or {}
        gpu = sample.get("gpu") or {}
        memory = sample.get("memory") or {}
        mode = sample.get("power_mode") or {}
        families: list[tuple[str, str, Rows]] = [
            ("edged_power_rail_milliwatts", "Power per rail (INA3221, jtop or RAPL).",
             [({"rail": n, "source": power.get("source")}, r.get("mw")) for n, r in (power.get("rails") or {}).items()]),
            ("edged_power_total_milliwatts", "Total power; sum=true when it is a sum of rails.",
             [({"source": power.get("source"), "sum": str(bool(power.get("total_is_sum"))).lower()},
               power.get("total_mw"))] if power else []),
            ("edged_thermal_celsius", "Thermal zone temperature.",
             [({"zone": z}, t) for z, t in (sample.get("thermal_c") or {}).items()]),
            ("edged_cpu_load_percent", "CPU load per core since the previous sample.",
             [({"cpu": str(c["id"])}, c.get("load_pct")) for c in cpu.get("cores", [])]),
            ("edged_cpu_freq_mhz", "Current CPU clock.",
             [({"cpu": str(c["id"])}, c.get("freq_mhz")) for c in cpu.get("cores", [])]),
            ("edged_cpu_online", "Online CPU cores.", [({}, cpu.get("online"))] if cpu else []),
            ("edged_gpu_load_percent", "GPU load.", [({}, gpu.get("load_pct"))] if gpu else []),
            ("edged_gpu_freq_mhz", "Current GPU clock.", [({}, gpu.get("freq_mhz"))] if gpu else []),
            ("edged_memory_available_megabytes", "MemAvailable.",
             [({}, memory.get("available_mb"))] if memory else []),
            ("edged_memory_used_percent", "Memory in use.", [({}, memory.get("used_pct"))] if memory else []),
            ("edged_power_mode", "Current nvpmodel mode (value 1, ID and name as labels).",
             [({"id": mode.get("id"), "name": mode.get("name")}, 1)] if mode else []),
            ("edged_telemetry_unavailable", "1 for each telemetry section that is unavailable on this host.",
             [({"section": s, "reason": r}, 1) for s, r in (sample.get("unavailable") or {}).items()]),
        ]
        for name, help_, rows in families:
            rows = [(labels, v) for labels, v in rows if v is not None]
            if not rows:
                continue
            family = GaugeMetricFamily(name, help_, labels=list(rows[0][0]))
            for labels, value in rows:
                family.add_metric([str(v) for v in labels.values()], float(value))
            yield family


def render(sample: dict | None) -> str:
    """The gauges of one sample in the Prometheus text format (what ``/metrics`` holds of them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PowerCollector(lambda: sample))
    return generate_latest(registry).decode()
