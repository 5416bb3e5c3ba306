"""Runtime half of the tensorrt double: Runtime, ICudaEngine, EngineInspector, IExecutionContext.

``deserialize_cuda_engine`` returns None (no exception) with TensorRT's log words for a foreign
or corrupt plan: wrong magic, another TensorRT version, another compute capability, or a DLA
core that already holds 16 loadables. Engines run the ONNX model with ONNX Runtime when it is
importable, else a fixed formula (per-sample mean + 0.01 * k); FP16 plans round outputs through
float16. Execution fails (returns False, logs "invalid resource handle") when another CUDA
context is current than the one the Runtime was made in. Python 3.6 compatible.
"""
import json
import os
import signal
import time

import numpy as np

import tensorrt as _t
from tensorrt import _Strict, _device


class ICudaEngine(object):
    def __init__(self, header, onnx_bytes, context, dla_core):
        self.h, self.onnx, self._context = header, onnx_bytes, context
        self._dla = (dla_core, len(header["dla_nodes"])) if dla_core is not None else None
        name, shape = header["inputs"][0]
        batch = -1 if header["dynamic"][0] else shape[0]
        self.io = [(name, True, [batch] + shape[1:], _t.DataType.FLOAT)]
        for oname, oshape in header["outputs"]:
            self.io.append((oname, False, [batch] + oshape[1:], _t.DataType.FLOAT))
        mm = _t._major_minor()
        if mm >= (8, 5):
            self.num_io_tensors = len(self.io)
        if mm < (10, 0):
            self.num_bindings = len(self.io)
            self.get_binding_name = lambda i: self.io[i][0]
            self.binding_is_input = lambda i: self.io[i][1]
            self.get_binding_shape = lambda i: tuple(self.io[i][2])
            self.get_binding_dtype = lambda i: self.io[i][3]
        if mm >= (8, 2):
            self.profiling_verbosity = _t.ProfilingVerbosity.DETAILED if header["verbosity"] == 2 else \
                _t.ProfilingVerbosity.LAYER_NAMES_ONLY if header["verbosity"] == 0 else _t.ProfilingVerbosity.NONE
            self.create_engine_inspector = lambda: _t.EngineInspector(self)

    def __del__(self):
        if getattr(self, "_dla", None):
            _device.dla_release(*self._dla)

    def _find(self, name):
        return next(t for t in self.io if t[0] == name)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return _t.TensorIOMode.INPUT if self._find(name)[1] else _t.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return tuple(self._find(name)[2])

    def get_tensor_dtype(self, name):
        return self._find(name)[3]

    def create_execution_context(self):
        return IExecutionContext(self)


class EngineInspector(object):
    """8.2+: layer information; detail only for plans built with ProfilingVerbosity.DETAILED."""

    def __init__(self, engine):
        self.engine = engine
        self.execution_context = None

    def _layers(self):
        h = self.engine.h
        if h["dla"] < 0:
            return [{"Name": n, "LayerType": op, "TacticValue": "0x0"} for n, op in h["layers"]]
        out = []
        for i, (first, last) in enumerate(h["dla_nodes"]):
            node = "{ForeignNode[%s...%s]}" % (first, last)
            out.append({"Name": "Reformatting CopyNode for Input Tensor 0 to %s" % node, "LayerType": "Reformat",
                        "TacticValue": "0x0"})
            out.append({"Name": node, "LayerType": "DLA", "Inputs": [], "Outputs": [], "TacticValue": "0x0"})
        out.extend({"Name": n, "LayerType": op, "TacticValue": "0x0"} for n, op in h["gpu_layers"])
        return out

    def get_engine_information(self, format):
        verbosity = self.engine.h["verbosity"]
        layers = self._layers()
        if verbosity == 1:  # NONE
            layers = []
        elif verbosity == 0:  # LAYER_NAMES_ONLY
            layers = [layer["Name"] for layer in layers]
        bindings = [t[0] for t in self.engine.io]
        if format == _t.LayerInformationFormat.JSON:
            return json.dumps({"Layers": layers, "Bindings": bindings})
        return "\n".join(layer if isinstance(layer, str) else layer["Name"] for layer in layers)

    def get_layer_information(self, layer_index, format):
        layer = json.loads(self.get_engine_information(_t.LayerInformationFormat.JSON))["Layers"][layer_index]
        return json.dumps(layer) if format == _t.LayerInformationFormat.JSON else str(layer)


