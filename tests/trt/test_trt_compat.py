"""The device-side files under the Jetson Pythons (3.6 on JetPack 4.6, 3.8 on JetPack 5).

pyenv's 3.6 / 3.8 with an old numpy stand in for the system Pythons: the worker child, the
TensorRT runtime host and the builder script are byte-compiled there, the child's IPC self-test
runs there, the daemon (numpy 2) exchanges tensors with a child on numpy 1.x, and a whole
TensorRT build + inference runs there against the 8.2 / 8.5 doubles (no onnxruntime on those
interpreters, so the double's engine computes its fixed formula).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edged.backends.tensorrt.builder import BuildOptions, run_builder
from edged.backends.worker import WorkerBackend, probe_python
from edged.backends.worker.process import CHILD_PATH

DEVICE_FILES = ["edged/backends/worker/child.py", "edged/backends/worker/device_probe.py", "edged/backends/tensorrt/trt_runtime.py",
                "edged/backends/tensorrt/trt_build.py", "edged/backends/tensorrt/trt_callbacks.py",
                "edged/backends/tensorrt/trt_placement.py", "tests/doubles/tensorrt/__init__.py",
                "tests/doubles/tensorrt/_runtime.py", "tests/doubles/tensorrt/_build.py",
                "tests/doubles/tensorrt/_device.py", "tests/doubles/pycuda/__init__.py",
                "tests/doubles/pycuda/driver.py", "tests/doubles/pycuda/autoinit.py",
                "tests/doubles/pycuda/autoprimaryctx.py", "tests/doubles/pycuda/tools.py"]
JETSON = [("3.6", "8.0"), ("3.6", "8.2"), ("3.8", "8.5"), ("3.8-numpy1.24", "8.5")]
# numpy as the devices ship it (python3-numpy of Ubuntu 18.04 / JetPack 4.6 and 20.04 / JetPack 5):
# the oldest numpy the device-side files meet, which tools/setup-compat-pythons.sh installs.
JETPACK_NUMPY = {"3.6": "1.13.3", "3.8": "1.17.4"}
SETUP = Path(__file__).resolve().parents[2] / "tools" / "setup-compat-pythons.sh"


@pytest.mark.parametrize("minor", ["3.6", "3.8"])
def test_device_files_compile_and_ipc_self_test_runs(minor, compat_python, tmp_path):
    exe = compat_python(minor)
    for rel in DEVICE_FILES:
        src = Path(__file__).resolve().parents[2] / rel
        res = subprocess.run([exe, "-c", "import py_compile,sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
                              "doraise=True)", str(src), str(tmp_path / "x.pyc")], capture_output=True, text=True)
        assert res.returncode == 0, f"{rel} is not Python {minor} syntax:\n{res.stderr}"
    res = subprocess.run([exe, "-B", str(CHILD_PATH), "--self-test"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["python"].startswith(minor)
    assert set(report["dtypes"]) == {"float32", "float16", "uint8", "int32", "int64", "float64", "int8"}


@pytest.mark.parametrize("minor", ["3.6", "3.8"])
def test_numpy2_daemon_and_numpy1_child_exchange_tensors(minor, compat_python, plain_env):
    exe = compat_python(minor)
    backend = WorkerBackend("echo", {"input_shape": [-1, 3, 8, 8], "dtype": "float16"}, python_exe=exe, env=plain_env())
    backend.load()
    try:
        assert backend.info.detail["worker_python_version"].startswith(minor)
        assert backend._worker.hello["numpy"] == JETPACK_NUMPY[minor], "run tools/setup-compat-pythons.sh"
        x = (np.random.default_rng(0).standard_normal((6, 3, 8, 8)) * 100).astype(np.float16)
        np.testing.assert_array_equal(backend.infer(x)["output"], x.reshape(6, -1).astype(np.float32))
    finally:
        backend.close()


@pytest.mark.parametrize("minor,trt_version", JETSON)
def test_tensorrt_build_and_inference_under_the_jetson_python(minor, trt_version, compat_python, doubles_env,
                                                              tiny_model, tmp_path):
    exe = compat_python(minor)
    network = {"inputs": [["image", [-1, 3, 64, 64]]], "outputs": [["logits", [-1, 14]]],
               "layers": [["conv0", "Conv"], ["relu0", "Relu"], ["gap", "GlobalAveragePool"], ["fc", "Gemm"]]}
    env = doubles_env(trt_version, EDGED_TRT_DOUBLE_NETWORK=json.dumps(network),
                      EDGED_TRT_DOUBLE_RECORD=str(tmp_path / "calls.jsonl"))
    probe = probe_python(exe, env=env)
    assert probe["tensorrt"].startswith(trt_version) and probe["gpu"]["compute_capability"] == "7.2"
    plan = tmp_path / "e.plan"
    summary = run_builder(tiny_model / "model.onnx", plan, tmp_path / "build.log",
                          BuildOptions("fp16", max_batch=4), python_exe=exe, timing_cache=tmp_path / "t.cache", env=env)
    assert summary["trt_version"].startswith(trt_version) and plan.exists()
    backend = WorkerBackend("external", {"module": str(CHILD_PATH.parents[1] / "tensorrt" / "trt_runtime.py"),
                                         "engines": [{"path": str(plan), "batch": None}], "max_batch": 4,
                                         "dla_core": None, "precision": "fp16"}, python_exe=exe, env=env)
    backend.load()
    try:
        info = backend.info
        assert info.backend == "tensorrt" and info.detail["api"] == ("tensor" if trt_version >= "8.5" else "bindings")
        x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
        got = backend.infer(x)["logits"]
        # The double's formula (no onnxruntime here): per-sample mean + 0.01 * k, rounded through float16.
        want = (x.reshape(3, -1).mean(axis=1, keepdims=True) + np.arange(14) * 0.01).astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(got, want, atol=1e-3)
    finally:
        backend.close()
    recorded = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert ("context.execute_async_v3" if trt_version >= "8.5" else "context.execute_async_v2") in [c[0] for c in recorded]
    names = [c[0] for c in recorded]
    assert "Runtime()" in names and names.count("Builder()") == 1, "the probe must not create a Builder"
    created = [c for c in recorded if c[0] == "builder.create_network"]
    assert created == [["builder.create_network", 1]], "TensorRT 8.x networks need the explicit-batch flag"


FAKE_PYTHON = """#!/bin/bash
# Stands in for a pyenv interpreter: its numpy version lives in a file, pip calls are logged.
here="$(dirname "$0")"
if [ "$1" = "-c" ]; then
    [ -s "$here/numpy-version" ] || exit 1
    cat "$here/numpy-version"
    exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    echo "$*" >> "$here/pip-calls"
    for arg in "$@"; do
        case "$arg" in numpy==*) echo "${arg#numpy==}" > "$here/numpy-version" ;; esac
    done
    exit 0
