"""What the builder asks TensorRT to do, per version (8.2 / 8.5 / 10.3), against the recording double."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edged.backends.tensorrt import builder
from edged.backends.tensorrt.builder import (BuildOptions, EngineBuildError, list_images, prepare_calibration,
                                             run_builder)

BUILD = Path(__file__).resolve().parents[2] / "edged" / "backends" / "tensorrt" / "trt_build.py"
VERSIONS = ["8.2", "8.5", "10.3"]


@pytest.fixture(scope="module")
def trt_build():
    spec = importlib.util.spec_from_file_location("trt_build_under_test", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spec_for(model_dir: Path, tmp: Path, **kw) -> dict:
    spec = {"onnx": str(model_dir / "model.onnx"), "plan": str(tmp / "e.plan"), "log": str(tmp / "build.log"),
            "precision": "fp16", "workspace_mb": 256, "max_batch": 8, "static_batch": None, "dla_core": None,
            "gpu_fallback": True, "optimization_level": None, "heartbeat_s": 0.02,
            "timing_cache": str(tmp / "timing.cache"), "node_names": []}
    spec.update(kw)
    return spec


def build(trt, trt_build, spec) -> tuple[dict, list[dict], list]:
    emitted: list[dict] = []
    del trt.calls[:]
    result = trt_build.build(trt, spec, emitted.append)
    return result, emitted, list(trt.calls)


def recorded(calls, what):
    return [v for w, v in calls if w == what]


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_dynamic_batch_build_per_version(version, trt, trt_build, tiny_model, tmp_path):
    trt.use(version)
    result, emitted, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert recorded(calls, "builder.create_network") == [0 if version == "10.3" else 1]
    if version == "8.2":  # memory pools arrived in 8.4
        assert recorded(calls, "IBuilderConfig.max_workspace_size") == [256 << 20]
        assert recorded(calls, "config.set_memory_pool_limit") == []
    else:
        assert recorded(calls, "config.set_memory_pool_limit") == [["MemoryPoolType.WORKSPACE", 256 << 20]]
    assert recorded(calls, "config.set_flag") == ["BuilderFlag.FP16"]
    assert recorded(calls, "profile.set_shape") == [["image", [1, 3, 64, 64], [8, 3, 64, 64], [8, 3, 64, 64]]]
    assert recorded(calls, "config.set_timing_cache") == [False]
    monitored = recorded(calls, "IBuilderConfig.progress_monitor")
    assert bool(monitored) == (version == "10.3")
    if version == "10.3":
        assert [e["fraction"] for e in emitted if e["event"] == "progress"] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert result["trt_version"].startswith(version) and Path(tmp_path / "e.plan").read_bytes().startswith(trt.PLAN_MAGIC)
    log = (tmp_path / "build.log").read_text()
    assert "workspace limit 256 MiB" in log and "engine written" in log


def test_timing_cache_is_saved_and_reused(trt, trt_build, tiny_model, tmp_path):
    trt.use("8.5")
    build(trt, trt_build, spec_for(tiny_model, tmp_path))
    saved = (tmp_path / "timing.cache").read_bytes()
    assert saved
    _, _, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert recorded(calls, "config.create_timing_cache") == [len(saved)]


def test_heartbeat_reports_elapsed_time_before_tensorrt_10(trt, trt_build, tiny_model, tmp_path, monkeypatch):
    trt.use("8.2")
    monkeypatch.setenv("EDGED_TRT_DOUBLE_BUILD_S", "0.15")
    _, emitted, _ = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    beats = [e for e in emitted if e["event"] == "progress"]
    assert len(beats) >= 3 and all(e["fraction"] is None and "s elapsed" in e["text"] for e in beats)


@pytest.mark.parametrize("version", ["8.0", "8.2", "8.5", "8.6", "10.3"])
def test_dla_static_batch_with_gpu_fallback_and_placement(version, trt, trt_build, tiny_model, tmp_path):
    """Placement comes from the engine inspector (8.2+, DETAILED plans); the can_run_on_DLA
    prediction only where there is no inspector (8.0), and the report says which."""
    trt.use(version)
    result, emitted, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path, dla_core=1, static_batch=4))
    assert recorded(calls, "IBuilderConfig.default_device_type") == ["DeviceType.DLA"]
    assert recorded(calls, "IBuilderConfig.DLA_core") == [1]
    assert recorded(calls, "config.set_flag") == ["BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK"]
    assert recorded(calls, "profile.set_shape") == [["image", [4, 3, 64, 64], [4, 3, 64, 64], [4, 3, 64, 64]]]
    graph = onnx.load(str(tiny_model / "model.onnx")).graph
    off_dla = [n.name for n in graph.node if n.op_type in trt.NOT_ON_DLA]
    placement = result["placement"]
    assert [e for e in emitted if e["event"] == "placement"] == [dict(placement, event="placement")]
    if version == "8.0":
        assert recorded(calls, "IBuilderConfig.profiling_verbosity") == []
        assert placement["source"] == "prediction" and "no IEngineInspector" in placement["reason"]
        assert placement["gpu"] == len(off_dla) > 0 and placement["dla"] == len(graph.node) - len(off_dla)
    else:
        assert recorded(calls, "IBuilderConfig.profiling_verbosity") == ["ProfilingVerbosity.DETAILED"]
        assert placement["source"] == "inspector" and placement["dla_subgraphs"] == 1
        assert [n for n, _ in placement["gpu_layers"]] == off_dla and placement["reformat"] == 1
        assert placement["prediction"]["gpu"] == len(off_dla) and placement["prediction"]["dla_subgraphs"] == 1


def test_inspector_placement_differs_from_the_prediction(trt, trt_build, tiny_model, tmp_path):
    """Layers the prediction puts on DLA but the build moved to the GPU (here: a network split
    into more than 16 DLA subgraphs) are reported from the engine, not from can_run_on_DLA."""
    trt.use("8.5")
    layers = []
    for i in range(20):  # 20 DLA runs separated by GPU-only layers
        layers += [["conv%d" % i, "Conv"], ["reshape%d" % i, "Reshape"]]
    trt.NETWORK = {"inputs": [["image", [-1, 3, 64, 64]]], "outputs": [["logits", [-1, 14]]], "layers": layers}
    result, emitted, _ = build(trt, trt_build, spec_for(tiny_model, tmp_path, dla_core=0, static_batch=1))
    placement = result["placement"]
    assert placement["prediction"]["dla_subgraphs"] == 20 and placement["prediction"]["gpu"] == 20
    assert placement["source"] == "inspector" and placement["dla_subgraphs"] == 16
    assert placement["gpu"] == 24 and ["conv19", "Conv"] in placement["gpu_layers"]
    assert "DLA supports only 16 subgraphs" in (tmp_path / "build.log").read_text()


def test_dla_refusals(trt, trt_build, tiny_model, tmp_path):
    trt.use("10.3")
    cases = [({"dla_core": 0, "static_batch": 1, "precision": "fp32"}, "FP16 or INT8"),
             ({"dla_core": 0, "static_batch": None}, "static-batch"),
             ({"dla_core": 5, "static_batch": 1}, "has 2 DLA cores"),
             ({"dla_core": 0, "static_batch": 1, "gpu_fallback": False}, "cannot run on DLA")]
    for extra, message in cases:
        with pytest.raises(trt_build.BuildFailure, match=message):
            build(trt, trt_build, spec_for(tiny_model, tmp_path, **extra))


@pytest.mark.parametrize("version", ["8.0", "8.2", "8.5", "8.6", "10.3"])
def test_int8_calibrates_through_the_given_tensors_and_reuses_the_cache(version, trt, trt_build, tiny_model, tmp_path):
    """Calibration buffers live in the CUDA context the Builder uses (the primary one): with
    pycuda.autoinit imported after the Builder exists (the old code), TensorRT fails."""
    trt.use(version)
    np.save(tmp_path / "calib.npy", np.zeros((20, 3, 64, 64), np.float32))
    cal = {"tensors": str(tmp_path / "calib.npy"), "cache": str(tmp_path / "calib.cache"), "batch_size": 8}
    result, emitted, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path, precision="int8", calibration=cal))
    assert recorded(calls, "config.set_flag") == ["BuilderFlag.FP16", "BuilderFlag.INT8"]
    assert recorded(calls, "calibration_batches") == [2]  # 20 images, batch 8: two full batches
    assert recorded(calls, "config.set_calibration_profile") == [{"image": [[8, 3, 64, 64]] * 3}]
    assert any("deprecated from TensorRT 10.1" in e.get("text", "") for e in emitted
               if e["event"] == "warning") == (version == "10.3")
    assert b"batches:2" in (tmp_path / "calib.cache").read_bytes()
    assert result["calibration"]["reused_cache"] is False and result["calibration"]["cache_written"] is True
    assert result["timing_cache"]["accepted"] is None and result["timing_cache"]["saved_bytes"] > 0
    result, _, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path, precision="int8", calibration=cal))
    assert recorded(calls, "calibration_batches") == [0], "a valid calibration cache must be reused"
    assert result["calibration"]["reused_cache"] is True and result["timing_cache"]["accepted"] is True


def test_int8_is_refused_on_a_gpu_without_fast_int8(trt, trt_build, tiny_model, tmp_path, monkeypatch):
    """Jetson Nano (Maxwell, SM 5.3): TensorRT would build a slow INT8 engine with a warning."""
    trt.use("8.2")
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_CC", "5.3")
    np.save(tmp_path / "calib.npy", np.zeros((8, 3, 64, 64), np.float32))
    cal = {"tensors": str(tmp_path / "calib.npy"), "cache": str(tmp_path / "calib.cache"), "batch_size": 8}
    with pytest.raises(trt_build.BuildFailure, match="no fast INT8") as info:
        build(trt, trt_build, spec_for(tiny_model, tmp_path, precision="int8", calibration=cal))
    assert info.value.code == "int8" and "fp16" in str(info.value)
    build(trt, trt_build, spec_for(tiny_model, tmp_path, precision="fp16"))  # FP16 is fine there


def test_parse_errors_name_each_node(trt, trt_build, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
             helper.make_node("EdgedUnsupported", ["a"], ["b"], name="weird_one"),
             helper.make_node("EdgedUnsupported", ["b"], ["y"], name="weird_two")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"))
    names = [[n.name, n.op_type] for n in nodes]
    for version in ("8.2", "10.3"):  # 8.x gives a node index only; 10.x also the name
        trt.use(version)
        with pytest.raises(trt_build.BuildFailure) as info:
            build(trt, trt_build, spec_for(tmp_path / "m", tmp_path, node_names=names))
        assert info.value.details == ["node 1 'weird_one' (EdgedUnsupported): No importer registered for op: EdgedUnsupported",
                                      "node 2 'weird_two' (EdgedUnsupported): No importer registered for op: EdgedUnsupported"]


def test_failed_build_explains_oom_on_tensorrt_10(trt, trt_build, tiny_model, tmp_path, monkeypatch):
    trt.use("10.3")
    monkeypatch.setenv("EDGED_TRT_DOUBLE_FAIL", "build")
    with pytest.raises(trt_build.BuildFailure, match="out of memory"):
        build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert "Could not find any implementation" in (tmp_path / "build.log").read_text()


def test_optimization_level_only_where_supported(trt, trt_build, tiny_model, tmp_path):
    trt.use("10.3")
    _, _, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path, optimization_level=5))
    assert recorded(calls, "IBuilderConfig.builder_optimization_level") == [5]
    trt.use("8.5")
    _, emitted, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path, optimization_level=5))
    assert recorded(calls, "IBuilderConfig.builder_optimization_level") == []
    assert any("8.6+" in e["text"] for e in emitted if e["event"] == "warning")


# -- the daemon side: the builder as a process --------------------------------------------------
def test_builder_process_reports_progress_and_keeps_a_log(doubles_env, tiny_model, tmp_path):
    seen: list[tuple[str, float | None]] = []
    env = doubles_env("8.2", EDGED_TRT_DOUBLE_BUILD_S="0.3")
    summary = run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", BuildOptions("fp16", 2),
                          python_exe=sys.executable, timing_cache=tmp_path / "tc" / "t.cache", heartbeat_s=0.05,
                          progress=lambda text, frac: seen.append((text, frac)), env=env)
    assert summary["trt_version"] == "8.2.1.8" and summary["build_seconds"] > 0.3
    assert sum("elapsed" in text for text, _ in seen) >= 3
    assert (tmp_path / "tc" / "t.cache").exists() and "[edged] engine written" in (tmp_path / "b.log").read_text()


def test_builder_process_failures_are_explained(doubles_env, plain_env, tiny_model, tmp_path):
    opts = BuildOptions("fp16", 2)
    with pytest.raises(EngineBuildError) as info:
        run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", opts, python_exe=sys.executable,
                    timing_cache=None, env=plain_env())
    assert info.value.code == "unavailable" and "cannot import tensorrt" in str(info.value)
    with pytest.raises(EngineBuildError) as info:
        run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", opts, python_exe=sys.executable,
                    timing_cache=None, env=doubles_env("10.3", EDGED_TRT_DOUBLE_FAIL="build"))
    assert info.value.code == "build" and "Could not find any implementation" in str(info.value)
    with pytest.raises(EngineBuildError) as info:
        run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", opts, python_exe=sys.executable,
                    timing_cache=None, timeout_s=0.5, env=doubles_env("8.5", EDGED_TRT_DOUBLE_BUILD_S="30"))
    assert info.value.code == "timeout"
    assert not (tmp_path / "p.plan").exists()


def test_interrupted_build_leaves_no_builder_running(doubles_env, tiny_model, tmp_path, monkeypatch):
    """Ctrl-C in `edged engines build` arrives in progress(); the builder (own session) must die too."""
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kw):
        proc = real_popen(*args, **kw)
        started.append(proc)
        return proc

    monkeypatch.setattr(builder.subprocess, "Popen", recording_popen)

    def progress(text, fraction):
        raise KeyboardInterrupt

    env = doubles_env("8.2", EDGED_TRT_DOUBLE_BUILD_S="60")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", BuildOptions("fp16", 2),
                        python_exe=sys.executable, timing_cache=None, heartbeat_s=0.05, progress=progress, env=env)
        (proc,) = started
        assert proc.poll() is not None, "the builder process outlived the interrupted build"
        assert proc.returncode == -signal.SIGKILL
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- calibration / validation images ----------------------------------------------------------
def test_only_dicom_files_are_calibration_images(tmp_path, caplog):
    """The daemon's preprocessing reads DICOM only: other images are skipped, with a warning."""
    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "B.DICOM").write_bytes(b"x")
    (tmp_path / "1.2.840.99").write_bytes(b"\0" * 128 + b"DICM" + b"rest")  # a PACS export named by its UID
    (tmp_path / "README").write_bytes(b"calibration set, 2024")  # no suffix, not DICOM
    (tmp_path / "chest.png").write_bytes(b"\x89PNG")
    (tmp_path / "chest.JPG").write_bytes(b"\xff\xd8")
    (tmp_path / "labels.csv").write_text("file,Effusion\n")
    (tmp_path / ".hidden.dcm").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="edged.engines"):
        found = list_images(tmp_path, 10)
    assert found == [tmp_path / "1.2.840.99", tmp_path / "a.dcm", tmp_path / "sub" / "B.DICOM"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "ignoring 2 non-DICOM image file(s)" in warned[0]
    assert "chest.JPG" in warned[0] and "chest.png" in warned[0]
    assert list_images(tmp_path, 2) == found[:2]


def test_calibration_file_the_preprocessing_rejects_is_a_build_error(tmp_path):
    """So that backend: auto falls back to ONNX Runtime naming the file, not with a pydicom traceback."""
    (tmp_path / "ok.dcm").write_bytes(b"x")
    (tmp_path / "bad.dcm").write_bytes(b"y")

    def preprocess(path):
        if path.name == "bad.dcm":
            raise ValueError("File is missing DICOM File Meta Information header")
        return np.zeros((3, 4, 4), np.float32)

    with pytest.raises(EngineBuildError) as info:
        prepare_calibration(list_images(tmp_path, 10), preprocess, "pp", "ab" * 32, tmp_path / "work")
    assert info.value.code == "calibration"
    assert "bad.dcm cannot be preprocessed: ValueError: File is missing DICOM" in str(info.value)


# -- timing caches the device refuses ----------------------------------------------------------
def foreign_timing_cache(trt, tmp_path, monkeypatch, sms: str) -> bytes:
    """A timing cache serialized on this "device" with another SM count (another power mode's TPC mask)."""
    monkeypatch.setenv("EDGED_CUDA_DOUBLE_SMS", sms)
    blob = trt.Builder(trt.Logger()).create_builder_config().create_timing_cache(b"").serialize()
    monkeypatch.delenv("EDGED_CUDA_DOUBLE_SMS")
    return blob


@pytest.mark.parametrize("version", ["8.2", "10.3"])
def test_a_refused_timing_cache_is_dropped_not_a_crash(version, trt, trt_build, tiny_model, tmp_path, monkeypatch):
    trt.use(version)
    (tmp_path / "timing.cache").write_bytes(foreign_timing_cache(trt, tmp_path, monkeypatch, "4"))
    result, emitted, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert recorded(calls, "config.set_timing_cache") == [False, False]  # the refused one, then a fresh one
    assert result["timing_cache"]["accepted"] is False and result["timing_cache"]["saved_bytes"] > 0
    assert any("refused" in e["text"] for e in emitted if e["event"] == "warning")
    assert (tmp_path / "e.plan").exists()
    _, _, calls = build(trt, trt_build, spec_for(tiny_model, tmp_path))  # the fresh cache is this device's
    assert recorded(calls, "config.create_timing_cache")[0] > 0


def test_a_corrupt_timing_cache_is_replaced(trt, trt_build, tiny_model, tmp_path):
    trt.use("8.5")
    (tmp_path / "timing.cache").write_bytes(b"\x00garbage")
    result, _, _ = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert result["timing_cache"]["accepted"] is False and (tmp_path / "e.plan").exists()
    assert (tmp_path / "timing.cache").read_bytes().startswith(trt.TIMING_MAGIC)


def test_no_timing_cache_after_the_build_costs_the_cache_not_the_engine(trt, trt_build, tiny_model, tmp_path,
                                                                        monkeypatch):
    """TensorRT 10: get_timing_cache() is None when no cache is in effect; the plan is already written."""
    trt.use("10.3")
    monkeypatch.setenv("EDGED_TRT_DOUBLE_FAIL", "timing_refused")
    result, emitted, _ = build(trt, trt_build, spec_for(tiny_model, tmp_path))
    assert (tmp_path / "e.plan").exists() and result["timing_cache"]["saved_bytes"] == 0
    assert any("no timing cache after the build" in e["text"] for e in emitted if e["event"] == "warning")
    assert not (tmp_path / "timing.cache").exists()


# -- callbacks never raise; the verbose log is capped ------------------------------------------
def test_verbose_build_log_is_capped_with_its_tail_kept(trt, trt_build, tiny_model, tmp_path, monkeypatch):
    trt.use("8.5")
    monkeypatch.setenv("EDGED_TRT_DOUBLE_LOG_LINES", "20000")
    result, _, _ = build(trt, trt_build, spec_for(tiny_model, tmp_path, log_max_bytes=64 << 10))
    text = (tmp_path / "build.log").read_text()
    assert len(text) < (64 << 10) + (40 << 10), "the cap plus at most the kept tail"
    assert result["log"]["dropped_lines"] > 15000 and "lines dropped: the log is capped" in text
    assert "engine written" in text  # the end of the build is kept


@pytest.mark.parametrize("version", ["8.2", "8.5"])
def test_full_disk_under_the_build_log_does_not_abort_the_builder(version, doubles_env, tiny_model, tmp_path):
    """/dev/full: every write fails with ENOSPC. On 8.2 a logger that raises aborts the builder."""
    np.save(tmp_path / "calib.npy", np.zeros((8, 3, 64, 64), np.float32))
    summary = run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", Path("/dev/full"), BuildOptions("fp16", 2),
                          python_exe=sys.executable, timing_cache=tmp_path / "t.cache", env=doubles_env(version))
    assert (tmp_path / "p.plan").exists() and summary["log"]["error"].startswith("OSError")
    assert any("build log" in w for w in summary["warnings"])


