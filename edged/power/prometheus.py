"""Prometheus text exposition of the latest telemetry sample, on 127.0.0.1 only.

The endpoint serves whatever ``get_sample()`` returns (the daemon passes the sample it last
published), so scraping never triggers extra sysfs reads and MQTT and /metrics agree. It binds
to loopback unconditionally: the device's network is a clinical site's, and metrics leave the
box through a local agent or an SSH tunnel, never an open port.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(sample: dict | None) -> str:
    """Telemetry dict → Prometheus text format 0.0.4."""
    lines: list[str] = []

    def metric(name: str, help_: str, kind: str, rows: list[tuple[dict, float | None]]) -> None:
        rows = [(labels, v) for labels, v in rows if v is not None]
        if not rows:
            return
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        for labels, value in rows:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {float(value):g}" if text else f"{name} {float(value):g}")

    sample = sample or {}
    power = sample.get("power") or {}
    metric(
        "edged_power_rail_milliwatts",
        "Power per rail (INA3221, jtop or RAPL).",
        "gauge",
        [({"rail": n, "source": power.get("source")}, r.get("mw")) for n, r in (power.get("rails") or {}).items()],
    )
    metric(
        "edged_power_total_milliwatts",
        "Total power; sum=true when it is a sum of rails.",
        "gauge",
        [({"source": power.get("source"), "sum": str(bool(power.get("total_is_sum"))).lower()}, power.get("total_mw"))]
        if power
        else [],
    )
    metric(
        "edged_thermal_celsius",
        "Thermal zone temperature.",
        "gauge",
        [({"zone": z}, t) for z, t in (sample.get("thermal_c") or {}).items()],
    )
    cpu = sample.get("cpu") or {}
    metric(
        "edged_cpu_load_percent",
        "CPU load per core since the previous sample.",
        "gauge",
        [({"cpu": str(c["id"])}, c.get("load_pct")) for c in cpu.get("cores", [])],
    )
    metric(
        "edged_cpu_freq_mhz",
        "Current CPU clock.",
        "gauge",
        [({"cpu": str(c["id"])}, c.get("freq_mhz")) for c in cpu.get("cores", [])],
    )
    metric("edged_cpu_online", "Online CPU cores.", "gauge", [({}, cpu.get("online"))] if cpu else [])
    gpu = sample.get("gpu") or {}
    metric("edged_gpu_load_percent", "GPU load.", "gauge", [({}, gpu.get("load_pct"))] if gpu else [])
    metric("edged_gpu_freq_mhz", "Current GPU clock.", "gauge", [({}, gpu.get("freq_mhz"))] if gpu else [])
    memory = sample.get("memory") or {}
    metric(
        "edged_memory_available_megabytes",
        "MemAvailable.",
        "gauge",
        [({}, memory.get("available_mb"))] if memory else [],
    )
    metric("edged_memory_used_percent", "Memory in use.", "gauge", [({}, memory.get("used_pct"))] if memory else [])
    mode = sample.get("power_mode") or {}
    metric(
        "edged_power_mode",
        "Current nvpmodel mode (value 1, ID and name as labels).",
        "gauge",
        [({"id": mode.get("id"), "name": mode.get("name")}, 1)] if mode else [],
    )
    metric(
        "edged_telemetry_unavailable",
        "1 for each telemetry section that is unavailable on this host.",
        "gauge",
        [({"section": s, "reason": r}, 1) for s, r in (sample.get("unavailable") or {}).items()],
    )
    return "\n".join(lines) + "\n"


class PrometheusExporter:
    """``GET /metrics`` on ``127.0.0.1:port`` in a daemon thread; ``port=0`` picks a free port (tests)."""

    def __init__(self, get_sample: Callable[[], dict | None], port: int):
        self.get_sample = get_sample
        self.requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> PrometheusExporter:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics")
                    return
                try:
                    body = render(exporter.get_sample()).encode()
                    status = 200
                except Exception as exc:  # a bad sample must not kill the endpoint
                    body, status = f"# render failed: {exc}\n".encode(), 500
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds would flood the journal
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="edged-prometheus", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
