"""TensorRT execution inside the worker child (loaded by path through the ``external`` host).

Runs under the Jetson system Python, so: Python 3.6 syntax, numpy >= 1.13, tensorrt + pycuda
only, nothing from edged. CUDA context: the GPU's *primary* context, made current before the
Runtime exists (``pycuda.autoprimaryctx``, or the same by hand on pycuda < 2021.1), as in the
builder and the probe: TensorRT's CUDA runtime works in the primary context, and a second one
(``pycuda.autoinit``) only gives objects two homes. The child is single-threaded, so the context
stays current and no push/pop per call is needed (the classic "explicit_context_dependent
failed" error comes from using pycuda across threads).

Tensor dtypes are mapped here, not with ``trt.nptype``: up to TensorRT 8.5 it reads ``np.bool``,
which numpy 1.24 removed (and 2.0 brought back), so on JetPack 5.1 with a newer numpy it raises
for every engine.

A DLA core holds at most 16 loadables (one per DLA subgraph of each engine); TensorRT's refusal
to load another is reported as ``dla_load_failed`` (not ``deserialize_failed``: rebuilding the
plan would not help).

API per version: TensorRT 8.5+ and 10.x use the tensor API (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); 8.2 has only bindings
(``num_bindings``, ``set_binding_shape``, ``execute_async_v2``); 10.x removed bindings.

Outputs: every output tensor of the engine, by name, in the engine's order and dtype.

Engines: one dynamic-batch engine (GPU), or one static-batch engine per batch size (DLA has no
dynamic shapes); a batch goes to the smallest engine that fits, padded with zeros.
"""
import os

import numpy as np

# TensorRT DataType name -> numpy dtype name; what edged can serve (FP8/BF16/INT4 have no numpy type).
DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "BOOL": "bool",
          "UINT8": "uint8", "INT64": "int64"}
DLA_LOAD_WORDS = ("Failure to load program", "DLA Error in deserialize", "load from memory failed")


class HostError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def create_host(params):
    return TrtHost(params)


def np_dtype(trt_type):
    """numpy dtype of a TensorRT DataType, by its name (``DataType.HALF`` → float16)."""
    name = str(trt_type).split(".")[-1]
    if name not in DTYPES:
        raise HostError("load_error", "engine tensor type %s has no numpy equivalent" % name)
    return np.dtype(DTYPES[name])


def use_primary_context():
    """Make the GPU's primary CUDA context current; return pycuda.driver."""
    import pycuda.driver as cuda

    try:
        import pycuda.autoprimaryctx  # noqa: F401  (pycuda >= 2021.1)
    except ImportError:
        import atexit

        cuda.init()
        context = cuda.Device(0).retain_primary_context()
        context.push()
        atexit.register(context.pop)
    return cuda


def _make_logger(trt, keep):
    class KeepLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            try:  # a noexcept trampoline on TensorRT 8.0/8.2: raising here would abort the worker
                if severity in (trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR, trt.Logger.WARNING):
                    keep.append(str(msg))
                    del keep[:-50]
            except BaseException:
                pass

    return KeepLogger()


