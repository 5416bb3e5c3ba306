"""Topics and payloads of the MQTT API: the one place each payload kind is built.

Every payload has a ``schema`` field and a JSON Schema under ``edged/schemas``; the schemas
forbid extra properties and constrain free text (patterns, enums, maxLength), so a field that
could carry PHI cannot slip in unnoticed — tests validate every message the daemon publishes.

Nothing here ever sees a name, ID, date or UID: callers pass pseudonyms and coded values
(:mod:`edged.sources.dicom.vocab`). As a last line, :func:`bounded` cuts every ``detail`` to
:data:`MAX_DETAIL` printable characters.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edged import __version__
from edged.postprocess.decode import kind_of

RESULT_SCHEMA = "edged.result/v1"
EVENT_SCHEMA = "edged.event/v1"
STATUS_SCHEMA = "edged.status/v1"
TELEMETRY_SCHEMA = "edged.telemetry/v1"
MAX_DETAIL = 512

EVENT_TYPES = (
    "skipped",  # acknowledged, no model accepts it
    "rejected",  # refused with a DICOM failure status, or an association refused
    "error",  # accepted but could not be inferred (decode failure, backend failure)
    "duplicate",  # the same instance again: stored and inferred once
    "backend",  # backend selection, worker restarts, engine activation, a model that failed to load
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


def elapsed_ms(start: float, end: float | None = None) -> float:
    return round(((end if end is not None else time.monotonic()) - start) * 1000.0, 3)


def bounded(text: object, limit: int = MAX_DETAIL) -> str:
    """Printable text of at most ``limit`` characters (control characters become spaces)."""
    s = str(text)[: limit + 1]
    s = "".join(c if c.isprintable() else " " for c in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def event(node: str, type_: str, reason: str, *, message_id: str | None = None, **fields: object) -> dict:
    """An event. ``reason`` is a short code (``sop_class``, ``spool_full``…); ``detail`` is prose
    written by edged from codes and vocabulary terms, bounded to :data:`MAX_DETAIL`."""
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
    if "detail" in payload:
        payload["detail"] = bounded(payload["detail"])
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


def model_block(manifest: Any, info: Any) -> dict:
    """How a result was made: the model's identity and the backend that served it."""
    return {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.onnx.sha256,
        "backend": info.backend,
        "precision": info.precision,
        "device": info.device,
        "clinical": manifest.clinical,
    }


def result(*, node: str, message_id: str, manifest: Any, info: Any, study: str | None, instance: str,
           outputs: dict[str, Any], timings: dict[str, float | int], source: dict, energy: dict | None = None) -> dict:
    """One inferred image. ``scores`` is the first score output (every classifier has one);
    a model with several decoded outputs also carries them all under ``outputs``. ``energy`` says
    what ``timings_ms.energy_mj`` covers (scope kind, rails, source, concurrent batches)."""
    specs = manifest.decoded_outputs
    first_scores = next((o.name for o in specs if kind_of(o) == "scores"), None)
    payload: dict = {
        "schema": RESULT_SCHEMA,
        "message_id": message_id,
        "node": node,
        "time": utc_now(),
        "study": study,
        "instance": instance,
        "clinical": manifest.clinical,
        "model": model_block(manifest, info),
        "scores": outputs[first_scores] if first_scores else {},
        "timings_ms": timings,
        "source": source,
    }
    if study is None:
        del payload["study"]
    if energy is not None:
        payload["energy"] = energy
    if len(specs) > 1:
        payload["outputs"] = {o.name: {"decode": o.decode, kind_of(o): outputs[o.name]} for o in specs}
    return payload


def telemetry(node: str, sample: dict, images: int, energy_mj_per_image: float | None,
              energy_scope: dict | None = None) -> dict:
    """Power, thermal and load sample plus the images inferred (and their mean energy, and what that
    energy covers) since the last one."""
    payload = {"schema": TELEMETRY_SCHEMA, "node": node, "time": utc_now(), **sample}
    payload["inference"] = {"images": images, "energy_mj_per_image": energy_mj_per_image,
                            "energy_scope": energy_scope if energy_mj_per_image is not None else None}
    return payload
