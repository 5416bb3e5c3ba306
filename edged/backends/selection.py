"""Backend selection, in one place: which backend serves a configured model, and why.

``backend: onnxruntime`` runs ONNX Runtime in the daemon's process (the lowest overhead on a
machine without a GPU). ``auto`` and ``tensorrt`` go through the isolated worker, as follows.

``auto`` serves TensorRT when the worker Python imports tensorrt and sees a GPU, the engines
build (or come from the cache) and pass the accuracy gate; otherwise ONNX Runtime through the
worker (same crash isolation and restart policy as TensorRT). ``tensorrt`` fails with an
explanation when TensorRT is unavailable (a configuration the operator must fix), but a failed
build, a worker that dies or hangs loading the engine, a failed gate or a gate that cannot run
still fall back to ONNX Runtime: the FP32 reference is always a correct answer, and the reason
(and an event) says what happened; no TensorRT worker started here outlives a fallback.
``select_backend`` returns a *loaded* backend because these fallbacks can only be decided by
loading.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from edged.backends.base import Backend, BackendError
from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.tensorrt.builder import Preprocess, Progress
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.engines import FROM_CONFIG, EngineManager, EngineSet, EventCallback, trt_available
from edged.backends.tensorrt.gate import gate_engine
from edged.backends.worker import WorkerBackend, WorkerLoadError, probe_python
from edged.config.schema import Config, ModelEntry
from edged.models.manifest import LoadedModel
from edged.preprocess.files import preprocess_file

TRT_HOST_MODULE = (Path(__file__).parent / "tensorrt" / "trt_runtime.py").resolve()
log = logging.getLogger("edged.backends")


class TensorRTUnavailable(BackendError):
    """``backend: tensorrt`` was asked for where TensorRT cannot run; the message says why."""


def make_backend(cfg: Config, entry: ModelEntry, model: LoadedModel, *, on_event: EventCallback | None = None,
                 progress: Progress | None = None) -> tuple[Backend, str]:
    """The configured model's *loaded* backend and a sentence saying why it was chosen."""
    if entry.backend == "onnxruntime":
        backend = OnnxRuntimeBackend(model.onnx_path, threads=entry.threads)
        backend.load()
        return backend, "backend: onnxruntime configured; ONNX Runtime (FP32, CPU) in the daemon's process"
    batching = entry.batching or model.manifest.batching
    return select_backend(
        model, entry.backend, cfg.tensorrt, cfg.cache_dir, precision=entry.precision, dla_core=entry.dla_core,
        max_batch=batching.max_batch_size, threads=entry.threads, preprocess=preprocess_file(model),
        progress=progress, on_event=on_event,
    )


def ort_worker(model_path: Path, name: str, cfg: TensorRTConfig, *, threads: int = 0,
               on_event: EventCallback | None = None, env: dict[str, str] | None = None) -> WorkerBackend:
    """ONNX Runtime in a worker on the daemon's own interpreter (where onnxruntime is installed)."""
    return WorkerBackend("onnxruntime", {"model": str(model_path), "threads": threads}, python_exe=sys.executable,
                         name=name, batch_timeout_s=cfg.batch_timeout_s, load_timeout_s=cfg.load_timeout_s,
                         backoff_initial_s=cfg.restart_backoff_s, backoff_max_s=cfg.restart_backoff_max_s,
                         on_event=on_event, env=env)


def trt_worker(engines: EngineSet, name: str, cfg: TensorRTConfig, *, on_event: EventCallback | None = None,
               env: dict[str, str] | None = None) -> WorkerBackend:
    return WorkerBackend("external", engines.worker_params(TRT_HOST_MODULE), python_exe=cfg.worker_python, name=name,
                         batch_timeout_s=cfg.batch_timeout_s, load_timeout_s=cfg.load_timeout_s,
                         backoff_initial_s=cfg.restart_backoff_s, backoff_max_s=cfg.restart_backoff_max_s,
                         on_event=on_event, env=env)


def load_trt(manager: EngineManager, cfg: TensorRTConfig, on_event: EventCallback | None,
             env: dict[str, str] | None) -> tuple[WorkerBackend, EngineSet]:
    """Ensure engines and start the worker; a plan TensorRT refuses is dropped and rebuilt once."""
    engines = manager.ensure()
    for attempt in (1, 2):
        backend = trt_worker(engines, manager.model.name, cfg, on_event=on_event, env=env)
        try:
            backend.load()
            return backend, engines
        except WorkerLoadError as exc:
            if exc.code != "deserialize_failed" or attempt == 2:
                raise
            log.warning("%s: %s; rebuilding", manager.model.name, exc)
            manager.invalidate(engines, str(exc))
            engines = manager.ensure()
    raise AssertionError("unreachable")


