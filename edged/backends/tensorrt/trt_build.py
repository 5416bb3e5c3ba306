"""Build one TensorRT engine from ONNX. Runs as a script under the Jetson system Python.

Why a separate process: TensorRT is importable only from JetPack's system Python (3.6 / 3.8 /
3.10), and a build on a Nano can take an hour and be OOM-killed; a killed builder must not take
the daemon with it. So this file keeps Python 3.6 syntax and needs only tensorrt, numpy and (for
INT8 calibration) pycuda. The daemon side (``builder.py``) writes a JSON spec, starts
``python trt_build.py spec.json`` and reads JSON lines from stdout: ``progress``, ``warning``,
``placement``, then ``done`` or ``error``. Everything TensorRT says goes to the build log.

CUDA context: the device's *primary* context is made current (``pycuda.autoprimaryctx``, or its
equivalent on pycuda < 2021.1) before the Builder exists. TensorRT's CUDA runtime works in the
primary context; ``pycuda.autoinit`` would create and push a second one, and the Builder's
resources are then invalid where the calibrator's buffers live ("invalid resource handle").
Callbacks never raise (see ``trt_callbacks.py``). The timing cache is the device's to refuse:
``set_timing_cache`` returning False drops the file and starts a fresh cache, and a missing
``get_timing_cache()`` after the build (10.x returns None) costs the cache, not the engine.
A failed INT8 build on a GPU without fast INT8 (Nano, TX2) is refused up front with the reason.

Version differences handled here (TensorRT 8.0 / 8.2 / 8.5 / 8.6 / 10.x): explicit-batch network
flag only on 8.x; workspace through ``set_memory_pool_limit`` (8.4+) or ``max_workspace_size``;
progress through ``IProgressMonitor`` (10.x) or a heartbeat thread; ``builder_optimization_level``
(8.6+); calibrator deprecation (10.1+); the engine inspector for DLA placement (8.2+); per-node
parser errors with ``node_name`` (10.x) or the node list the daemon extracted from the ONNX file.
"""
import atexit
import importlib.util
import json
import os
import sys
import threading
import time

# Run as a script, this file's folder is sys.path[0]; its siblings (select.py-like names) must
# not shadow standard or third-party modules that tensorrt/numpy import.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 2, 3
LOG_CAP_BYTES = 4 << 20


def _sibling(name):
    """A module next to this file, by path (this folder is deliberately not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location("edged_trt_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


callbacks = _sibling("trt_callbacks")
placement_of = _sibling("trt_placement")


class BuildFailure(Exception):
    def __init__(self, code, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.details = details or []


def trt_version_tuple(trt):
    return tuple(int(p) for p in trt.__version__.split(".")[:2])


def describe_parser_errors(parser, node_names):
    """One line per parser error naming the ONNX node (index, name, operator) and the reason."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        idx = err.node()
        name = err.node_name() if hasattr(err, "node_name") else None
        op = err.node_operator() if hasattr(err, "node_operator") else None
        if (not name or not op) and 0 <= idx < len(node_names):
            name, op = name or node_names[idx][0], op or node_names[idx][1]
        where = "node %d" % idx if idx >= 0 else "model"
        if name or op:
            where += " %r (%s)" % (name or "?", op or "?")
        out.append("%s: %s" % (where, err.desc()))
    return out


def use_primary_context(required):
    """Make the GPU's primary CUDA context current; return pycuda.driver, or None without pycuda.

    Must run before any TensorRT object exists (see the module docstring). ``required``: INT8
    calibration feeds device buffers and cannot do without pycuda.
    """
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        if required:
            raise BuildFailure("calibration", "INT8 calibration needs pycuda for %s (JetPack does not ship it: "
                                              "sudo pip3 install pycuda): %s" % (sys.executable, exc))
        return None
    try:
        import pycuda.autoprimaryctx  # noqa: F401  (pycuda >= 2021.1)
    except ImportError:  # older pycuda: the same thing by hand
        cuda.init()
        context = cuda.Device(0).retain_primary_context()
        context.push()
        atexit.register(context.pop)
    return cuda


