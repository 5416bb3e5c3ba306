"""The backend seam: load a model, describe its tensors, run one batch.

Kept deliberately small so that an out-of-process worker (TensorRT on the Jetson's system
Python, or ONNX Runtime in a child process) fits behind it with nothing but a pipe and shared
memory. Batching, preprocessing and activations live outside backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension (the batch axis)
    dtype: str  # numpy dtype name, e.g. "float32"


@dataclass(frozen=True)
class BackendInfo:
    """What results and the status message say about how a model is served."""

    backend: str  # "onnxruntime", "tensorrt"
    precision: str  # "fp32", "fp16", "int8"
    device: str  # "cpu", "gpu", "dla0"
    detail: dict = field(default_factory=dict)


class BackendError(RuntimeError):
    """A batch could not be inferred; the batcher turns it into per-request errors."""


class Backend(ABC):
    """One loaded model. ``infer`` is called from a single batcher thread at a time."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise on failure (the daemon reports it and does not serve the model)."""

    @property
    @abstractmethod
    def info(self) -> BackendInfo: ...

    @property
    @abstractmethod
    def input_spec(self) -> TensorSpec: ...

    @property
    @abstractmethod
    def output_spec(self) -> TensorSpec: ...

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, ...) and return raw outputs (N, K), before any activation."""

    def warmup(self, max_batch: int) -> None:
        """Run a zero batch once so the first real request does not pay for allocation."""
        shape = tuple(max_batch if d == -1 else d for d in self.input_spec.shape)
        self.infer(np.zeros(shape, dtype=self.input_spec.dtype))

    def close(self) -> None:
        """Release resources; default: nothing to release."""
