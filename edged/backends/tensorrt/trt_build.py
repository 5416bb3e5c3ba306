"""Build one TensorRT engine from ONNX. Runs as a script under the Jetson system Python.

Why a separate process: TensorRT is importable only from JetPack's system Python (3.6 / 3.8 /
3.10), and a build on a Nano can take an hour and be OOM-killed; a killed builder must not take
the daemon with it. So this file keeps Python 3.6 syntax and needs only tensorrt, numpy and (for
INT8 calibration) pycuda. The daemon side (``builder.py``) writes a JSON spec, starts
``python trt_build.py spec.json`` and reads JSON lines from stdout: ``progress``, ``warning``,
``placement``, then ``done`` or ``error``. Everything TensorRT says goes to the build log.

Version differences handled here (TensorRT 8.2 / 8.5 / 10.x): explicit-batch network flag only
on 8.x; workspace through ``set_memory_pool_limit`` (8.4+) or ``max_workspace_size``; progress
through ``IProgressMonitor`` (10.x) or a heartbeat thread; ``builder_optimization_level`` (8.6+);
calibrator deprecation (10.1+); per-node parser errors with ``node_name`` (10.x) or the node
list the daemon extracted from the ONNX file.
"""
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


class BuildFailure(Exception):
    def __init__(self, code, message, details=None):
        Exception.__init__(self, message)
        self.code = code
        self.details = details or []


def trt_version_tuple(trt):
    return tuple(int(p) for p in trt.__version__.split(".")[:2])


def make_logger(trt, log_file, keep):
    """An ILogger writing every TensorRT message to the build log and keeping errors for reports."""
    names = {}
    for name in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"):
        names[getattr(trt.Logger, name)] = name

    class BuildLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            label = names.get(severity, str(severity))
            log_file.write("%s [%s] %s\n" % (time.strftime("%H:%M:%S"), label, msg))
            log_file.flush()
            if label in ("INTERNAL_ERROR", "ERROR"):
                keep.append(msg)

    return BuildLogger()


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


class Heartbeat(object):
    """TensorRT < 10 reports no progress; a Nano build can take an hour, so say we are alive."""

    def __init__(self, emit, interval):
        self.emit, self.interval = emit, interval
        self.stop = threading.Event()
        self.t0 = time.time()
        self.thread = threading.Thread(target=self.run)
        self.thread.daemon = True

    def run(self):
        while not self.stop.wait(self.interval):
            self.emit({"event": "progress", "text": "building engine: %d s elapsed" % (time.time() - self.t0),
                       "fraction": None})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def make_progress_monitor(trt, emit):
    """TensorRT 10's IProgressMonitor: top-level phases give a fraction, nested ones give text."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps = {}
            self.top = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = max(int(num_steps), 1)
            if parent_phase is None:
                self.top = phase_name
            emit({"event": "progress", "text": phase_name, "fraction": 0.0 if parent_phase is None else None})

        def step_complete(self, phase_name, step):
            if phase_name == self.top:
                emit({"event": "progress", "text": phase_name,
                      "fraction": min(1.0, float(step + 1) / self.steps.get(phase_name, 1))})
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def make_calibrator(trt, spec, emit):
    """Entropy calibrator over the tensors the daemon preprocessed with the model's own pipeline."""
    import numpy as np
    import pycuda.autoinit  # noqa: F401  (creates the CUDA context this process uses)
    import pycuda.driver as cuda

    cal = spec["calibration"]
    data = np.load(cal["tensors"], mmap_mode="r")
    batch = int(cal["batch_size"])

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pos = 0
            self.dev = cuda.mem_alloc(int(np.prod(data.shape[1:])) * batch * 4)

        def get_batch_size(self):
            return batch

        def get_batch(self, names, p_str=None):
            if self.pos + batch > data.shape[0]:
                return None
            chunk = np.ascontiguousarray(data[self.pos:self.pos + batch], dtype=np.float32)
            cuda.memcpy_htod(self.dev, chunk)
            self.pos += batch
            emit({"event": "progress", "text": "calibrating: %d/%d images" % (self.pos, data.shape[0]),
                  "fraction": None})
            return [int(self.dev)]

        def read_calibration_cache(self):
            if os.path.exists(cal["cache"]):
                with open(cal["cache"], "rb") as f:
                    emit({"event": "progress", "text": "reusing calibration cache", "fraction": None})
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            atomic_write(cal["cache"], bytes(cache))

    if data.shape[0] < batch:
        raise BuildFailure("calibration", "INT8 needs at least %d calibration images, got %d" % (batch, data.shape[0]))
    return Calibrator()


