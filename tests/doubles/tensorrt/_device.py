"""What the tensorrt double does on the "device": callbacks, CUDA contexts, DLA loadables, GPU facts.

Written from the TensorRT Python binding sources (NVIDIA/TensorRT, python/src/infer/pyCore.cpp
and pyInt8.cpp at the 8.0.1, 8.2.1, 8.5.2, 8.6.1 and 10.3.0 tags) and the developer guide:

- Callbacks (logger, calibrator, progress monitor) are called from C++ through pybind11
  trampolines declared ``noexcept``. Up to 8.2 the trampoline has no try/catch: a Python
  exception becomes a C++ exception leaving a noexcept function, i.e. ``std::terminate`` →
  SIGABRT, and the process dies. From 8.5 each trampoline catches, prints ``[ERROR] Exception
  caught in <name>()`` to stderr and returns a default (``get_batch`` False, ``get_batch_size``
  -1, ``read_calibration_cache`` nullptr, ``step_complete`` False, which cancels the build).
- TensorRT uses the CUDA runtime, which works in whatever context is current on the thread and
  makes the primary context current when none is. Objects made in one context and used while
  another is current fail with "invalid resource handle" (a second context made by
  ``pycuda.autoinit`` after the Builder exists is the classic way to get there).
- "Only 16 DLA loadables can be loaded concurrently per core" (DLA supported layers and
  restrictions). Each DLA subgraph of an engine is one loadable. Counted per process, and across
  processes when ``EDGED_TRT_DOUBLE_DLA_STATE`` names a folder (one file per live process).
- GPU facts per compute capability: Nano (5.3) and TX2 (6.2) have no fast INT8; Nano, TX2 and
  Orin Nano have no DLA.
"""
import os
import sys

DLA_LOADABLES_PER_CORE = 16
NO_FAST_INT8 = ("5.3", "6.2")
_loaded = {}  # DLA core -> loadables held by this process


class Swallowed(Exception):
    """A callback raised and the (8.5+) trampoline swallowed it: use the default."""


def callback(version, name, fn, *args):
    """Call an application callback the way the binding's trampoline of ``version`` does."""
    try:
        return fn(*args)
    except BaseException as exc:  # pybind11 converts every Python exception, KeyboardInterrupt included
        if version < (8, 5):
            sys.stderr.write("terminate called after throwing an instance of 'pybind11::error_already_set'\n"
                             "  what():  %s: %s\n" % (type(exc).__name__, exc))
            sys.stderr.flush()
            os.abort()
        sys.stderr.write("[ERROR] Exception caught in %s(): %s: %s\n" % (name, type(exc).__name__, exc))
        sys.stderr.flush()
        raise Swallowed()


def cuda():
    import pycuda.driver as driver

    return driver


def require_cuda():
    """Builder/Runtime construction: CUDA must initialize (error 35 where there is no GPU)."""
    driver = cuda()
    try:
        driver.init()
        driver.Device(0)
    except Exception:
        raise TypeError("pybind11::init(): factory function returned nullptr "
                        "(CUDA initialization failure with error: 35)")
    return driver.runtime_context()


def context_ok(bound, log):
    """True when the context current now is the one the object was made in; else log like cudart."""
    current = cuda().current_context()
    if current is bound:
        return True
    log("1: [cudaDriverHelpers.cpp::operator()::29] Error Code 1: Cuda Driver (invalid resource handle) "
        "(context current: %r, object made in %r)" % (current, bound))
    return False


def pointer_ok(ptr, bound, log):
    driver = cuda()
    owner = driver.OWNER.get(int(ptr))
    if owner is bound:
        return True
    log("1: [calibrator.cpp::calibrateEngine] Error Code 1: Cuda Runtime (invalid argument) "
        "(device pointer %#x belongs to %r, the builder works in %r)" % (int(ptr), owner, bound))
    return False


def compute_capability():
    major, minor = cuda().Device(0).compute_capability()
    return "%d.%d" % (major, minor)


def sm_count():
    driver = cuda()
    return int(driver.Device(0).get_attribute(driver.device_attribute.MULTIPROCESSOR_COUNT))


def dla_cores():
    if os.environ.get("EDGED_TRT_DOUBLE_DLA") is not None:
        return int(os.environ["EDGED_TRT_DOUBLE_DLA"])
    return 2 if compute_capability() in ("7.2", "8.7") else 0


def fast_int8():
    return compute_capability() not in NO_FAST_INT8


def _state_dir():
    return os.environ.get("EDGED_TRT_DOUBLE_DLA_STATE")


def _others(core):
    folder = _state_dir()
    if not folder or not os.path.isdir(folder):
        return 0
    total = 0
    for name in os.listdir(folder):
        prefix = "core%d-" % core
        if not name.startswith(prefix):
            continue
        pid = int(name[len(prefix):])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except OSError:  # that process is gone, and its loadables with it
            continue
        with open(os.path.join(folder, name)) as f:
            total += int(f.read() or 0)
    return total


def _publish(core):
    folder = _state_dir()
    if folder:
        if not os.path.isdir(folder):
            os.makedirs(folder)
        with open(os.path.join(folder, "core%d-%d" % (core, os.getpid())), "w") as f:
            f.write(str(_loaded.get(core, 0)))


def dla_acquire(core, count):
    """Load ``count`` loadables on ``core``; False when the core would hold more than 16."""
    if _loaded.get(core, 0) + _others(core) + count > DLA_LOADABLES_PER_CORE:
        return False
    _loaded[core] = _loaded.get(core, 0) + count
    _publish(core)
    return True


def dla_release(core, count):
    _loaded[core] = max(0, _loaded.get(core, 0) - count)
    _publish(core)


def dla_held(core):
    return _loaded.get(core, 0) + _others(core)