def select_backend(model, choice: str, cfg: TensorRTConfig, cache_dir: Path, *, precision: str | None = None,
                   dla_core: int | None = None, max_batch: int | None = None, threads: int = 0,
                   preprocess: Preprocess | None = None, progress: Progress | None = None,
                   on_event: EventCallback | None = None, probe: dict | None = None,
                   env: dict[str, str] | None = None) -> tuple[Backend, str]:
    """Choose, load and return ``(backend, reason)`` for one model (a ``LoadedModel``).

    ``preprocess`` turns an image path into the model's input tensor (INT8 calibration and the
    accuracy gate use it); ``progress(text, fraction)`` reports engine builds; ``on_event``
    receives worker and engine events. Raises TensorRTUnavailable (``choice='tensorrt'`` where
    it cannot run) or BackendError (not even ONNX Runtime loads).
    """
    if choice not in ("auto", "tensorrt", "onnxruntime"):
        raise ValueError(f"backend must be auto, tensorrt or onnxruntime, not {choice!r}")

    def ort(why: str) -> tuple[Backend, str]:
        backend = ort_worker(model.onnx_path, model.name, cfg, threads=threads, on_event=on_event, env=env)
        backend.load()
        detail = backend.info.detail
        reason = (f"{why}; serving ONNX Runtime {detail.get('ort_version')} (FP32, CPU) in an isolated worker "
                  f"on Python {detail.get('worker_python_version')}")
        log.info("%s: %s", model.name, reason)
        return backend, reason

    if choice == "onnxruntime":
        return ort("backend: onnxruntime configured")
    probe = probe or probe_python(cfg.worker_python, cfg.probe_timeout_s, env=env)
    ok, why = trt_available(probe)
    if not ok:
        if choice == "tensorrt":
            raise TensorRTUnavailable(f"{model.name}: backend tensorrt configured, but {why}")
        return ort(f"TensorRT not used: {why}")
    manager = EngineManager(model, probe, cfg, cache_dir, precision=precision,
                            dla_core=FROM_CONFIG if dla_core is None else dla_core,  # None: the model sets none
                            max_batch=max_batch, preprocess=preprocess, progress=progress, on_event=on_event, env=env)
    try:
        backend, engines = load_trt(manager, cfg, on_event, env)
    except BackendError as exc:
        # Not only EngineBuildError / WorkerLoadError: a worker that segfaults or hangs while
        # deserializing (a CUDA abort, an engine from a broken JetPack) raises a plain
        # BackendError, and that is exactly when the FP32 reference must take over.
        if on_event:
            on_event("engine_failed", {"model": model.name, "stage": "load", "error": str(exc)})
        return ort(f"TensorRT engine unavailable ({exc})")
    where = "GPU" if engines.dla_core is None else f"DLA{engines.dla_core}"
    try:
        result = gate_engine(manager, backend, preprocess, engines)
    except Exception as exc:
        # The gate runs the candidate, the in-process reference and the model's preprocessing on
        # operator-supplied files: any of them can raise (worker crash mid-gate, unreadable
        # validation file). An engine that could not be checked is not served, and the worker
        # already started must not outlive this call.
        backend.close()
        error = f"{type(exc).__name__}: {exc}"
        log.warning("%s: accuracy gate could not run: %s", model.name, error)
        if on_event:
            on_event("engine_failed", {"model": model.name, "stage": "gate", "error": error})
        return ort(f"TensorRT {engines.precision} engine on {where} not activated: "
                   f"accuracy gate could not run ({error})")
    except BaseException:  # KeyboardInterrupt/SystemExit while gating: still stop the worker
        backend.close()
        raise
    if not result.passed:
        backend.close()
        if on_event:
            on_event("engine_rejected", {"model": model.name, "reason": result.reason, **result.as_dict()})
        return ort(f"TensorRT {engines.precision} engine on {where} not activated: accuracy gate {result.reason}")
    if on_event:
        on_event("engine_activated", {"model": model.name, "precision": engines.precision, "device": where,
                                      "gate": result.as_dict()})
    reason = (f"{why}: serving {engines.precision.upper()} engine on {where} "
              f"({', '.join(e.engine.name for _, e in engines.entries[:1])}{' …' if len(engines.entries) > 1 else ''}); "
              f"accuracy gate {result.reason}")
    log.info("%s: %s", model.name, reason)
    return backend, reason