def atomic_write(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def configure(trt, builder, network, config, spec, emit, say):
    """Everything the builder is asked to do, in one place (the tests assert on exactly this)."""
    version = trt_version_tuple(trt)
    workspace = int(spec["workspace_mb"]) << 20
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    else:
        config.max_workspace_size = workspace
    say("workspace limit %d MiB" % spec["workspace_mb"])

    precision = spec["precision"]
    if precision in ("fp16", "int8"):
        if version >= (10, 12):
            emit({"event": "warning", "text": "FP16/INT8 builder flags are deprecated from TensorRT 10.12 (strong typing)"})
        if not builder.platform_has_fast_fp16:
            emit({"event": "warning", "text": "this GPU has no fast FP16; the engine may be slower than FP32"})
        config.set_flag(trt.BuilderFlag.FP16)  # INT8 builds keep FP16 for layers that cannot be INT8
    if precision == "int8":
        if not builder.platform_has_fast_int8:
            emit({"event": "warning", "text": "this GPU has no fast INT8"})
        if version >= (10, 1):
            emit({"event": "warning", "text": "implicit INT8 calibration is deprecated from TensorRT 10.1; "
                                              "explicit quantization (Q/DQ in the ONNX model) is the way forward"})
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(trt, spec, emit)

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    placement = None
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
        gpu_layers = [l for l in layers if not config.can_run_on_DLA(l)]
        placement = {"dla_core": dla, "layers": len(layers), "dla": len(layers) - len(gpu_layers),
                     "gpu": len(gpu_layers), "gpu_layers": [[l.name, str(l.type).split(".")[-1]] for l in gpu_layers]}
        if spec.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        elif gpu_layers:
            raise BuildFailure("dla", "%d layers cannot run on DLA and GPU fallback is off: %s"
                               % (len(gpu_layers), ", ".join(n for n, _ in placement["gpu_layers"][:10])))
        say("DLA core %d: %d of %d layers on DLA, %d on GPU" % (dla, placement["dla"], len(layers), len(gpu_layers)))

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
    return placement


def build(trt, spec, emit):
    """Build the engine described by ``spec``; write plan, timing cache and log; return a summary."""
    t0 = time.time()
    errors = []
    with open(spec["log"], "a") as log_file:
        def say(text):
            log_file.write("%s [edged] %s\n" % (time.strftime("%H:%M:%S"), text))
            log_file.flush()

        say("TensorRT %s, Python %d.%d, spec %s" % (trt.__version__, sys.version_info[0], sys.version_info[1],
                                                    json.dumps(dict((k, v) for k, v in spec.items() if k != "node_names"))))
        logger = make_logger(trt, log_file, errors)
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
        placement = configure(trt, builder, network, config, spec, emit, say)
        if placement is not None:
            emit(dict(placement, event="placement"))

        cache_path = spec.get("timing_cache")
        blob = b""
        if cache_path and os.path.exists(cache_path):
            with open(cache_path, "rb") as f:
                blob = f.read()
        timing_cache = config.create_timing_cache(blob)
        config.set_timing_cache(timing_cache, False)
        say("timing cache %s (%d bytes)" % (cache_path, len(blob)))

        if hasattr(trt, "IProgressMonitor"):
            monitor = make_progress_monitor(trt, emit)  # kept referenced for the whole build
            config.progress_monitor = monitor
            plan = builder.build_serialized_network(network, config)
        else:
            with Heartbeat(emit, float(spec.get("heartbeat_s", 15))):
                plan = builder.build_serialized_network(network, config)
        if plan is None:
            hint = ""
            if any("Could not find any implementation" in e for e in errors):
                hint = " (on TensorRT 10 this usually means out of memory: lower workspace_mb or stop other processes)"
            raise BuildFailure("build", "TensorRT could not build the engine%s" % hint, errors[-10:])
        atomic_write(spec["plan"], bytes(plan))
        if cache_path:
            atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
        seconds = time.time() - t0
        say("engine written: %s (%d bytes) in %.1f s" % (spec["plan"], os.path.getsize(spec["plan"]), seconds))
    return {"seconds": seconds, "placement": placement, "trt_version": trt.__version__}


def main(argv):
    real_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # TensorRT and pycuda print; keep our JSON channel clean
    lock = threading.Lock()

    def emit(msg):
        with lock:
            real_out.write(json.dumps(msg) + "\n")
            real_out.flush()

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
