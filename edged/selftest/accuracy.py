"""Accuracy and speed of a backend against the FP32 ONNX Runtime reference, as self-test rows.

The reference model is generated (seeded, untrained weights) under the cache dir, so the
self-test needs nothing from the model repository; inputs are seeded too, so two devices'
reports compare. A backend is loaded, run over every input in chunks of ``max_batch``, its
decoded outputs compared with the reference's (max |diff| against a tolerance), and batch
1..max timed (median of ``repeats``). Every exception becomes a FAIL row: a self-test reports,
it does not stop.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged.backends.base import Backend
from edged.backends.tensorrt.gate import decoded_columns
from edged.models.manifest import LoadedModel, load_manifest
from edged.selftest.report import Row

WORKER_ORT_TOLERANCE = 1e-5  # same library, same inputs: only thread-order rounding may differ


def reference_model(cache_dir: Path, kind: str) -> LoadedModel:
    """The generated reference model (seeded, untrained weights), written once under the cache dir."""
    from edged.models import synth

    folder = Path(cache_dir) / "selftest" / kind
    if not (folder / "model.yaml").exists() or not (folder / "model.onnx").exists():
        synth.write_model(kind, folder)
    return load_manifest(folder)


@dataclass
class Reference:
    """The model, its seeded inputs and the decoded FP32 ONNX Runtime outputs every row compares with."""

    model: LoadedModel
    inputs: np.ndarray
    columns: np.ndarray
    max_batch: int
    repeats: int

    @classmethod
    def make(cls, model: LoadedModel, max_batch: int, repeats: int) -> tuple["Reference", Row]:
        from edged.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(model.onnx_path)
        backend.load()
        try:
            shape = backend.input_spec.shape
            inputs = np.random.default_rng(0).standard_normal((max(2 * max_batch, 8), *shape[1:])).astype(np.float32)
            columns, _ = decoded_columns(model.manifest.decoded_outputs, run_all(backend, inputs, max_batch))
            ref = cls(model, inputs, columns, max_batch, repeats)
            timings = time_batches(backend, inputs, max_batch, repeats)
        finally:
            backend.close()
        return ref, Row("tensorrt", "onnxruntime in-process (reference)", "PASS",
                        f"FP32 reference of {model.name}; {_speed(timings)}", {"timings": timings})

    def compare(self, backend: Backend) -> float:
        got, _ = decoded_columns(self.model.manifest.decoded_outputs, run_all(backend, self.inputs, self.max_batch))
        return float(np.abs(got - self.columns).max())

    def check(self, target: str, backend: Backend, tolerance: float, *, keep_open: bool = False) -> Row:
        """Load ``backend``, compare it, time it; closed afterwards unless ``keep_open``."""
        try:
            backend.load()
            diff = self.compare(backend)
            timings = time_batches(backend, self.inputs, self.max_batch, self.repeats)
            info = backend.info
            data = {"max_abs_diff": diff, "tolerance": tolerance, "timings": timings, "backend": info.backend,
                    "precision": info.precision, "device": info.device,
                    "worker_python": info.detail.get("worker_python_version")}
            if diff > tolerance:
                return Row("tensorrt", target, "FAIL", f"max |diff| {diff:.3g} > {tolerance:g}", data)
            return Row("tensorrt", target, "PASS", f"{info.backend} {info.precision} on {info.device}, max |diff| "
                       f"{diff:.2g}; {_speed(timings)}", data)
        except Exception as exc:  # a self-test reports every failure as a row, it does not stop
            return Row("tensorrt", target, "FAIL", f"{type(exc).__name__}: {exc}")
        finally:
            if not keep_open:
                backend.close()


def time_batches(backend: Backend, inputs: np.ndarray, max_batch: int, repeats: int) -> dict[int, dict[str, float]]:
    out = {}
    for b in range(1, max_batch + 1):
        backend.infer(inputs[:b])  # first call per shape pays allocation/shape setup
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.infer(inputs[:b])
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        out[b] = {"ms": round(ms, 3), "img_s": round(b / (ms / 1000), 1)}
    return out


def run_all(backend: Backend, inputs: np.ndarray, max_batch: int) -> dict[str, np.ndarray]:
    parts = [backend.infer(inputs[i:i + max_batch]) for i in range(0, len(inputs), max_batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _speed(timings: dict[int, dict[str, float]]) -> str:
    if not timings:
        return ""
    lo, hi = min(timings), max(timings)
    return f"batch {lo}: {timings[lo]['ms']} ms, batch {hi}: {timings[hi]['img_s']} img/s"
