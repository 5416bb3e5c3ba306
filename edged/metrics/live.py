"""What ``/metrics`` and the health URLs read from a running daemon, at request time.

The daemon is seen through :class:`Running`, a narrow read-only view (the same facts the
control socket's ``status`` reports), so this module never reaches into the pipeline itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from edged.metrics.cpu import CPU
from edged.metrics.registry import Metrics


class Running(Protocol):
    """The daemon as metrics and health probes see it (attributes may be None before start)."""

    spool: Any
    decoders: Any
    outbox: Any
    publisher: Any
    scp: Any
    models: dict[str, Any]
    unavailable: dict[str, str]

    def healthy(self) -> bool: ...


def add_daemon_gauges(metrics: Metrics, d: Running, *, mqtt_enabled: bool) -> None:
    """Backlogs, the broker connection and per-model queue depth and readiness."""
    metrics.gauge_from("edged_spool_pending", "Acknowledged images in the spool waiting for their results.", (),
                       lambda: len(d.spool.pending()) if d.spool is not None else None)
    metrics.gauge_from("edged_spool_quarantined", "Images that could never be inferred, kept in quarantine.", (),
                       lambda: len(d.spool.quarantined()) if d.spool is not None else None)
    metrics.gauge_from("edged_outbox_pending", "MQTT messages (results, events) not yet acknowledged by the broker.",
                       (), lambda: d.outbox.pending_count() if getattr(d, "outbox", None) is not None else None)
    if mqtt_enabled:
        metrics.gauge_from("edged_mqtt_connected", "1 while connected to the MQTT broker.", (),
                           lambda: bool(d.publisher is not None and d.publisher.connected.is_set()))
    metrics.gauge_from("edged_inference_pending_request_count", "Requests waiting in each model's batcher queue.",
                       ("model", "version"),
                       lambda: {(n, str(m.manifest.version)): m.batcher.depth() for n, m in dict(d.models).items()})
    metrics.gauge_from("edged_model_ready", "1 for each configured model that is served, 0 for one that failed "
                       "to load.", ("model",),
                       lambda: {**{(n,): 1 for n in dict(d.models)}, **{(n,): 0 for n in dict(d.unavailable)}})


def add_cpu_by_role(metrics: Metrics, d: Running) -> None:
    """Where the daemon's CPU goes (edged/metrics/cpu.py): the decode workers count as
    ``decode``, the TensorRT worker processes as ``inference``."""
    def read() -> dict[tuple[str, ...], float]:
        pools = getattr(d, "decoders", None)
        served = [*dict(getattr(d, "models", None) or {}).values(),
                  *dict(getattr(d, "camera_models", None) or {}).values()]
        workers = [pid for m in served if (pid := getattr(getattr(m, "backend", None), "pid", None))]
        children = {"decode": pools.pids() if pools is not None else [], "inference": workers}
        return {(role,): seconds for role, seconds in CPU.snapshot(children).items()}

    metrics.counter_from("edged_cpu_seconds", "CPU time of the daemon and its worker processes by role: dicom "
                         "(associations: receive, spool, C-STORE answers), preprocess, decode (decode worker "
                         "processes), inference (batchers, TensorRT worker processes), results (result writer, "
                         "outbox, MQTT), cameras, telemetry, control, other (the rest, ONNX Runtime's own "
                         "threads included).", ("role",), read)


def live(d: Running, started: bool, stopping: bool) -> tuple[bool, str]:
    """Triton's liveness: up and not hung (true while loading; false once a part died or hung)."""
    if not started:
        return True, "starting: loading models" if not stopping else "stopping"
    if d.healthy():
        return True, "alive"
    return False, "a pipeline, result writer or publisher thread died, or a backend call hung"


def ready(d: Running, started: bool, stopping: bool, dicom_enabled: bool) -> tuple[bool, str]:
    """Triton's readiness: the listener serves and every configured model is loaded."""
    if stopping:
        return False, "stopping"
    if not started:
        return False, "starting: loading models"
    if d.unavailable:
        return False, "not loaded: " + "; ".join(f"{n}: {why}" for n, why in d.unavailable.items())[:400]
    if dicom_enabled and d.scp is None:
        return False, "DICOM listener not serving"
    if not d.healthy():
        return False, "not healthy (see /health/live)"
    return True, f"serving {', '.join(d.models)}"
