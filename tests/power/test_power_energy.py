"""EnergyMeter: integration over a window, coverage rules, and the background sampler on a fake rail tree."""

from __future__ import annotations

import time

import pytest

from edged.power.energy import EnergyMeter
from edged.power.rails import Ina3221Hwmon


def _meter(samples, interval_s=0.1):
    meter = EnergyMeter(None, interval_s=interval_s)
    for t, mw in samples:
        meter.add_sample(t, mw)
    return meter


def test_constant_and_ramp_power():
    meter = _meter([(t / 10, 5000.0) for t in range(0, 21)])
    assert meter.energy_mj(0.0, 1.0) == pytest.approx(5000.0)  # 5 W for 1 s = 5 J
    assert meter.energy_mj(0.25, 0.3) == pytest.approx(250.0)  # windows inside one sample interval interpolate
    assert meter.per_image_mj(0.0, 1.0, 4) == pytest.approx(1250.0)
    assert meter.average_mw(0.5, 1.5) == pytest.approx(5000.0)
    ramp = _meter([(0.0, 0.0), (1.0, 1000.0), (2.0, 1000.0)])
    assert ramp.energy_mj(0.0, 1.0) == pytest.approx(500.0)
    assert ramp.energy_mj(0.5, 1.5) == pytest.approx(375.0 + 500.0)


def test_coverage_rules():
    meter = _meter([(10.0, 1000.0), (10.1, 1000.0)], interval_s=0.1)
    assert meter.energy_mj(10.1, 10.3) == pytest.approx(200.0)  # last value held up to 2.5 intervals
    assert meter.energy_mj(10.0, 11.0) is None  # beyond the newest sample
    assert meter.energy_mj(5.0, 10.1) is None  # older than the first sample
    assert meter.energy_mj(10.1, 10.0) is None and meter.energy_mj(10.05, 10.05) == 0.0
    assert meter.per_image_mj(10.0, 10.1, 0) is None
    assert EnergyMeter(None).energy_mj(0, 1) is None and EnergyMeter(None).start().available is False


def test_background_sampler_on_a_fake_orin_tree(jetson):
    tree = jetson("orin-nx")  # VDD_IN = 5040 mV x 1200 mA = 6048 mW
    meter = EnergyMeter(Ina3221Hwmon.discover(tree.root), interval_s=0.01).start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        time.sleep(0.1)
        t1 = time.monotonic()
        energy = meter.energy_mj(t0, t1)
    finally:
        meter.stop()
    assert energy == pytest.approx(6048.0 * (t1 - t0), rel=0.02)
    assert meter.total_is_sum is False and meter.scope == "board"
