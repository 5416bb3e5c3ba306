"""The event-driven association reactors (edged/sources/dicom/reactor.py) against the installed
pynetdicom: an open association that does nothing no longer wakes its two threads every
millisecond, while everything the polling loops reacted to still gets an answer — a C-ECHO, a
release, an abort, the network idle timeout — and the per-association copy of the presentation
contexts stays a faithful, independent copy."""

from __future__ import annotations

import threading
import time
from copy import deepcopy

import pytest
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from edged.sources.dicom import reactor, transport, versions


def _associate(port: int):
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="EDGED")
    assert assoc.is_established
    return assoc


def _served(server, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [a for a in server.active_associations if a.is_established]
        if live:
            return live[0]
        time.sleep(0.01)
    raise AssertionError("no association on the server side")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_an_idle_association_sleeps_instead_of_polling(listener):
    """Upstream's loops run ~1,000 times a second each on an idle association; ours wake only
    every MAX_WAIT_S (to look at kills, timers and the slow-peer meter) and when work arrives."""
    port, server, _, _ = listener
    scu = _associate(port)
    try:
        theirs = _served(server)
        counts = {"assoc": 0, "dul": 0}
        get_msg, transport_event = theirs.dimse.get_msg, theirs.dul._is_transport_event

        def counted_get_msg(*a, **k):
            counts["assoc"] += 1
            return get_msg(*a, **k)

        def counted_transport_event():
            counts["dul"] += 1
            return transport_event()

        theirs.dimse.get_msg, theirs.dul._is_transport_event = counted_get_msg, counted_transport_event
        time.sleep(1.0)
        idle = dict(counts)
        assert scu.send_c_echo().Status == 0x0000  # work still wakes both at once
        limit = 20  # 1 / MAX_WAIT_S = 5 per second expected; upstream: ~1,000
        assert idle["assoc"] <= limit and idle["dul"] <= limit, idle
        assert counts["assoc"] > idle["assoc"] and counts["dul"] > idle["dul"]
    finally:
        scu.release()


def test_release_and_abort_are_answered(listener):
    port, server, _, ended = listener
    scu = _associate(port)
    assert scu.send_c_echo().Status == 0x0000
    started = time.monotonic()
    scu.release()
    assert scu.is_released and _wait(lambda: "released" in ended, 5)
    assert time.monotonic() - started < 2  # the release response does not wait out a poll

    scu = _associate(port)
    _served(server)
    scu.abort()
    assert _wait(lambda: "aborted" in ended, 5)
    assert _wait(lambda: not server.active_associations, 5)


def test_the_network_idle_timeout_still_ends_a_silent_association(listener):
    port, server, ae, ended = listener
    ae.network_timeout = 0.5
    scu = _associate(port)
    try:
        theirs = _served(server)
        assert _wait(lambda: not theirs.is_alive(), 5), "the idle timer did not end the association"
        assert _wait(lambda: not scu.is_established, 5)
    finally:
        if scu.is_established:
            scu.abort()


def test_pausing_the_reactor_wakes_it(listener):
    """send_*() on an acceptor association (storage commitment replies) clear the checkpoint and
    wait for the reactor to reach its pause point: that must not wait out a sleep."""
    port, server, _, _ = listener
    scu = _associate(port)
    try:
        theirs = _served(server)
        time.sleep(0.05)  # let it fall asleep
        started = time.monotonic()
        theirs._reactor_checkpoint.clear()
        assert _wait(lambda: theirs._is_paused, 2)
        paused_after = time.monotonic() - started
        theirs._reactor_checkpoint.set()
        assert paused_after < reactor.MAX_WAIT_S / 2, paused_after
        assert scu.send_c_echo().Status == 0x0000
    finally:
        scu.release()


def test_wakeup_is_not_lost_between_check_and_wait():
    """A notifier that queues work while the waiter is between its check and its wait still
    interrupts the wait (the waiting flag is set before the check)."""
    w = reactor.Wakeup()
    try:
        w.waiting = True
        threading.Timer(0.05, w.wake).start()
        started = time.monotonic()
        w.wait(None, 5.0)
        assert time.monotonic() - started < 2
        w.waiting = False
        w.wake()  # nobody waiting: no write, nothing left behind to cut the next wait short
        started = time.monotonic()
        w.wait(None, 0.2)
        assert time.monotonic() - started >= 0.15
    finally:
        w.close()
    w.waiting = True
    w.wake()  # after close: ignored, never written to a reused descriptor


def test_unverified_pynetdicom_names_the_reactor():
    with pytest.raises(versions.UnsupportedPynetdicom, match=r"reactor\.py.*REACTOR_VERIFIED"):
        versions.check_pynetdicom("3.0.2")  # in the transport's list, not diffed for the reactors
    versions.check_pynetdicom("3.0.4")


def test_context_copies_equal_deepcopy_and_are_independent():
    contexts = []
    for i, c in enumerate(StoragePresentationContexts[:20]):
        cx = PresentationContext()
        cx.context_id = 2 * i + 1
        cx.abstract_syntax = c.abstract_syntax
        cx.transfer_syntax = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        contexts.append(cx)
    copies = transport.copy_contexts(contexts)
    for original, twin, deep in zip(contexts, copies, deepcopy(contexts)):
        assert twin is not original and vars(twin) == vars(deep)
        twin.transfer_syntax = ["1.2.840.10008.1.2.4.50"]
        twin._transfer_syntax.append("1.2.840.10008.1.2.5")
        assert original.transfer_syntax == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    odd = PresentationContext()
    odd.abstract_syntax = "1.2.840.10008.1.1"
    odd.extra = ["something a later pynetdicom might add"]
    fallback = transport.copy_contexts([odd])
    assert fallback[0].extra == odd.extra and fallback[0].extra is not odd.extra  # deepcopy took over
