"""The fuzz suite's fixed subset: a few hundred seeded cases against the daemon as a real process.

The same generator, daemon set-up and checks as ``make fuzz`` (tools/fuzz), at a size that
fits the test suite: every dataset and PDU family, the same seed every run, a C-ECHO after
every third case. Then the verdicts ``make fuzz`` gives, as assertions: no crash, no hang, no
PHI token or UID in anything published or logged, every message valid against the schemas,
every instance answered 0x0000 with exactly one outcome on MQTT, bounded memory.

The transport families (issue #8 items 4, 5, 7: giant PDUs, deflate bombs, slow peers,
slot exhaustion, partial uploads) run here in one small, fast case each. Their fixes are
being made on another branch, so each is ``xfail(strict=True)``: the marker must go when
the fix is merged, and the test then guards it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.fuzz import suite  # noqa: E402
from tools.fuzz.attacks import MEMORY_BOUND_MB  # noqa: E402
from tools.fuzz.transport import PENDING  # noqa: E402

SEED = 8
CASES = 200


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory):
    session = suite.Session.open(tmp_path_factory.mktemp("fuzz"), SEED, progress=lambda line: None)
    session.runner.echo_every = 3
    yield session
    session.close()


@pytest.fixture(scope="module")
def subset(fuzz) -> dict:
    plan = suite.schedule(CASES, SEED, fast=True, include_transport=False)
    assert {name for name, _ in plan} == set(suite.WEIGHTED), "every family runs in the subset"
    start = time.monotonic()
    for _ in fuzz.run(plan, progress_every_s=1e9):
        pass
    fuzz.settle(timeout=90)
    return fuzz.finish(time.monotonic() - start, {"cases": CASES, "seed": SEED, "fast": True})


def test_no_crash_no_hang(subset):
    t = subset["totals"]
    assert t["cases"] == CASES
    assert (t["crashes"], t["hangs"], t["rss_cap_kills"]) == (0, 0, 0), (t["crash_list"], t["hang_list"])


def test_no_phi_published_or_logged(subset):
    t = subset["totals"]
    assert t["scanned_mqtt_messages"] > CASES // 2 and t["scanned_log_lines"] > CASES
    assert t["phi_hits"] == 0, t["phi_examples"]


def test_every_message_matches_its_schema(subset):
    assert subset["totals"]["schema_invalid"] == 0, subset["totals"]["schema_examples"]


def test_every_acknowledged_instance_has_exactly_one_outcome(subset):
    t = subset["totals"]
    assert t["acknowledged_instances"] > CASES // 4, "the subset acknowledges a good share of its datasets"
    assert t["acknowledged_without_outcome"] == 0, t["without_outcome_examples"]
    assert subset["families"]["duplicate"]["acknowledged"] >= 2


def test_every_refusal_is_an_event(subset):
    """A C-STORE answered with a failure status has a ``rejected`` event with that status."""
    answered: dict[str, int] = {}
    for f in subset["families"].values():
        for answer, n in f["answers"].items():
            if answer.startswith("0x") and answer != "0x0000":
                answered[answer] = answered.get(answer, 0) + n
    assert answered, "the subset provokes failure statuses"
    events = subset["totals"]["rejected_events_by_status"]
    assert {k: events.get(k, 0) for k in answered} == answered


def test_every_family_passes_its_own_checks(subset):
    bad = {n: f["examples"] for n, f in subset["families"].items() if f["state"] != "ok"}
    assert not bad


def test_memory_is_bounded(subset):
    t = subset["totals"]
    assert t["rss_mb_last"] - t["rss_mb_first"] < 64, "RSS keeps growing over the subset"
    peaks = {n: f["peak_rss_growth_mb"] for n, f in subset["families"].items()}
    assert max(peaks.values()) < MEMORY_BOUND_MB, peaks


TRANSPORT_FAMILIES = [name for name, _ in suite.transport_cases(fast=True)]


@pytest.mark.parametrize("family", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"transport fix pending: issue #8 item {PENDING[name]}"))
    if name in PENDING else name
    for name in TRANSPORT_FAMILIES
])
def test_transport_family(fuzz, subset, family):
    """One small case of a transport family, after the subset, against the same daemon."""
    factory = dict(suite.transport_cases(fast=True))[family]
    fuzz.runner.echo_every = 1
    fuzz.runner.run_case(factory(fuzz.gen.at(10_000 + TRANSPORT_FAMILIES.index(family))))
    s = fuzz.runner.stats[family]
    assert (s.crashes, s.hangs, s.harness_errors) == (0, 0, 0), s.examples
    assert s.case_failures == 0, s.examples
