"""The worker's TensorRT host against the double: the right API per version, buffers, DLA engines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edged.backends.onnxruntime import OnnxRuntimeBackend

HERE = Path(__file__).resolve().parents[2] / "edged" / "backends" / "tensorrt"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mods():
    return load("trt_build"), load("trt_runtime")


def make_plan(trt, trt_build, model: Path, out: Path, precision="fp32", static=None, dla=None, max_batch=4) -> Path:
    spec = {"onnx": str(model / "model.onnx"), "plan": str(out), "log": str(out) + ".log", "precision": precision,
            "workspace_mb": 64, "max_batch": max_batch, "static_batch": static, "dla_core": dla, "heartbeat_s": 5,
            "timing_cache": None}
    trt_build.build(trt, spec, lambda msg: None)
    return out


@pytest.fixture(scope="module")
def reference(tiny_model):
    ref = OnnxRuntimeBackend(tiny_model / "model.onnx", threads=1)
    ref.load()
    yield ref
    ref.close()


@pytest.mark.parametrize("version,api,execute", [("8.2", "bindings", "context.execute_async_v2"),
                                                 ("8.5", "tensor", "context.execute_async_v3"),
                                                 ("10.3", "tensor", "context.execute_async_v3")])
def test_dynamic_engine_per_version(version, api, execute, trt, mods, tiny_model, tmp_path, reference, make_inputs):
    trt_build, trt_runtime = mods
    trt.use(version)
    plan = make_plan(trt, trt_build, tiny_model, tmp_path / "e.plan")
    host = trt_runtime.create_host({"engines": [{"path": str(plan), "batch": None}], "max_batch": 4,
                                    "dla_core": None, "precision": "fp32"})
    desc = host.describe()
    assert desc["input"] == {"name": "image", "shape": [-1, 3, 64, 64], "dtype": "float32"}
    assert [o["shape"] for o in desc["outputs"]] == [[-1, 14]] and desc["info"]["detail"]["api"] == api
    del trt.calls[:]
    x = make_inputs(3)
    np.testing.assert_allclose(dict(host.infer(x))["logits"], reference.infer(x)["logits"], atol=1e-6)
    assert [v for w, v in trt.calls if w == execute] == [(3, 3, 64, 64)]  # the shape set for this batch
    other = "context.execute_async_v2" if execute.endswith("v3") else "context.execute_async_v3"
    assert not [c for c in trt.calls if c[0] == other]
    x = make_inputs(10, seed=2)  # larger than the engine's max: split into 4 + 4 + 2
    np.testing.assert_allclose(dict(host.infer(x))["logits"], reference.infer(x)["logits"], atol=1e-6)
    assert [v[0] for w, v in trt.calls if w == execute][-3:] == [4, 4, 2]


def test_dla_static_engines_pick_the_smallest_that_fits(trt, mods, tiny_model, tmp_path, reference, make_inputs):
    trt_build, trt_runtime = mods
    trt.use("8.5")
    plans = [make_plan(trt, trt_build, tiny_model, tmp_path / f"b{b}.plan", "fp16", static=b, dla=0) for b in (1, 2, 4)]
    del trt.calls[:]
    host = trt_runtime.create_host({"engines": [{"path": str(p), "batch": b} for p, b in zip(plans, (1, 2, 4))][::-1],
                                    "max_batch": 4, "dla_core": 0, "precision": "fp16"})
    assert ("Runtime.DLA_core", 0) in trt.calls  # set before deserializing
    assert host.describe()["info"]["device"] == "dla0"
    del trt.calls[:]
    x = make_inputs(3)
    got = dict(host.infer(x))["logits"]  # runs on the batch-4 engine with one zero row of padding
    assert got.shape == (3, 14)
    np.testing.assert_allclose(got, reference.infer(x)["logits"], atol=2e-3)  # FP16 rounding of the double
    assert [v for w, v in trt.calls if w == "context.execute_async_v3"] == [None]  # static: no shape set
    assert [v for w, v in trt.calls if w == "context.executed_shape"] == [(4, 3, 64, 64)]
    del trt.calls[:]
    host.infer(make_inputs(1))
    assert [v for w, v in trt.calls if w == "context.executed_shape"] == [(1, 3, 64, 64)]


def test_rejected_plan_is_a_deserialize_failure_with_tensorrts_words(trt, mods, tiny_model, tmp_path):
    trt_build, trt_runtime = mods
    trt.use("8.5")
    plan = make_plan(trt, trt_build, tiny_model, tmp_path / "e.plan")
    trt.use("10.3")  # the JetPack upgrade case: same file, newer TensorRT
    with pytest.raises(trt_runtime.HostError) as info:
        trt_runtime.create_host({"engines": [{"path": str(plan), "batch": None}], "max_batch": 4})
    assert info.value.code == "deserialize_failed" and "Version tag does not match" in str(info.value)
    (tmp_path / "junk.plan").write_bytes(b"\x00" * 64)
    with pytest.raises(trt_runtime.HostError, match="magicTag"):
        trt_runtime.create_host({"engines": [{"path": str(tmp_path / "junk.plan"), "batch": None}], "max_batch": 4})


@pytest.mark.parametrize("version", ["8.0", "8.2", "8.5"])
def test_dtypes_do_not_go_through_trt_nptype_numpy_1_24(version, trt, mods, tiny_model, tmp_path, monkeypatch,
                                                        make_inputs, reference):
    """trt.nptype up to 8.5 reads np.bool, which numpy 1.24-1.26 do not have (JetPack 5.1 with pip's
    numpy; test_trt_compat runs that for real under numpy 1.24.4). numpy 2 has np.bool again, so here
    nptype is made to fail the way it does there."""
    trt_build, trt_runtime = mods
    trt.use(version)
    plan = make_plan(trt, trt_build, tiny_model, tmp_path / "e.plan")

    def nptype_on_numpy_1_24(trt_type):
        raise AttributeError("module 'numpy' has no attribute 'bool'")

    monkeypatch.setattr(trt, "nptype", nptype_on_numpy_1_24)
    host = trt_runtime.create_host({"engines": [{"path": str(plan), "batch": None}], "max_batch": 4})
    assert host.describe()["outputs"][0]["dtype"] == "float32"
    x = make_inputs(2)
    np.testing.assert_allclose(dict(host.infer(x))["logits"], reference.infer(x)["logits"], atol=1e-6)
    assert trt_runtime.np_dtype(trt.DataType.HALF) == np.float16 and trt_runtime.np_dtype(trt.DataType.BOOL) == np.bool_


def test_runtime_works_in_the_primary_context_made_before_it(trt, mods, tiny_model, tmp_path):
    trt_build, trt_runtime = mods
    trt.use("8.2")
    import pycuda.driver as cuda

    del cuda.calls[:]
    plan = make_plan(trt, trt_build, tiny_model, tmp_path / "e.plan")

    trt_runtime.create_host({"engines": [{"path": str(plan), "batch": None}], "max_batch": 4})
    assert "make_context" not in cuda.calls and "retain_primary_context" in cuda.calls
    assert cuda.current_context().primary


def test_plan_from_another_compute_capability_is_refused(trt, mods, tiny_model, tmp_path, monkeypatch):
    trt_build, trt_runtime = mods
    trt.use("8.5")
    plan = make_plan(trt, trt_build, tiny_model, tmp_path / "e.plan")  # built on a Xavier (7.2)
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_CC", "8.7")  # the card moved to an Orin
    with pytest.raises(trt_runtime.HostError) as info:
        trt_runtime.create_host({"engines": [{"path": str(plan), "batch": None}], "max_batch": 4})
    assert info.value.code == "deserialize_failed" and "incompatible device" in str(info.value)


def test_a_full_dla_core_is_not_a_deserialize_failure(trt, mods, tiny_model, tmp_path):
    """17 loadables on one core: TensorRT refuses to load; rebuilding the plan would not help."""
    trt_build, trt_runtime = mods
    trt.use("8.5")
    plans = [make_plan(trt, trt_build, tiny_model, tmp_path / f"b{b}.plan", "fp16", static=b, dla=0, max_batch=b)
             for b in range(1, 18)]
    engines = [{"path": str(p), "batch": b} for p, b in zip(plans, range(1, 18))]
    host = trt_runtime.create_host({"engines": engines[:16], "max_batch": 16, "dla_core": 0, "precision": "fp16"})
    with pytest.raises(trt_runtime.HostError) as info:
        trt_runtime.create_host({"engines": engines[16:], "max_batch": 17, "dla_core": 0, "precision": "fp16"})
    assert info.value.code == "dla_load_failed" and "at most 16 loadables" in str(info.value)
    host.close()
    del host
    import gc

    gc.collect()
    trt_runtime.create_host({"engines": engines[16:], "max_batch": 17, "dla_core": 0, "precision": "fp16"})
