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
