"""/metrics after real C-STOREs, and the health URLs with Triton's semantics, on a daemon process."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

from edged.localbroker import free_port
from helpers import cr_variants, metric_value, scrape_metrics, send_file, small_cr, storescu

N = 5




def health(port: int, which: str) -> tuple[int, dict]:
    try:
        r = urllib.request.urlopen(f"http://127.0.0.1:{port}/health/{which}", timeout=10)
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def settled(port: int, timeout: float = 15.0) -> tuple[int, dict]:
    """/health/ready once start-up is over: the retained ``online`` goes out when the broker
    connects, a moment before the DICOM listener serves and readiness stops saying "starting"."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = health(port, "ready")
        if not body.get("reason", "").startswith("starting") or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def test_metrics_after_real_c_stores(daemon_factory, collector, tmp_path):
    port = free_port()
    d = daemon_factory(telemetry={"interval_s": 0.5, "prometheus": {"enabled": True, "port": port}}).start()
    assert storescu(d.port, *cr_variants(tmp_path, N)).returncode == 0  # one association, N images
    assert storescu(d.port, *cr_variants(tmp_path, 1), aec="NOT_EDGED").returncode != 0
    assert send_file(d.port, small_cr(tmp_path / "no-pixels.dcm", PixelData=None)) == 0xC000
    collector.wait_for(lambda c: len(c.results()) == N)
    model = {"model": "chexnet-tiny", "version": collector.results()[0]["model"]["version"]}
    collector.wait_for(lambda c: len(c.events("rejected")) == 2)

    m = scrape_metrics(port)
    assert metric_value(m, "edged_inference_request_success_total", **model) == N
    assert metric_value(m, "edged_inference_request_failure_total", **model) is None  # nothing failed
    assert metric_value(m, "edged_inference_count_total", **model) == N
    batches = metric_value(m, "edged_inference_exec_count_total", **model)
    assert batches is not None and 1 <= batches <= N
    for hist in ("edged_inference_queue_duration_seconds", "edged_inference_compute_duration_seconds",
                 "edged_request_duration_seconds"):
        assert metric_value(m, f"{hist}_count", **model) == N, hist
        assert metric_value(m, f"{hist}_bucket", le="+Inf", **model) == N, hist
        assert metric_value(m, f"{hist}_sum", **model) > 0, hist
    # arrival → committed includes queue and compute: its sum is at least theirs
    assert metric_value(m, "edged_request_duration_seconds_sum", **model) >= \
        metric_value(m, "edged_inference_compute_duration_seconds_sum", **model)
    assert metric_value(m, "edged_dicom_associations_total", result="accepted") == 2
    assert metric_value(m, "edged_dicom_associations_total", result="rejected", reason="called_ae_not_recognized") == 1
    assert metric_value(m, "edged_dicom_stores_total", status="0x0000") == N
    assert metric_value(m, "edged_dicom_stores_total", status="0xC000") == 1
    assert metric_value(m, "edged_mqtt_connected") == 1
    assert metric_value(m, "edged_inference_pending_request_count", **model) == 0
    assert metric_value(m, "edged_model_ready", model="chexnet-tiny") == 1
    assert metric_value(m, "edged_build_info", node="test-node") == 1
    assert metric_value(m, "process_resident_memory_bytes") > 10e6
    # where the CPU went (edged/metrics/cpu.py): the associations' threads retired theirs as dicom,
    # the decode worker's is its own, and the daemon's roles add up to its process CPU
    roles = {s.labels["role"]: s.value for s in m["edged_cpu_seconds"] if s.name == "edged_cpu_seconds_total"}
    assert roles["dicom"] > 0 and roles["decode"] > 0 and "results" in roles, roles  # 10 ms ticks: few images may be 0
    in_process = sum(v for role, v in roles.items() if role != "decode")
    process_cpu = metric_value(m, "process_cpu_seconds_total")
    assert abs(in_process - process_cpu) < 0.1, (roles, process_cpu)

    def settled() -> bool:
        again = scrape_metrics(port)
        return (metric_value(again, "edged_spool_pending") == 0 and metric_value(again, "edged_outbox_pending") == 0
                and "edged_telemetry_unavailable" in again)  # the power gauges of a plain x86 host

    collector.wait_for(lambda c: settled(), timeout=30)
    assert health(port, "live") == (200, {"status": "ok", "reason": "alive"})
    status, body = health(port, "ready")
    assert status == 200 and body["reason"] == "serving chexnet-tiny"
    assert d.terminate() == 0
    log = d.log.read_text()  # the journal at log_level info: no per-image library chatter, no reprs
    assert "pynetdicom" not in log and "Received Store Request" not in log
    for python in ("{'", "['", "=False", "=True", "mode None", "Source"):
        assert python not in log, python
    assert "clinical: false" in log and "power source unavailable (ina3221: " in log


def test_ready_flips_when_a_model_fails_to_load(daemon_factory, collector, tmp_path, tiny_repo):
    repo = tmp_path / "repo"
    for name in ("chexnet-tiny", "second"):
        shutil.copytree(tiny_repo / "chexnet-tiny", repo / name)
    manifest = repo / "second" / "model.yaml"
    manifest.write_text(manifest.read_text().replace("name: chexnet-tiny", "name: second"))
    good = (repo / "second" / "model.onnx").read_bytes()
    (repo / "second" / "model.onnx").write_bytes(b"altered")
    port = free_port()
    make = dict(repo=repo, models=[{"name": "chexnet-tiny"}, {"name": "second"}],
                telemetry={"prometheus": {"enabled": True, "port": port}})
    d = daemon_factory(**make).start()
    collector.wait_for(lambda c: any(p.get("state") == "online" for p in c.of("status")))
    status, body = settled(port)
    assert status == 503 and body["status"] == "unavailable"
    assert body["reason"].startswith("not loaded: second:") and "sha256" in body["reason"]
    assert health(port, "live")[0] == 200  # it serves the other model: alive, not ready
    m = scrape_metrics(port)
    assert metric_value(m, "edged_model_ready", model="second") == 0
    assert metric_value(m, "edged_model_ready", model="chexnet-tiny") == 1
    assert d.terminate() == 0

    (repo / "second" / "model.onnx").write_bytes(good)  # the operator fixes it
    d = daemon_factory(**make).start()
    collector.wait_for(lambda c: any(p.get("state") == "online" and len(p["models"]) == 2 for p in c.of("status")))
    assert settled(port) == (200, {"status": "ok", "reason": "serving chexnet-tiny, second"})
    assert d.terminate() == 0
