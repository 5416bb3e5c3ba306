"""free_port(): what the tests and the demo bind their servers to (edged/localbroker.py)."""

from __future__ import annotations

import pytest

from edged import localbroker
from edged.localbroker import free_port


def test_picks_stay_in_the_configured_range_and_are_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 picks from 400 ports: drawn at random they would repeat almost surely (a port picked
    for a daemon that has not bound it yet looks free), remembered they do not."""
    monkeypatch.setattr(localbroker, "_RECENT", type(localbroker._RECENT)(maxlen=512))
    monkeypatch.setenv("EDGED_FREE_PORTS", "20000-20399")
    picked = [free_port() for _ in range(300)]
    assert all(20000 <= p <= 20399 for p in picked)
    assert len(set(picked)) == len(picked)


@pytest.mark.parametrize("value", ["20000", "abc-def", "30000-20000", "80-90", "60000-70000"])
def test_a_malformed_range_is_refused_with_its_value(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EDGED_FREE_PORTS", value)
    with pytest.raises(ValueError, match="EDGED_FREE_PORTS"):
        free_port()


def test_parallel_test_workers_draw_from_disjoint_slices() -> None:
    """tests/conftest.py gave this worker its own slice when the suite runs under pytest-xdist."""
    import os

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("not running under pytest-xdist (make test runs it)")
    low, high = localbroker._pick_range()
    top = localbroker._ephemeral_low()
    size = (top - max(1024, top - 12000)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    assert high - low == size
    assert low == max(1024, top - 12000) + int(worker[2:]) * size
