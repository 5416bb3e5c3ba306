"""The slice of pycuda.driver that edged uses: init, Device, mem_alloc, pinned buffers, copies."""
import itertools
import os

import numpy as np

MEMORY = {}  # fake device pointer -> np.uint8 array
calls = []
_addresses = itertools.count(0x10000, 0x10000)


class Error(Exception):
    pass


def _devices():
    return int(os.environ.get("EDGED_CUDA_DOUBLE_DEVICES", "1"))


def init():
    calls.append("init")
    if _devices() == 0:
        raise Error("cuInit failed: no CUDA-capable device is detected")


def get_version():
    return (10, 2, 0)


class Device(object):
    def __init__(self, index):
        if index >= _devices():
            raise Error("invalid device ordinal")
        self.index = index

    @staticmethod
    def count():
        return _devices()

    def name(self):
        return "Double GPU"

    def compute_capability(self):
        major, minor = os.environ.get("EDGED_CUDA_DOUBLE_CC", "7.2").split(".")
        return int(major), int(minor)

    def make_context(self):
        calls.append("make_context")
        return Context()


class Context(object):
    def push(self):
        calls.append("push")

    def pop(self):
        calls.append("pop")


class DeviceAllocation(object):
    def __init__(self, nbytes):
        self.ptr = next(_addresses)
        MEMORY[self.ptr] = np.zeros(nbytes, dtype=np.uint8)

    def __int__(self):
        return self.ptr

    def free(self):
        MEMORY.pop(self.ptr, None)


def mem_alloc(nbytes):
    calls.append(("mem_alloc", int(nbytes)))
    return DeviceAllocation(int(nbytes))


def pagelocked_empty(shape, dtype):
    calls.append(("pagelocked_empty", shape))
    return np.empty(shape, dtype)


class Stream(object):
    def __init__(self):
        self.handle = next(_addresses)

    def synchronize(self):
        calls.append("synchronize")


def _bytes(arr):
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def memcpy_htod(dest, src):
    raw = _bytes(src)
    MEMORY[int(dest)][:raw.size] = raw


def memcpy_dtoh(dest, src):
    view = dest.reshape(-1).view(np.uint8)
    view[:] = MEMORY[int(src)][:view.size]


def memcpy_htod_async(dest, src, stream=None):
    calls.append(("memcpy_htod_async", _bytes(src).size))
    memcpy_htod(dest, src)


def memcpy_dtoh_async(dest, src, stream=None):
    calls.append(("memcpy_dtoh_async", dest.nbytes))
    memcpy_dtoh(dest, src)
