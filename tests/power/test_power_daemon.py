"""Power inside the running daemon: edgectl switches → event on MQTT + new batching; telemetry
with per-rail mW from simulated Nano / Xavier / Orin trees; plain x86 says what is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import cr_variants, storescu


def edgectl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edged.control.edgectl import main; raise SystemExit(main())", *argv],
                          capture_output=True, text=True, timeout=120)


def test_mode_switch_retunes_batching_and_is_published(jetson, standins, daemon_factory, collector, sockdir):
    tree = jetson("xavier-nx")  # default 5 MODE_10W_DESKTOP (batch 2); "max" = 8 MODE_20W_6CORE (batch 8)
    sock = sockdir / "control.sock"
    d = daemon_factory(power={"sysroot": str(tree.root), "control_socket": str(sock)},
                       telemetry={"interval_s": 1, "energy_max_wait_s": 5}).start()  # CI may sample late
    collector.wait_for(lambda c: any(s["state"] == "online" for s in c.of("status")))
    birth = [s for s in collector.of("status") if s["state"] == "online"][-1]
    assert birth["power_mode"]["id"] == 5 and birth["models"][0]["max_batch_size"] == 2

    run = edgectl("power", "set", "max", "--socket", str(sock), "--root", str(tree.root))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "daemon: told" in run.stdout
    collector.wait_for(lambda c: len(c.events("power")) == 1)
    (event,) = collector.events("power")
    assert event["reason"] == "ok" and event["fields"]["now"]["id"] == 8
    assert event["fields"]["batching"]["chexnet-tiny"] == {"max_batch_size": 8, "max_queue_delay_ms": 15.0}
    collector.wait_for(lambda c: c.of("status")[-1].get("power_mode", {}).get("id") == 8)
    assert collector.of("status")[-1]["models"][0]["max_batch_size"] == 8

    status = edgectl("status", "--json", "--socket", str(sock), "--root", str(tree.root))
    assert status.returncode == 0, status.stderr
    assert '"max_batch_size": 8' in status.stdout

    # a refused switch (unknown mode) exits non-zero and changes nothing on the daemon side
    bad = edgectl("power", "set", "MODE_99W", "--socket", str(sock), "--root", str(tree.root))
    assert bad.returncode != 0 and "MODE_99W" in (bad.stdout + bad.stderr)
    assert storescu(d.port, *cr_variants(sockdir, 1)).returncode == 0  # and the daemon still serves
    collector.wait_for(lambda c: len(c.results()) == 1)
    # rails are readable on this tree: the result carries energy per image, integrated over
    # its batch's inference window, and the next telemetry message the mean per image
    (result,) = collector.results()
    assert result["timings_ms"]["energy_mj"] > 0
    assert result["energy"] == {"kind": "module-input", "rails": ["VDD_IN"], "source": "ina3221-hwmon",
                                "concurrent_batches": 1}
    collector.wait_for(lambda c: any(t["inference"]["images"] >= 1 for t in c.of("telemetry")), timeout=20)
    sample = next(t for t in collector.of("telemetry") if t["inference"]["images"] >= 1)
    assert sample["inference"]["energy_mj_per_image"] == pytest.approx(result["timings_ms"]["energy_mj"], rel=0.01)
    assert sample["inference"]["energy_scope"] == {"kind": "module-input", "rails": ["VDD_IN"], "source": "ina3221-hwmon"}

    clocks = edgectl("power", "clocks", "on", "--socket", str(sock), "--root", str(tree.root))
    assert clocks.returncode == 0, clocks.stdout + clocks.stderr
    collector.wait_for(lambda c: any(e["reason"] == "clocks_on" for e in c.events("power")))
    assert d.terminate() == 0


@pytest.mark.parametrize("kind,total", [("nano", "POM_5V_IN"), ("agx-xavier", None), ("agx-orin", None),
                                        ("orin-nx", "VDD_IN")])
def test_telemetry_has_per_rail_milliwatts(jetson, standins, daemon_factory, collector, sockdir, kind, total):
    tree = jetson(kind)
    d = daemon_factory(power={"sysroot": str(tree.root), "control_socket": str(sockdir / "c.sock")},
                       telemetry={"interval_s": 0.5}).start()
    collector.wait_for(lambda c: len(c.of("telemetry")) >= 1)
    t = collector.of("telemetry")[0]
    rails = t["power"]["rails"]
    assert set(rails) == set(tree.rails)
    for label in tree.rails:
        assert rails[label]["mw"] == pytest.approx(tree.rail_mw(label), abs=1.0)  # iio reports whole mW
    if total:
        assert t["power"]["total_rail"] == total and not t["power"]["total_is_sum"]
        assert t["power"]["total_mw"] == pytest.approx(tree.rail_mw(total), abs=1.0)
    else:  # AGX boards have no input rail on the INA3221s: the total is a sum, flagged as such
        assert t["power"]["total_is_sum"] is True
    assert t["power_mode"]["id"] == tree.profile.default_mode
    assert d.terminate() == 0


def test_plain_linux_telemetry_says_what_is_unavailable(daemon_factory, collector, sockdir, tmp_path):
    d = daemon_factory(power={"control_socket": str(sockdir / "c.sock")}, telemetry={"interval_s": 0.5}).start()
    collector.wait_for(lambda c: len(c.of("telemetry")) >= 1)
    t = collector.of("telemetry")[0]
    assert t["power_mode"] is None and "power_mode" in t["unavailable"]
    if t["power"] is None:
        assert {"ina3221", "jtop", "rapl"} <= set(t["power_sources_unavailable"])
    assert storescu(d.port, *cr_variants(tmp_path, 2)).returncode == 0
    collector.wait_for(lambda c: len(c.results()) == 2)
    # images are counted whether or not power is readable (no rails here): telemetry adds up to 2
    collector.wait_for(lambda c: sum(t["inference"]["images"] for t in c.of("telemetry")) == 2, timeout=30)
    assert all(t["inference"]["energy_mj_per_image"] is None for t in collector.of("telemetry")) or \
        t["power"] is not None
    assert d.terminate() == 0
