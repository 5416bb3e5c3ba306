"""Recording double of the TensorRT Python API, surfaces of 8.2 / 8.5 / 10.3 (from the API docs).

Not a simulator: it records what the builder was asked (``calls``), rejects what the chosen
version does not have (AttributeError, as pybind11 objects do), and produces "plans" that its
Runtime deserializes again (or returns None for, like TensorRT). Engines compute with ONNX
Runtime when it is importable (so accuracy gates can pass) and with a fixed formula otherwise;
FP16 builds round outputs through float16. Python 3.6 compatible.

Switch version: ``EDGED_TRT_DOUBLE=8.2|8.5|10.3`` before import, or ``tensorrt.use("8.5")``.
Knobs: ``EDGED_TRT_DOUBLE_RECORD`` (file receiving calls as JSON lines, for subprocesses),
``EDGED_TRT_DOUBLE_NETWORK`` (JSON network when onnx is not importable), ``EDGED_TRT_DOUBLE_FAIL``
(``build`` makes build_serialized_network return None; ``deserialize_crash`` / ``deserialize_hang``
make the Runtime die by SIGSEGV / hang while loading a plan), ``EDGED_TRT_DOUBLE_BUILD_S`` (build
duration), ``EDGED_TRT_DOUBLE_DLA`` (DLA cores), ``EDGED_CUDA_DOUBLE_DEVICES=0`` (no GPU).
"""
import json
import os
import time

import numpy as np

FULL = {"8.2": "8.2.1.8", "8.5": "8.5.2.2", "10.3": "10.3.0.30"}
PLAN_MAGIC = b"TRTDOUBLE1\n"
UNSUPPORTED_OPS = ("EdgedUnsupported",)
NOT_ON_DLA = ("MatMul", "Gemm", "Flatten", "Reshape", "GlobalAveragePool", "ReduceMean")
calls = []
NETWORK = None  # tests may set {"inputs": [[name, shape]], "outputs": [[name, shape]], "layers": [[name, op]]}
__version__ = ""


def record(what, value=None):
    calls.append((what, value))
    path = os.environ.get("EDGED_TRT_DOUBLE_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps([what, value], default=str) + "\n")


def _major_minor():
    return tuple(int(p) for p in __version__.split(".")[:2])


class _Enum(object):
    def __init__(self, kind, name, value):
        self.kind, self.name, self.value = kind, name, value

    def __int__(self):
        return self.value

    def __repr__(self):
        return "%s.%s" % (self.kind, self.name)

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, _Enum) and (self.kind, self.value) == (other.kind, other.value)

    def __hash__(self):
        return hash((self.kind, self.value))


def _enum(kind, names):
    return type(kind, (object,), dict((n, _Enum(kind, n, i)) for i, n in enumerate(names)))


