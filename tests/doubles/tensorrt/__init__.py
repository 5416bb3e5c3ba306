"""Double of the TensorRT Python API: 8.0 / 8.2 / 8.5 / 8.6 / 10.3, strict where the real one is.

Surfaces per version follow the binding sources (NVIDIA/TensorRT python/src/infer/pyCore.cpp at
8.0.1, 8.2.1, 8.5.2, v8.6.1, v10.3.0) and ``python/packaging/.../tensorrt/__init__.py``. It is
not a simulator: it records what the builder was asked (``calls``), rejects what the chosen
version lacks (AttributeError, as pybind11 objects do), and produces "plans" that its Runtime
deserializes again or refuses. Failing where the real module fails (see ``_device.py``):

- callbacks raising abort the process on 8.0/8.2 (SIGABRT); 8.5+ swallow and print;
- objects used while another CUDA context is current fail ("invalid resource handle");
- ``create_timing_cache`` returns None for a corrupt blob; ``set_timing_cache`` returns False for
  a cache made on another device/SM count/TensorRT (then ``get_timing_cache()`` is None);
- ``nptype`` reads ``np.bool`` before 8.6 (AttributeError on numpy 1.24-1.26);
- at most 16 DLA loadables per core; each DLA subgraph of an engine is one;
- ``platform_has_fast_int8`` is False on Nano (SM 5.3) and TX2 (6.2);
- a plan refuses to load on another TensorRT version or compute capability;
- ``IEngineInspector`` (8.2+) reports the real placement (``{ForeignNode[...]}`` layers of type
  ``DLA``) only for plans built with ``ProfilingVerbosity.DETAILED``.

Engines compute with ONNX Runtime when it is importable, else a fixed formula; FP16 builds round
outputs through float16. Python 3.6 compatible.

Version: ``EDGED_TRT_DOUBLE=8.0|8.2|8.5|8.6|10.3`` before import, or ``tensorrt.use("8.5")``.
Knobs: ``EDGED_TRT_DOUBLE_RECORD`` (file receiving calls as JSON lines, for subprocesses),
``EDGED_TRT_DOUBLE_NETWORK`` (JSON network when onnx is not importable), ``EDGED_TRT_DOUBLE_FAIL``
(``build``: build returns None; ``timing_refused``: every timing cache is refused;
``deserialize_crash`` / ``deserialize_hang``: the Runtime dies by SIGSEGV / hangs loading a
plan), ``EDGED_TRT_DOUBLE_BUILD_S`` (build duration), ``EDGED_TRT_DOUBLE_LOG_LINES`` (VERBOSE
lines per build), ``EDGED_TRT_DOUBLE_DLA`` (DLA cores), ``EDGED_TRT_DOUBLE_DLA_STATE`` (folder
sharing DLA loadable counts between processes), and the pycuda double's knobs.
"""
import builtins
import json
import os

from tensorrt import _device

FULL = {"8.0": "8.0.1.6", "8.2": "8.2.1.8", "8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.3": "10.3.0.30"}
PLAN_MAGIC = b"TRTDOUBLE1\n"
TIMING_MAGIC = b"TRTDOUBLE-TIMING1\n"
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


def _call(name, fn, *args):
    """An application callback, through the trampoline of the current version."""
    return _device.callback(_major_minor(), name, fn, *args)


def _log(logger, severity, msg):
    try:
        _call("log", logger.log, severity, msg)
    except _device.Swallowed:
        pass


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


def _enum(kind, names, values=None):
    values = values or range(len(names))
    return type(kind, (object,), dict((n, _Enum(kind, n, v)) for n, v in zip(names, values)))


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


def _device_header():
    """What a timing cache's verification header holds: TensorRT and the CUDA device properties."""
    return {"trt": __version__, "cc": _device.compute_capability(), "sms": _device.sm_count()}


class ITimingCache(object):
    def __init__(self, header, entries):
        self.header, self.entries = header, entries

    def serialize(self):
        return TIMING_MAGIC + json.dumps({"header": self.header, "entries": self.entries}).encode()


class IBuilderConfig(_Strict):
    def __init__(self, builder):
        props = ["default_device_type", "DLA_core", "int8_calibrator", "profiling_verbosity"]
        if _major_minor() < (10, 0):
            props.append("max_workspace_size")
        if _major_minor() >= (8, 6):
            props.append("builder_optimization_level")
        if _major_minor() >= (10, 0):
            props.append("progress_monitor")
        object.__setattr__(self, "_props", tuple(props))
        object.__setattr__(self, "_builder", builder)
        object.__setattr__(self, "_flags", set())
        object.__setattr__(self, "_profiles", [])
        object.__setattr__(self, "_timing", None)
        object.__setattr__(self, "_devices", {})
        if _major_minor() >= (8, 4):  # memory pools arrived in 8.4
            object.__setattr__(self, "set_memory_pool_limit", self._set_pool)
        # defaults bypass recording: only what the builder asks for is recorded
        object.__setattr__(self, "default_device_type", DeviceType.GPU)
        object.__setattr__(self, "DLA_core", -1)
        object.__setattr__(self, "int8_calibrator", None)
        verbosity = ProfilingVerbosity.DEFAULT if _major_minor() < (8, 2) else ProfilingVerbosity.LAYER_NAMES_ONLY
        object.__setattr__(self, "profiling_verbosity", verbosity)
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
        self._devices[layer.name] = device
        record("config.set_device_type", [layer.name, str(device)])

    def get_device_type(self, layer):
        return self._devices.get(layer.name, self.default_device_type)

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        record("config.add_optimization_profile", profile.shapes)
        return len(self._profiles) - 1

    def set_calibration_profile(self, profile):
        record("config.set_calibration_profile", profile.shapes)

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        record("config.create_timing_cache", len(data))
        if not data:
            return ITimingCache(_device_header(), 0)
        try:
            assert data.startswith(TIMING_MAGIC)
            body = json.loads(data[len(TIMING_MAGIC):].decode())
            return ITimingCache(body["header"], int(body["entries"]))
        except Exception:
            _log(self._builder.logger, Logger.ERROR, "1: [timingCache.cpp::deserialize] Error Code 1: Serialization "
                                                     "(timing cache blob is corrupt)")
            return None

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, ITimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments. The following argument types "
                            "are supported: (self, cache: tensorrt.ITimingCache, ignore_mismatch: bool) -> bool")
        record("config.set_timing_cache", builtins.bool(ignore_mismatch))
        refused = os.environ.get("EDGED_TRT_DOUBLE_FAIL") == "timing_refused"
        if refused or (cache.header != _device_header() and not ignore_mismatch):
            _log(self._builder.logger, Logger.ERROR,
                 "1: [timingCache.cpp::verifyHeader] Error Code 1: Internal Error (timing cache was created for "
                 "%r, the current device is %r)" % (cache.header, _device_header()))
            object.__setattr__(self, "_timing", None)
            return False
        object.__setattr__(self, "_timing", cache)
        return True

    def get_timing_cache(self):
        return self._timing


