"""The daemon: wires sources → spool → pipeline → outbox → MQTT and runs them until SIGTERM.

Start order makes every promise true before it is made: state and outbox first, then models
(loaded and warmed), then the publisher, then the pipeline (which recovers the spool), the
DICOM listener, and only then READY=1 to systemd. Stop runs in reverse: no new associations,
queued work finishes or stays in the spool, the outbox is flushed, ``offline`` is published.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import tempfile
import threading
import time

from pydicom import config as pydicom_config

from edged import __version__
from edged.backends.factory import make_backend
from edged.batcher.dynamic import DynamicBatcher
from edged.config.schema import Config
from edged.control import ControlServer
from edged.daemon_control import control_handlers
from edged.models.manifest import BatchingSpec, load_manifest
from edged.mqtt import messages
from edged.mqtt.publisher import Publisher
from edged.outbox.db import Database
from edged.outbox.store import Outbox
from edged.pipeline import Pipeline, ServedModel
from edged.power.runtime import PowerRuntime
from edged.privacy import Pseudonymizer, load_or_create_site_key
from edged.service.sdnotify import Notifier, WatchdogPinger
from edged.sources.dicom.scp import StorageSCP
from edged.spool.spool import Spool

log = logging.getLogger("edged")


class Daemon:
    def __init__(self, cfg: Config, notifier: Notifier | None = None):
        self.cfg = cfg
        self.topics = messages.Topics(cfg.mqtt.topic_prefix, cfg.node_id)
        self.models: dict[str, ServedModel] = {}
        self.base_batching: dict[str, BatchingSpec] = {}  # before power-mode adjustment
        self.backend_reasons: dict[str, str] = {}
        self.publisher: Publisher | None = None
        self.pipeline: Pipeline | None = None
        self.scp: StorageSCP | None = None
        self.control: ControlServer | None = None
        self.power: PowerRuntime | None = None
        self.notifier = notifier or Notifier(unset_environment=True)
        self.watchdog: WatchdogPinger | None = None
        self.spool: Spool | None = None  # set by start(); stop() copes with a start that failed early
        self._stop = threading.Event()

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        limit_malloc_arenas()
        for d in (cfg.state_dir, cfg.cache_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.pseudo = Pseudonymizer(load_or_create_site_key(cfg.site_key_path))
        self.outbox = Outbox(Database(cfg.db_path))
        self.spool = Spool(cfg.spool_dir, int(cfg.dicom.spool_quota_mb * 1024 * 1024))
        # pynetdicom streams each received dataset into a NamedTemporaryFile it creates without a
        # dir argument: pointing tempfile at the spool's filesystem is the only way to have the
        # file renamed, not copied, into the spool. This process's other temp files go there too.
        tempfile.tempdir = str(self.spool.incoming)
        # Data elements are never "validated" on read: pydicom would log the offending value
        # (a non-conformant UID is a patient's study UID), and the daemon does not fix datasets.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        # pynetdicom.utils logs every non-conformant UID it checks, value included (AE titles
        # too); it has nothing else to say, so it stays quiet.
        logging.getLogger("pynetdicom.utils").setLevel(logging.CRITICAL)
        self.power = PowerRuntime(cfg.power, cfg.telemetry)
        self._load_models()
        if cfg.mqtt.enabled:
            # delivery marks may be lost on power loss (a re-send follows), so no fsync for them
            delivery = Outbox(Database(cfg.db_path, synchronous="NORMAL"))
            self.publisher = Publisher(cfg.mqtt, cfg.client_id, delivery, self.topics.status,
                                       birth=lambda: self.status_payload("online"),
                                       offline=lambda: self.status_payload("offline"))
            self.publisher.start()
        # energy metering and the Prometheus endpoint run with or without MQTT
        self.power.start(cfg.node_id, (lambda sample: self.publisher.offer(self.topics.telemetry, sample))
                         if self.publisher else None)
        self.pipeline = Pipeline(self.models, self.spool, self.outbox, self.pseudo, self.topics,
                                 self.wake_publisher, workers=cfg.pipeline.preprocess_workers,
                                 backend_timeout_s=cfg.pipeline.backend_timeout_s,
                                 energy_mj=self.power.energy_mj if self.power.meter.available else None,
                                 on_energy=self.power.count_energy)
        self.pipeline.start()
        self._start_control()
        if cfg.dicom.enabled:
            self.scp = StorageSCP(cfg.dicom, self.spool, self.outbox, self.pseudo,
                                  [m.manifest for m in self.models.values()], self.topics,
                                  on_spooled=self.pipeline.submit, on_event=self.wake_publisher)
            self.scp.start()
        self.watchdog = WatchdogPinger(self.notifier, self.healthy)
        self.watchdog.start()
        self.notifier.ready(f"serving {', '.join(self.models)} on DICOM port {self.scp.port if self.scp else '-'}")
        log.info("edged %s ready: node %s, models %s", __version__, cfg.node_id, ", ".join(self.models))

    def _load_models(self) -> None:
        for i, entry in enumerate(self.cfg.models, 1):
            self.notifier.status(f"loading model {entry.name} ({i}/{len(self.cfg.models)})")
            model = load_manifest(self.cfg.manifest_path(entry))
            if model.name != entry.name:
                raise ValueError(f"models: entry {entry.name!r} points at a manifest named {model.name!r}")
            model.verify_onnx()
            backend, reason = make_backend(self.cfg, entry, model, on_event=self._backend_event(model.name),
                                           progress=self._build_progress(model.name))
            check_tensors(model.name, model.manifest, backend)
            self.base_batching[model.name] = entry.batching or model.manifest.batching
            spec = self.power.batching(self.base_batching[model.name])
            backend.warmup(1)  # the first calls at a new shape allocate; do it before READY
            backend.warmup(spec.max_batch_size)
            warm_preprocessing(model.manifest)
            batcher = DynamicBatcher(model.name, backend, spec)
            self.models[model.name] = ServedModel(model, backend, batcher, backend.info)
            self.backend_reasons[model.name] = reason
            log.info("model %s %s (sha256 %s…): %s; clinical=%s; batching %d / %.0f ms", model.name,
                     model.manifest.version, model.sha256[:12], reason, model.manifest.clinical,
                     spec.max_batch_size, spec.max_queue_delay_ms)
            if not model.manifest.clinical:
                log.warning("model %s is marked clinical: false — results must not be used for care", model.name)

    def _backend_event(self, model: str):
        """Worker and engine events (crash, restart, engine built/rejected) → a ``backend`` event."""
        def emit(kind: str, fields: dict) -> None:
            level = logging.WARNING if kind.startswith(("worker_", "engine_failed", "engine_rejected")) else logging.INFO
            log.log(level, "model %s: %s %s", model, kind, {k: v for k, v in fields.items() if k != "stderr_tail"})
            detail = fields.get("reason") or fields.get("message") or kind.replace("_", " ")
            payload = messages.event(self.cfg.node_id, "backend", kind, model=model, detail=str(detail),
                                     fields=fields)
            self.outbox.add_message(self.topics.events, payload)
            self.wake_publisher()
        return emit

    def _build_progress(self, model: str):
        """Engine builds can take an hour on a Nano: tell systemd (and a technician) they progress."""
        def progress(text: str, fraction: float | None) -> None:
            pct = f", {fraction:.0%}" if fraction is not None else ""
            self.notifier.status(f"building engine {model}: {text}{pct}")
            self.notifier.extend_timeout(300_000_000)  # another 5 min from now, for as long as it progresses
        return progress

    def _start_control(self) -> None:
        path = self.cfg.power.control_socket
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.control = ControlServer(path, control_handlers(self), admin_group=self.cfg.power.admin_group)
            self.control.start()
        except OSError as exc:  # e.g. /run/edged missing outside systemd (RuntimeDirectory=edged)
            log.warning("control socket %s unavailable (%s): edgectl cannot reach this daemon", path, exc)
            self.control = None

    def retune(self) -> dict[str, dict]:
        """Apply the current power mode's batching to every model and re-warm the backends."""
        out = {}
        for name, m in self.models.items():
            spec = self.power.batching(self.base_batching[name])
            m.batcher.retune(spec.max_batch_size, spec.max_queue_delay_ms)
            m.backend.warmup(spec.max_batch_size)
            out[name] = {"max_batch_size": spec.max_batch_size, "max_queue_delay_ms": spec.max_queue_delay_ms}
        return out

    def healthy(self) -> bool:
        """The watchdog's question: is the pipeline progressing and is the publisher alive?"""
        return self.pipeline is not None and self.pipeline.healthy() and \
            (self.publisher is None or self.publisher.is_alive())

    def wake_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.wake()

    def status_payload(self, state: str) -> dict:
        models = []
        for name, m in self.models.items():
            models.append({
                "name": name, "version": m.manifest.version, "sha256": m.manifest.onnx.sha256,
                "backend": m.info.backend, "precision": m.info.precision, "device": m.info.device,
                "clinical": m.manifest.clinical, "backend_reason": self.backend_reasons.get(name, ""),
                "max_batch_size": m.batcher.max_batch_size,
            })
        mode = self.power.mode if self.power else None
        return messages.status(self.cfg.node_id, state, models, power_mode=mode)

    # -- run / stop ----------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        # Wait with a timeout: the kernel may deliver SIGTERM to any thread (ONNX Runtime's,
        # an association's); CPython then runs the handler only when the main thread next
        # executes bytecode, which a lock wait without timeout may never do.
        while not self._stop.wait(0.5):
            pass
        self.stop()
        return 0

    def stop(self, budget_s: float = 35.0) -> None:
        """Stop within ``budget_s`` (systemd's TimeoutStopSec is 45 s): the pipeline drains what
        the batchers hold, the publisher flushes with what is left. Nothing here is needed for
        durability — whatever is not finished stays in the spool or the outbox."""
        deadline = time.monotonic() + budget_s
        log.info("stopping: no new associations; finishing queued work")
        if self.watchdog is not None:
            self.watchdog.stop()
        self.notifier.stopping("finishing queued work, flushing the outbox")
        if self.scp is not None:
            self.scp.stop()
        if self.control is not None:
            self.control.stop()
        if self.pipeline is not None:
            self.pipeline.stop(timeout=max(1.0, 0.6 * (deadline - time.monotonic())))
        if self.power is not None:
            self.power.stop()
        if self.publisher is not None:
            self.publisher.stop(flush_timeout=max(1.0, deadline - time.monotonic() - 2))
        for m in self.models.values():
            m.backend.close()
        if self.spool is not None:
            log.info("stopped; %d instance(s) left in the spool for the next start", len(self.spool.pending()))


