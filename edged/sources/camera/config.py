"""The ``cameras:`` list and the ``capture:`` settings of the config file.

Validated like the rest of the file (unknown keys are errors with file, line and key). Two rules
are privacy rules, not style: credentials come only from files (a URI with ``user:password@``
is refused, and the error never repeats it), and a camera's ``name`` is a short technical name
that ends up in MQTT topics: it and the ROI must not identify a patient (say ``ward3-corridor``,
not a bed occupant's name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator, model_validator

from edged.sources.camera.secondary_config import CameraModel, SecondarySpec

SCHEMES = ("rtsp", "rtsps", "csi", "v4l2", "file", "test")
TEST_PATTERNS = ("smpte", "ball", "snow", "black", "white", "gradient", "pinwheel", "colors", "checkers-8")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Backoff(Strict):
    """Reconnection delays: ``initial_s`` doubling up to ``max_s``, each ± ``jitter`` (a fraction)."""

    initial_s: float = Field(default=1.0, gt=0, le=600)
    max_s: float = Field(default=30.0, gt=0, le=3600)
    jitter: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> "Backoff":
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class CameraConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,48}$", description="used in MQTT topics: must not identify a patient")
    uri: str = Field(max_length=1024)
    enabled: bool = True
    username_file: FilePath | None = None
    password_file: FilePath | None = None
    # A model name, or a detector with its secondary classifiers: {name, secondary: [...]}
    models: list[CameraModel] = Field(min_length=1, max_length=8)
    fps: float = Field(default=5.0, gt=0, le=60, description="inference rate; the newest frame wins")
    width: int | None = Field(default=None, ge=16, le=4096, description="frames are scaled to this in the pipeline")
    height: int | None = Field(default=None, ge=16, le=4096)
    stall_timeout_s: float = Field(default=10.0, ge=0.5, le=600)
    backoff: Backoff = Backoff()
    roi: list[tuple[float, float]] | None = Field(default=None, description="normalized polygon; must not identify a patient")
    latency_ms: int = Field(default=200, ge=0, le=10_000, description="RTSP jitter buffer")
    codec: Literal["h264", "h265"] = "h264"
    source_fps: int = Field(default=30, ge=1, le=240, description="csi/v4l2/test: the rate the source produces")
    flip: int = Field(default=0, ge=0, le=7, description="csi: nvvidconv flip-method")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"the URI scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
        if "@" in parts.netloc:
            # never echo the value: it holds a password
            raise ValueError("credentials in the URI are not allowed: use username_file and password_file")
        if any(c in v for c in "!\"'`\n\r\t ") or "\\" in v:
            raise ValueError("the URI may not contain spaces, quotes, '!' or backslashes")
        if parts.scheme in ("rtsp", "rtsps") and not parts.hostname:
            raise ValueError("an rtsp:// URI needs a host")
        if parts.scheme == "csi" and not parts.netloc.isdigit():
            raise ValueError("csi://N: N is the sensor id (0, 1, ...)")
        if parts.scheme == "v4l2" and not parts.path.startswith("/dev/video"):
            raise ValueError("v4l2:///dev/videoN")
        if parts.scheme == "file" and not parts.path.startswith("/"):
            raise ValueError("file:///absolute/path")
        if parts.scheme == "test" and (parts.netloc or "smpte") not in TEST_PATTERNS:
            raise ValueError(f"test://PATTERN: one of {', '.join(TEST_PATTERNS)}")
        unknown = set(parse_qs(parts.query)) - {"loop", "format"}
        if unknown and parts.scheme not in ("rtsp", "rtsps"):  # an RTSP query belongs to the camera
            raise ValueError(f"unknown URI option(s): {', '.join(sorted(unknown))} (known: loop, format)")
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_models(cls, v: object) -> object:
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if v is None:
            return v
        if not 3 <= len(v) <= 64:
            raise ValueError("a ROI polygon has 3 to 64 points")
        if any(not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0) for x, y in v):
            raise ValueError("ROI points are normalized: 0 <= x, y <= 1")
        return v

    @model_validator(mode="after")
    def _checks(self) -> "CameraConfig":
        if (self.username_file is None) != (self.password_file is None):
            raise ValueError("username_file and password_file go together")
        if self.username_file is not None and self.scheme not in ("rtsp", "rtsps"):
            raise ValueError("credentials apply to rtsp:// cameras only")
        if (self.width is None) != (self.height is None):
            raise ValueError("give width and height together")
        names = [*self.model_names, *self.secondary_names]
        if len(set(names)) != len(names):
            raise ValueError("a model is listed twice (as a model or a secondary)")
        return self

    @property
    def model_names(self) -> list[str]:
        """The models every frame goes to (detectors and whole-frame models)."""
        return [m.name for m in self.models]

    @property
    def secondary_names(self) -> list[str]:
        """The secondary classifiers this camera's detections go to (each once)."""
        return list(dict.fromkeys(s.model for m in self.models for s in m.secondary))

    @property
    def all_model_names(self) -> list[str]:
        return [*self.model_names, *self.secondary_names]

    def secondaries(self, model: str) -> tuple[SecondarySpec, ...]:
        return next((m.secondary for m in self.models if m.name == model), ())

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme


class Snapshots(Strict):
    """Local, face-redacted JPEGs of inferred frames; off by default. Never published."""

    enabled: bool = False
    dir: Path | None = Field(default=None, description="default: <state_dir>/snapshots")
    interval_s: float = Field(default=60.0, ge=1)
    redact_model: str = Field(default="centerface", description="a face model every snapshot camera runs")
    keep: int = Field(default=100, ge=1, le=100_000, description="per camera; the oldest are deleted")


class CaptureConfig(Strict):
    python: Path = Field(default=Path("/usr/bin/python3"), description="system Python with python3-gi")
    decoder: Literal["auto", "software", "nvv4l2"] = "auto"
    detections_max_rate_hz: float = Field(default=5.0, gt=0, le=60, description="per camera and model, QoS 0")
    state_interval_s: float = Field(default=5.0, ge=0.5, le=600)
    preprocess_workers: int = Field(default=1, ge=1, le=8)
    object_timeout_s: float = Field(default=2.0, gt=0, le=600, description="an object unseen this long ends")
    object_update_s: float = Field(default=5.0, gt=0, le=3600, description="at most one update event per object per this")
    object_min_frames: int = Field(default=2, ge=1, le=100, description="frames an object is seen in before its new event")
    snapshots: Snapshots = Snapshots()
    secondary_wait_ms: float = Field(default=250.0, ge=0, le=5000, description=(
        "a frame's detections message waits at most this long for its secondary classifiers' results"))
