"""The bounds one DICOM peer lives within: how many connections, how large a PDU, how slow a transfer.

A hospital network carries modalities that are broken, misconfigured or hostile, and one of
them must never be able to starve the others or the device. What these bounds promise:

* **Connections**: at most ``max_associations`` live TCP connections in all, at most
  ``max_associations_per_host`` from one IP address, counted from ``accept()`` to the socket's
  close (a connection still in its TLS handshake or before its A-ASSOCIATE-RQ holds a slot,
  as it holds a thread). Hosts outside ``allowed_hosts`` never get one: they are closed at
  ``accept()``, before a byte of theirs is read.
* **Memory**: a PDU is refused from its 6-byte header, before its body is read, when it is
  larger than we can accept (:meth:`TransportLimits.pdu_limit`); DIMSE command sets and
  datasets that are held in memory are capped (:data:`MAX_IN_MEMORY_MESSAGE`).
* **Time**: while a transfer is in progress (an A-ASSOCIATE-RQ awaited, a PDU or a DIMSE
  message partly received) the peer must deliver ``min_bytes_per_s × window_s`` bytes in every
  ``window_s`` seconds that edged spends *waiting for it* (:class:`ProgressMeter`). Time edged
  spends on its own work (a slow disk, a busy CPU) is not the peer's fault and is not counted.
  Between messages an association may be idle up to ``network_timeout_s`` (pynetdicom's timer).

Pure policy, no sockets: :mod:`edged.sources.dicom.transport` and
:mod:`edged.sources.dicom.receive` apply it to pynetdicom.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import deque
from dataclasses import dataclass, field

# A DIMSE command set is a few hundred bytes; a dataset we keep in memory (anything but a
# C-STORE, which is streamed to a file) has no business being larger than this.
MAX_IN_MEMORY_MESSAGE = 1 << 20
MAX_COMMAND_SET = 64 << 10

P_DATA_TF = 0x04


@dataclass(frozen=True)
class TransportLimits:
    max_associations: int = 10
    max_per_host: int = 5
    max_pdu: int = 262144          # what we advertise as our maximum receive PDU length
    max_associate_rq: int = 65536  # any PDU other than P-DATA-TF
    min_bytes_per_s: float = 4096.0
    window_s: float = 10.0
    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default_factory=tuple)

    def pdu_limit(self, pdu_type: int, advertised: int | None) -> int:
        """Largest PDU length field we read for ``pdu_type``. A P-DATA-TF may fill what we
        advertised as our maximum receive length (PS3.8 D.1: the variable field of the PDU);
        every other PDU (A-ASSOCIATE-RQ above all) is bounded by ``max_associate_rq``."""
        if pdu_type == P_DATA_TF:
            return advertised or self.max_pdu
        return self.max_associate_rq

    def host_allowed(self, host: str) -> bool:
        if not self.allowed:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed if net.version == ip.version)


class ConnectionSlots:
    """Live connections, in all and per host. :meth:`take` either counts the connection in and
    returns None, or refuses it and says why."""

    def __init__(self, total: int, per_host: int):
        self.total, self.per_host = total, per_host
        self._by_host: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, host: str) -> str | None:
        with self._lock:
            live = sum(self._by_host.values())
            mine = self._by_host.get(host, 0)
            if mine >= self.per_host:
                return f"{mine} connections from this host already open (max_associations_per_host {self.per_host})"
            if live >= self.total:
                return f"{live} connections already open (max_associations {self.total})"
            self._by_host[host] = mine + 1
            return None

    def release(self, host: str) -> None:
        with self._lock:
            left = self._by_host.get(host, 0) - 1
            if left > 0:
                self._by_host[host] = left
            else:
                self._by_host.pop(host, None)

    def live(self, host: str | None = None) -> int:
        with self._lock:
            return self._by_host.get(host, 0) if host is not None else sum(self._by_host.values())


class Lease:
    """One connection's slot, released exactly once (whichever of the paths that end a
    connection gets there first)."""

    def __init__(self, slots: ConnectionSlots, host: str):
        self.slots, self.host = slots, host
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.slots.release(self.host)


class ProgressMeter:
    """Bytes received against time spent waiting for them, while a transfer is in progress.

    ``waited(s)`` adds time edged spent waiting on the peer's socket (blocked in ``recv``, or
    polling and finding nothing); ``received(n)`` adds bytes. :meth:`too_slow` is True once at
    least ``window_s`` of waiting has accumulated in the current transfer and the bytes received
    over the last ``window_s`` of waiting are fewer than ``min_bytes_per_s × window_s``.
    :meth:`idle` ends the transfer (the next one starts from zero).
    """

    def __init__(self, min_bytes_per_s: float, window_s: float):
        self.required = min_bytes_per_s * window_s
        self.window = window_s
        self.idle()

    def idle(self) -> None:
        if getattr(self, "clock", None) == 0.0 and self.total == 0:
            return  # already idle (called on every turn of an idle association's loop)
        self.clock = 0.0   # seconds waited in this transfer
        self.total = 0     # bytes received in this transfer
        self._samples: deque[tuple[float, int]] = deque([(0.0, 0)])

    def received(self, nbytes: int) -> None:
        self.total += nbytes

    def waited(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self.clock += seconds
        if self.clock - self._samples[-1][0] >= self.window / 16:  # at most ~17 samples per window
            self._samples.append((self.clock, self.total))

    def too_slow(self) -> bool:
        if self.clock < self.window:
            return False
        horizon = self.clock - self.window
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.popleft()
        return self.total - self._samples[0][1] < self.required

    def rate(self) -> float:
        """Bytes per second of waiting over the current window (for log lines)."""
        span = min(self.clock, self.window) or 1.0
        return (self.total - self._samples[0][1]) / span