class Builder(object):
    def __init__(self, logger):
        self._context = _device.require_cuda()
        record("Builder()")
        self.logger = logger
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = _device.fast_int8()
        self.num_DLA_cores = _device.dla_cores()
        if _major_minor() < (10, 0):
            self.max_batch_size = 1
            self.build_engine = lambda network, config: None  # deprecated in 8.x, removed in 10

    def create_network(self, flags=0):
        record("builder.create_network", int(flags))
        return INetworkDefinition(int(flags))

    def create_builder_config(self):
        return IBuilderConfig(self)

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        from tensorrt._build import build_plan

        record("builder.build_serialized_network")
        return build_plan(self, network, config)


def nptype(trt_type):
    """As the real one: the mapping is built on each call, reading ``np.bool`` before 8.6."""
    import numpy as np

    mapping = {float32: np.float32, float16: np.float16, int8: np.int8, int32: np.int32,  # noqa: F821 (module attributes set from DataType)
               bool: np.bool if _major_minor() < (8, 6) else np.bool_}
    if _major_minor() >= (8, 5):
        mapping[uint8] = np.uint8  # noqa: F821
    if _major_minor() >= (10, 0):
        mapping[int64] = np.int64  # noqa: F821
    if trt_type in mapping:
        return mapping[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def use(version):
    """Switch the API surface (``8.0``, ``8.2``, ``8.5``, ``8.6`` or ``10.3``) and clear the record."""
    global __version__, NetworkDefinitionCreationFlag, ProfilingVerbosity, DataType
    __version__ = FULL[version]
    del calls[:]
    g = globals()
    for name in ("MemoryPoolType", "TensorIOMode", "IProgressMonitor", "LayerInformationFormat", "EngineInspector",
                 "uint8", "int64", "fp8"):
        g.pop(name, None)
    mm = _major_minor()
    NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag",
                                          ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"] if mm < (10, 0) else ["STRONGLY_TYPED"])
    if mm < (8, 2):
        ProfilingVerbosity = _enum("ProfilingVerbosity", ["DEFAULT", "NONE", "VERBOSE"])
    elif mm < (10, 0):  # DEFAULT/VERBOSE kept as deprecated aliases until 10
        ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED", "DEFAULT", "VERBOSE"],
                                   [0, 1, 2, 0, 2])
    else:
        ProfilingVerbosity = _enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"])
    names = ["FLOAT", "HALF", "INT8", "INT32", "BOOL"] + (["UINT8"] if mm >= (8, 5) else []) + \
        (["FP8"] if mm >= (8, 6) else []) + (["BF16", "INT64", "INT4"] if mm >= (10, 0) else [])
    DataType = _enum("DataType", names)
    g.update(float32=DataType.FLOAT, float16=DataType.HALF, int8=DataType.INT8, int32=DataType.INT32,
             bool=DataType.BOOL)
    if mm >= (8, 4):
        g["MemoryPoolType"] = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM",
                                                       "DLA_GLOBAL_DRAM"])
    if mm >= (8, 5):
        g["TensorIOMode"] = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
        g["uint8"] = DataType.UINT8
    if mm >= (8, 6):
        g["fp8"] = DataType.FP8
    if mm >= (8, 2):
        g["LayerInformationFormat"] = _enum("LayerInformationFormat", ["ONELINE", "JSON"])
        from tensorrt._runtime import EngineInspector

        g["EngineInspector"] = EngineInspector
    if mm >= (10, 0):
        g["int64"] = DataType.INT64
        g["IProgressMonitor"] = type("IProgressMonitor", (object,), {"__init__": lambda self: None})


BuilderFlag = _enum("BuilderFlag", ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "TF32"])
DeviceType = _enum("DeviceType", ["GPU", "DLA"])
ErrorCode = _enum("ErrorCode", ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED",
                                "INVALID_VALUE", "INVALID_GRAPH", "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"])
IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (object,), {"__init__": lambda self: None})
NetworkDefinitionCreationFlag = ProfilingVerbosity = DataType = None
from tensorrt._runtime import ICudaEngine, IExecutionContext, Runtime  # noqa: E402,F401  (needs the names above)

use(os.environ.get("EDGED_TRT_DOUBLE", "10.3"))
