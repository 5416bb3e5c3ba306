"""ONNX Runtime on the CPU: the backend wherever there is no TensorRT engine.

Every output of the graph is returned by name in its own dtype. ``InferenceSession.run`` is
thread-safe (ONNX Runtime's documented contract), so the batcher and a control-thread warm-up
may call ``infer`` at once without a lock here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edged.backends.base import Backend, BackendError, BackendInfo, Outputs, TensorSpec

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in node.shape)
    return TensorSpec(node.name, shape, ORT_TYPES.get(node.type, node.type))


def session_options(threads: int) -> ort.SessionOptions:
    """The settings every ONNX Runtime session of edged uses (in-process, worker, reference)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads would take the cores from DICOM receive and preprocessing,
    # which share this small machine with inference.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Memory patterns pre-plan one big block per input shape: ~90 MB more peak RSS for
    # DenseNet-121 at batch 8 and no measurable speed-up here (tools/bench.py).
    opts.enable_mem_pattern = False
    return opts


class OnnxRuntimeBackend(Backend):
    """CPU execution provider; ``threads=0`` lets ONNX Runtime use every core."""

    def __init__(self, onnx_path: str | Path, threads: int = 0):
        self.onnx_path = Path(onnx_path)
        self.threads = threads
        self._session: ort.InferenceSession | None = None

    def load(self) -> None:
        self._session = ort.InferenceSession(
            str(self.onnx_path), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
        )
        if len(self._session.get_inputs()) != 1:
            raise BackendError(f"{self.onnx_path.name}: edged serves models with one input "
                               f"(this one has {len(self._session.get_inputs())})")
        unsupported = [o.name for o in self._session.get_outputs() if o.type not in ORT_TYPES]
        if unsupported:
            raise BackendError(f"{self.onnx_path.name}: outputs of unsupported type: {', '.join(unsupported)}")

    @property
    def session(self) -> ort.InferenceSession:
        if self._session is None:
            raise BackendError("backend not loaded")
        return self._session

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("onnxruntime", "fp32", "cpu", {"ort_version": ort.__version__, "threads": self.threads})

    @property
    def input_spec(self) -> TensorSpec:
        return _spec(self.session.get_inputs()[0])

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(o) for o in self.session.get_outputs())

    def infer(self, batch: np.ndarray) -> Outputs:
        session = self.session
        try:
            values = session.run(None, {session.get_inputs()[0].name: batch})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime: {exc}") from exc
        return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), values)}

    def close(self) -> None:
        self._session = None