def configure(trt, builder, network, config, spec, emit, say, cuda=None):
    """Everything the builder is asked to do, in one place (the tests assert on exactly this).

    Returns ``(placement prediction or None, calibrator or None)``.
    """
    version = trt_version_tuple(trt)
    workspace = int(spec["workspace_mb"]) << 20
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    say("workspace limit %d MiB" % spec["workspace_mb"])

    precision = spec["precision"]
    if precision == "int8" and not builder.platform_has_fast_int8:
        raise BuildFailure("int8", "this GPU has no fast INT8 (Jetson Nano and TX2 do not): an INT8 engine would be "
                                   "slower than FP16 and is refused; set precision fp16")
    if precision in ("fp16", "int8"):
        if version >= (10, 12):
            emit({"event": "warning", "text": "FP16/INT8 builder flags are deprecated from TensorRT 10.12 (strong typing)"})
        if not builder.platform_has_fast_fp16:
            emit({"event": "warning", "text": "this GPU has no fast FP16; the engine may be slower than FP32"})
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 builds keep FP16 for layers that cannot be INT8
    calibrator = None
    if precision == "int8":
        if version >= (10, 1):
            emit({"event": "warning", "text": "implicit INT8 calibration is deprecated from TensorRT 10.1; "
                                              "explicit quantization (Q/DQ in the ONNX model) is the way forward"})
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = calibrator_for(trt, cuda, spec, emit)
        config.int8_calibrator = calibrator

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    prediction = None
    dla = spec.get("dla_core")
    if dla is not None:
        if precision == "fp32":
            raise BuildFailure("dla", "DLA runs FP16 or INT8 only; choose precision fp16 or int8 for DLA")
        if not spec.get("static_batch"):
            raise BuildFailure("dla", "DLA has no dynamic shapes: build one static-batch engine per batch size")
        if builder.num_DLA_cores <= dla:
            raise BuildFailure("dla", "DLA core %d requested; this device has %d DLA cores" % (dla, builder.num_DLA_cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla)
        if version >= (8, 2):  # the engine inspector reports real placement only for DETAILED plans
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        prediction = placement_of.predict(config, layers, dla)
        if spec.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        elif prediction["gpu"]:
            raise BuildFailure("dla", "%d layers cannot run on DLA and GPU fallback is off: %s"
                               % (prediction["gpu"], ", ".join(n for n, _ in prediction["gpu_layers"][:10])))
        say("DLA core %d predicted: %d of %d layers on DLA in %d subgraph(s), %d on GPU"
            % (dla, prediction["dla"], len(layers), prediction["dla_subgraphs"], prediction["gpu"]))

    inp = network.get_input(0)
    dims = tuple(inp.shape)
    if network.num_inputs != 1:
        raise BuildFailure("model", "edged serves models with one input; this one has %d" % network.num_inputs)
    static = spec.get("static_batch")
    if static:
        lo = opt = hi = int(static)
    else:
        lo, opt, hi = 1, int(spec["max_batch"]), int(spec["max_batch"])
    if dims[0] != -1 and not (lo == hi == dims[0]):
        raise BuildFailure("model", "input %s has a fixed batch of %d; edged needs a dynamic batch axis"
                           % (inp.name, dims[0]))
    rest = tuple(dims[1:])
    if any(d < 0 for d in rest):
        raise BuildFailure("model", "input %s has dynamic non-batch dimensions %r" % (inp.name, dims))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo,) + rest, (opt,) + rest, (hi,) + rest)
    config.add_optimization_profile(profile)
    if precision == "int8":
        cal_batch = int(spec["calibration"]["batch_size"])
        cal_profile = builder.create_optimization_profile()
        cal_profile.set_shape(inp.name, (cal_batch,) + rest, (cal_batch,) + rest, (cal_batch,) + rest)
        config.set_calibration_profile(cal_profile)
    say("optimization profile %s: min %r opt %r max %r" % (inp.name, (lo,) + rest, (opt,) + rest, (hi,) + rest))

    level = spec.get("optimization_level")
    if level is not None:
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = int(level)
        else:
            emit({"event": "warning", "text": "builder_optimization_level needs TensorRT 8.6+; ignored"})
    return prediction, calibrator


def calibrator_for(trt, cuda, spec, emit):
    import numpy as np

    cal = spec["calibration"]
    data = np.load(cal["tensors"], mmap_mode="r")
    batch = int(cal["batch_size"])
    if data.shape[0] < batch:
        raise BuildFailure("calibration", "INT8 needs at least %d calibration images, got %d" % (batch, data.shape[0]))
    return callbacks.make_calibrator(trt, cuda, data, batch, cal["cache"], emit)


def attach_timing_cache(trt, config, path, say, warn):
    """Load the timing cache at ``path`` into ``config`` if the device accepts it; else a fresh one.

    The cache carries a verification header (TensorRT version and CUDA device properties, which a
    power mode with another TPC mask changes): ``set_timing_cache`` returns False for one made
    elsewhere, and that file is dropped. Returns facts for the build summary.
    """
    info = {"path": path, "loaded_bytes": 0, "accepted": None, "saved_bytes": 0}
    blob = b""
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as exc:
            warn("timing cache %s unreadable (%s); starting a fresh one" % (path, exc))
    info["loaded_bytes"] = len(blob)
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            accepted = cache is not None and bool(config.set_timing_cache(cache, False))
        except Exception as exc:
            accepted = False
            say("timing cache %s: %s: %s" % (path, type(exc).__name__, exc))
        info["accepted"] = accepted
        if accepted:
            say("timing cache %s (%d bytes) accepted" % (path, len(blob)))
            return info
        warn("timing cache %s was made for another device, power mode or TensorRT and was refused; "
             "dropped, starting a fresh one" % path)
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            warn("TensorRT refused an empty timing cache; building without one")
    except Exception as exc:
        warn("no timing cache: %s: %s" % (type(exc).__name__, exc))
    return info


