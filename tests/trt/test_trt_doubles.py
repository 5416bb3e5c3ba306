"""The tensorrt/pycuda doubles fail where the real modules fail, per TensorRT version.

Each behaviour here is written from the binding sources (NVIDIA/TensorRT python/src/infer at the
8.0.1 / 8.2.1 / 8.5.2 / v8.6.1 / v10.3.0 tags), the TensorRT developer guide and pycuda's
autoinit/autoprimaryctx; the code under test is checked against these doubles elsewhere.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ALL = ["8.0", "8.2", "8.5", "8.6", "10.3"]
BUILD = Path(__file__).resolve().parents[2] / "edged" / "backends" / "tensorrt" / "trt_build.py"


def small_network(trt, builder):
    flags = 0 if trt.__version__.startswith("10.") else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    trt.NETWORK = {"inputs": [["x", [-1, 4]]], "outputs": [["y", [-1, 4]]], "layers": [["relu", "Relu"]]}
    assert trt.OnnxParser(network, trt.Logger()).parse(b"onnx")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (2, 4))
    config.add_optimization_profile(profile)
    return network, config


@pytest.mark.parametrize("version", ALL)
def test_a_callback_that_raises_aborts_before_8_5(version, doubles_env):
    script = textwrap.dedent("""
        import tensorrt as trt
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
            def log(self, severity, msg):
                raise OSError(28, "No space left on device")
        config = trt.Builder(Logger()).create_builder_config()
        config.create_timing_cache(b"not a timing cache")  # TensorRT logs an error: the callback raises
        print("survived")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=doubles_env(version))
    if version in ("8.0", "8.2"):  # no try/catch in the noexcept trampoline: std::terminate
        assert proc.returncode == -signal.SIGABRT and "terminate called" in proc.stderr
        assert "survived" not in proc.stdout
    else:
        assert proc.returncode == 0 and "survived" in proc.stdout
        assert "[ERROR] Exception caught in log(): OSError" in proc.stderr


def test_a_second_context_made_after_the_builder_breaks_it(trt):
    """pycuda.autoinit after the Builder: TensorRT's objects live in the primary context."""
    trt.use("8.2")
    builder = trt.Builder(trt.Logger())
    import pycuda.autoinit  # noqa: F401

    network, config = small_network(trt, builder)
    errors = []
    builder.logger.log = lambda severity, msg: errors.append(msg)
    assert builder.build_serialized_network(network, config) is None
    assert "invalid resource handle" in errors[-1]


def test_the_primary_context_made_current_works_before_or_after(trt):
    trt.use("8.2")
    import pycuda.autoprimaryctx  # noqa: F401

    builder = trt.Builder(trt.Logger())
    network, config = small_network(trt, builder)
    assert builder.build_serialized_network(network, config) is not None


def test_pycuda_needs_a_context_and_autoprimaryctx_needs_2021_1(trt, monkeypatch):
    import pycuda.driver as cuda

    cuda.init()
    with pytest.raises(cuda.LogicError, match="invalid device context"):
        cuda.mem_alloc(16)
    for name in [m for m in sys.modules if m.startswith("pycuda")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("EDGED_PYCUDA_DOUBLE_VERSION", "2020.1")
    with pytest.raises(ImportError):
        import pycuda.autoprimaryctx  # noqa: F401


def test_int8_build_falls_back_to_a_primary_context_by_hand_on_old_pycuda(trt, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGED_PYCUDA_DOUBLE_VERSION", "2020.1")
    trt.use("8.2")
    spec = importlib.util.spec_from_file_location("trt_build_old_pycuda", BUILD)
    trt_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trt_build)
    np.save(tmp_path / "calib.npy", np.zeros((8, 3, 64, 64), np.float32))
    result = trt_build.build(trt, {"onnx": str(tiny_model / "model.onnx"), "plan": str(tmp_path / "e.plan"),
                                   "log": str(tmp_path / "b.log"), "precision": "int8", "workspace_mb": 64,
                                   "max_batch": 2, "static_batch": None, "dla_core": None, "heartbeat_s": 5,
                                   "timing_cache": None, "calibration": {"tensors": str(tmp_path / "calib.npy"),
                                                                         "cache": str(tmp_path / "c.cache"),
                                                                         "batch_size": 8}}, lambda m: None)
    assert result["calibration"]["batches"] == 1


@pytest.mark.parametrize("version", ["8.2", "10.3"])
def test_timing_cache_from_another_sm_count_is_refused_and_then_none(version, trt, monkeypatch):
    trt.use(version)
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_SMS", "6")
    blob = trt.Builder(trt.Logger()).create_builder_config().create_timing_cache(b"").serialize()
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_SMS", "8")
    config = trt.Builder(trt.Logger()).create_builder_config()
    cache = config.create_timing_cache(blob)
    assert config.set_timing_cache(cache, False) is False and config.get_timing_cache() is None
    assert config.set_timing_cache(cache, True) is True  # ignore_mismatch skips the check
    assert config.create_timing_cache(b"junk") is None


@pytest.mark.parametrize("cc,int8,dla", [("5.3", False, 0), ("6.2", False, 0), ("7.2", True, 2), ("8.7", True, 2)])
def test_gpu_facts_per_jetson(cc, int8, dla, trt, monkeypatch):
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_CC", cc)
    builder = trt.Builder(trt.Logger())
    assert builder.platform_has_fast_int8 is int8 and builder.platform_has_fast_fp16
    assert builder.num_DLA_cores == dla == trt.Runtime(trt.Logger()).num_DLA_cores


@pytest.mark.parametrize("version", ALL)
def test_api_surface_per_version(version, trt):
    trt.use(version)
    mm = tuple(int(p) for p in version.split("."))
    assert hasattr(trt, "LayerInformationFormat") == (mm >= (8, 2))  # the engine inspector
    assert hasattr(trt.ProfilingVerbosity, "DETAILED") == (mm >= (8, 2))
    assert hasattr(trt.ProfilingVerbosity, "DEFAULT") == (mm < (10, 0))
    assert hasattr(trt, "MemoryPoolType") == (mm >= (8, 4))
    assert hasattr(trt, "TensorIOMode") == (mm >= (8, 5))
    assert hasattr(trt, "IProgressMonitor") == (mm >= (10, 0))
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert ("builder_optimization_level" in config._props) == (mm >= (8, 6))
    assert hasattr(trt, "uint8") == (mm >= (8, 5)) and hasattr(trt, "int64") == (mm >= (10, 0))
    assert trt.__version__.startswith(version)
