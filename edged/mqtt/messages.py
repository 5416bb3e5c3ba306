"""Topics and payloads of the MQTT API. Every payload has a ``schema`` field and a JSON Schema
under ``edged/schemas``; the schemas forbid extra properties, so a field that could carry PHI
cannot slip in unnoticed — tests validate every message the daemon publishes.

Nothing here ever sees a name, ID, date or UID: callers pass pseudonyms and coded values only.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from edged import __version__

RESULT_SCHEMA = "edged.result/v1"
EVENT_SCHEMA = "edged.event/v1"
STATUS_SCHEMA = "edged.status/v1"
TELEMETRY_SCHEMA = "edged.telemetry/v1"

EVENT_TYPES = (
    "skipped",  # acknowledged, no model accepts it
    "rejected",  # refused with a DICOM failure status, or an association refused
    "error",  # accepted but could not be inferred (decode failure, backend failure)
    "duplicate",  # the same instance again: stored and inferred once
    "backend",  # backend selection, worker restarts, engine activation
    "power",  # power mode changes
)


@dataclass(frozen=True)
class Topics:
    prefix: str
    node: str

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.node}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/{self.node}/events"

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/{self.node}/telemetry"

    def results(self, model: str) -> str:
        return f"{self.prefix}/{self.node}/results/{model}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(node: str, type_: str, reason: str, *, message_id: str | None = None, **fields: object) -> dict:
    """An event. ``reason`` is a short code (``sop_class``, ``spool_full``…); ``detail`` is prose
    written by edged; it may quote coded attribute values (modality, body part, view,
    photometric) but never an identifying one."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_}")
    payload: dict = {
        "schema": EVENT_SCHEMA,
        "message_id": message_id or uuid.uuid4().hex,
        "node": node,
        "time": utc_now(),
        "type": type_,
        "reason": reason,
    }
    payload.update({k: v for k, v in fields.items() if v is not None})
    return payload


def status(node: str, state: str, models: list[dict] | None = None, **fields: object) -> dict:
    payload: dict = {
        "schema": STATUS_SCHEMA,
        "node": node,
        "state": state,
        "version": __version__,
        "time": utc_now(),
        "models": models or [],
    }
    payload.update({k: v for k, v in fields.items() if v is not None})
    return payload


def elapsed_ms(start: float, end: float | None = None) -> float:
    return round(((end if end is not None else time.monotonic()) - start) * 1000.0, 3)
