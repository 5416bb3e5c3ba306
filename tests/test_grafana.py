"""The Grafana dashboard in docs/ only asks for metrics edged exports (a renamed metric breaks this test)."""

from __future__ import annotations

import json
import re
import threading
from types import SimpleNamespace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edged.batcher.dynamic import Completion
from edged.metrics import Metrics
from edged.metrics.cameras import add_camera_metrics
from edged.metrics.live import add_cpu_by_role, add_daemon_gauges
from edged.power.prometheus import PowerCollector
from helpers import REPO

DASHBOARD = REPO / "docs" / "grafana" / "edged-dashboard.json"
METRIC = re.compile(r"\b((?:edged|process)_[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    """Every sample name /metrics can carry: each event metric used once, every scrape-time gauge
    fed, the power collector given a sample with every section a Jetson has."""
    m = Metrics("n")
    model = SimpleNamespace(name="m", manifest=SimpleNamespace(version="1"),
                            batcher=SimpleNamespace(depth=lambda: 0))
    m.inference(model, Completion(None, {"x": 1}, None, 1.0, 2.0, 1, (0.0, 1.0)))
    m.failure_before_batch(model, "preprocess")
    m.request_done(model, 0.1)
    m.association("accepted")
    m.store(0)
    daemon = SimpleNamespace(spool=SimpleNamespace(pending=lambda: [], quarantined=lambda: []),
                             outbox=SimpleNamespace(pending_count=lambda: 0),
                             publisher=SimpleNamespace(connected=SimpleNamespace(is_set=lambda: True)),
                             scp=object(), models={"m": model}, unavailable={"x": "why"}, healthy=lambda: True)
    add_daemon_gauges(m, daemon, mqtt_enabled=True)
    add_cpu_by_role(m, daemon)
    counters = SimpleNamespace(frames_in=3, drops={"busy": 1}, reconnects=0, restarts=0)
    cam = SimpleNamespace(name="c", capture=SimpleNamespace(state="streaming", counters=counters),
                          inferred={"m": 2}, crops={"classified": 1}, lock=threading.Lock())
    add_camera_metrics(m, lambda: [cam])
    m.add(PowerCollector(lambda: {
        "power": {"source": "ina3221-hwmon", "total_mw": 5000.0, "total_is_sum": False, "rails": {"VDD_IN": {"mw": 1}}},
        "thermal_c": {"cpu": 40.0}, "cpu": {"online": 4, "cores": [{"id": 0, "load_pct": 5.0, "freq_mhz": 1000}]},
        "gpu": {"load_pct": 1.0, "freq_mhz": 900}, "memory": {"available_mb": 100, "used_pct": 50},
        "power_mode": {"id": 0, "name": "MAXN"}, "unavailable": {"jtop": "absent"}}))
    text = generate_latest(m.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def expressions(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        query = node.get("query")
        if isinstance(query, dict) and isinstance(query.get("query"), str):
            found.append(query["query"])
        return found + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def test_every_dashboard_expression_names_an_exported_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    exported = exported_names()
    missing = {}
    for expr in exprs:
        names = METRIC.findall(expr)
        assert names, f"no edged metric in {expr!r}"
        missing.update({n: expr for n in names if n not in exported})
    assert not missing, f"the dashboard asks for metrics edged does not export: {missing}"


def test_the_dashboard_covers_the_triton_names_and_imports_with_a_datasource_input():
    dashboard = json.loads(DASHBOARD.read_text())
    used = {n for e in expressions(dashboard) for n in METRIC.findall(e)}
    for name in ("edged_inference_request_success_total", "edged_inference_request_failure_total",
                 "edged_inference_count_total", "edged_inference_exec_count_total",
                 "edged_inference_queue_duration_seconds_bucket", "edged_inference_compute_duration_seconds_bucket",
                 "edged_request_duration_seconds_bucket", "edged_dicom_associations_total", "edged_dicom_stores_total",
                 "edged_spool_pending", "edged_outbox_pending", "edged_mqtt_connected", "edged_build_info",
                 "edged_camera_frames_received_total", "edged_camera_frames_inferred_total",
                 "edged_camera_frames_dropped_total", "edged_camera_streaming"):
        assert name in used, name
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
