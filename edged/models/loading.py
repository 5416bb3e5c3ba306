"""From the config's model list to served models: manifest, backend, checks, warm-up, batcher.

A model serves the sources its manifest lists. One that serves DICOM gets a DICOM instance; one
that serves cameras and is named by an enabled camera gets a camera instance. A model listed for
both is loaded twice (two backends, two batchers): camera frames never queue ahead of an
acknowledged image, and a camera-heavy site cannot delay DICOM results.

One model failing (a missing or altered ONNX file, a manifest that does not describe its network,
a backend that will not load) does not stop the others: it is logged, published as a ``backend``
event ``load_failed`` and listed as unavailable; the daemon decides what to do when none is left.
Configured DLA engines beyond a core's 16 loadables are a configuration error found before any
model loads (``ConfigError``, exit status 2): which model would fail to load is arbitrary, and
``edged check`` reports the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edged.backends.base import Backend
from edged.backends.selection import make_backend
from edged.batcher.dynamic import DynamicBatcher
from edged.batcher.served import ServedModel
from edged.config.hints import did_you_mean
from edged.config.schema import Config, ModelEntry
from edged.config.yamlsrc import ConfigError
from edged.models.manifest import BatchingSpec, LoadedModel, ModelManifest, load_manifest
from edged.outbox.emitter import EventEmitter
from edged.postprocess.decode import kind_of, tensors_of
from edged.power.runtime import PowerRuntime
from edged.service.sdnotify import Notifier

log = logging.getLogger("edged")


class ModelLoader:
    def __init__(self, cfg: Config, power: PowerRuntime, notifier: Notifier, events: EventEmitter):
        self.cfg, self.power, self.notifier, self.events = cfg, power, notifier, events
        self.base_batching: dict[str, BatchingSpec] = {}

    def load_all(self) -> tuple[dict[str, ServedModel], dict[str, ServedModel], dict[str, str]]:
        """DICOM and camera instances by model name, and why each other configured model (or
        instance, ``name@camera``) is not served."""
        check_dla_budget(self.cfg)
        check_secondaries(self.cfg)
        served: dict[str, dict[str, ServedModel]] = {"dicom": {}, "camera": {}}
        unavailable: dict[str, str] = {}
        for_cameras = {m for cam in self.cfg.cameras if cam.enabled for m in cam.all_model_names}
        for i, entry in enumerate(self.cfg.models, 1):
            self.notifier.status(f"loading model {entry.name} ({i}/{len(self.cfg.models)})")
            key = entry.name
            try:
                sources = self._manifest(entry).manifest.sources
                if entry.name in for_cameras and "camera" not in sources:
                    raise ValueError(f"a camera names model {entry.name}, whose manifest does not list "
                                     f"camera in its sources ({', '.join(sources)})")
                for source in sources:
                    if source == "camera" and entry.name not in for_cameras:
                        log.info("model %s serves cameras but no enabled camera names it: not loaded for them",
                                 entry.name)
                        continue
                    key = entry.name if source == "dicom" else f"{entry.name}@camera"
                    served[source][entry.name] = self.load(entry, source)
            except Exception as exc:
                why = "; ".join(exc.problems) if isinstance(exc, ConfigError) else f"{exc}"
                log.error("model %s is not served: %s", key, why, exc_info=log.isEnabledFor(logging.DEBUG))
                unavailable[key] = why
                self.events.emit("backend", "load_failed", model=key, detail=why)
        return served["dicom"], served["camera"], unavailable

    def _manifest(self, entry: ModelEntry) -> LoadedModel:
        path = self.cfg.manifest_path(entry)
        if entry.manifest is None and not path.exists():
            have = sorted(p.parent.name for p in self.cfg.model_repository.glob("*/model.yaml"))
            raise ValueError(f"no model {entry.name} in {self.cfg.model_repository}{did_you_mean(entry.name, have)}; "
                             f"the repository has: {', '.join(have) or 'no models'}")
        return load_manifest(path)

    def load(self, entry: ModelEntry, source: str = "dicom") -> ServedModel:
        model = self._manifest(entry)
        if model.name != entry.name:
            raise ValueError(f"models: entry {entry.name!r} points at a manifest named {model.name!r}")
        if source not in model.manifest.sources:
            raise ValueError(f"model {model.name} does not serve {source} (sources: {', '.join(model.manifest.sources)})")
        model.verify_onnx()
        backend, reason = make_backend(self.cfg, entry, model, on_event=self._backend_event(model.name),
                                       progress=self._build_progress(model.name))
        try:
            check_tensors(model.name, model.manifest, backend)
            self.base_batching[model.name] = entry.batching or model.manifest.batching
            spec = self.power.batching(self.base_batching[model.name], model.name, model.sha256)
            batcher = DynamicBatcher(model.name if source == "dicom" else f"{model.name}@{source}", backend, spec,
                                     windows=self.power.accounting)
            served = ServedModel(model, backend, batcher, backend.info, reason, source)
            backend.warmup(1, served.sample_shape())  # the first calls at a new shape allocate; before READY
            backend.warmup(spec.max_batch_size, served.sample_shape())
            if source == "dicom":
                warm_preprocessing(model.manifest)
        except BaseException:
            backend.close()
            raise
        log.info("model %s %s (sha256 %s…): %s; clinical: %s; batching %d / %.0f ms", model.name,
                 model.manifest.version, model.sha256[:12], reason, str(model.manifest.clinical).lower(),
                 spec.max_batch_size, spec.max_queue_delay_ms)
        if not model.manifest.clinical:
            log.warning("model %s is marked clinical: false — results must not be used for care", model.name)
        return served

    def _backend_event(self, model: str) -> Callable[[str, dict], None]:
        """Worker and engine events (crash, restart, engine built/rejected) → a ``backend`` event."""
        def emit(kind: str, fields: dict) -> None:
            level = logging.WARNING if kind.startswith(("worker_", "engine_failed", "engine_rejected")) else logging.INFO
            shown = ", ".join(f"{k} {v}" for k, v in fields.items() if k not in ("stderr_tail", "model"))
            log.log(level, "model %s: %s%s", model, kind, f" ({shown})" if shown else "")
            detail = fields.get("reason") or fields.get("message") or kind.replace("_", " ")
            self.events.emit("backend", kind, model=model, detail=str(detail), fields=fields)
        return emit

    def _build_progress(self, model: str) -> Callable[[str, "float | None"], None]:
        """Engine builds can take an hour on a Nano: tell systemd (and a technician) they progress."""
        def progress(text: str, fraction: float | None) -> None:
            pct = f", {fraction:.0%}" if fraction is not None else ""
            self.notifier.status(f"building engine {model}: {text}{pct}")
            self.notifier.extend_timeout(300_000_000)  # another 5 min from now, for as long as it progresses
        return progress


def check_dla_budget(cfg: Config) -> None:
    """Raise ConfigError when the configured DLA engines exceed a core's loadables (see dla.py)."""
    from edged.backends.tensorrt.dla import budget_problems, requests_from_config

    manifests = {}
    for entry in cfg.models:
        try:
            manifests[entry.name] = load_manifest(cfg.manifest_path(entry))
        except Exception:  # reported with its reason when the model is loaded
            continue
    problems = budget_problems(requests_from_config(cfg, manifests))
    if problems:
        raise ConfigError([f"models: {p}" for p in problems])


