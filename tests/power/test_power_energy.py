"""Energy per inference: integration, window alignment to samples, source refresh, sharing between
concurrent batches, and the background sampler on a fake rail tree."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edged.batcher.dynamic import DynamicBatcher, Request
from edged.models.manifest import BatchingSpec
from edged.power.accounting import EnergyAccounting
from edged.power.energy import EnergyMeter
from edged.power.rails import Ina3221Hwmon, JtopSource, PowerReading, Rail


def _meter(samples, interval_s=0.1, source=None):
    """A meter holding ``samples``, its sampler not started (so nothing is waited for)."""
    meter = EnergyMeter(source, interval_s=interval_s)
    for t, mw in samples:
        meter.add_sample(t, mw)
    return meter


class FakeSource:
    """A PowerSource whose power the test sets; ``refresh_s`` as a rail would report it."""

    name = "ina3221-hwmon"

    def __init__(self, mw: float = 1000.0, refresh_s: float | None = None):
        self.mw, self.refresh_s, self.reads = mw, refresh_s, 0

    def read(self) -> PowerReading:
        self.reads += 1
        return PowerReading(self.name, {"VDD_IN": Rail("VDD_IN", self.mw)}, self.mw, "VDD_IN", refresh_s=self.refresh_s)


def test_constant_and_ramp_power():
    meter = _meter([(t / 10, 5000.0) for t in range(0, 21)])
    assert meter.energy_mj(0.0, 1.0) == pytest.approx(5000.0)  # 5 W for 1 s = 5 J
    assert meter.energy_mj(0.25, 0.3) == pytest.approx(250.0)  # windows inside one sample interval interpolate
    assert meter.per_image_mj(0.0, 1.0, 4) == pytest.approx(1250.0)
    assert meter.average_mw(0.5, 1.5) == pytest.approx(5000.0)
    ramp = _meter([(0.0, 0.0), (1.0, 1000.0), (2.0, 1000.0)])
    assert ramp.energy_mj(0.0, 1.0) == pytest.approx(500.0)
    assert ramp.energy_mj(0.5, 1.5) == pytest.approx(375.0 + 500.0)


def test_a_window_needs_a_sample_on_each_side():
    """The last value is never held past the newest sample: a batch that just ended has no energy yet."""
    meter = _meter([(10.0, 1000.0), (10.1, 1000.0)], interval_s=0.1)
    assert meter.energy_mj(10.1, 10.3) is None  # nothing measured after 10.1 yet
    assert meter.energy_mj(9.9, 10.1) is None  # nor before 10.0
    meter.add_sample(10.4, 4000.0)
    # interpolated: 2000 mW at 10.2, 3000 mW at 10.3 -> (1000+2000)/2*0.1 + (2000+3000)/2*0.1
    assert meter.energy_mj(10.1, 10.3) == pytest.approx(150.0 + 250.0)
    assert meter.energy_mj(10.1, 10.0) is None and meter.energy_mj(10.05, 10.05) == 0.0
    assert meter.per_image_mj(10.0, 10.1, 0) is None
    assert EnergyMeter(None).energy_mj(0, 1) is None and EnergyMeter(None).start().available is False


def test_the_batch_waits_for_the_sample_that_closes_its_window():
    """Power jumps when the batch starts; integrating at once would hold the idle value before it."""
    source = FakeSource(1000.0)
    meter = EnergyMeter(source, interval_s=0.05, max_wait_s=2.0)
    meter.sample_once()  # the last sample before the batch: idle
    source.mw = 5000.0
    t0 = time.monotonic()
    time.sleep(0.01)
    t1 = time.monotonic()
    assert meter.energy_mj(t0, t1) is None  # no sample after t1 yet: no guess (not 1000 mW x dt)
    meter.start()  # the sampler's next reading closes the window
    try:
        waited = meter.wait_energy_mj(t0, t1)
    finally:
        meter.stop()
    assert waited is not None and waited > 1000.0 * (t1 - t0) * 1.2  # the new, higher power is in


def test_sampling_follows_the_source_refresh_and_centres_samples():
    now = [100.0]
    meter = EnergyMeter(FakeSource(2000.0, refresh_s=0.43), interval_s=0.05, clock=lambda: now[0])
    assert meter.interval_s == pytest.approx(0.43) and meter.lag_s == pytest.approx(0.215)
    meter.sample_once()
    assert list(meter._samples) == [(pytest.approx(99.785), 2000.0)]  # the centre of the averaged period
    assert meter.scope() == {"kind": "module-input", "rails": ["VDD_IN"], "source": "ina3221-hwmon"}
    fast = EnergyMeter(FakeSource(2000.0, refresh_s=None), interval_s=0.05)
    assert fast.interval_s == 0.05 and fast.lag_s == 0.0


def test_ina3221_update_interval_and_jtop_interval_are_read(jetson):
    tree = jetson("orin-nx")  # nvpower.sh sets update_interval 430 ms
    assert Ina3221Hwmon.discover(tree.root).refresh_s == pytest.approx(0.43)
    assert Ina3221Hwmon.discover(tree.root).read().refresh_s == pytest.approx(0.43)

    class Client:
        interval = 1.0
        power = {"rail": {"VDD_IN": {"power": 5000}}, "tot": {"power": 5000}}

    source = JtopSource(Client())
    assert source.refresh_s == 1.0 and EnergyMeter(source, interval_s=0.05).interval_s == 1.0  # never faster than jtop
    assert source.read().energy_scope() == {"kind": "jtop-total", "rails": ["tot"], "source": "jtop"}


def test_overlapping_batches_share_the_board_instead_of_each_claiming_it():
    now = [0.0]
    meter = _meter([(t / 10, 6000.0) for t in range(-10, 31)], source=FakeSource())
    accounting = EnergyAccounting(meter, clock=lambda: now[0])
    a, a0 = accounting.begin()
    now[0] = 0.5
    b, b0 = accounting.begin()
    now[0] = 1.0
    a1 = accounting.end(a)
    now[0] = 1.5
    b1 = accounting.end(b)
    share_a = accounting.per_image_mj((a0, a1), 1)
    share_b = accounting.per_image_mj((b0, b1), 2)
    assert share_a == pytest.approx(6000 * 0.5 + 6000 * 0.5 / 2)  # alone 0.5 s, shared 0.5 s
    assert share_b * 2 == pytest.approx(6000 * 0.5 / 2 + 6000 * 0.5)
    assert share_a + share_b * 2 == pytest.approx(meter.energy_mj(0.0, 1.5))  # nothing counted twice
    assert accounting.concurrency((a0, a1)) == 2
    alone = accounting.per_image_mj((2.0, 2.5), 1)  # a window nobody registered still counts itself
    assert alone == pytest.approx(3000.0) and accounting.concurrency((2.0, 2.5)) == 1


def test_a_running_batch_counts_for_a_window_computed_meanwhile():
    now = [0.0]
    meter = _meter([(t / 10, 4000.0) for t in range(0, 31)], source=FakeSource())
    accounting = EnergyAccounting(meter, clock=lambda: now[0])
    long_token, _ = accounting.begin()  # still running
    now[0] = 1.0
    short, s0 = accounting.begin()
    now[0] = 2.0
    s1 = accounting.end(short)
    assert accounting.per_image_mj((s0, s1), 1) == pytest.approx(4000 * 1.0 / 2)
    accounting.end(long_token)


def test_concurrent_batchers_register_windows_through_the_batcher():

    gate = threading.Barrier(2)

    class Backend:
        output_specs = {}

        def infer(self, batch):
            gate.wait(timeout=10)  # both models are inside infer at the same time
            time.sleep(0.02)
            return {}

    meter = _meter([(time.monotonic() - 5 + t / 10, 1000.0) for t in range(0, 200)], source=FakeSource())
    accounting = EnergyAccounting(meter)
    done: list = []
    spec = BatchingSpec(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=4)
    batchers = [DynamicBatcher(n, Backend(), spec, windows=accounting) for n in ("a", "b")]
    for b in batchers:
        b.start()
        b.submit(Request(np.zeros((1,), np.float32), done.append))
    for b in batchers:
        b.stop()
    assert len(done) == 2 and all(c.error is None for c in done)
    assert [accounting.concurrency(c.window) for c in done] == [2, 2]


def test_background_sampler_on_a_fake_orin_tree(jetson):
    tree = jetson("orin-nx")  # VDD_IN = 5040 mV x 1200 mA = 6048 mW; update_interval 430 ms
    meter = EnergyMeter(Ina3221Hwmon.discover(tree.root), interval_s=0.01, max_wait_s=3.0).start()
    try:
        t0 = time.monotonic() + 0.3  # the first (centred) sample lies 215 ms in the past: start after it
        time.sleep(0.4)
        t1 = time.monotonic()
        energy = meter.wait_energy_mj(t0, t1)
    finally:
        meter.stop()
    assert meter.interval_s == pytest.approx(0.43)
    assert energy == pytest.approx(6048.0 * (t1 - t0), rel=0.02)
    assert meter.total_is_sum is False and meter.scope()["kind"] == "module-input"


def test_windows_older_than_keep_s_are_forgotten_and_running_ones_kept():
    now = [0.0]
    acct = EnergyAccounting(None, clock=lambda: now[0], keep_s=10.0)
    stuck, _ = acct.begin()  # never ends (a backend call still running)
    for _ in range(100):
        now[0] += 1.0
        token, _ = acct.begin()
        now[0] += 0.5
        acct.end(token)
    # only windows that ended within the last keep_s remain, plus the one still running
    assert stuck in acct._running
    ended = [end for start, end in acct._running.values() if end is not None]
    assert ended and min(ended) >= now[0] - 0.5 - 11.0 and len(acct._running) <= 12