def check_tensors(name: str, manifest, backend) -> None:
    """The manifest must describe the network it names: a mismatch found here is one clear
    start-up error instead of a failed inference for every image."""
    spec = manifest.input
    expected = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else \
        (spec.height, spec.width, spec.channels)
    actual = backend.input_spec.shape[1:]
    if len(actual) != 3 or any(a not in (-1, e) for a, e in zip(actual, expected)):
        raise ValueError(f"model {name}: the network's input is {backend.input_spec.shape} but the manifest says "
                         f"{spec.layout} {expected}")
    outputs = backend.output_spec.shape[-1]
    if outputs not in (-1, len(manifest.output.labels)):
        raise ValueError(f"model {name}: the network has {outputs} outputs but the manifest lists "
                         f"{len(manifest.output.labels)} labels")


def warm_preprocessing(manifest) -> None:
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


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (M_ARENA_MAX).

    Every association, batcher and worker thread would otherwise get its own arena that keeps
    freed 7 MB image buffers, which shows as hundreds of MB of RSS on a 4 GB Nano whose memory
    the GPU shares. Same effect as MALLOC_ARENA_MAX=2 in the unit file; a no-op without glibc.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        libc = ctypes.CDLL(libc_name)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        log.debug("mallopt unavailable; malloc arenas not capped")