def save_timing_cache(config, info, say, warn):
    """After the plan is written: a cache that cannot be had or saved is a warning, never a crash."""
    path = info["path"]
    try:
        cache = config.get_timing_cache()
        if cache is None:
            warn("TensorRT returned no timing cache after the build; it is not saved")
            return
        data = bytes(cache.serialize())
        callbacks.atomic_write(path, data)
        info["saved_bytes"] = len(data)
        say("timing cache saved: %s (%d bytes)" % (path, len(data)))
    except Exception as exc:
        warn("timing cache not saved to %s: %s: %s" % (path, type(exc).__name__, exc))


def build(trt, spec, emit):
    """Build the engine described by ``spec``; write plan, timing cache and log; return a summary."""
    t0 = time.time()
    errors = []
    warnings = []
    log = callbacks.BuildLog(spec["log"], spec.get("log_max_bytes", LOG_CAP_BYTES))

    def say(text):
        log.write("edged", text)

    def warn(text):
        warnings.append(text)
        log.write("edged", "warning: " + text)
        emit({"event": "warning", "text": text})

    try:
        say("TensorRT %s, Python %d.%d, spec %s" % (trt.__version__, sys.version_info[0], sys.version_info[1],
                                                    json.dumps(dict((k, v) for k, v in spec.items() if k != "node_names"))))
        cuda = use_primary_context(required=spec["precision"] == "int8")
        logger = callbacks.make_logger(trt, log, errors)
        builder = trt.Builder(logger)
        explicit = 0 if trt_version_tuple(trt) >= (10, 0) else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(explicit)
        parser = trt.OnnxParser(network, logger)
        with open(spec["onnx"], "rb") as f:
            ok = parser.parse(f.read())
        if not ok:
            details = describe_parser_errors(parser, spec.get("node_names") or [])
            for line in details:
                say("parse error: " + line)
            raise BuildFailure("parse", "the ONNX parser rejected %d node(s)" % len(details), details)
        config = builder.create_builder_config()
        prediction, calibrator = configure(trt, builder, network, config, spec, emit, say, cuda)
        timing = attach_timing_cache(trt, config, spec.get("timing_cache"), say, warn) if spec.get("timing_cache") else None

        if hasattr(trt, "IProgressMonitor"):
            monitor = callbacks.make_progress_monitor(trt, emit)  # kept referenced for the whole build
            config.progress_monitor = monitor
            plan = builder.build_serialized_network(network, config)
        else:
            with callbacks.Heartbeat(emit, float(spec.get("heartbeat_s", 15))):
                plan = builder.build_serialized_network(network, config)
        if calibrator is not None:
            for text in calibrator.warnings:
                warn(text)
            if calibrator.failures:
                where, what = calibrator.failures[0]
                raise BuildFailure("calibration", "INT8 calibration failed in %s (%s); no engine was written"
                                   % (where, what), ["%s: %s" % f for f in calibrator.failures[:5]])
        if plan is None:
            hint = ""
            if any("Could not find any implementation" in e for e in errors):
                hint = " (on TensorRT 10 this usually means out of memory: lower workspace_mb or stop other processes)"
            raise BuildFailure("build", "TensorRT could not build the engine%s" % hint, errors[-10:])
        plan = bytes(plan)
        callbacks.atomic_write(spec["plan"], plan)
        if timing is not None:
            save_timing_cache(config, timing, say, warn)
        placement = None
        if prediction is not None:
            placement = placement_of.inspect_plan(trt, logger, plan, spec["dla_core"], prediction)
            say(placement_of.summary(placement))
            emit(dict(placement, event="placement"))
        seconds = time.time() - t0
        say("engine written: %s (%d bytes) in %.1f s" % (spec["plan"], len(plan), seconds))
    finally:
        log.close()
    if log.error:
        emit({"event": "warning", "text": "build log %s not (fully) written: %s" % (spec["log"], log.error)})
        warnings.append("build log not written: %s" % log.error)
    return {"seconds": seconds, "placement": placement, "trt_version": trt.__version__, "timing_cache": timing,
            "calibration": calibrator.summary() if calibrator is not None else None, "log": log.summary(),
            "build_warnings": warnings}


def main(argv):
    real_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # TensorRT and pycuda print; keep our JSON channel clean
    lock = threading.Lock()

    def emit(msg):  # called from TensorRT callbacks too: never raises
        try:
            with lock:
                real_out.write(json.dumps(msg) + "\n")
                real_out.flush()
        except Exception:
            pass

    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        import tensorrt as trt
    except Exception as exc:
        emit({"event": "error", "code": "unavailable", "text": "cannot import tensorrt: %s: %s" % (type(exc).__name__, exc)})
        return EXIT_UNAVAILABLE
    try:
        result = build(trt, spec, emit)
    except BuildFailure as exc:
        emit({"event": "error", "code": exc.code, "text": str(exc), "details": exc.details})
        return EXIT_FAILED
    except Exception as exc:  # CUDA init failure, OOM inside TensorRT, ...
        emit({"event": "error", "code": "crash", "text": "%s: %s" % (type(exc).__name__, exc), "details": []})
        return EXIT_FAILED
    emit(dict(result, event="done"))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