class ILogger(object):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = [_Enum("Severity", n, i) for i, n in
                                                     enumerate(["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])]

    def __init__(self):
        pass

    def log(self, severity, msg):
        pass


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.WARNING):
        ILogger.__init__(self)


class _Strict(object):
    """pybind11-like: setting an attribute the version lacks raises; public sets are recorded."""

    _props = ()

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            if name not in self._props:
                raise AttributeError("'%s' object has no attribute '%s'" % (type(self).__name__, name))
            record("%s.%s" % (type(self).__name__, name), value if isinstance(value, (int, float, str)) else repr(value))
        object.__setattr__(self, name, value)


class ITensor(object):
    def __init__(self, name, shape):
        self.name, self.shape, self.dtype = name, tuple(shape), DataType.FLOAT


class ILayer(object):
    def __init__(self, name, op):
        self.name, self.op, self.type = name, op, _Enum("LayerType", op.upper(), 0)


class INetworkDefinition(object):
    def __init__(self, flags):
        self.flags, self.inputs, self.outputs, self.layers, self.onnx = flags, [], [], [], b""

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]


def _describe_onnx(data):
    if NETWORK is not None:
        return NETWORK
    if os.environ.get("EDGED_TRT_DOUBLE_NETWORK"):
        return json.loads(os.environ["EDGED_TRT_DOUBLE_NETWORK"])
    import onnx

    m = onnx.load_from_string(data)

    def dims(vi):
        return [d.dim_value if d.dim_value > 0 else -1 for d in vi.type.tensor_type.shape.dim]

    inits = set(i.name for i in m.graph.initializer)
    return {"inputs": [[i.name, dims(i)] for i in m.graph.input if i.name not in inits],
            "outputs": [[o.name, dims(o)] for o in m.graph.output],
            "layers": [[n.name or "node%d" % k, n.op_type] for k, n in enumerate(m.graph.node)]}


class ParserError(object):
    def __init__(self, node, desc, name, op):
        self._node, self._desc, self._name, self._op = node, desc, name, op
        if _major_minor() >= (10, 0):  # node_name/node_operator arrived with 10.x
            self.node_name = lambda: self._name
            self.node_operator = lambda: self._op

    def node(self):
        return self._node

    def desc(self):
        return self._desc

    def code(self):
        return ErrorCode.UNSUPPORTED_NODE


class OnnxParser(object):
    def __init__(self, network, logger):
        self.network, self.logger, self.errors = network, logger, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i):
        return self.errors[i]

    def parse(self, model, path=None):
        record("OnnxParser.parse", len(model))
        if _major_minor() < (10, 0) and not self.network.flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
            self.errors.append(ParserError(-1, "Network must have explicit batch dimension", "", ""))
            return False
        desc = _describe_onnx(bytes(model))
        bad = [(i, n, op) for i, (n, op) in enumerate(desc["layers"]) if op in UNSUPPORTED_OPS]
        for i, n, op in bad:
            self.errors.append(ParserError(i, "No importer registered for op: %s" % op, n, op))
        if bad:
            return False
        self.network.inputs = [ITensor(n, s) for n, s in desc["inputs"]]
        self.network.outputs = [ITensor(n, s) for n, s in desc["outputs"]]
        self.network.layers = [ILayer(n, op) for n, op in desc["layers"]]
        self.network.onnx = bytes(model)
        return True


class IOptimizationProfile(object):
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min, opt, max):
        self.shapes[name] = [list(min), list(opt), list(max)]
        record("profile.set_shape", [name, list(min), list(opt), list(max)])

    def get_shape(self, name):
        return self.shapes[name]


class ITimingCache(object):
    def __init__(self, data):
        self.data = bytes(data) or b"TIMING:"

    def serialize(self):
        return self.data


class IBuilderConfig(_Strict):
    def __init__(self):
        props = ["default_device_type", "DLA_core", "int8_calibrator", "profiling_verbosity"]
        if _major_minor() < (10, 0):
            props.append("max_workspace_size")
        if _major_minor() >= (8, 6):
            props.append("builder_optimization_level")
        if _major_minor() >= (10, 0):
            props.append("progress_monitor")
        object.__setattr__(self, "_props", tuple(props))
        object.__setattr__(self, "_flags", set())
        object.__setattr__(self, "_profiles", [])
        object.__setattr__(self, "_timing", None)
        if _major_minor() >= (8, 4):  # memory pools arrived in 8.4
            object.__setattr__(self, "set_memory_pool_limit", self._set_pool)
        # defaults bypass recording: only what the builder asks for is recorded
        object.__setattr__(self, "default_device_type", DeviceType.GPU)
        object.__setattr__(self, "DLA_core", -1)
        object.__setattr__(self, "int8_calibrator", None)
        for name, default in (("max_workspace_size", 0), ("builder_optimization_level", 3), ("progress_monitor", None)):
            if name in props:
                object.__setattr__(self, name, default)

    def _set_pool(self, pool, size):
        record("config.set_memory_pool_limit", [str(pool), int(size)])

    def set_flag(self, flag):
        self._flags.add(flag)
        record("config.set_flag", str(flag))

    def get_flag(self, flag):
        return flag in self._flags

    def can_run_on_DLA(self, layer):
        return layer.op not in NOT_ON_DLA

    def set_device_type(self, layer, device):
        record("config.set_device_type", [layer.name, str(device)])

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        record("config.add_optimization_profile", profile.shapes)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile):
        record("config.set_calibration_profile", profile.shapes)

    def create_timing_cache(self, data):
        record("config.create_timing_cache", len(bytes(data)))
        return ITimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        object.__setattr__(self, "_timing", cache)
        record("config.set_timing_cache", bool(ignore_mismatch))
        return True

    def get_timing_cache(self):
        return self._timing


