"""Which engines a model needs on this device, and getting them from the cache or the builder.

GPU: one engine with a dynamic-batch profile 1..max. DLA: no dynamic shapes, so one static
engine per batch size 1..max (the runtime picks the smallest that fits), within the DLA core's
16-loadable budget (``dla.py``: checked before building, and again with the real subgraph count
once the engine inspector has one). Every engine's key is complete (see ``cache.py``), so
``ensure`` is safe to call at every start-up: a hit costs one sha256 of the plan, a miss builds
under a lock while other processes wait.

``dla_core``: ``FROM_CONFIG`` (the default) takes ``tensorrt.dla_core``; ``None`` means the GPU,
whatever the config says (``edged selftest``'s GPU rows must run on the GPU).

Timing caches are keyed by TensorRT version, device, SM count and nvpmodel mode: TensorRT
refuses a cache timed with another SM count, and power modes with different TPC masks change it.
INT8 is refused before building on GPUs without fast INT8 (``platforms.py``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import edged
from edged.backends.tensorrt import platforms
from edged.backends.tensorrt.builder import (
    BuildOptions,
    Calibration,
    EngineBuildError,
    Preprocess,
    Progress,
    list_images,
    prepare_calibration,
    run_builder,
)
from edged.backends.tensorrt.cache import CacheEntry, DeviceId, EngineCache, EngineKey
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.dla import DlaRequest, budget_problems
from edged.backends.tensorrt.trt_placement import summary as placement_summary
from edged.models.manifest import LoadedModel

EventCallback = Callable[[str, dict], None]
log = logging.getLogger("edged.engines")
FROM_CONFIG = "config"  # EngineManager(dla_core=...) default: tensorrt.dla_core


def trt_available(probe: dict) -> tuple[bool, str]:
    """Whether the probed interpreter can build/run engines, and if not, a sentence saying why."""
    exe = probe.get("executable") or "the worker Python"
    if not probe.get("ok", True):
        return False, f"the worker Python cannot be run ({probe.get('error')})"
    if not probe.get("tensorrt"):
        return False, f"{exe} (Python {probe.get('python', '?')}) cannot import tensorrt ({probe.get('tensorrt_error', 'not installed')})"
    if not probe.get("gpu"):
        return False, f"TensorRT {probe['tensorrt']} is installed but no CUDA GPU is usable ({probe.get('gpu_error', 'none found')})"
    return True, f"TensorRT {probe['tensorrt']} on {probe['gpu'].get('name', 'GPU')} (compute {probe['gpu'].get('compute_capability')})"


def preprocess_fingerprint(model: LoadedModel) -> str:
    """Identity of the pixel pipeline: the manifest's input + preprocess sections and edged's version."""
    m = model.manifest
    return f"{m.input.model_dump_json()}|{m.preprocess.model_dump_json()}|edged {edged.__version__}"


@dataclass
class EngineSet:
    """The engines serving one model, with what the build and the cache said about them."""

    entries: list[tuple[EngineKey, CacheEntry]]
    precision: str
    dla_core: int | None
    max_batch: int
    built: list[str] = field(default_factory=list)
    placement: dict | None = None

    def worker_params(self, module: Path) -> dict:
        return {"module": str(module), "max_batch": self.max_batch, "dla_core": self.dla_core,
                "precision": self.precision,
                "engines": [{"path": str(e.engine), "batch": _static_batch(e.meta["key"])} for _, e in self.entries]}


def _static_batch(key: dict) -> int | None:
    """DLA engines are static (min == max); GPU engines take any batch up to their max."""
    return key["batch"][0] if key["dla_core"] is not None else None


class EngineManager:
    """Plans keys and ensures engines for one model on one (probed) device."""

    def __init__(self, model: LoadedModel, probe: dict, cfg: TensorRTConfig, cache_dir: Path, *,
                 precision: str | None = None, dla_core: int | None | str = FROM_CONFIG, max_batch: int | None = None,
                 preprocess: Preprocess | None = None, progress: Progress | None = None,
                 on_event: EventCallback | None = None, env: dict[str, str] | None = None,
                 calibration: Calibration | None = None):
        self.model, self.probe, self.cfg = model, probe, cfg
        self.precision = precision or cfg.precision
        self.dla_core = cfg.dla_core if dla_core == FROM_CONFIG else dla_core
        self.max_batch = max_batch or model.manifest.batching.max_batch_size
        self.preprocess = preprocess
        self.progress = progress
        self.on_event = on_event
        self.env = env
        self.cache = EngineCache(cfg.engines_root(cache_dir))
        self.timing_root = cfg.timing_root(cache_dir)
        self.device = DeviceId.from_probe(probe)
        self._calibration = calibration  # given: used as is (edged selftest); else made from the images

    def _emit(self, kind: str, fields: dict) -> None:
        if self.on_event:
            self.on_event(kind, dict(fields, model=self.model.name))

    def options(self) -> list[BuildOptions]:
        base = dict(precision=self.precision, max_batch=self.max_batch, dla_core=self.dla_core,
                    gpu_fallback=self.cfg.gpu_fallback, workspace_mb=self.cfg.workspace_mb,
                    optimization_level=self.cfg.optimization_level)
        if self.dla_core is None:
            return [BuildOptions(**base)]
        return [BuildOptions(static_batch=b, **base) for b in range(1, self.max_batch + 1)]

    def calibration(self) -> Calibration | None:
        if self.precision != "int8":
            return None
        if self._calibration is None:
            if self.preprocess is None:
                raise EngineBuildError("calibration", "INT8 needs the model's preprocessing to feed the calibrator")
            folder = self.cfg.calibration_dir or self.model.folder / "calibration"
            images = list_images(folder, self.cfg.calibration_max_images)
            self._calibration = prepare_calibration(images, self.preprocess, preprocess_fingerprint(self.model),
                                                    self.model.sha256, self.cache.root / "calibration", Path(folder))
        return self._calibration

    def key(self, opts: BuildOptions) -> EngineKey:
        cal = self.calibration()
        return EngineKey(self.model.name, self.model.sha256, str(self.probe.get("tensorrt")), self.device,
                         opts.precision, opts.dla_core, opts.profile, opts.flags(), cal.digest if cal else "")

    def timing_cache(self) -> Path:
        """One timing cache per TensorRT version, device, SM count and nvpmodel mode.

        TensorRT refuses a cache made with other CUDA device properties; the SM count is one of
        them and a power mode with another TPC mask changes it. The nvpmodel mode is in the key
        too, since where the probe cannot count SMs the mode is what changes them.
        """
        gpu = self.probe.get("gpu") or {}
        sms = f"_{gpu['multiprocessors']}sm" if gpu.get("multiprocessors") else ""
        mode = self.probe.get("nvpmodel_mode")
        mode_part = f"_mode{mode}" if mode is not None else ""
        return self.timing_root / f"trt{self.probe.get('tensorrt')}_{self.device.slug()}{sms}{mode_part}.timing"

    def check_before_build(self) -> None:
        """What the device cannot do, refused before an hour of building: DLA with FP32, INT8 on a
        GPU without fast INT8, more DLA engines than a core can load."""
        if self.dla_core is not None and self.precision == "fp32":
            raise EngineBuildError("dla", "DLA runs FP16 or INT8 only; set precision fp16 or int8 for DLA models")
        if self.precision == "int8":
            why = platforms.int8_refusal((self.probe.get("gpu") or {}).get("compute_capability"))
            if why:
                raise EngineBuildError("int8", f"{self.model.name}: INT8 refused: {why}")
        if self.dla_core is not None:
            problems = budget_problems([DlaRequest(self.model.name, self.dla_core, self.max_batch)],
                                       int(self.probe.get("dla_cores") or 0) or None)
            if problems:
                raise EngineBuildError("dla", problems[0])

    def ensure(self, force: bool = False) -> EngineSet:
        """Every engine this model needs, from the cache or freshly built; raises EngineBuildError."""
        self.check_before_build()
        self.model.verify_onnx()
        result = EngineSet([], self.precision, self.dla_core, self.max_batch)
        for opts in self.options():
            key = self.key(opts)
            entry, built, why = self.cache.get_or_build(key, lambda plan, log_path, o=opts: self._build(o, plan, log_path),
                                                        force=force)
            result.entries.append((key, entry))
            if built:
                result.built.append(entry.engine.name)
                self._emit("engine_built", {"engine": entry.engine.name, "reason": why,
                                            "seconds": entry.meta.get("build_seconds"), "precision": self.precision})
            if entry.meta.get("placement"):
                result.placement = entry.meta["placement"]
        if result.placement:
            p = result.placement
            log.info("%s: placement %s; on the GPU: %s", self.model.name, placement_summary(p),
                     [n for n, _ in p["gpu_layers"]][:10])
            self._emit("dla_placement", {k: v for k, v in p.items() if k not in ("layers_raw", "prediction")})
            loadables = sum(int((e.meta.get("placement") or {}).get("dla_subgraphs") or 1) for _, e in result.entries)
            per_engine = -(-loadables // len(result.entries))  # the budget counts engines x subgraphs
            problems = budget_problems([DlaRequest(self.model.name, self.dla_core, len(result.entries), per_engine)],
                                       int(self.probe.get("dla_cores") or 0) or None)
            if problems:
                raise EngineBuildError("dla", problems[0])
        return result

    def _build(self, opts: BuildOptions, plan: Path, log_path: Path) -> dict:
        if self.progress:
            self.progress(f"building {self.model.name} {opts.precision} engine, batch {opts.profile[0]}..{opts.profile[2]}"
                          f" on {'DLA%d' % opts.dla_core if opts.dla_core is not None else 'GPU'}", 0.0)
        summary = run_builder(self.model.onnx_path, plan, log_path, opts, python_exe=self.cfg.worker_python,
                              timing_cache=self.timing_cache(), calibration=self.calibration(),
                              calibration_batch=self.cfg.calibration_batch, heartbeat_s=self.cfg.heartbeat_s,
                              timeout_s=self.cfg.build_timeout_s, progress=self.progress, env=self.env)
        return {"build_seconds": summary.get("build_seconds"), "placement": summary.get("placement"),
                "warnings": summary.get("warnings", []), "model_path": str(self.model.onnx_path),
                "calibration": summary.get("calibration"), "timing_cache": summary.get("timing_cache"),
                "worker_python": self.cfg.worker_python}

    def invalidate(self, engines: EngineSet, reason: str) -> None:
        for key, entry in engines.entries:
            self.cache.invalidate(key, reason)
        self._emit("engine_invalidated", {"engines": [e.engine.name for _, e in engines.entries], "reason": reason})

    def images_for_validation(self) -> list[Path]:
        folder = self.cfg.validation_dir or self.cfg.calibration_dir or self.model.folder / "calibration"
        return list_images(folder, self.cfg.validation_max_images)


def current_device_filter(probe: dict) -> Callable[[dict], bool]:
    """For prune/verify: does a cache entry's key match this TensorRT version and device?"""
    device = DeviceId.from_probe(probe)

    def matches(meta: dict) -> bool:
        key = meta.get("key", {})
        return key.get("trt_version") == str(probe.get("tensorrt")) and key.get("device") == asdict(device)

    return matches
