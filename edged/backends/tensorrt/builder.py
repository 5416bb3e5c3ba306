"""Daemon side of engine builds: calibration data, the builder process, its progress and failures.

The build itself runs in ``trt_build.py`` under the worker Python (see there for why). This side
prepares what only the daemon can: INT8 calibration tensors made by the model's *own*
preprocessing (a calibrator fed differently-normalized pixels calibrates the wrong ranges), the
ONNX node names for per-node parser errors, and the calibration hash that keys both the
calibration cache and the engine. It turns the builder's JSON lines into ``progress(text,
fraction)`` calls and its failures into ``EngineBuildError`` with a human explanation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edged.backends.base import BackendError
from edged.backends.tensorrt.trt_placement import summary as placement_summary

BUILD_SCRIPT = Path(__file__).with_name("trt_build.py").resolve()
# Calibration and validation images go through the daemon's own preprocessing, which reads DICOM
# only (what the SCP receives): a .png/.jpg there could never be preprocessed like served images,
# so it is ignored with a warning rather than failing the build. Files without a DICOM suffix
# count when they carry the DICOM "DICM" magic (PACS exports often have none, or a UID for a name).
IMAGE_SUFFIXES = {".dcm", ".dicom"}
DICOM_MAGIC_OFFSET = 128
NON_DICOM_IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
Progress = Callable[[str, "float | None"], None]
Preprocess = Callable[[Path], np.ndarray]
log = logging.getLogger("edged.engines")


class EngineBuildError(BackendError):
    """A build failed; ``code`` is parse / build / dla / model / calibration / timeout / killed / unavailable."""

    def __init__(self, code: str, message: str, details: list[str] | None = None):
        super().__init__(message + "".join(f"\n  {d}" for d in details or []))
        self.code = code
        self.details = details or []


@dataclass(frozen=True)
class BuildOptions:
    precision: str
    max_batch: int
    static_batch: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    workspace_mb: int = 256
    optimization_level: int | None = None

    @property
    def profile(self) -> tuple[int, int, int]:
        if self.static_batch:
            return (self.static_batch,) * 3
        return (1, self.max_batch, self.max_batch)

    def flags(self) -> tuple[str, ...]:
        """Settings that change the plan beyond the named key fields."""
        out = [f"workspace_mb={self.workspace_mb}"]
        if self.dla_core is not None:
            out.append(f"gpu_fallback={int(self.gpu_fallback)}")
        if self.optimization_level is not None:
            out.append(f"opt_level={self.optimization_level}")
        return tuple(sorted(out))


@dataclass(frozen=True)
class Calibration:
    tensors: Path  # .npy (N, C, H, W) float32: a format numpy 1.13 reads, no pickles
    cache: Path  # TensorRT's calibration table, valid only for this digest
    digest: str
    images: int


def is_dicom_file(path: Path) -> bool:
    """``.dcm``/``.dicom`` by name; any other file but a known image format by its DICOM magic.

    By magic rather than "no suffix" because exports named by SOP Instance UID
    (``1.2.840.113619.2.55``) have a "suffix" to pathlib.
    """
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix in NON_DICOM_IMAGES:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def list_images(folder: Path | None, limit: int) -> list[Path]:
    """The DICOM files under ``folder`` (sorted, at most ``limit``), for calibration or the gate.

    Anything else is skipped: ``labels.csv`` and notes silently, files that look like images
    (.png, .jpg, ...) with a warning, since an operator who put them there expected them used.
    """
    if folder is None or not Path(folder).is_dir():
        return []
    files, ignored = [], []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if is_dicom_file(p):
            files.append(p)
        elif p.suffix.lower() in NON_DICOM_IMAGES:
            ignored.append(p.name)
    if ignored:
        log.warning("%s: ignoring %d non-DICOM image file(s) (%s%s); calibration and validation images must be "
                    "DICOM, preprocessed exactly as served", folder, len(ignored), ", ".join(ignored[:3]),
                    ", ..." if len(ignored) > 3 else "")
    return files[:limit]


def calibration_digest(model_sha256: str, images: list[Path], preprocess_id: str, root: Path | None = None) -> str:
    """Hash of model + image contents + preprocessing identity: any change invalidates calibration."""
    h = hashlib.sha256(f"model={model_sha256}\npreprocess={preprocess_id}\n".encode())
    for p in images:
        rel = p.relative_to(root) if root else p.name
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        h.update(f"{rel}={digest}\n".encode())
    return h.hexdigest()


def prepare_calibration(images: list[Path], preprocess: Preprocess, preprocess_id: str, model_sha256: str,
                        work_dir: Path, root: Path | None = None) -> Calibration:
    """Preprocess calibration images once per digest into a tensor file the builder streams."""
    if not images:
        raise EngineBuildError("calibration", "INT8 needs calibration images; none found (set tensorrt.calibration_dir)")
    digest = calibration_digest(model_sha256, images, preprocess_id, root)
    work_dir.mkdir(parents=True, exist_ok=True)
    tensors = work_dir / f"calib-{digest[:16]}.npy"
    if not tensors.exists():
        batch = np.stack([_preprocessed(preprocess, p) for p in images])
        tmp = tensors.with_name(f".{tensors.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, batch, allow_pickle=False)
        os.replace(tmp, tensors)
    return Calibration(tensors, work_dir / f"calib-{digest[:16]}.cache", digest, len(images))


def _preprocessed(preprocess: Preprocess, path: Path) -> np.ndarray:
    """One calibration tensor; a file the preprocessing rejects is a calibration failure.

    As EngineBuildError it lets ``backend: auto`` fall back to ONNX Runtime saying which file,
    instead of a pydicom exception escaping model loading.
    """
    try:
        return np.asarray(preprocess(path), dtype=np.float32)
    except Exception as exc:
        raise EngineBuildError("calibration", f"calibration image {path} cannot be preprocessed: "
                                              f"{type(exc).__name__}: {exc}") from exc


def onnx_node_names(onnx_path: Path) -> list[list[str]]:
    """(name, op) per graph node, so 8.x parser errors (node index only) name the node."""
    try:
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:  # a file the parser will reject anyway; let it say why
        return []
    return [[n.name or f"node{i}", n.op_type] for i, n in enumerate(graph.node)]


def run_builder(onnx_path: Path, plan_path: Path, log_path: Path, options: BuildOptions, *, python_exe: str,
                timing_cache: Path | None, calibration: Calibration | None = None, calibration_batch: int = 8,
                heartbeat_s: float = 15.0, timeout_s: float = 4 * 3600, progress: Progress | None = None,
                env: dict[str, str] | None = None) -> dict:
    """Run ``trt_build.py`` under ``python_exe``; return its summary or raise EngineBuildError."""
    spec = {"onnx": str(onnx_path), "plan": str(plan_path), "log": str(log_path), "precision": options.precision,
            "workspace_mb": options.workspace_mb, "max_batch": options.max_batch, "static_batch": options.static_batch,
            "dla_core": options.dla_core, "gpu_fallback": options.gpu_fallback,
            "optimization_level": options.optimization_level, "heartbeat_s": heartbeat_s,
            "timing_cache": str(timing_cache) if timing_cache else None, "node_names": onnx_node_names(onnx_path)}
    if calibration is not None:
        spec["calibration"] = {"tensors": str(calibration.tensors), "cache": str(calibration.cache),
                               "batch_size": calibration_batch}
    if timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(prefix="edged-build-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    try:
        return _supervise([python_exe, "-u", "-B", str(BUILD_SCRIPT), spec_path], timeout_s, progress, env)
    finally:
        os.unlink(spec_path)


def _supervise(cmd: list[str], timeout_s: float, progress: Progress | None, env: dict[str, str] | None) -> dict:
    """Run the builder in its own session and never leave it behind.

    ``start_new_session`` keeps a Ctrl-C on the terminal from reaching the builder directly (it
    must not die half-way through writing a plan), so whatever ends *this* function early (a
    KeyboardInterrupt raised in ``progress``, SystemExit, a bug) must kill the builder's process
    group itself: otherwise an hour-long build keeps the GPU, the memory and the cache lock.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    try:
        return _follow(proc, t0, timeout_s, progress)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _follow(proc: subprocess.Popen, t0: float, timeout_s: float, progress: Progress | None) -> dict:
    """Turn the builder's JSON lines into progress calls and its outcome into a result or an error."""
    lines: queue.Queue[str | None] = queue.Queue()
    stderr_tail: list[str] = []

    def pump_out() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            stderr_tail[:] = (stderr_tail + [raw.decode("utf-8", "replace").rstrip()])[-20:]

    threads = [threading.Thread(target=f, daemon=True) for f in (pump_out, pump_err)]
    for t in threads:
        t.start()
    result: dict | None = None
    error: dict | None = None
    warnings: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, timeout_s - (time.monotonic() - t0)))
        except queue.Empty:  # _supervise kills the process group on the way out
            raise EngineBuildError("timeout", f"engine build exceeded {timeout_s:g} s and was stopped") from None
        if line is None:
            break
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        kind = msg.get("event")
        if kind == "progress" and progress:
            progress(msg.get("text", ""), msg.get("fraction"))
        elif kind == "warning":
            warnings.append(msg["text"])
            log.warning("engine build: %s", msg["text"])
            if progress:
                progress("warning: " + msg["text"], None)
        elif kind == "placement" and progress:
            progress(f"DLA placement: {placement_summary(msg)}", None)
        elif kind == "done":
            result = msg
        elif kind == "error":
            error = msg
    code = proc.wait()
    for t in threads:
        t.join(timeout=2)
    if error is not None:
        raise EngineBuildError(error.get("code", "build"), error.get("text", "build failed"), error.get("details"))
    if code < 0:
        sig = signal.Signals(-code).name
        hint = {"SIGKILL": " (likely the kernel's OOM killer: lower tensorrt.workspace_mb or stop other processes)",
                "SIGABRT": " (an abort inside TensorRT or CUDA; its last words follow)"}.get(sig, "")
        raise EngineBuildError("killed", f"engine builder was killed by {sig}{hint}", stderr_tail[-8:])
    if code != 0 or result is None:
        raise EngineBuildError("crash", f"engine builder exited with {code}", stderr_tail[-8:])
    result["warnings"] = warnings
    result["build_seconds"] = round(time.monotonic() - t0, 3)
    return result
