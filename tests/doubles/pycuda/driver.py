"""The slice of pycuda.driver that edged uses, with CUDA contexts as the driver has them.

"Device memory" is host memory addressed by fake pointers (``MEMORY``). What is modelled
because a device would fail on it:

- A per-thread context stack. ``Device.make_context()`` creates a *new* context and pushes it
  (``pycuda.autoinit`` does this); ``Device.retain_primary_context()`` returns the device's one
  primary context, not current until ``push()`` (``pycuda.autoprimaryctx`` does this). The CUDA
  runtime that TensorRT uses (cudart) binds to whatever context is current and, when none is,
  makes the primary context current (``runtime_context()``, used by the tensorrt double).
- Allocations, pinned buffers and streams need a current context (``LogicError`` "invalid device
  context" otherwise, pycuda's words) and remember the context they were made in.
- ``Device.get_attribute(device_attribute.MULTIPROCESSOR_COUNT)``: the SM count, which a power
  mode with another TPC mask changes (``EDGED_CUDA_DOUBLE_SMS``).

Knobs: ``EDGED_CUDA_DOUBLE_DEVICES=0`` (no GPU: ``init()`` fails), ``EDGED_CUDA_DOUBLE_CC``
(compute capability, default 7.2 = Xavier; 5.3 Nano, 6.2 TX2, 8.7 Orin), ``EDGED_CUDA_DOUBLE_SMS``.
Python 3.6 compatible, like the code under test.
"""
import itertools
import os
import threading

import numpy as np

MEMORY = {}  # fake device pointer -> np.uint8 array
OWNER = {}  # fake device pointer -> the Context it was allocated in
calls = []
_addresses = itertools.count(0x10000, 0x10000)
_local = threading.local()
_primary = {}
_NAMES = {"5.3": "NVIDIA Tegra X1", "6.2": "NVIDIA Tegra X2", "7.2": "Xavier", "8.7": "Orin"}
_SMS = {"5.3": 1, "6.2": 2, "7.2": 8, "8.7": 16}


class Error(Exception):
    pass


class LogicError(Error):
    pass


class RuntimeError(Error):  # noqa: A001  (pycuda's name)
    pass


def _devices():
    return int(os.environ.get("EDGED_CUDA_DOUBLE_DEVICES", "1"))


def _cc():
    return os.environ.get("EDGED_CUDA_DOUBLE_CC", "7.2")


def init(flags=0):
    calls.append("init")
    if _devices() == 0:
        raise RuntimeError("cuInit failed: no CUDA-capable device is detected")


def get_version():
    return (10, 2, 0)


class device_attribute(object):  # noqa: N801  (pycuda's name)
    MULTIPROCESSOR_COUNT = "MULTIPROCESSOR_COUNT"
    COMPUTE_CAPABILITY_MAJOR = "COMPUTE_CAPABILITY_MAJOR"
    COMPUTE_CAPABILITY_MINOR = "COMPUTE_CAPABILITY_MINOR"


class Device(object):
    def __init__(self, index):
        if index >= _devices():
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.index = index

    @staticmethod
    def count():
        return _devices()

    def name(self):
        return _NAMES.get(_cc(), "Double GPU")

    def compute_capability(self):
        major, minor = _cc().split(".")
        return int(major), int(minor)

    def get_attribute(self, attr):
        if attr == device_attribute.MULTIPROCESSOR_COUNT:
            return int(os.environ.get("EDGED_CUDA_DOUBLE_SMS") or _SMS.get(_cc(), 8))
        if attr == device_attribute.COMPUTE_CAPABILITY_MAJOR:
            return self.compute_capability()[0]
        if attr == device_attribute.COMPUTE_CAPABILITY_MINOR:
            return self.compute_capability()[1]
        raise LogicError("cuDeviceGetAttribute failed: invalid value")

    def make_context(self, flags=0):
        """cuCtxCreate: a new context, pushed onto this thread's stack (current)."""
        calls.append("make_context")
        ctx = Context(self, primary=False)
        _stack().append(ctx)
        return ctx

    def retain_primary_context(self):
        """cuDevicePrimaryCtxRetain: the device's one primary context; not made current."""
        calls.append("retain_primary_context")
        return _primary_of(self.index)


class Context(object):
    def __init__(self, device, primary):
        self.device, self.primary = device, primary

    def push(self):
        calls.append("push")
        _stack().append(self)

    @staticmethod
    def pop():
        calls.append("pop")
        stack = _stack()
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: invalid device context")
        stack.pop()

    def detach(self):
        calls.append("detach")

    def get_device(self):
        return self.device

    @staticmethod
    def get_current():
        stack = _stack()
        return stack[-1] if stack else None

    @staticmethod
    def synchronize():
        _need_context("cuCtxSynchronize")

    def __repr__(self):
        return "<Context %s of device %d>" % ("primary" if self.primary else "created", self.device.index)


def _stack():
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _primary_of(index):
    if index not in _primary:
        _primary[index] = Context(Device(index), primary=True)
    return _primary[index]


def current_context():
    """The context current on this thread, or None."""
    return Context.get_current()


def runtime_context():
    """What cudart (TensorRT) uses: the current context, or the primary one made current."""
    stack = _stack()
    if not stack:
        stack.append(_primary_of(0))
    return stack[-1]


def _need_context(what):
    ctx = Context.get_current()
    if ctx is None:
        raise LogicError("%s failed: invalid device context - no currently active context?" % what)
    return ctx


class DeviceAllocation(object):
    def __init__(self, nbytes, ctx):
        self.ptr = next(_addresses)
        MEMORY[self.ptr] = np.zeros(nbytes, dtype=np.uint8)
        OWNER[self.ptr] = ctx

    def __int__(self):
        return self.ptr

    def free(self):
        MEMORY.pop(self.ptr, None)
        OWNER.pop(self.ptr, None)


def mem_alloc(nbytes):
    ctx = _need_context("cuMemAlloc")
    calls.append(("mem_alloc", int(nbytes)))
    return DeviceAllocation(int(nbytes), ctx)


def pagelocked_empty(shape, dtype):
    _need_context("cuMemHostAlloc")
    calls.append(("pagelocked_empty", shape))
    return np.empty(shape, dtype)


class Stream(object):
    def __init__(self, flags=0):
        self.context = _need_context("cuStreamCreate")
        self.handle = next(_addresses)

    def synchronize(self):
        calls.append("synchronize")


def _bytes(arr):
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def memcpy_htod(dest, src):
    _need_context("cuMemcpyHtoD")
    raw = _bytes(src)
    MEMORY[int(dest)][:raw.size] = raw


def memcpy_dtoh(dest, src):
    _need_context("cuMemcpyDtoH")
    view = dest.reshape(-1).view(np.uint8)
    view[:] = MEMORY[int(src)][:view.size]


def memcpy_htod_async(dest, src, stream=None):
    calls.append(("memcpy_htod_async", _bytes(src).size))
    memcpy_htod(dest, src)


def memcpy_dtoh_async(dest, src, stream=None):
    calls.append(("memcpy_dtoh_async", dest.nbytes))
    memcpy_dtoh(dest, src)