def check_secondaries(cfg: Config) -> None:
    """Raise ConfigError when a camera's secondary classifiers do not fit their manifests (what
    ``edged check`` reports too): a run must not start serving detections it cannot classify."""
    from edged.sources.camera.secondary_config import secondary_problems

    manifests = {}
    for entry in cfg.models:
        try:
            manifests[entry.name] = load_manifest(cfg.manifest_path(entry)).manifest
        except Exception:  # reported with its reason when the model is loaded
            continue
    problems = secondary_problems(cfg.cameras, manifests, cfg.where)
    if problems:
        raise ConfigError(problems)


def check_tensors(name: str, manifest: ModelManifest, backend: Backend) -> None:
    """The manifest must describe the network it names: a mismatch found here is one clear
    start-up error instead of a failed inference for every image."""
    spec = manifest.input
    expected = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else \
        (spec.height, spec.width, spec.channels)
    actual = backend.input_spec.shape[1:]
    if len(actual) != 3 or any(a not in (-1, e) for a, e in zip(actual, expected)):
        raise ValueError(f"model {name}: the network's input is {backend.input_spec.shape} but the manifest says "
                         f"{spec.layout} {expected}")
    outputs = {o.name: o for o in backend.output_specs}
    for out in manifest.decoded_outputs:
        missing = [t for t in tensors_of(out) if t not in outputs]
        if missing:
            raise ValueError(f"model {name}: output {out.name} reads {', '.join(missing)}, which the network does "
                             f"not have (it has {', '.join(outputs)})")
        if kind_of(out) == "scores":
            width = outputs[tensors_of(out)[0]].shape[-1]
            if width not in (-1, len(out.labels)):
                raise ValueError(f"model {name}: the network has {width} outputs but the manifest lists "
                                 f"{len(out.labels)} labels")


def warm_preprocessing(manifest: ModelManifest) -> None:
    """Run the pixel pipeline once on a synthetic image: the first call imports pixel handlers
    and initialises OpenCV (~150 ms), which the first radiograph should not pay for."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from edged.preprocess.pixels import prepare

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = 256
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(256 * 256, dtype=np.uint16) % 4096).tobytes()
    prepare(ds, manifest.input, manifest.preprocess)
