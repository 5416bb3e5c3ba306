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
CAMERA_STATE_SCHEMA = "edged.camera_state/v1"
DETECTIONS_SCHEMA = "edged.detections/v1"
MAX_DETAIL = 512
# Upper bounds of the encoded payloads of camera messages. Their schemas cap every array and
# string so that no valid payload comes near these (tests compute the largest valid one);
# :func:`encode_capped` refuses anything larger, so not even a bug can publish a picture.
MAX_BYTES = {"detections": 24_000, "camera_state": 4_000, "event": 8_000, "availability": 16}

EVENT_TYPES = (
    "skipped",  # acknowledged, no model accepts it
    "rejected",  # refused with a DICOM failure status, or an association refused
    "error",  # accepted but could not be inferred (decode failure, backend failure)
    "duplicate",  # the same instance again: stored and inferred once
    "backend",  # backend selection, worker restarts, engine activation, a model that failed to load
    "power",  # power mode changes
    "camera",  # a camera came online, went offline, stalled, was restarted, reconnected
    "object",  # a tracked object appeared (new), changed (update) or left (end)
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

    def camera_availability(self, camera: str) -> str:
        return f"{self.prefix}/{self.node}/cameras/{camera}/availability"

    def camera_state(self, camera: str) -> str:
        return f"{self.prefix}/{self.node}/cameras/{camera}/state"

    def detections(self, camera: str, model: str) -> str:
        return f"{self.prefix}/{self.node}/cameras/{camera}/detections/{model}"


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


class PayloadTooLarge(ValueError):
    """A payload above its kind's cap in :data:`MAX_BYTES`: refused, never published."""


def encode_capped(kind: str, payload: dict | str) -> bytes:
    """The payload as sent (JSON, or plain text for availability), refused above its cap."""
    import json

    data = payload.encode() if isinstance(payload, str) else \
        json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_BYTES[kind]:
        raise PayloadTooLarge(f"{kind} payload of {len(data)} bytes exceeds its cap of {MAX_BYTES[kind]}")
    return data


def camera_state(node: str, camera: str, *, state: str, enabled: bool, source: str, decoder: str | None,
                 resolution: tuple[int, int] | None, fps: dict, frames: dict, drops: dict, last_frame_age_s: float | None,
                 reconnects: int, restarts: int, attempts: int, last_error: str | None, last_attempt: float | None,
                 next_attempt: float | None, backoff_s: float | None, models: list[str]) -> dict:
    """A camera's retained state: what it is doing, how fast, what it drops and why."""
    return {
        "schema": CAMERA_STATE_SCHEMA, "node": node, "camera": camera, "time": utc_now(), "state": state,
        "enabled": enabled, "source": source, "decoder": decoder,
        "resolution": {"width": resolution[0], "height": resolution[1]} if resolution else None,
        "fps": fps, "frames": frames, "drops": drops, "last_frame_age_s": last_frame_age_s,
        "reconnects": reconnects, "restarts": restarts, "attempts": attempts, "last_error": last_error,
        "last_attempt": iso_time(last_attempt), "next_attempt": iso_time(next_attempt), "backoff_s": backoff_s,
        "models": models,
    }


def detections(node: str, camera: str, *, manifest: Any, info: Any, frame: dict, detections_: list[dict],
               timings: dict) -> dict:
    """One inferred frame of one camera and model (QoS 0, newest wins): boxes, never pixels."""
    return {
        "schema": DETECTIONS_SCHEMA, "node": node, "camera": camera, "time": utc_now(), "clinical": manifest.clinical,
        "model": model_block(manifest, info), "frame": frame, "detections": detections_, "timings_ms": timings,
    }


def iso_time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