class IExecutionContext(object):
    def __init__(self, engine):
        self.engine, self.shape, self.addr = engine, None, {}
        if _t._major_minor() >= (8, 5):
            self.set_input_shape = self._set_input_shape
            self.set_tensor_address = lambda name, ptr: self.addr.__setitem__(name, int(ptr))
            self.execute_async_v3 = self._v3
        if _t._major_minor() < (10, 0):
            self.set_binding_shape = lambda i, shape: self._set_input_shape(engine.io[i][0], shape)
            self.execute_async_v2 = self._v2

    def _set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def _v2(self, bindings, stream_handle):
        _t.record("context.execute_async_v2", self.shape)
        self.addr = dict((t[0], bindings[i]) for i, t in enumerate(self.engine.io))
        return self._run()

    def _v3(self, stream_handle):
        _t.record("context.execute_async_v3", self.shape)
        return self._run()

    def _run(self):
        from pycuda.driver import MEMORY

        if not _device.context_ok(self.engine._context, lambda m: None):
            return False
        iname, _, ishape, _ = self.engine.io[0]
        outs = self.engine.io[1:]
        shape = self.shape or tuple(ishape)
        _t.record("context.executed_shape", shape)
        x = MEMORY[self.addr[iname]][:int(np.prod(shape)) * 4].view(np.float32).reshape(shape)
        try:
            import onnxruntime as ort

            sess = ort.InferenceSession(self.engine.onnx, providers=["CPUExecutionProvider"])
            ys = [y.astype(np.float32) for y in sess.run(None, {sess.get_inputs()[0].name: x})]
        except ImportError:
            ys = []
            for _, _, oshape, _ in outs:
                y = np.repeat(x.reshape(shape[0], -1).mean(axis=1, keepdims=True), int(np.prod(oshape[1:])), axis=1)
                ys.append(y + np.arange(y.shape[1], dtype=np.float32) * 0.01)
        for (oname, _, _, _), y in zip(outs, ys):
            if self.engine.h["fp16"]:
                y = y.astype(np.float16).astype(np.float32)
            out = MEMORY[self.addr[oname]]
            out[:y.nbytes] = np.ascontiguousarray(y, dtype=np.float32).reshape(-1).view(np.uint8)
        return True


class Runtime(_Strict):
    _props = ("DLA_core",)

    def __init__(self, logger):
        object.__setattr__(self, "_context", _device.require_cuda())
        object.__setattr__(self, "_logger", logger)
        object.__setattr__(self, "DLA_core", -1)
        _t.record("Runtime()")

    @property
    def num_DLA_cores(self):
        return _device.dla_cores()

    def _error(self, msg):
        _t._log(self._logger, _t.Logger.ERROR, msg)
        return None

    def deserialize_cuda_engine(self, serialized_engine):
        data = bytes(serialized_engine)
        _t.record("runtime.deserialize_cuda_engine", len(data))
        fail = os.environ.get("EDGED_TRT_DOUBLE_FAIL")
        if fail == "deserialize_crash":  # what a CUDA abort / segfault in the real runtime looks like
            os.kill(os.getpid(), signal.SIGSEGV)
        elif fail == "deserialize_hang":  # a hung driver call: only a kill ends it
            time.sleep(3600)
        if not _device.context_ok(self._context, self._error):
            return None
        if not data.startswith(_t.PLAN_MAGIC):
            return self._error("1: [runtime.cpp::parsePlan::314] Error Code 1: Serialization (Serialization assertion "
                               "plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
        head, _, onnx_bytes = data[len(_t.PLAN_MAGIC):].partition(b"\n")
        try:
            header = json.loads(head.decode())
        except ValueError:
            return self._error("1: [runtime.cpp::parsePlan] Error Code 1: Serialization (plan is corrupt)")
        if header.get("size") != len(onnx_bytes):  # truncated or padded: TensorRT reads past or short of its tags
            return self._error("1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: Serialization "
                               "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
        if header["version"] != _t.__version__:
            return self._error("1: [stdArchiveReader.cpp::StdArchiveReader::40] Error Code 1: Serialization "
                               "(Serialization assertion stdVersionRead == serializationVersion failed."
                               "Version tag does not match.)")
        here = _device.compute_capability()
        if header["cc"] != here:
            return self._error("6: The engine plan file is generated on an incompatible device, expecting compute %s "
                               "got compute %s, please rebuild." % (here, header["cc"]))
        core = None
        if header["dla"] >= 0:
            core = self.DLA_core if self.DLA_core >= 0 else header["dla"]
            if core >= _device.dla_cores():
                return self._error("1: DLA core %d requested; this device has %d" % (core, _device.dla_cores()))
            if not _device.dla_acquire(core, len(header["dla_nodes"])):
                return self._error("1: [nvdlaUtils.cpp::submit] Error Code 1: DLA (Failure to load program.) DLA core %d "
                                   "already holds %d loadables" % (core, _device.dla_held(core)))
        return ICudaEngine(header, onnx_bytes, self._context, core)
