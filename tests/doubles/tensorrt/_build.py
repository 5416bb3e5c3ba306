"""``Builder.build_serialized_network`` of the tensorrt double (see ``__init__`` for what it models).

Order as in a real build: CUDA context check, progress phases (10.x), INT8 calibration through
the application's calibrator (read cache → get_batch until None → write cache), DLA partitioning
into subgraphs (at most 16 per engine, the rest switched to GPU with a warning), the layer
placement printed at INFO as TensorRT does, timing-cache measurements, then the plan. A plan is
``PLAN_MAGIC`` + a JSON header (what the Runtime checks and what the inspector reports) + the
ONNX bytes (what the engine computes with).
"""
import json
import os
import time

import tensorrt as _t
from tensorrt import _device

MAX_DLA_SUBGRAPHS = 16


def _monitor(monitor, method, *args):
    try:
        return _t._call(method, getattr(monitor, method), *args)
    except _device.Swallowed:
        return False if method == "step_complete" else None  # 10.x: an exception cancels the build


def _calibrate(builder, network, config, error):
    cal = config.int8_calibrator
    if not builder.platform_has_fast_int8:
        _t._log(builder.logger, _t.Logger.WARNING, "Int8 support requested on hardware without native Int8 "
                                                   "support, performance will be negatively affected.")
    try:
        batch = _t._call("get_batch_size", cal.get_batch_size)
    except _device.Swallowed:
        batch = -1
    if int(batch) <= 0:
        return error("2: [calibrator.cpp::calibrateEngine] Error Code 2: Internal Error (calibration batch size %r)"
                     % (batch,))
    try:
        cache = _t._call("read_calibration_cache", cal.read_calibration_cache)
    except _device.Swallowed:
        cache = None
    n = 0
    if not cache:
        names = [i.name for i in network.inputs]
        while True:
            try:
                ptrs = _t._call("get_batch", cal.get_batch, names)
            except _device.Swallowed:
                ptrs = None  # the 8.5+ trampoline returns false: "no more batches"
            if not ptrs:
                break
            for p in ptrs:
                if not _device.pointer_ok(p, builder._context, error):
                    return None
            n += 1
        if n == 0:
            return error("Calibration failure occurred with no scaling factors detected. This could be due to no "
                         "int8 calibrator or insufficient custom scales for network layers.")
        table = b"TRT-%s-EntropyCalibration2\nbatches:%d\n" % (_t.__version__.replace(".", "").encode(), n)
        try:
            _t._call("write_calibration_cache", cal.write_calibration_cache, memoryview(table))
        except _device.Swallowed:
            pass
    _t.record("calibration_batches", n)
    return True


