"""Measured batching per power mode: the override file ``edged tune`` writes and the daemon reads.

``power_profiles/`` holds hand-written starting values for every module of a family; a device
that has measured itself knows better. ``edged tune`` writes what it measured to
``<state_dir>/tuned-batching.yaml`` (per device: the state dir is not part of the flashed image,
and a profile is shared by every board of a module). For each model and power mode it covers,
the daemon uses the file's ``max_batch_size`` and ``max_queue_delay_ms`` instead of the
profile's, and logs where the values came from; modes and models the file does not name keep
the profile's (or the manifest's) values. The manifest's ``max_batch_size`` still caps the
batch: an engine is built for a maximum batch. Values measured with another ONNX than the one
served (the file records each model's sha256) are ignored, with a warning: a model update needs
a new tune.

Modes are keyed by their nvpmodel ID; a host without power modes (x86, a Jetson without a usable
conf) uses the key ``none``. A broken file is a configuration error (``file:line: key: message``)
that ``edged check`` reports and ``edged run`` refuses to start with: a device silently running
on values nobody measured is what the file exists to prevent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edged.config.yamlsrc import ConfigError, load_yaml_file, validate
from edged.models.manifest import BatchingSpec

FILE_NAME = "tuned-batching.yaml"
SCHEMA = "edged.tuned-batching/v1"
NO_MODES = "none"  # the mode key on a host without nvpmodel power modes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measured(_Strict):
    """What the chosen point measured (for people and for the next tune; the daemon ignores it)."""

    concurrency: int = Field(ge=1, le=1024)
    throughput_per_s: float = Field(ge=0)
    p50_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    slo_ms: float = Field(gt=0)
    requests: int = Field(ge=1)


class TunedBatching(_Strict):
    max_batch_size: int = Field(ge=1, le=256)
    max_queue_delay_ms: float = Field(ge=0, le=10_000)
    measured: Measured | None = None


class TunedModel(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # the ONNX the values were measured with
    backend: str = ""
    modes: dict[str, TunedBatching] = Field(min_length=1)

    @field_validator("modes")
    @classmethod
    def _mode_keys(cls, modes: dict[str, TunedBatching]) -> dict[str, TunedBatching]:
        for key in modes:
            if key != NO_MODES and not str(key).isdigit():
                raise ValueError(f"mode key {key!r}: an nvpmodel mode ID or {NO_MODES!r}")
        return modes


class TunedFile(_Strict):
    schema_: Literal["edged.tuned-batching/v1"] = Field(alias="schema")
    device: str = ""  # what the tuner saw (module or "generic Linux x86_64"), for people
    created: str = ""
    models: dict[str, TunedModel] = Field(default_factory=dict)


def mode_key(mode_id: int | None) -> str:
    return NO_MODES if mode_id is None else str(mode_id)


def tuned_path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def load_tuned(path: Path) -> TunedFile | None:
    """The file, or None when there is none; a broken one raises :class:`ConfigError`."""
    if not path.exists():
        return None
    src = load_yaml_file(path)
    if not isinstance(src.data, dict):
        raise ConfigError([f"{path}:1: (top level): a mapping with schema: {SCHEMA} is expected"])
    # YAML reads a mode key 0 as an int; the schema keys modes as strings (IDs or "none")
    for model in (src.data.get("models") or {}).values():
        if isinstance(model, dict) and isinstance(model.get("modes"), dict):
            model["modes"] = {str(k): v for k, v in model["modes"].items()}
    return validate(TunedFile, src)


def problems(path: Path) -> list[str]:
    """``edged check``'s view of the file: its errors, or nothing."""
    try:
        load_tuned(path)
    except ConfigError as exc:
        return exc.problems
    return []


class TunedOverrides:
    """Lookup for the daemon: a model's batching under a mode, and where it came from."""

    def __init__(self, path: Path, data: TunedFile | None):
        self.path, self.data = path, data

    @classmethod
    def load(cls, path: Path) -> TunedOverrides:
        return cls(path, load_tuned(path))

    def lookup(self, model: str, mode_id: int | None) -> TunedBatching | None:
        entry = self.data.models.get(model) if self.data is not None else None
        return entry.modes.get(mode_key(mode_id)) if entry is not None else None

    def stale(self, model: str, sha256: str | None) -> str | None:
        """Why the file's values for ``model`` do not apply to the ONNX being served (they were
        measured with another one: a model update needs a new tune), or None."""
        entry = self.data.models.get(model) if self.data is not None else None
        if entry is None or sha256 is None or entry.sha256 == sha256:
            return None
        return (f"tuned values in {self.path} ignored: measured with another ONNX of {model} "
                f"(sha256 {entry.sha256[:12]}…, serving {sha256[:12]}…); run edged tune again")

    def apply(self, model: str, mode_id: int | None, spec: BatchingSpec,
              sha256: str | None = None) -> tuple[BatchingSpec, str] | None:
        """``spec`` with the tuned values for ``model`` in ``mode_id`` and a sentence saying so;
        None when the file does not cover them, or covers another ONNX than ``sha256``."""
        tuned = self.lookup(model, mode_id)
        if tuned is None or self.stale(model, sha256) is not None:
            return None
        batch = min(spec.max_batch_size, tuned.max_batch_size)
        out = spec.model_copy(update={"max_batch_size": batch, "max_queue_delay_ms": tuned.max_queue_delay_ms})
        capped = f" (capped by the manifest's {spec.max_batch_size})" if batch < tuned.max_batch_size else ""
        return out, f"tuned: {self.path} mode {mode_key(mode_id)}{capped}"
