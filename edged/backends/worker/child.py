"""The isolated inference worker: one small script the daemon starts under any Python >= 3.6.

Why a separate process on a separate interpreter: on a Jetson, TensorRT and pycuda exist only
as JetPack system packages bound to the system Python (3.6 on JetPack 4.6, 3.8 on 5.x, 3.10 on
6.x), while the daemon runs in its own >= 3.10 environment. A crash, a CUDA hang or a leak in
the inference stack also takes down only this process; the daemon restarts it.

Rules for this file (checked by tests under Python 3.6 and 3.8): Python 3.6 syntax, numpy >= 1.13,
nothing imported from the rest of edged (it runs as a script by path). The daemon side imports
it as ``edged.backends.worker.child`` for the tensor header codec, so there is one definition.

Protocol: JSON lines. Requests arrive on stdin, replies leave on the original stdout, which is
moved to a private descriptor at start-up; descriptor 1 is pointed at stderr so that a library
printing to stdout (TensorRT, ONNX Runtime, pycuda) cannot corrupt the protocol. Tensors never
travel in JSON: they live in one memory-mapped file (in /dev/shm) that the daemon creates, each
tensor behind a fixed 128-byte header (see ``HEADER``): the input batch at offset 0, then every
output of the model, one after the other from ``out_offset``; the reply names each output and
its offset. A host's ``infer(x)`` returns a list of ``(name, array)`` in the network's order. No pickles: numpy 2 pickles do not
load in numpy 1.x, and a header is a contract both sides can check.
"""
import json
import mmap
import os
import struct
import sys
import time
import traceback

# Run as a script, this file's folder is sys.path[0]; its siblings (select.py-like names) must
# not shadow standard or third-party modules that tensorrt/numpy import.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

# No ONNX Runtime telemetry (see edged/__init__.py): this script is started by path, without the
# package, and with whatever environment its caller passed, so it sets the variable itself
# before anything below can import onnxruntime.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

PROTOCOL = 2  # 2: any number of named outputs per batch
MAGIC = b"EDGDTNS1"
TENSOR_VERSION = 1
# magic, version, dtype code, ndim, seq, data offset (from file start), nbytes, shape[8]
HEADER = struct.Struct("<8sHHIQQQ8q")
HEADER_SIZE = 128  # HEADER.size is 104; the rest is zero padding reserved for later versions
MAX_NDIM = 8
ALIGN = 64
DTYPES = {1: "float32", 2: "float16", 3: "uint8", 4: "int32", 5: "int64", 6: "float64", 7: "int8"}
CODES = dict((name, code) for code, name in DTYPES.items())
FAULT_DELAY_ENV = "EDGED_WORKER_FAULT_DELAY_S"  # test hook: sleep before each batch


class TensorIOError(ValueError):
    """A tensor block is malformed or does not fit; never silently misread memory."""


