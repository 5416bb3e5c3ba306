"""Platform detection and telemetry on each fake module tree, jtop/RAPL fallbacks, this real host, Prometheus."""

from __future__ import annotations

import sys
import time
import types
import urllib.error
import urllib.request

import pytest

from edged.power.platform import detect_platform, parse_tegra_release
from edged.power.profiles import board_matches
from edged.metrics import Metrics, MetricsServer
from edged.power.prometheus import PowerCollector, render
from edged.power.rails import Ina3221Hwmon, Ina3221Iio, RaplSource, discover_power_source, is_nc
from edged.power.telemetry import TelemetrySampler

# kind -> (soc, L4T, JetPack, power source, total rail or None for a flagged sum)
CASES = {
    "nano": ("t210", "32.7.4", "4.6.x", "ina3221-iio", "POM_5V_IN"),
    "agx-xavier": ("t194", "32.7.4", "4.6.x", "ina3221-iio", None),
    "xavier-nx": ("t194", "35.4.1", "5.1.x", "ina3221-hwmon", "VDD_IN"),
    "agx-orin": ("t234", "35.4.1", "5.1.x", "ina3221-hwmon", None),
    "orin-nx": ("t234", "36.4.3", "6.1/6.2", "ina3221-hwmon", "VDD_IN"),
    "orin-nano": ("t234", "36.4.3", "6.1/6.2", "ina3221-hwmon", "VDD_IN"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_platform_detection(jetson, kind):
    tree = jetson(kind)
    soc, l4t, jetpack, _, _ = CASES[kind]
    p = detect_platform(tree.root)
    assert p.is_jetson and p.machine == "aarch64"
    assert (p.soc, p.l4t, p.jetpack) == (soc, l4t, jetpack)
    assert any(board_matches(b, part) for b in tree.profile.match.compatible for part in p.parts)
    assert p.nvpmodel_conf_name == tree.profile.match.nvpmodel_conf[0]
    assert p.nvpmodel_conf == tree.root / "etc/nvpmodel" / p.nvpmodel_conf_name  # absolute symlink re-rooted


def test_generic_linux_and_release_parsing(tmp_path):
    p = detect_platform(tmp_path)
    assert not p.is_jetson and p.soc is None and p.nvpmodel_conf is None and p.as_dict()["kind"] == "generic-linux"
    assert parse_tegra_release("# R32 (release), REVISION: 5.1, GCID: 1") == (
        "32.5.1",
        parse_tegra_release("# R32 (release), REVISION: 5.1")[1],
    )
    assert parse_tegra_release("# R32 (release), REVISION: 5.1")[1]["jetpack"] == "4.x"
    assert parse_tegra_release("# R36 (release), REVISION: 4.3, GCID: 1")[1]["python"] == "3.10"
    assert parse_tegra_release("garbage") == (None, {})


@pytest.mark.parametrize(
    "line, l4t, jetpack, python, tensorrt",
    [
        ("# R32 (release), REVISION: 6.1, GCID: 1", "32.6.1", "4.6", "3.6", "8.0"),
        ("# R32 (release), REVISION: 7.1, GCID: 1", "32.7.1", "4.6.x", "3.6", "8.2"),
        ("# R34 (release), REVISION: 1.1, GCID: 1, BOARD: t186ref", "34.1.1", "5.0 DP", "3.8", "8.4"),
        ("# R35 (release), REVISION: 1.0, GCID: 1", "35.1.0", "5.0.2", "3.8", "8.4"),
        ("# R35 (release), REVISION: 6.0, GCID: 1", "35.6.0", "5.1.x", "3.8", "8.5"),
        ("# R36 (release), REVISION: 2.0, GCID: 1", "36.2.0", "6.0 DP", "3.10", "8.6"),
        ("# R36 (release), REVISION: 3.0, GCID: 1", "36.3.0", "6.0", "3.10", "8.6"),
        ("# R38 (release), REVISION: 2.1, GCID: 1, BOARD: generic", "38.2.1", "7.0", "3.12", "10.x"),
        ("# R38 (release), REVISION: 4.0, GCID: 1", "38.4.0", "7.1", "3.12", "10.x"),
        ("# R39 (release), REVISION: 2.0, GCID: 1", "39.2.0", "7.2", "3.12", "10.x"),
    ],
)
def test_l4t_releases_r32_to_r39(line, l4t, jetpack, python, tensorrt):
    got, stack = parse_tegra_release(line)
    assert (got, stack["jetpack"], stack["python"], stack["tensorrt"]) == (l4t, jetpack, python, tensorrt)


def test_unknown_release_and_new_socs(tmp_path):
    assert parse_tegra_release("# R40 (release), REVISION: 1.0") == ("40.1.0", {})
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/compatible").write_text("nvidia,p3971-0089+p3834-0008\0nvidia,tegra264\0")
    p = detect_platform(tmp_path)
    assert p.is_jetson and p.soc == "t264" and p.parts == ("p3971-0089", "p3834-0008")


@pytest.mark.parametrize("kind", sorted(CASES))
def test_telemetry_on_each_fake_tree(jetson, kind):
    tree = jetson(kind)
    _, _, _, source, total_rail = CASES[kind]
    sample = TelemetrySampler(tree.root, mode_provider=lambda: {"id": 2, "name": "X"}).sample()
    power = sample["power"]
    assert power["source"] == source and power["scope"] == ("module-input" if total_rail else "rail-sum")
    assert power["refresh_ms"] == (430.0 if source == "ina3221-hwmon" else None)
    assert set(power["rails"]) == set(tree.rails)  # NC channels and "sum of shunt voltages" are not rails
    for label, rail in power["rails"].items():
        assert rail["mw"] == pytest.approx(tree.rail_mw(label), abs=1.0)  # iio files hold integer mW
    if total_rail:
        assert (power["total_rail"], power["total_is_sum"]) == (total_rail, False)
        assert power["total_mw"] == pytest.approx(tree.rail_mw(total_rail), abs=1.0)
    else:
        assert power["total_is_sum"] is True and power["total_rail"] is None
        assert power["total_mw"] == pytest.approx(sum(tree.rail_mw(r) for r in tree.rails), abs=len(tree.rails))
    assert sample["gpu"]["load_pct"] == 34.5 and sample["gpu"]["freq_mhz"] == 612.0
    assert -40 < min(sample["thermal_c"].values()) and "Tboard_tegra" not in sample["thermal_c"]
    assert "PMIC-Die" not in sample["thermal_c"] and "iwlwifi_1" not in sample["thermal_c"]  # fixed 100 °C, reads 0
    assert 0 not in sample["thermal_c"].values()
    online = tree.profile.modes[tree.profile.default_mode].cpus_online or tree.profile.cpus_total
    assert sample["cpu"]["online"] == online and sample["cpu"]["total"] == tree.profile.cpus_total
    assert sample["cpu"]["cores"][0]["freq_mhz"] == 1420.8
    assert sample["memory"]["available_mb"] == pytest.approx(3906.2, abs=0.1)
    assert sample["power_mode"] == {"id": 2, "name": "X"}
    assert set(sample["unavailable"]) == set()
    default = tree.profile.default_mode  # without a provider: the nvpmodel status file, named from the live conf
    assert TelemetrySampler(tree.root).sample()["power_mode"] == {
        "id": default,
        "name": tree.profile.modes[default].name,
        "source": "/var/lib/nvpmodel/status",
    }


def test_cpu_load_is_measured_between_samples(jetson):
    tree = jetson("orin-nx")
    sampler = TelemetrySampler(tree.root)
    stat = tree.root / "proc/stat"
    stat.write_text(stat.read_text().replace("cpu0 100 0 50 800 10", "cpu0 175 0 75 850 10"))
    cores = sampler.sample()["cpu"]["cores"]
    assert cores[0]["load_pct"] == 66.7 and cores[1]["load_pct"] is None  # cpu1 did not move
    assert cores[-1]["online"] is False and cores[-1]["load_pct"] is None


def test_hwmon_found_by_name_when_driver_dir_is_missing(jetson):
    tree = jetson("orin-nx")
    (tree.root / "sys/bus/i2c/drivers/ina3221/1-0040").unlink()
    source = Ina3221Hwmon.discover(tree.root)
    assert source is not None and len(source.hwmons) == 1  # devices/*/name and class/hwmon dedupe to one
    assert source.read().total_rail == "VDD_IN"


def test_nc_labels_and_unreadable_rails(jetson):
    assert is_nc("NC") and is_nc("nc") and not is_nc("VDD_SYNC") and not is_nc("VDD_CPU_GPU_CV")
    tree = jetson("nano")
    iio = next((tree.root / "sys/bus/i2c/drivers/ina3221x/6-0040").glob("iio:device*"))
    (iio / "in_power1_input").write_text("garbage\n")
    (iio / "in_voltage1_input").unlink()
    reading = Ina3221Iio.discover(tree.root).read()
    assert "POM_5V_GPU" not in reading.rails and reading.total_rail == "POM_5V_IN"


class FakeJtopModule(types.ModuleType):
    """A double of jetson-stats' documented client API (jtop(), start(), .power, close(), JtopException)."""

    def __init__(self, fail: str | None = None):
        super().__init__("jtop")
        outer = self

        class JtopException(Exception):
            pass

        class jtop:  # noqa: N801 (the real class name)
            def start(self):
                if outer.fail:
                    raise JtopException(outer.fail)

            @property
            def power(self):
                return {
                    "rail": {"VDD_IN": {"volt": 5000, "curr": 1000, "power": 5000, "avg": 4000}, "NC": {"power": 0}},
                    "tot": {"power": 5000, "avg": 4000},
                }

            def close(self):
                pass

        self.fail = fail
        self.JtopException = JtopException
        self.jtop = jtop


def test_jtop_used_only_when_its_service_answers(tmp_path, monkeypatch):
    source, reasons = discover_power_source(tmp_path)
    assert source is None and "service not running" in reasons["jtop"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run/jtop.sock").touch()
    monkeypatch.setitem(sys.modules, "jtop", None)  # not installed
    assert "not installed" in discover_power_source(tmp_path)[1]["jtop"]
    monkeypatch.setitem(sys.modules, "jtop", FakeJtopModule(fail="The jtop.service is not active"))
    assert "is not active" in discover_power_source(tmp_path)[1]["jtop"]
    monkeypatch.setitem(sys.modules, "jtop", FakeJtopModule())
    source, reasons = discover_power_source(tmp_path)
    reading = source.read()
    assert (
        source.name == "jtop"
        and "ina3221" in reasons
        and list(reading.rails) == ["VDD_IN"]
        and reading.total_mw == 5000
    )


def test_rapl_power_from_energy_counter_with_wrap(tmp_path):
    domain = tmp_path / "sys/class/powercap/intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "name").write_text("package-0\n")
    (domain / "max_energy_range_uj").write_text("1000000\n")
    (domain / "energy_uj").write_text("900000\n")
    now = [10.0]
    source = RaplSource(domain, clock=lambda: now[0])
    assert source.read() is None  # one reading is not a rate
    now[0], _ = 10.5, (domain / "energy_uj").write_text("100000\n")  # wrapped: 200000 µJ in 0.5 s
    reading = source.read()
    assert reading.total_mw == pytest.approx(400.0) and reading.scope == "cpu-package"
    found, reasons = discover_power_source(tmp_path)
    assert found.name == "rapl" and set(reasons) == {"ina3221", "jtop"}


def test_this_real_host_says_what_is_unavailable_and_does_not_crash():
    sampler = TelemetrySampler("/")
    sampler.sample()
    end = time.monotonic() + 0.1
    while time.monotonic() < end:  # let /proc/stat jiffies (USER_HZ 100) move between the two samples
        pass
    sample = sampler.sample()
    assert sample["memory"]["total_mb"] > 0 and sample["cpu"]["total"] >= 1
    assert sample["cpu"]["load_pct"] is not None
    if sample["power"] is None:
        reasons = sample["power_sources_unavailable"]
        assert set(reasons) == {"ina3221", "jtop", "rapl"} and all(reasons.values())
        assert "ina3221" in sample["unavailable"]["power"]
    else:  # a host with readable RAPL
        assert sample["power"]["source"] == "rapl"
    if sample["gpu"] is None:
        assert "devfreq" in sample["unavailable"]["gpu"]
    assert "power_mode" in sample["unavailable"]


def test_prometheus_endpoint_on_loopback(jetson):
    tree = jetson("agx-orin")
    sample = TelemetrySampler(tree.root, mode_provider=lambda: {"id": 2, "name": "MODE_30W"}).sample()
    text = render(sample)
    assert 'edged_power_rail_milliwatts{rail="VDD_GPU_SOC",source="ina3221-hwmon"} 5482.4' in text
    assert 'edged_power_total_milliwatts{source="ina3221-hwmon",sum="true"}' in text
    assert 'edged_power_mode{id="2",name="MODE_30W"} 1.0' in text
    metrics = Metrics("n", process=False)
    metrics.add(PowerCollector(lambda: sample))
    server = MetricsServer(metrics.registry, 0, live=lambda: (True, "alive"), ready=lambda: (False, "loading")).start()
    try:
        assert server._server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert 'edged_power_rail_milliwatts{rail="VDD_GPU_SOC",source="ina3221-hwmon"} 5482.4' in body
        assert "edged_build_info" in body
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5)
        assert exc.value.code == 404
    finally:
        server.stop()
    unavailable = render({"unavailable": {"power": 'no "rails"'}})
    assert 'edged_telemetry_unavailable{reason="no \\"rails\\"",section="power"} 1.0' in unavailable

def test_the_jetpack_tables_of_power_and_tensorrt_agree():
    """Two views of one fact (what each L4T release ships) must never drift apart."""
    from edged.backends.tensorrt.platforms import RELEASES
    from edged.power.platform import stack_for

    for r in RELEASES:
        major, minor = (int(x) for x in r.l4t.split(".")[:2])
        stack = stack_for(major, minor)
        assert r.tensorrt.startswith(stack["tensorrt"] + "."), (r, stack)
        assert r.python == stack["python"], (r, stack)