fi
exit 2
"""


def test_setup_script_pins_the_jetpack_numpy_and_is_idempotent(tmp_path):
    bins = {}
    for version, numpy in (("3.6.15", "1.19.5"), ("3.8.18", "")):  # a newer numpy, and none at all
        folder = tmp_path / "versions" / version / "bin"
        folder.mkdir(parents=True)
        (folder / "python").write_text(FAKE_PYTHON)
        (folder / "python").chmod(0o755)
        (folder / "numpy-version").write_text(numpy)
        bins[version[:3]] = folder

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SETUP), str(tmp_path)], capture_output=True, text=True, timeout=60)

    first = run()
    assert first.returncode == 0, first.stderr
    for minor, folder in bins.items():
        assert (folder / "numpy-version").read_text().strip() == JETPACK_NUMPY[minor]
        (call,) = (folder / "pip-calls").read_text().splitlines()
        assert f"numpy=={JETPACK_NUMPY[minor]}" in call.split() and "--only-binary=:all:" in call.split()
    second = run()
    assert second.returncode == 0 and second.stdout.count("already has numpy") == 2
    assert all(len((f / "pip-calls").read_text().splitlines()) == 1 for f in bins.values()), "nothing reinstalled"


@pytest.mark.parametrize("minor,trt_version", JETSON)
def test_a_two_output_engine_crosses_the_worker_under_the_jetson_python(minor, trt_version, compat_python,
                                                                       doubles_env, tmp_path):
    """Both named outputs, in order, through the TensorRT runtime and the worker IPC on Python
    3.6 / numpy 1.13 (and 3.8 / 1.17): the multi-output seam holds on the device's interpreter."""
    from edged.models import synth

    exe = compat_python(minor)
    folder = synth.write_model("tiny-2head", tmp_path / "model").parent
    network = {"inputs": [["image", [-1, 3, 64, 64]]], "outputs": [["logits", [-1, 14]], ["view", [-1, 3]]],
               "layers": [["conv0", "Conv"], ["gap", "GlobalAveragePool"], ["fc", "Gemm"], ["head", "Gemm"]]}
    env = doubles_env(trt_version, EDGED_TRT_DOUBLE_NETWORK=json.dumps(network))
    plan = tmp_path / "e.plan"
    run_builder(folder / "model.onnx", plan, tmp_path / "build.log", BuildOptions("fp32", max_batch=4),
                python_exe=exe, timing_cache=None, env=env)
    backend = WorkerBackend("external", {"module": str(CHILD_PATH.parents[1] / "tensorrt" / "trt_runtime.py"),
                                         "engines": [{"path": str(plan), "batch": None}], "max_batch": 4,
                                         "dla_core": None, "precision": "fp32"}, python_exe=exe, env=env)
    backend.load()
    try:
        assert [(s.name, s.shape) for s in backend.output_specs] == [("logits", (-1, 14)), ("view", (-1, 3))]
        x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
        got = backend.infer(x)
        mean = x.reshape(3, -1).mean(axis=1, keepdims=True)  # the double's formula, per output width
        np.testing.assert_allclose(got["logits"], mean + np.arange(14) * 0.01, atol=1e-5)
        np.testing.assert_allclose(got["view"], mean + np.arange(3) * 0.01, atol=1e-5)
        assert backend._worker.hello["numpy"] == JETPACK_NUMPY.get(minor, "1.24.4")
    finally:
        backend.close()
