"""The ``tensorrt:`` section of the daemon configuration.

Defaults are chosen for the smallest supported device (Jetson Nano, 4 GB shared between CPU and
GPU): a 256 MiB workspace avoids the OOM kills that end many Nano builds, and the worker runs on
``/usr/bin/python3``, which on every JetPack is the Python that JetPack's TensorRT bindings are
built for (3.6 on 4.6, 3.8 on 5.x, 3.10 on 6.x). Per-model ``precision``/``dla_core`` in the
model entry override the defaults here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TensorRTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_python: str = Field(
        default="/usr/bin/python3", description="interpreter with JetPack's tensorrt + pycuda; runs builder and worker"
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(default="fp16", description="default when a model sets none")
    dla_core: int | None = Field(default=None, ge=0, description="DLA core for models that set none; null: GPU")
    gpu_fallback: bool = Field(default=True, description="on DLA, run unsupported layers on the GPU (reported)")
    workspace_mb: int = Field(default=256, ge=16, le=65536, description="builder workspace limit")
    optimization_level: int | None = Field(default=None, ge=0, le=5, description="TensorRT 8.6+; null: TensorRT's 3")
    engine_dir: Path | None = Field(default=None, description="null: <cache_dir>/engines")
    timing_cache_dir: Path | None = Field(default=None, description="null: <engine_dir>/timing")
    calibration_dir: Path | None = Field(
        default=None, description="DICOM files only (.dcm/.dicom or DICM magic; PNG/JPEG ignored with a warning, "
                                  "since serving preprocesses DICOM); null: <model folder>/calibration")
    validation_dir: Path | None = Field(default=None, description="null: the calibration images")
    calibration_max_images: int = Field(default=500, ge=1)
    validation_max_images: int = Field(default=200, ge=1, description="accuracy gate sample size")
    calibration_batch: int = Field(default=8, ge=1, le=256)
    build_timeout_s: float = Field(default=4 * 3600, gt=0, description="a Nano INT8 build can take an hour")
    heartbeat_s: float = Field(default=15, gt=0, description="progress interval when TensorRT reports none (< 10)")
    batch_timeout_s: float = Field(default=30, gt=0, description="one batch; then the worker is killed and restarted")
    load_timeout_s: float = Field(default=300, gt=0, description="worker start + engine deserialization")
    restart_backoff_s: float = Field(default=0.5, gt=0, description="first restart delay; doubles per failure")
    restart_backoff_max_s: float = Field(default=60, gt=0)
    probe_timeout_s: float = Field(default=120, gt=0, description="asking worker_python what it can host")

    @model_validator(mode="after")
    def _backoff_order(self) -> "TensorRTConfig":
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s must be >= restart_backoff_s")
        return self

    def engines_root(self, cache_dir: Path) -> Path:
        return Path(self.engine_dir) if self.engine_dir else Path(cache_dir) / "engines"

    def timing_root(self, cache_dir: Path) -> Path:
        return Path(self.timing_cache_dir) if self.timing_cache_dir else self.engines_root(cache_dir) / "timing"