class Builder(object):
    def __init__(self, logger):
        import pycuda.driver as cuda

        try:
            cuda.init()
        except Exception:
            raise TypeError("pybind11::init(): factory function returned nullptr "
                            "(CUDA initialization failure with error: 35)")
        self.logger = logger
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = True
        self.num_DLA_cores = int(os.environ.get("EDGED_TRT_DOUBLE_DLA", "2"))
        if _major_minor() < (10, 0):
            self.max_batch_size = 1
            self.build_engine = lambda network, config: None  # deprecated in 8.x, removed in 10

    def create_network(self, flags=0):
        record("builder.create_network", int(flags))
        return INetworkDefinition(int(flags))

    def create_builder_config(self):
        return IBuilderConfig()

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        record("builder.build_serialized_network")
        monitor = getattr(config, "progress_monitor", None)
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)
        time.sleep(float(os.environ.get("EDGED_TRT_DOUBLE_BUILD_S", "0")))
        if config.int8_calibrator is not None and config.get_flag(BuilderFlag.INT8):
            cal, n = config.int8_calibrator, 0
            cache = cal.read_calibration_cache()
            if not cache:
                while cal.get_batch([i.name for i in network.inputs]):
                    n += 1
                cal.write_calibration_cache(b"CALIBRATION:%d" % n)
            record("calibration_batches", n)
        if monitor is not None:
            for step in range(3):
                monitor.step_complete("Building engine", step)
            monitor.phase_finish("Building engine")
        if os.environ.get("EDGED_TRT_DOUBLE_FAIL") == "build" or not config._profiles:
            self.logger.log(Logger.ERROR, "10: Could not find any implementation for node /features/conv0/Conv.")
            return None
        if config._timing is not None:
            config._timing.data += b"+"  # a build adds measurements
        header = {"version": __version__, "cc": "%d.%d" % __import__("pycuda.driver").driver.Device(0).compute_capability(),
                  "fp16": config.get_flag(BuilderFlag.FP16), "dla": config.DLA_core,
                  "inputs": [[t.name, list(config._profiles[0].shapes[t.name][2])] for t in network.inputs],
                  "dynamic": [config._profiles[0].shapes[t.name][0] != config._profiles[0].shapes[t.name][2]
                              for t in network.inputs],
                  "outputs": [[t.name, list(t.shape)] for t in network.outputs]}
        return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx


def nptype(dtype):
    return {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32}[int(dtype)]


def use(version):
    """Switch the API surface (``8.2``, ``8.5`` or ``10.3``) and clear the record."""
    global __version__, NetworkDefinitionCreationFlag, MemoryPoolType, TensorIOMode, IProgressMonitor
    __version__ = FULL[version]
    del calls[:]
    g = globals()
    for name in ("MemoryPoolType", "TensorIOMode", "IProgressMonitor"):
        g.pop(name, None)
    mm = _major_minor()
    NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                          ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"] if mm < (10, 0) else ["STRONGLY_TYPED"])
    if mm >= (8, 4):
        MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"])
    if mm >= (8, 5):
        TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    if mm >= (10, 0):
        IProgressMonitor = type("IProgressMonitor", (object,), {"__init__": lambda self: None})


BuilderFlag = _enum("BuilderFlag", ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "TF32"])
DeviceType = _enum("DeviceType", ["GPU", "DLA"])
DataType = _enum("DataType", ["FLOAT", "HALF", "INT8", "INT32"])
ErrorCode = _enum("ErrorCode", ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED",
                                "INVALID_VALUE", "INVALID_GRAPH", "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"])
IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (object,), {"__init__": lambda self: None})
use(os.environ.get("EDGED_TRT_DOUBLE", "10.3"))

from tensorrt._runtime import ICudaEngine, IExecutionContext, Runtime  # noqa: E402,F401  (needs the names above)
