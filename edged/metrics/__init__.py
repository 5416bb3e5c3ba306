"""Prometheus metrics and health URLs: :class:`Metrics` (names after Triton's), :class:`MetricsServer`
(``/metrics``, ``/health/live``, ``/health/ready`` on loopback) and the daemon's live gauges."""

from edged.metrics.http import MetricsServer
from edged.metrics.registry import Metrics

__all__ = ["Metrics", "MetricsServer"]
