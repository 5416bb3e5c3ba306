"""``edged selftest``: verify on a device what CI cannot (no machine of this project has a GPU).

Builds the reference model's engines (FP32 and FP16 on the GPU, FP16 on every DLA core), runs
each through the same isolated worker the daemon uses, compares it with ONNX Runtime FP32 on the
same seeded inputs, times batch 1..max and prints a pass/fail table (also written as JSON).
Where TensorRT is unavailable it says so and still exercises ONNX Runtime through the worker, so
the IPC, the worker Python and the model are checked everywhere. Exit status 1 on any failure.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from edged.backends.base import Backend
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.engines import EngineManager, trt_available
from edged.backends.tensorrt.gate import decoded_columns
from edged.backends.selection import ort_worker, trt_worker
from edged.backends.worker import probe_python
from edged.models.manifest import LoadedModel, load_manifest

WORKER_ORT_TOLERANCE = 1e-5  # same library, same inputs: only thread-order rounding may differ


@dataclass
class Row:
    target: str
    status: str  # PASS / FAIL / SKIP
    max_abs_diff: float | None = None
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> {"ms": .., "img_s": ..}
    note: str = ""


def reference_model(cache_dir: Path, kind: str) -> LoadedModel:
    """The generated reference model (seeded, untrained weights), written once under the cache dir."""
    from edged.models import synth

    folder = Path(cache_dir) / "selftest" / kind
    if not (folder / "model.yaml").exists() or not (folder / "model.onnx").exists():
        synth.write_model(kind, folder)
    return load_manifest(folder)


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


def check(target: str, backend: Backend, reference: np.ndarray, inputs: np.ndarray, tolerance: float,
          outputs: tuple, max_batch: int, repeats: int) -> Row:
    """``reference`` holds the decoded columns of the FP32 run (:func:`decoded_columns`)."""
    try:
        backend.load()
        got, _ = decoded_columns(outputs, run_all(backend, inputs, max_batch))
        diff = float(np.abs(got - reference).max())
        row = Row(target, "PASS" if diff <= tolerance else "FAIL", diff)
        if row.status == "FAIL":
            row.note = f"max abs diff {diff:.3g} > {tolerance:g}"
        row.timings = time_batches(backend, inputs, max_batch, repeats)
        info = backend.info
        row.note = row.note or f"{info.backend} {info.precision} on {info.device}, Python {info.detail.get('worker_python_version')}"
        return row
    except Exception as exc:  # a self-test reports every failure as a row, it does not stop
        return Row(target, "FAIL", note=f"{type(exc).__name__}: {exc}")
    finally:
        backend.close()


def run_selftest(cfg: TensorRTConfig, cache_dir: Path, *, model_dir: Path | None = None, kind: str = "densenet121",
                 max_batch: int = 8, repeats: int = 5, json_path: Path | None = None, require_tensorrt: bool = False,
                 env: dict[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run every check, print the table, write JSON; return the process exit status."""
    out = out or sys.stdout
    model = load_manifest(model_dir) if model_dir else reference_model(cache_dir, kind)
    ref_backend = OnnxRuntimeBackend(model.onnx_path)
    ref_backend.load()
    shape = ref_backend.input_spec.shape
    inputs = np.random.default_rng(0).standard_normal((max(2 * max_batch, 8), *shape[1:])).astype(np.float32)
    outputs = model.manifest.decoded_outputs
    reference, _ = decoded_columns(outputs, run_all(ref_backend, inputs, max_batch))
    rows = [Row("onnxruntime in-process (reference)", "PASS", 0.0, time_batches(ref_backend, inputs, max_batch, repeats),
                "FP32 reference")]
    ref_backend.close()
    rows.append(check("onnxruntime via worker", ort_worker(model.onnx_path, model.name, cfg, env=env), reference,
                      inputs, WORKER_ORT_TOLERANCE, outputs, max_batch, repeats))

    probe = probe_python(cfg.worker_python, cfg.probe_timeout_s, env=env)
    ok, why = trt_available(probe)
    if not ok:
        rows.append(Row("tensorrt", "FAIL" if require_tensorrt else "SKIP", note=f"unavailable: {why}"))
    else:
        targets = [("fp32", None), ("fp16", None)] + [("fp16", k) for k in range(int(probe.get("dla_cores") or 0))]
        for precision, dla in targets:
            name = f"tensorrt {precision} {'GPU' if dla is None else f'DLA{dla}'}"
            try:
                manager = EngineManager(model, probe, cfg, cache_dir, precision=precision, dla_core=dla,
                                        max_batch=max_batch, env=env,
                                        progress=lambda text, frac: print(f"  {text}", file=out, flush=True))
                engines = manager.ensure()
            except Exception as exc:
                rows.append(Row(name, "FAIL", note=f"build: {exc}"))
                continue
            tolerance = model.manifest.accuracy.max_abs_diff
            rows.append(check(name, trt_worker(engines, model.name, cfg, env=env), reference, inputs, tolerance,
                              outputs, max_batch, repeats))
            if engines.placement:
                rows[-1].note += f"; {engines.placement['gpu']} of {engines.placement['layers']} layers fell back to GPU"

    print_table(rows, out)
    report = {"model": model.name, "model_sha256": model.sha256, "probe": probe, "tensorrt": why,
              "rows": [asdict(r) for r in rows], "passed": all(r.status != "FAIL" for r in rows)}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2, default=str))
        print(f"report written to {json_path}", file=out)
    return 0 if report["passed"] else 1


def print_table(rows: list[Row], out: TextIO) -> None:
    print(f"{'target':<36} {'status':<6} {'max|diff|':>10} {'batch':>5} {'ms':>9} {'img/s':>8}  note", file=out)
    for r in rows:
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}"
        batches = sorted(r.timings) or [None]
        for i, b in enumerate(batches):
            t = r.timings.get(b, {}) if b else {}
            head = (r.target, r.status, diff) if i == 0 else ("", "", "")
            print(f"{head[0]:<36} {head[1]:<6} {head[2]:>10} {b or '-':>5} {t.get('ms', '-'):>9} "
                  f"{t.get('img_s', '-'):>8}  {r.note if i == 0 else ''}", file=out)
    failed = [r.target for r in rows if r.status == "FAIL"]
    print("selftest: " + (f"FAILED ({', '.join(failed)})" if failed else "passed"), file=out)