def test_calibration_cache_that_cannot_be_written_does_not_abort_the_builder(doubles_env, tiny_model, tmp_path):
    np.save(tmp_path / "calib.npy", np.zeros((8, 3, 64, 64), np.float32))
    (tmp_path / "notadir").write_text("a file where the cache folder should be")
    cal = builder.Calibration(tmp_path / "calib.npy", tmp_path / "notadir" / "calib.cache", "d" * 64, 8)
    summary = run_builder(tiny_model / "model.onnx", tmp_path / "p.plan", tmp_path / "b.log", BuildOptions("int8", 2),
                          python_exe=sys.executable, timing_cache=None, calibration=cal, env=doubles_env("8.2"))
    assert (tmp_path / "p.plan").exists() and summary["calibration"]["cache_written"] is False
    assert any("calibration cache not saved" in w for w in summary["warnings"])


def test_calibration_that_loses_batches_fails_the_build(trt, trt_build, tiny_model, tmp_path, monkeypatch):
    """8.5+ swallow a get_batch exception as "no more data": the engine would be calibrated on part of the set."""
    trt.use("8.5")
    np.save(tmp_path / "calib.npy", np.zeros((16, 3, 64, 64), np.float32))
    cal = {"tensors": str(tmp_path / "calib.npy"), "cache": str(tmp_path / "calib.cache"), "batch_size": 8}
    import pycuda.driver as cuda

    real = cuda.memcpy_htod
    seen = []

    def flaky(dest, src):
        seen.append(1)
        if len(seen) == 2:
            raise cuda.LogicError("cuMemcpyHtoD failed: an illegal memory access was encountered")
        real(dest, src)

    monkeypatch.setattr(cuda, "memcpy_htod", flaky)
    with pytest.raises(trt_build.BuildFailure, match="INT8 calibration failed in get_batch") as info:
        build(trt, trt_build, spec_for(tiny_model, tmp_path, precision="int8", calibration=cal))
    assert info.value.code == "calibration" and not (tmp_path / "e.plan").exists()


def test_abnormal_builder_exit_keeps_its_stderr_tail():
    """std::terminate in a trampoline prints to stderr and raises SIGABRT: the error keeps what it said."""
    script = ("import os, sys; sys.stderr.write(\"terminate called after throwing an instance of "
              "'pybind11::error_already_set'\\n  what():  OSError: [Errno 28] No space left on device\\n\"); "
              "sys.stderr.flush(); os.abort()")
    with pytest.raises(EngineBuildError) as info:
        builder._supervise([sys.executable, "-c", script], 30, None, None)
    assert info.value.code == "killed" and "SIGABRT" in str(info.value)
    assert any("No space left on device" in d for d in info.value.details)
