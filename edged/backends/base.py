"""The backend seam: load a model, describe its tensors, run one batch.

Kept deliberately small so that an out-of-process worker (TensorRT on the Jetson's system
Python, or ONNX Runtime in a child process) fits behind it with nothing but a pipe and shared
memory. Batching, preprocessing and output decoding live outside backends.

A model has one input and any number of named outputs of any shape; ``infer`` returns every
output, batch axis first, in the network's own dtype (float32, float16, int32, uint8...).

Threads: ``infer`` and ``warmup`` may be called from any thread, also concurrently (the
batcher's thread serves; the control thread re-warms after a power-mode change). Each backend
makes that safe: ONNX Runtime's ``InferenceSession.run`` is thread-safe by contract, the
worker backend serializes calls to its child with a lock.

Loading: ``load`` raises on failure. The daemon then reports the model as unavailable (log,
retained status, ``backend`` event) and serves the others; it exits only when no model is left.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

SERVABLE_DTYPES = ("float32", "float16", "int32", "int64", "uint8", "int8", "float64")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension (the batch axis and, e.g., image size)
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


Outputs = dict[str, np.ndarray]


class Backend(ABC):
    """One loaded model; see the module docstring for the threading and loading contracts."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise on failure."""

    @property
    @abstractmethod
    def info(self) -> BackendInfo: ...

    @property
    @abstractmethod
    def input_spec(self) -> TensorSpec: ...

    @property
    @abstractmethod
    def output_specs(self) -> tuple[TensorSpec, ...]:
        """Every output of the network, in the network's order."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> Outputs:
        """Run one batch (N, ...) and return every raw output by name, each (N, ...)."""

    def warmup(self, max_batch: int, sample_shape: tuple[int, ...] | None = None) -> None:
        """Run a zero batch once so the first real request does not pay for allocation.
        ``sample_shape`` (without the batch axis) fills dynamic dimensions; the manifest knows it."""
        dims = sample_shape or tuple(1 if d == -1 else d for d in self.input_spec.shape[1:])
        self.infer(np.zeros((max_batch, *dims), dtype=self.input_spec.dtype))

    def close(self) -> None:
        """Release resources; default: nothing to release."""


def check_outputs(outputs: Outputs, specs: tuple[TensorSpec, ...], batch: int) -> Outputs:
    """Every declared output present, batch-first with ``batch`` rows: a backend that breaks the
    seam fails here, loudly, instead of handing one request another's row."""
    missing = [s.name for s in specs if s.name not in outputs]
    if missing:
        raise BackendError(f"backend returned no {', '.join(missing)}")
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != batch:
            raise BackendError(f"output {name} has shape {arr.shape} for a batch of {batch}")
    return outputs