def _partition(builder, network, config, error):
    """DLA subgraphs (runs of consecutive DLA layers) and GPU layers; None after an error."""
    core = config.DLA_core
    if core < 0 or core >= builder.num_DLA_cores:
        return error("9: [builderConfig.cpp::canRunOnDLA] Error Code 9: API Usage Error (DLA core %d requested; "
                     "this device has %d)" % (core, builder.num_DLA_cores))
    if not (config.get_flag(_t.BuilderFlag.FP16) or config.get_flag(_t.BuilderFlag.INT8)):
        _t._log(builder.logger, _t.Logger.WARNING, "DLA supports only FP16 and INT8; every layer runs on the GPU")
        return [], [[layer.name, layer.op] for layer in network.layers]
    profile = config._profiles[0]
    for t in network.inputs:
        lo, _, hi = profile.shapes[t.name]
        if lo != hi:
            return error("9: DLA does not support dynamic shapes: %s has min %r max %r" % (t.name, lo, hi))
    runs, gpu, run = [], [], []
    fallback = config.get_flag(_t.BuilderFlag.GPU_FALLBACK)
    for layer in network.layers:
        wants_dla = config.get_device_type(layer) == _t.DeviceType.DLA
        if wants_dla and config.can_run_on_DLA(layer):
            run.append(layer)
            continue
        if wants_dla and not fallback:
            return error("9: [standardEngineBuilder.cpp::buildEngine] Error Code 9: API Usage Error (Default DLA is "
                         "enabled but layer %s is not supported on DLA and falling back to GPU is not enabled.)"
                         % layer.name)
        if run:
            runs.append(run)
            run = []
        gpu.append([layer.name, layer.op])
    if run:
        runs.append(run)
    for extra in runs[MAX_DLA_SUBGRAPHS:]:
        _t._log(builder.logger, _t.Logger.WARNING, "DLA supports only %d subgraphs per DLA core. Switching to GPU for "
                                                   "layer {ForeignNode[%s...%s]}" % (MAX_DLA_SUBGRAPHS, extra[0].name,
                                                                                    extra[-1].name))
        gpu.extend([layer.name, layer.op] for layer in extra)
    nodes = [[r[0].name, r[-1].name] for r in runs[:MAX_DLA_SUBGRAPHS]]
    info = lambda text: _t._log(builder.logger, _t.Logger.INFO, text)  # noqa: E731
    info("---------- Layers Running on DLA ----------")
    for first, last in nodes:
        info("[DlaLayer] {ForeignNode[%s...%s]}" % (first, last))
    info("---------- Layers Running on GPU ----------")
    for name, op in gpu:
        info("[GpuLayer] %s: %s" % (op.upper(), name))
    return nodes, gpu


def build_plan(builder, network, config):
    def error(msg):
        _t._log(builder.logger, _t.Logger.ERROR, msg)
        return None

    if not _device.context_ok(builder._context, error):
        return None
    monitor = getattr(config, "progress_monitor", None)
    if monitor is not None:
        _monitor(monitor, "phase_start", "Building engine", None, 3)
    for i in range(int(os.environ.get("EDGED_TRT_DOUBLE_LOG_LINES") or 0)):
        _t._log(builder.logger, _t.Logger.VERBOSE, "Tactic: 0x%016x Time: 0.%06d (double, line %d)" % (i, i, i))
    time.sleep(float(os.environ.get("EDGED_TRT_DOUBLE_BUILD_S", "0")))
    if config.int8_calibrator is not None and config.get_flag(_t.BuilderFlag.INT8):
        if _calibrate(builder, network, config, error) is None:
            return None
    if monitor is not None:
        for step in range(3):
            if not _monitor(monitor, "step_complete", "Building engine", step):
                return error("Build was cancelled by the progress monitor.")
        _monitor(monitor, "phase_finish", "Building engine")
    if os.environ.get("EDGED_TRT_DOUBLE_FAIL") == "build" or not config._profiles:
        return error("10: Could not find any implementation for node /features/conv0/Conv.")
    nodes, gpu = [], []
    if config.default_device_type == _t.DeviceType.DLA:
        parts = _partition(builder, network, config, error)
        if parts is None:
            return None
        nodes, gpu = parts
    if config._timing is not None:
        config._timing.entries += len(network.layers)  # a build adds measurements
    profile = config._profiles[0]
    header = {"version": _t.__version__, "cc": _device.compute_capability(),
              "fp16": config.get_flag(_t.BuilderFlag.FP16), "int8": config.get_flag(_t.BuilderFlag.INT8),
              "dla": config.DLA_core if config.default_device_type == _t.DeviceType.DLA else -1,
              "dla_nodes": nodes, "gpu_layers": gpu, "verbosity": int(config.profiling_verbosity),
              "layers": [[layer.name, layer.op] for layer in network.layers],
              "inputs": [[t.name, list(profile.shapes[t.name][2])] for t in network.inputs],
              "dynamic": [profile.shapes[t.name][0] != profile.shapes[t.name][2] for t in network.inputs],
              "outputs": [[t.name, list(t.shape)] for t in network.outputs], "size": len(network.onnx)}
    return _t.PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx
