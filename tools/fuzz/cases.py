"""What a generated case is and what running it observed.

A :class:`StoreCase` is one dataset to send as a C-STORE (bytes as generated, addressed by
the request's SOP class and instance UIDs); an :class:`AttackCase` is a piece of protocol
behaviour (bytes on a raw socket, timing, many sockets) with its own ``run``. Running either
gives an :class:`Outcome`: the answers seen (DICOM statuses or what the socket did), the
instance UIDs the daemon acknowledged with 0x0000, and any check the case itself failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    answers: list[str] = field(default_factory=list)  # "0x0000", "0xC000", "assoc_rj", "closed", …
    acked: list[str] = field(default_factory=list)  # request instance UIDs answered 0x0000
    failures: list[str] = field(default_factory=list)  # the case's own checks that failed
    peak_mb: float | None = None  # peak RSS growth during the case (filled by the runner)


@dataclass
class StoreCase:
    family: str
    variant: str
    sop_class: str | bytes
    instance: str | bytes  # the request's Affected SOP Instance UID, as sent
    syntax: str
    dataset: bytes
    via: str = "pynetdicom"  # or "raw": pynetdicom would refuse to encode the request
    repeat: int = 1  # sent this many times (duplicates)
    context_class: str | None = None  # raw only: the abstract syntax of the context used

    @property
    def heavy(self) -> bool:
        return False


@dataclass
class AttackCase:
    family: str
    variant: str
    run: Callable[[Any], Outcome]  # called with the runner's context (port, target, echo)
    heavy: bool = False  # seconds, not milliseconds: few of them, even in make fuzz


Case = StoreCase | AttackCase
