"""Backend selection end to end: real worker processes, the tensorrt double where TensorRT is needed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import yaml

from edged.backends.onnxruntime import OnnxRuntimeBackend
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.selection import TensorRTUnavailable, select_backend
from edged.models.manifest import load_manifest

CFG = TensorRTConfig(worker_python=sys.executable, restart_backoff_s=0.05)


def check_serves(backend, model_dir, make_inputs, atol):
    ref = OnnxRuntimeBackend(model_dir / "model.onnx")
    ref.load()
    x = make_inputs(3)
    np.testing.assert_allclose(backend.infer(x)["logits"], ref.infer(x)["logits"], atol=atol)
    ref.close()


def test_auto_without_tensorrt_serves_onnxruntime_through_the_worker(model_copy, tmp_path, plain_env, make_inputs):
    backend, reason = select_backend(load_manifest(model_copy), "auto", CFG, tmp_path, env=plain_env())
    try:
        assert backend.info.backend == "onnxruntime" and backend.info.detail["worker_pid"]
        assert reason.startswith(f"TensorRT not used: {sys.executable}")
        assert "cannot import tensorrt" in reason and "isolated worker" in reason
        check_serves(backend, model_copy, make_inputs, 0)
    finally:
        backend.close()


def test_explicit_tensorrt_without_tensorrt_says_why(model_copy, tmp_path, plain_env, doubles_env):
    with pytest.raises(TensorRTUnavailable, match="backend tensorrt configured, but .*cannot import tensorrt"):
        select_backend(load_manifest(model_copy), "tensorrt", CFG, tmp_path, env=plain_env())
    no_gpu = doubles_env("10.3", EDGED_CUDA_DOUBLE_DEVICES="0")
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU is usable"):
        select_backend(load_manifest(model_copy), "tensorrt", CFG, tmp_path, env=no_gpu)


def test_explicit_onnxruntime_never_probes(model_copy, tmp_path, plain_env):
    cfg = CFG.model_copy(update={"worker_python": "/nonexistent/python3"})
    backend, reason = select_backend(load_manifest(model_copy), "onnxruntime", cfg, tmp_path, env=plain_env())
    backend.close()
    assert reason.startswith("backend: onnxruntime configured; serving ONNX Runtime")


@pytest.mark.parametrize("version", ["8.2", "10.3"])
def test_auto_with_tensorrt_builds_gates_and_serves(version, model_copy, tmp_path, doubles_env, events, make_inputs):
    progress: list = []
    backend, reason = select_backend(load_manifest(model_copy), "auto", CFG, tmp_path, env=doubles_env(version),
                                     max_batch=4, on_event=events, progress=lambda t, f: progress.append((t, f)))
    try:
        assert backend.info.backend == "tensorrt" and backend.info.precision == "fp16"
        assert "serving FP16 engine on GPU" in reason and "accuracy gate passed" in reason
        assert [k for k, _ in events.got] == ["engine_built", "engine_activated"]
        assert progress and progress[0][0].startswith("building chexnet-tiny fp16 engine, batch 1..4 on GPU")
        check_serves(backend, model_copy, make_inputs, 2e-2)
    finally:
        backend.close()
    events.got.clear()
    backend, _ = select_backend(load_manifest(model_copy), "auto", CFG, tmp_path, env=doubles_env(version),
                                max_batch=4, on_event=events)
    backend.close()
    assert [k for k, _ in events.got] == ["engine_activated"], "second start must reuse the cached engine"
    assert "remembered from an earlier run" in events.got[0][1]["gate"]["reason"]


def test_engine_failing_the_gate_is_not_activated(model_copy, tmp_path, doubles_env, events, make_inputs):
    manifest = yaml.safe_load((model_copy / "model.yaml").read_text())
    manifest["accuracy"] = {"max_abs_diff": 1e-9, "mean_abs_diff": 1e-9}  # FP16 rounding cannot pass this
    (model_copy / "model.yaml").write_text(yaml.safe_dump(manifest))
    backend, reason = select_backend(load_manifest(model_copy), "auto", CFG, tmp_path, env=doubles_env("8.5"),
                                     max_batch=2, on_event=events)
    try:
        assert backend.info.backend == "onnxruntime"
        assert "TensorRT fp16 engine on GPU not activated: accuracy gate failed" in reason and "max abs diff" in reason
        rejected = [f for k, f in events.got if k == "engine_rejected"]
        assert len(rejected) == 1 and not rejected[0]["passed"] and rejected[0]["inputs"] == "synthetic"
        check_serves(backend, model_copy, make_inputs, 0)
    finally:
        backend.close()


def test_failed_build_falls_back_with_the_reason(model_copy, tmp_path, doubles_env, events):
    env = doubles_env("10.3", EDGED_TRT_DOUBLE_FAIL="build")
    backend, reason = select_backend(load_manifest(model_copy), "tensorrt", CFG, tmp_path, env=env, on_event=events)
    backend.close()
    assert backend.info.backend == "onnxruntime"
    assert "TensorRT engine unavailable (TensorRT could not build the engine" in reason
    assert [k for k, _ in events.got] == ["engine_failed"]


def test_dla_model_gets_static_engines_and_a_placement_event(model_copy, tmp_path, doubles_env, events, make_inputs):
    backend, reason = select_backend(load_manifest(model_copy), "auto", CFG, tmp_path, env=doubles_env("8.5"),
                                     dla_core=1, max_batch=3, on_event=events)
    try:
        assert backend.info.device == "dla1" and "engine on DLA1" in reason
        assert [k for k, _ in events.got].count("engine_built") == 3  # batch 1, 2, 3
        placement = [f for k, f in events.got if k == "dla_placement"]
        assert len(placement) == 1 and placement[0]["gpu"] > 0 and placement[0]["dla_core"] == 1
        assert len(backend.info.detail["engines"]) == 3
        check_serves(backend, model_copy, make_inputs, 2e-2)
    finally:
        backend.close()


@pytest.mark.parametrize("failure,says", [("deserialize_crash", "killed by SIGSEGV during load"),
                                          ("deserialize_hang", "did not answer load within 3 s")])
def test_worker_dying_while_loading_the_engine_falls_back(failure, says, model_copy, tmp_path, doubles_env, events,
                                                          make_inputs):
    """A segfault or hang in deserialize is a plain BackendError from the worker, not a WorkerLoadError."""
    cfg = CFG.model_copy(update={"load_timeout_s": 3.0})
    env = doubles_env("10.3", EDGED_TRT_DOUBLE_FAIL=failure)
    backend, reason = select_backend(load_manifest(model_copy), "auto", cfg, tmp_path, env=env, max_batch=2,
                                     on_event=events)
    try:
        assert backend.info.backend == "onnxruntime"
        assert reason.startswith("TensorRT engine unavailable (") and says in reason
        assert [k for k, _ in events.got] == ["engine_built", "engine_failed"]
        assert events.got[1][1]["stage"] == "load" and says in events.got[1][1]["error"]
        check_serves(backend, model_copy, make_inputs, 0)
    finally:
        backend.close()


def test_gate_that_cannot_run_stops_the_trt_worker_and_falls_back(model_copy, tmp_path, doubles_env, events,
                                                                  monkeypatch, make_inputs):
    """An exception inside the gate (here: a validation file the preprocessing rejects) must not
    escape select_backend, and the TensorRT worker started for the gate must not outlive it."""
    from edged.backends import selection

    started = []
    real_load_trt = selection.load_trt

    def recording_load_trt(*args, **kw):
        backend, engines = real_load_trt(*args, **kw)
        started.append((backend, backend.pid))
        return backend, engines

    monkeypatch.setattr(selection, "load_trt", recording_load_trt)
    validation = tmp_path / "validation"
    validation.mkdir()
    (validation / "broken.dcm").write_bytes(b"not really DICOM")

    def preprocess(path):
        raise ValueError(f"{path.name} is not a DICOM file")

    cfg = CFG.model_copy(update={"validation_dir": validation})
    backend, reason = select_backend(load_manifest(model_copy), "auto", cfg, tmp_path / "cache",
                                     env=doubles_env("10.3"), max_batch=2, preprocess=preprocess, on_event=events)
    try:
        assert backend.info.backend == "onnxruntime"
        assert ("TensorRT fp16 engine on GPU not activated: accuracy gate could not run "
                "(ValueError: broken.dcm is not a DICOM file)") in reason
        failed = [f for k, f in events.got if k == "engine_failed"]
        assert len(failed) == 1 and failed[0]["stage"] == "gate"
        check_serves(backend, model_copy, make_inputs, 0)
    finally:
        backend.close()
    (trt_backend, trt_pid), = started
    assert trt_backend.pid is None, "the TensorRT worker must be closed"
    with pytest.raises(ProcessLookupError):
        os.kill(trt_pid, 0)
