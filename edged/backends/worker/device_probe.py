"""What a Jetson interpreter can host: run by path as ``python device_probe.py``, prints one JSON line.

Runs on the device's system Python (3.6 on JetPack 4.6), so: Python 3.6 syntax, nothing imported
from the rest of edged. The daemon runs it in a throw-away child (:mod:`edged.backends.worker.probe`)
because importing TensorRT initializes CUDA (seconds on a Nano) and may crash on a broken install.
"""
import json
import os
import sys

# Run as a script, this file's folder is sys.path[0]; its siblings must not shadow real modules.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

NVPMODEL_STATUS = "/var/lib/nvpmodel/status"  # "pmode:0002 fmode:..." written by nvpmodel
TEGRA_RELEASE = "/etc/nv_tegra_release"
PROBE_ROOT_ENV = "EDGED_PROBE_ROOT"  # test hook: read the device files above under this folder


def _device_file(path):
    return os.path.join(os.environ.get(PROBE_ROOT_ENV) or "/", path.lstrip("/"))


def probe():
    """What this interpreter can host; the daemon's backend selection reads this.

    Cheap on purpose (it runs at every start): DLA cores come from ``trt.Runtime``, not from a
    Builder (which takes hundreds of MB on a Nano). The CUDA primary context is made current
    first, as in the builder and the runtime. ``multiprocessors`` and ``nvpmodel_mode`` key the
    timing caches: a power mode with another TPC mask changes the SM count TensorRT timed on.
    """
    out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
    for mod in ("numpy", "onnxruntime", "tensorrt"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # ImportError, or a missing libnvinfer / CUDA runtime
            out[mod] = None
            out[mod + "_error"] = "%s: %s" % (type(exc).__name__, exc)
    out["gpu"] = None
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() > 0:
            dev = cuda.Device(0)
            out["gpu"] = {"name": dev.name(), "compute_capability": "%d.%d" % dev.compute_capability(),
                          "multiprocessors": int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))}
            out["cuda"] = "%d.%d.%d" % cuda.get_version()
            context = dev.retain_primary_context()
            context.push()  # popped at exit; TensorRT below works in it
            import atexit

            atexit.register(context.pop)
    except Exception as exc:
        out["gpu_error"] = "%s: %s" % (type(exc).__name__, exc)
    out["dla_cores"] = 0
    if out["tensorrt"] and out["gpu"]:
        try:
            import tensorrt as trt

            out["dla_cores"] = int(trt.Runtime(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
        except Exception as exc:
            out["tensorrt_error"] = "%s: %s" % (type(exc).__name__, exc)
    for key, path in (("model", "/proc/device-tree/model"), ("compatible", "/proc/device-tree/compatible"),
                      ("nvpmodel_status", NVPMODEL_STATUS)):
        try:
            with open(_device_file(path), "rb") as f:
                out[key] = f.read().replace(b"\0", b",").decode("ascii", "replace").strip(",").strip()
        except OSError:
            out[key] = None
    out["l4t"] = None
    try:
        with open(_device_file(TEGRA_RELEASE)) as f:  # "# R32 (release), REVISION: 7.1, GCID: ..."
            head = f.readline()
        major = head.split("R", 1)[1].split()[0]
        revision = head.split("REVISION:", 1)[1].split(",")[0].strip()
        out["l4t"] = "%s.%s" % (int(major), revision)
    except (OSError, IndexError, ValueError):
        pass
    mode = (out.pop("nvpmodel_status") or "").split("pmode:")
    out["nvpmodel_mode"] = int(mode[1].split()[0]) if len(mode) > 1 and mode[1].split()[0].isdigit() else None
    return out


if __name__ == "__main__":
    print(json.dumps(probe()))