class _Engine(object):
    """One deserialized engine with its context, pinned host buffers, device buffers and stream."""

    def __init__(self, trt, cuda, runtime, path, capacity, static, messages):
        with open(path, "rb") as f:
            engine = runtime.deserialize_cuda_engine(f.read())
        if engine is None:  # TensorRT returns None (no exception) for a wrong version/device/corrupt plan
            detail = "; ".join(messages[-3:]) or "no message from TensorRT"
            if any(w in m for m in messages[-3:] for w in DLA_LOAD_WORDS):
                raise HostError("dla_load_failed", "DLA could not load %s: %s (a DLA core holds at most 16 loadables; "
                                "fewer batch sizes or models per core, or another core, leave room)"
                                % (os.path.basename(path), detail))
            raise HostError("deserialize_failed", "cannot deserialize %s: %s" % (os.path.basename(path), detail))
        self.trt, self.cuda, self.engine, self.static = trt, cuda, engine, static
        self.tensor_api = hasattr(engine, "num_io_tensors")
        io = []
        if self.tensor_api:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                io.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                           tuple(engine.get_tensor_shape(name)), np_dtype(engine.get_tensor_dtype(name)), i))
        else:
            for i in range(engine.num_bindings):
                io.append((engine.get_binding_name(i), engine.binding_is_input(i), tuple(engine.get_binding_shape(i)),
                           np_dtype(engine.get_binding_dtype(i)), i))
        inputs = [t for t in io if t[1]]
        outputs = [t for t in io if not t[1]]
        if len(inputs) != 1 or not outputs:
            raise HostError("load_error", "edged serves engines with one input and at least one output")
        self.inp, self.outs = inputs[0], outputs
        self.num_io = len(io)
        self.capacity = capacity
        self.context = engine.create_execution_context()
        in_shape = (capacity,) + self.inp[2][1:]
        self.host_in = cuda.pagelocked_empty(int(np.prod(in_shape)), self.inp[3])
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.host_out, self.dev_out = [], []
        for out in self.outs:
            host = cuda.pagelocked_empty(int(np.prod((capacity,) + out[2][1:])), out[3])
            self.host_out.append(host)
            self.dev_out.append(cuda.mem_alloc(host.nbytes))
        self.stream = cuda.Stream()

    def run(self, x):
        n = x.shape[0]
        rows = self.capacity if self.static else n
        count_in = rows * int(np.prod(self.inp[2][1:]))
        flat = x.astype(self.inp[3]).reshape(-1)
        self.host_in[:flat.size] = flat
        if rows > n:
            self.host_in[flat.size:count_in] = 0
        shape = (rows,) + self.inp[2][1:]
        cuda, ctx = self.cuda, self.context
        cuda.memcpy_htod_async(self.dev_in, self.host_in[:count_in], self.stream)
        if self.tensor_api:
            if not self.static and not ctx.set_input_shape(self.inp[0], shape):
                raise RuntimeError("set_input_shape%r rejected" % (shape,))
            ctx.set_tensor_address(self.inp[0], int(self.dev_in))
            for out, dev in zip(self.outs, self.dev_out):
                ctx.set_tensor_address(out[0], int(dev))
            ok = ctx.execute_async_v3(self.stream.handle)
        else:
            if not self.static and not ctx.set_binding_shape(self.inp[4], shape):
                raise RuntimeError("set_binding_shape%r rejected" % (shape,))
            bindings = [0] * self.num_io
            bindings[self.inp[4]] = int(self.dev_in)
            for out, dev in zip(self.outs, self.dev_out):
                bindings[out[4]] = int(dev)
            ok = ctx.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)
        if not ok:
            raise RuntimeError("TensorRT execution failed")
        counts = []
        for out, host, dev in zip(self.outs, self.host_out, self.dev_out):
            count = rows * int(np.prod(out[2][1:]))
            counts.append(count)
            cuda.memcpy_dtoh_async(host[:count], dev, self.stream)
        self.stream.synchronize()
        return [(out[0], host[:count].reshape((rows,) + tuple(out[2][1:]))[:n].copy())
                for out, host, count in zip(self.outs, self.host_out, counts)]


class TrtHost(object):
    """params: engines [{path, batch|None}], max_batch, dla_core, precision, input/output names."""

    def __init__(self, params):
        cuda = use_primary_context()  # before any TensorRT object exists
        import tensorrt as trt

        self.trt, self.params, self.messages = trt, params, []
        self.logger = _make_logger(trt, self.messages)
        self.runtime = trt.Runtime(self.logger)
        dla = params.get("dla_core")
        if dla is not None:
            self.runtime.DLA_core = int(dla)  # must precede deserialization
        self.engines = []
        for e in params["engines"]:
            static = e.get("batch")
            cap = int(static or params["max_batch"])
            self.engines.append(_Engine(trt, cuda, self.runtime, e["path"], cap, bool(static), self.messages))
        self.engines.sort(key=lambda eng: eng.capacity)
        self.max_batch = self.engines[-1].capacity

    def describe(self):
        eng = self.engines[-1]

        def spec(t):
            return {"name": t[0], "shape": [-1] + [int(d) for d in t[2][1:]], "dtype": t[3].name}

        dla = self.params.get("dla_core")
        return {"input": spec(eng.inp), "outputs": [spec(o) for o in eng.outs],
                "info": {"backend": "tensorrt", "precision": self.params.get("precision", "fp32"),
                         "device": "gpu" if dla is None else "dla%d" % dla,
                         "detail": {"trt_version": self.trt.__version__, "engines": [e["path"] for e in self.params["engines"]],
                                    "api": "tensor" if eng.tensor_api else "bindings", "max_batch": self.max_batch}}}

    def infer(self, x):
        """Every output by name, in the engine's order; batches above the largest engine are
        run in chunks and concatenated."""
        chunks = []
        start = 0
        while start < x.shape[0]:
            chunk = x[start:start + self.max_batch]
            eng = next(e for e in self.engines if e.capacity >= chunk.shape[0])
            chunks.append(eng.run(chunk))
            start += chunk.shape[0]
        if len(chunks) == 1:
            return chunks[0]
        return [(name, np.concatenate([c[i][1] for c in chunks], axis=0)) for i, (name, _) in enumerate(chunks[0])]

    def close(self):
        self.engines = []
