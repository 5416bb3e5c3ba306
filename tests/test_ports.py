"""free_port(): what the tests and the demo bind their servers to (edged/localbroker.py)."""

from __future__ import annotations

import pytest

from edged import localbroker
from edged.localbroker import free_port, port_slice


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


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_worker_slices_are_disjoint_below_the_ephemeral_range_and_wrap(monkeypatch: pytest.MonkeyPatch,
                                                                        count: int) -> None:
    monkeypatch.delenv("EDGED_FREE_PORTS", raising=False)
    slices = [port_slice(i, count) for i in range(count)]
    ports = [set(range(low, high + 1)) for low, high in slices]
    assert all(a.isdisjoint(b) for i, a in enumerate(ports) for b in ports[i + 1:])
    assert all(1024 <= low <= high < localbroker._ephemeral_low() for low, high in slices)
    assert port_slice(count, count) == slices[0] and port_slice(count + 1, count) == slices[1 % count]
    monkeypatch.setenv("EDGED_FREE_PORTS", "40000-40999")  # a caller's own range is cut the same way
    assert port_slice(1, 2) == (40500, 40999)


def test_a_full_configured_range_is_an_error_not_a_port_outside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(localbroker, "_RECENT", type(localbroker._RECENT)(maxlen=512))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        held.listen()
        monkeypatch.setenv("EDGED_FREE_PORTS", f"{port}-{port}")
        with pytest.raises(RuntimeError, match="no free port"):
            free_port()


def test_this_worker_draws_from_its_own_slice() -> None:
    """tests/conftest.py set this worker's slice when the suite runs under pytest-xdist."""
    import os

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("not running under pytest-xdist (make test runs it)")
    low, high = localbroker._pick_range()
    assert os.environ["EDGED_FREE_PORTS"] == f"{low}-{high - 1}"
    assert high <= localbroker._ephemeral_low()
