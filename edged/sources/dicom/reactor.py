"""Association reactors that sleep until there is work, instead of polling every millisecond.

pynetdicom 3.0 runs two threads per association, and both poll: the association thread sleeps
1 ms, looks for a decoded DIMSE message and an ACSE primitive, and sleeps again
(``Association._run_reactor``); the DUL thread, when a loop found no event, sleeps
``_run_loop_delay`` (1 ms) before looking at its queues and the socket again
(``DULServiceProvider.run_reactor``). An open association that does nothing cost the daemon
~90 ms of CPU per second here (issue #14; ``tools/bench_ingest.py`` measures it), and the wake-ups
land between the PDUs of every transfer too.

Here each thread blocks until something it would act on happens:

* the **association thread** waits on a :class:`threading.Event` that is set when the DUL
  queues a DIMSE message (``dimse.msg_queue``) or an ACSE primitive (``dul.to_user_queue``:
  release request, abort), when the DUL thread ends, when the association is killed, and when
  another thread pauses the reactor (``_reactor_checkpoint.clear()``, as ``send_*`` do); its
  wait is bounded by the network idle timer, so ``network_timeout`` still fires;
* the **DUL thread** waits in ``poll()`` on its socket and a :class:`Wakeup` socket pair that
  is written when a primitive is queued for sending (``to_provider_queue``) or an event is
  queued from another thread (``event_queue``), and when the DUL is killed or stopped; it
  never waits while an event, a primitive, read-ahead bytes or TLS-buffered bytes are pending,
  in Sta13 (upstream closes the connection there when no data is waiting), and its wait is
  bounded by the ARTIM timer and by :data:`MAX_WAIT_S`, so slow-peer accounting and kills are
  looked at as before.

Everything else in the loops is upstream's. Upstream equivalent: ``association.py
Association._run_reactor``, ``dul.py DULServiceProvider.run_reactor`` / ``_is_transport_event``
/ ``kill_dul`` / ``stop_dul``, and the queues created in ``DULServiceProvider.__init__`` and
``DIMSEServiceProvider.__init__`` (3.0.x; upstream's own TODO in ``dul.py``: "try and make
this event based rather than running loops"). :data:`~edged.sources.dicom.versions.REACTOR_VERIFIED`
lists the versions this was checked against, and the daemon refuses any other.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

#: Longest a reactor sleeps without a wake-up: how often kills, the slow-peer meter and the
#: timers are looked at when nothing else happens.
MAX_WAIT_S = 0.2


class NotifyingQueue(queue.Queue):
    """A ``queue.Queue`` that calls ``notify`` after every ``put``."""

    def __init__(self, notify: Callable[[], None]):
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class Wakeup:
    """A socket pair that interrupts one thread's :meth:`wait` from any other thread.

    The waiter sets :attr:`waiting`, checks for work, and only then waits; a notifier queues its
    work first and writes only when :attr:`waiting` is set. Under the GIL one of the two always
    sees the other's write, so no wake-up is lost and a busy thread costs no syscalls.
    """

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._lock = threading.Lock()
        self._closed = False
        self.waiting = False

    def wake(self) -> None:
        if not self.waiting:
            return
        with self._lock:  # never write to a closed (and possibly reused) descriptor
            if self._closed:
                return
            try:
                self._w.send(b"\0")
            except OSError:  # the buffer is full: the waiter has been woken already
                pass

    def wait(self, sock: Any, timeout: float) -> None:
        """Block until ``sock`` (a socket or None) is readable, :meth:`wake` is called, or
        ``timeout`` seconds pass."""
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        if sock is not None:
            try:
                poller.register(sock, select.POLLIN)
            except (OSError, ValueError):  # closed meanwhile: upstream's ready check reports it
                return
        try:
            poller.poll(max(0, int(timeout * 1000)))
        except InterruptedError:
            pass
        try:
            while self._r.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass

    def close(self) -> None:
        """Idempotent; only once its waiter is gone (the DUL thread ended or never started)."""
        with self._lock:
            self._closed = True
            self._r.close()
            self._w.close()


class Checkpoint(threading.Event):
    """``Association._reactor_checkpoint`` that wakes the reactor when cleared: whoever clears it
    then waits for the reactor to reach its pause point (``send_*``, ``release``)."""

    def __init__(self, on_clear: Callable[[], None]):
        super().__init__()
        self._on_clear = on_clear

    def clear(self) -> None:
        super().clear()
        self._on_clear()


class EventDrivenDUL:
    """Mixin before ``DULServiceProvider`` (pynetdicom/dul.py): queues that wake the DUL thread
    (what it sends, events from other threads) or the association thread (primitives for the
    service user), no sleep between loops (the subclass waits in ``_is_transport_event`` through
    :func:`dul_wait`), and kill/stop that wake it."""

    wakeup: Wakeup

    def event_driven(self, user_wake: Callable[[], None]) -> None:
        """Call at the end of ``__init__``, after upstream's made its queues."""
        self.wakeup = Wakeup()
        self.event_queue = NotifyingQueue(self.wakeup.wake)
        self.to_provider_queue = NotifyingQueue(self.wakeup.wake)
        self.to_user_queue = NotifyingQueue(user_wake)
        self._run_loop_delay = 0.0

    def kill_dul(self) -> None:
        super().kill_dul()  # type: ignore[misc]
        self.wakeup.wake()

    def stop_dul(self) -> bool:
        """Upstream ``stop_dul`` (stop the thread if in Sta1, and wait for it), woken at once
        and joined instead of polled."""
        if self.state_machine.current_state != "Sta1":  # type: ignore[attr-defined]
            return False
        self._kill_thread = True
        self.wakeup.wake()
        if threading.current_thread() is not self:
            self.join()  # type: ignore[attr-defined]
        return True


def dul_has_work(dul: Any) -> bool:
    """Whether the DUL loop must run again at once rather than wait."""
    return (dul._kill_thread or not dul.event_queue.empty() or not dul.to_provider_queue.empty()
            or dul.state_machine.current_state == "Sta13" or dul.artim_timer.expired or buffered(dul.socket))


def buffered(sock: Any) -> bool:
    """Bytes already read from the connection (read-ahead, TLS records) that ``poll`` cannot see."""
    if sock is None or sock.socket is None:
        return False
    ahead = getattr(sock, "ahead", None)
    if ahead is not None and ahead.pending():
        return True
    pending = getattr(sock.socket, "pending", None)  # ssl.SSLSocket
    return bool(pending and pending())


def dul_wait(dul: Any) -> None:
    """Sleep until the DUL has something to do (see the module docstring)."""
    wakeup: Wakeup = dul.wakeup
    wakeup.waiting = True
    try:
        if dul_has_work(dul):
            return
        timeout = MAX_WAIT_S
        if dul.artim_timer._start_time is not None and dul.artim_timer.timeout is not None:
            timeout = min(timeout, max(0.0, dul.artim_timer.remaining))
        sock = dul.socket
        wakeup.wait(sock.socket if sock is not None else None, timeout)
    finally:
        wakeup.waiting = False


def association_timeout(assoc: Any) -> float:
    """How long the association thread may sleep: until the idle timer could expire, at most
    :data:`MAX_WAIT_S`."""
    idle = assoc.dul._idle_timer
    if idle.timeout is None or idle._start_time is None:
        return MAX_WAIT_S
    return min(MAX_WAIT_S, max(0.0, idle.remaining))