class HostError(Exception):
    """A host failed in a way the daemon should distinguish (``code``), e.g. deserialize_failed."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def align(n):
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


def block_size(shape, dtype_name):
    """Bytes a tensor of ``shape``/``dtype_name`` occupies: header plus aligned data."""
    import numpy as np

    count = 1
    for d in shape:
        count *= int(d)
    return HEADER_SIZE + align(count * np.dtype(dtype_name).itemsize)


def write_tensor(buf, offset, arr, seq):
    """Write ``arr`` at ``offset`` of the writable buffer ``buf``; data first, header last."""
    import numpy as np

    arr = np.ascontiguousarray(arr)
    name = arr.dtype.name
    if name not in CODES:
        raise TensorIOError("dtype %s cannot cross the worker boundary" % name)
    if arr.ndim > MAX_NDIM:
        raise TensorIOError("%d dimensions; at most %d" % (arr.ndim, MAX_NDIM))
    data_offset = offset + HEADER_SIZE
    end = data_offset + arr.nbytes
    if offset < 0 or end > len(buf):
        raise TensorIOError("tensor of %d bytes at %d does not fit a %d-byte buffer" % (arr.nbytes, offset, len(buf)))
    if arr.nbytes:
        buf[data_offset:end] = memoryview(arr.reshape(-1).view(np.uint8))
    shape = list(arr.shape) + [0] * (MAX_NDIM - arr.ndim)
    header = HEADER.pack(MAGIC, TENSOR_VERSION, CODES[name], arr.ndim, seq, data_offset, arr.nbytes, *shape)
    buf[offset:offset + HEADER_SIZE] = header + b"\0" * (HEADER_SIZE - HEADER.size)
    return end


def read_tensor(buf, offset, expect_seq=None):
    """Read the tensor at ``offset`` as a private copy; validate every header field first."""
    import numpy as np

    if offset < 0 or offset + HEADER_SIZE > len(buf):
        raise TensorIOError("no tensor header at %d in a %d-byte buffer" % (offset, len(buf)))
    fields = HEADER.unpack(bytes(buf[offset:offset + HEADER.size]))
    magic, version, code, ndim, seq, data_offset, nbytes = fields[:7]
    if magic != MAGIC:
        raise TensorIOError("bad magic %r at %d" % (magic, offset))
    if version != TENSOR_VERSION:
        raise TensorIOError("tensor header version %d, this side speaks %d" % (version, TENSOR_VERSION))
    if code not in DTYPES:
        raise TensorIOError("unknown dtype code %d" % code)
    if ndim > MAX_NDIM:
        raise TensorIOError("ndim %d > %d" % (ndim, MAX_NDIM))
    if expect_seq is not None and seq != expect_seq:
        raise TensorIOError("stale tensor: sequence %d, expected %d" % (seq, expect_seq))
    shape = tuple(int(d) for d in fields[7:7 + ndim])
    dtype = np.dtype(DTYPES[code])
    count = 1
    for d in shape:
        if d < 0:
            raise TensorIOError("negative dimension in %r" % (shape,))
        count *= d
    if nbytes != count * dtype.itemsize:
        raise TensorIOError("nbytes %d does not match shape %r of %s" % (nbytes, shape, dtype.name))
    if data_offset < offset + HEADER_SIZE or data_offset + nbytes > len(buf):
        raise TensorIOError("data [%d, %d) outside the buffer" % (data_offset, data_offset + nbytes))
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=data_offset).reshape(shape).copy()
    return arr, seq


def _spec(name, shape, dtype):
    return {"name": name, "shape": [int(d) if isinstance(d, int) and d > 0 else -1 for d in shape], "dtype": dtype}


class EchoHost(object):
    """numpy-only host: returns each sample flattened as float32, and its sum in the input dtype.

    Used for the IPC self-test under the Jetson Pythons, where ONNX Runtime is usually absent,
    so the shared-memory contract is checked on the very interpreters that will run TensorRT.
    """

    def __init__(self, params):
        self.shape = [int(d) for d in params.get("input_shape", [-1, 4])]
        self.dtype = params.get("dtype", "float32")

    def describe(self):
        features = 1
        for d in self.shape[1:]:
            features *= d
        return {
            "input": _spec("input", self.shape, self.dtype),
            "outputs": [_spec("output", [-1, features], "float32"), _spec("sum", [-1], self.dtype)],
            "info": {"backend": "echo", "precision": "fp32", "device": "cpu", "detail": {}},
        }

    def infer(self, x):
        flat = x.reshape(x.shape[0], -1)
        return [("output", flat.astype("float32")), ("sum", flat.sum(axis=1).astype(x.dtype))]

    def close(self):
        pass


class OrtHost(object):
    """ONNX Runtime on the CPU, same settings as the in-process OnnxRuntimeBackend."""

    _TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}

    def __init__(self, params):
        import onnxruntime as ort

        self.ort = ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("threads", 0))
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.enable_mem_pattern = False
        self.session = ort.InferenceSession(params["model"], sess_options=opts, providers=["CPUExecutionProvider"])
        if len(self.session.get_inputs()) != 1:
            raise HostError("load_error", "edged serves models with one input")
        self.threads = int(params.get("threads", 0))
        self.outputs = self.session.get_outputs()

    def describe(self):
        i = self.session.get_inputs()[0]
        return {
            "input": _spec(i.name, i.shape, self._TYPES.get(i.type, i.type)),
            "outputs": [_spec(o.name, o.shape, self._TYPES.get(o.type, o.type)) for o in self.outputs],
            "info": {"backend": "onnxruntime", "precision": "fp32", "device": "cpu",
                     "detail": {"ort_version": self.ort.__version__, "threads": self.threads}},
        }

    def infer(self, x):
        import numpy as np

        values = self.session.run(None, {self.session.get_inputs()[0].name: x})
        return [(o.name, np.asarray(v)) for o, v in zip(self.outputs, values)]

    def close(self):
        self.session = None


def _external_host(params):
    """A host module loaded by path (the TensorRT runtime lives next to the engine builder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("edged_worker_host", params["module"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.create_host(params)


HOSTS = {"echo": EchoHost, "onnxruntime": OrtHost, "external": _external_host}


class Server(object):
    """The request loop: one host, one mapped tensor file, one request at a time."""

    def __init__(self, out):
        self.out = out
        self.host = None
        self.fd = None
        self.mm = None
        self.delay = float(os.environ.get(FAULT_DELAY_ENV) or 0)

    def send(self, msg):
        self.out.write((json.dumps(msg) + "\n").encode("utf-8"))
        self.out.flush()

    def _map(self):
        size = os.fstat(self.fd).st_size
        if self.mm is None or len(self.mm) != size:
            if self.mm is not None:
                self.mm.close()
            self.mm = mmap.mmap(self.fd, size)

    def op_load(self, req):
        if req["host"] not in HOSTS:
            raise HostError("load_error", "unknown host %r" % req["host"])
        self.fd = os.open(req["shm"], os.O_RDWR)
        self._map()
        self.host = HOSTS[req["host"]](req.get("params") or {})
        return self.host.describe()

    def op_infer(self, req):
        if self.host is None:
            raise HostError("not_loaded", "infer before load")
        if self.delay:
            time.sleep(self.delay)
        self._map()
        seq = int(req["seq"])
        x, _ = read_tensor(self.mm, 0, expect_seq=seq)
        t0 = time.time()
        ys = self.host.infer(x)
        ms = (time.time() - t0) * 1000.0
        offset = int(req["out_offset"])
        placed = []
        for name, y in ys:
            placed.append({"name": name, "offset": offset})
            offset = align(offset + block_size(y.shape, y.dtype.name))
        if offset > len(self.mm):
            return {"ok": False, "code": "need_space", "need": offset, "error": "outputs need %d bytes" % offset}
        for (name, y), where in zip(ys, placed):
            write_tensor(self.mm, where["offset"], y, seq)
        return {"ms": ms, "outputs": placed}

    def op_ping(self, req):
        return {}

    def handle(self, req):
        op = getattr(self, "op_" + str(req.get("op")), None)
        if op is None:
            return {"ok": False, "code": "bad_request", "error": "unknown op %r" % req.get("op")}
        try:
            reply = op(req)
        except HostError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # the host failed on this request; the worker itself is fine
            sys.stderr.write(traceback.format_exc())
            code = getattr(exc, "code", None) or ("load_error" if req.get("op") == "load" else "infer_error")
            return {"ok": False, "code": code, "error": "%s: %s" % (type(exc).__name__, exc)}
        reply.setdefault("ok", True)
        return reply

    def run(self, inp):
        import numpy

        self.send({"event": "hello", "pid": os.getpid(), "protocol": PROTOCOL,
                   "python": "%d.%d.%d" % sys.version_info[:3], "numpy": numpy.__version__})
        while True:
            line = inp.readline()
            if not line:  # the daemon went away: nobody to answer
                break
            req = json.loads(line.decode("utf-8"))
            if req.get("op") == "close":
                self.send({"id": req.get("id"), "ok": True})
                break
            reply = self.handle(req)
            reply["id"] = req.get("id")
            self.send(reply)
        if self.host is not None:
            self.host.close()


def self_test():
    """Round-trip every dtype through a real mapped file; the daemon-side tests do the rest."""
    import tempfile

    import numpy as np

    fd, path = tempfile.mkstemp(prefix="edged-selftest-")
    try:
        os.ftruncate(fd, 1 << 16)
        mm = mmap.mmap(fd, 1 << 16)
        rng = np.random.RandomState(0)
        offset, checked = 0, []
        for code in sorted(DTYPES):
            name = DTYPES[code]
            arr = (rng.standard_normal((2, 3, 5)) * 50).astype(name)
            end = write_tensor(mm, offset, arr, code)
            back, seq = read_tensor(mm, offset, expect_seq=code)
            if seq != code or back.dtype != arr.dtype or back.shape != arr.shape or not np.array_equal(back, arr):
                raise AssertionError("round trip failed for %s" % name)
            offset = align(end)
            checked.append(name)
        mm.close()
        return {"ok": True, "dtypes": checked, "python": "%d.%d.%d" % sys.version_info[:3], "numpy": np.__version__}
    finally:
        os.close(fd)
        os.unlink(path)


def main(argv):
    if "--self-test" in argv:
        print(json.dumps(self_test()))
        return 0
    # Keep the protocol channel private: fd 1 now goes to stderr for any library that prints.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    Server(out).run(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
