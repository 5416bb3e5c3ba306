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

BUILD_SCRIPT = Path(__file__).with_name("trt_build.py").resolve()
IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ""}
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


def list_images(folder: Path | None, limit: int) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
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
        batch = np.stack([np.asarray(preprocess(p), dtype=np.float32) for p in images])
        tmp = tensors.with_name(f".{tensors.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, batch, allow_pickle=False)
        os.replace(tmp, tensors)
    return Calibration(tensors, work_dir / f"calib-{digest[:16]}.cache", digest, len(images))


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
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
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
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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
            progress(f"DLA placement: {msg['dla']} layers on DLA{msg['dla_core']}, {msg['gpu']} on GPU", None)
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
        hint = " (likely the kernel's OOM killer: lower tensorrt.workspace_mb or stop other processes)" if sig == "SIGKILL" else ""
        raise EngineBuildError("killed", f"engine builder was killed by {sig}{hint}")
    if code != 0 or result is None:
        raise EngineBuildError("crash", f"engine builder exited with {code}", stderr_tail[-5:])
    result["warnings"] = warnings
    result["build_seconds"] = round(time.monotonic() - t0, 3)
    return result
