"""The daemon: wires sources → spool → pipeline → outbox → MQTT and runs them until SIGTERM.

Start order makes every promise true before it is made: state and outbox first, then models
(loaded and warmed), then the publisher, then the pipeline and the DICOM source (which recovers
the spool), the DICOM listener, and only then READY=1 to systemd. Stop runs in reverse: no new
associations, queued work finishes or stays in the spool, the outbox is flushed, ``offline`` is
published.

A model whose backend fails to load is reported (log line, ``backend`` event ``load_failed``,
``unavailable`` in the retained status) and the others are served; when none is left the daemon
exits with status 2 (:class:`NoModelServed`), which the unit's ``RestartPreventExitStatus=2``
treats as "fix the configuration", not as a crash to restart forever.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import select
import signal
import socket
import tempfile
import threading
import time

from pydicom import config as pydicom_config
from pynetdicom import _config as pynetdicom_config

from edged import __version__
from edged.batcher.served import ServedModel
from edged.config.schema import Config
from edged.control.handlers import control_handlers
from edged.control.server import ControlServer
from edged.metrics import Metrics, MetricsServer
from edged.metrics import live as health
from edged.metrics.cameras import add_camera_metrics
from edged.models.loading import ModelLoader
from edged.models.manifest import BatchingSpec
from edged.mqtt import messages
from edged.mqtt.publisher import Publisher
from edged.outbox.db import Database
from edged.outbox.emitter import EventEmitter
from edged.outbox.store import Outbox
from edged.outbox.writer import ResultWriter
from edged.pipeline import Pipeline
from edged.power.prometheus import PowerCollector
from edged.power.runtime import PowerRuntime
from edged.power.tuned import TunedOverrides, tuned_path
from edged.preprocess.pool import DecodePool
from edged.privacy import Pseudonymizer, load_site_key
from edged.service.sdnotify import Notifier, WatchdogPinger
from edged.sources.camera.source import CameraSource
from edged.sources.dicom.scp import StorageSCP
from edged.sources.dicom.source import DicomSource
from edged.sources.dicom.versions import check_pynetdicom
from edged.spool.spool import Spool
from edged.sr.derive import SrDerivation
from edged.sr.outbox import SrOutbox
from edged.sr.sender import SrSender

log = logging.getLogger("edged")


class NoModelServed(RuntimeError):
    """Every configured model failed to load: a configuration to fix, not a crash (exit 2)."""


class Daemon:
    def __init__(self, cfg: Config, notifier: Notifier | None = None):
        self.cfg = cfg
        self.topics = messages.Topics(cfg.mqtt.topic_prefix, cfg.node_id)
        self.models: dict[str, ServedModel] = {}  # DICOM instances
        self.camera_models: dict[str, ServedModel] = {}  # camera instances (own backends and batchers)
        self.camera_pipeline: Pipeline | None = None
        self.cameras: CameraSource | None = None
        self.base_batching: dict[str, BatchingSpec] = {}  # before power-mode adjustment
        self.unavailable: dict[str, str] = {}  # model -> why it is not served
        self.publisher: Publisher | None = None
        self.pipeline: Pipeline | None = None
        self.dicom: DicomSource | None = None
        self.writer: ResultWriter | None = None
        self.decoders: DecodePool | None = None
        self.scp: StorageSCP | None = None
        self.sr_sender: SrSender | None = None
        self.control: ControlServer | None = None
        self.power: PowerRuntime | None = None
        self.notifier = notifier or Notifier(unset_environment=True)
        self.watchdog: WatchdogPinger | None = None
        self.spool: Spool | None = None  # set by start(); stop() copes with a start that failed early
        self.outbox: Outbox | None = None
        self.metrics = Metrics(cfg.node_id)
        self.http: MetricsServer | None = None
        self._started = self._stopping = False  # for /health/live and /health/ready
        self._stop = threading.Event()

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        limit_malloc_arenas()
        if cfg.dicom.enabled:  # before minutes of model loading: an unverified pynetdicom is a setup error
            check_pynetdicom()
        for d in (cfg.state_dir, cfg.cache_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.pseudo = Pseudonymizer(load_site_key(cfg.site_key_path, provisioned=cfg.site_key_file is not None))
        self.outbox = Outbox(Database(cfg.db_path))
        # bookkeeping whose loss on power loss is harmless (one more re-send, one more attempt)
        light = Outbox(Database(cfg.db_path, synchronous="NORMAL"))
        self.events = EventEmitter(self.outbox, self.topics, self.wake_publisher)
        self.spool = Spool(cfg.spool_dir, int(cfg.dicom.spool_quota_mb * 1024 * 1024),
                           quarantine_bytes=int(cfg.dicom.quarantine_mb * 1024 * 1024),
                           quarantine_days=cfg.dicom.quarantine_days)
        if cfg.pipeline.decode_processes:
            # before tempfile is pointed at the spool: the forkserver's socket lives in the
            # process's first temp dir, which must be a short, ordinary one (not .incoming)
            self.decoders = DecodePool(cfg.pipeline.decode_processes)
            self.decoders.start()
        configure_dicom_libraries(self.spool, cfg.log_level)
        self.power = PowerRuntime(cfg.power, cfg.telemetry, TunedOverrides.load(tuned_path(cfg.state_dir)))
        self._start_metrics()  # live (and not ready) while models load, as Triton's endpoints are
        loader = ModelLoader(cfg, self.power, self.notifier, self.events)
        self.models, self.camera_models, self.unavailable = loader.load_all()
        self.base_batching = loader.base_batching
        if not self.models and not self.camera_models:
            raise NoModelServed("no model could be loaded: " +
                                "; ".join(f"{n}: {why}" for n, why in self.unavailable.items()))
        if cfg.mqtt.enabled:
            self.publisher = Publisher(cfg.mqtt, cfg.client_id, light, self.topics.status,
                                       birth=lambda: self.status_payload("online"),
                                       offline=lambda: self.status_payload("offline"))
            self.publisher.start()
        # energy metering and the Prometheus endpoint run with or without MQTT
        self.power.start(cfg.node_id, (lambda sample: self.publisher.offer(self.topics.telemetry, sample))
                         if self.publisher else None)
        self.pipeline = Pipeline(self.models, workers=cfg.pipeline.preprocess_workers,
                                 backend_timeout_s=cfg.pipeline.backend_timeout_s, observer=self.metrics)
        self.dicom = DicomSource(self.spool, self.outbox, self.events, self.pseudo,
                                 [m.manifest for m in self.models.values()], self.pipeline,
                                 max_attempts=cfg.pipeline.max_attempts, retry_backoff_s=cfg.pipeline.retry_backoff_s,
                                 attempts=light, decoders=self.decoders)
        sr_models = {m.name for m in cfg.models if m.sr and m.name in self.models}
        derive = None
        if sr_models and cfg.dicom.sr_destination is not None:
            derive = SrDerivation(self.spool, self.pseudo, cfg.node_id, sr_models)
            self.sr_sender = SrSender(cfg.dicom.sr_destination, cfg.dicom.ae_title, SrOutbox(self.outbox.db),
                                      self.events, self.pseudo)
            self.sr_sender.start()
        self.writer = ResultWriter(self.outbox, self.events, self.pseudo, self.topics, self.dicom,
                                   self.power.accounting, observer=self.metrics, sr=derive)
        if self.sr_sender is not None:
            self.writer.on_commit = self.sr_sender.wake
        self.dicom.attach(self.writer)
        self.writer.start()
        self.pipeline.start()
        self.dicom.start()
        self._start_cameras()
        self._start_control()
        if cfg.dicom.enabled:
            self.scp = StorageSCP(cfg.dicom, self.spool, self.outbox, self.pseudo, self.dicom, self.events,
                                  observer=self.metrics)
            self.scp.start()
        self.watchdog = WatchdogPinger(self.notifier, self.healthy)
        self.watchdog.start()
        self._started = True
        # Everything loaded so far (libraries, models, config) lives as long as the daemon: out
        # of the collector's sight, full collections stop re-walking it while images flow.
        gc.freeze()
        self.notifier.ready(f"serving {', '.join(self.models)} on DICOM port {self.scp.port if self.scp else '-'}")
        log.info("edged %s ready: node %s, models %s", __version__, cfg.node_id, ", ".join(self.models))

    def _start_cameras(self) -> None:
        """Cameras get their own pipeline (preprocess workers, the camera instances' batchers):
        nothing they do can queue ahead of, or slow down, an acknowledged DICOM image."""
        if not self.cfg.cameras:
            return
        self.camera_pipeline = Pipeline(self.camera_models, workers=self.cfg.capture.preprocess_workers,
                                        backend_timeout_s=self.cfg.pipeline.backend_timeout_s)
        publisher = self.publisher

        def publish(topic: str, data: bytes, retain: bool) -> None:
            if publisher is not None:
                publisher.offer(topic, data, retain=retain, qos=1 if retain else 0)

        self.cameras = CameraSource(self.cfg, self.camera_models, self.camera_pipeline.submit, self.events,
                                    self.topics, publish)
        self.camera_pipeline.start()
        self.cameras.start()

    def _start_metrics(self) -> None:
        self.metrics.add(PowerCollector(lambda: self.power.last_sample if self.power else None))
        health.add_daemon_gauges(self.metrics, self, mqtt_enabled=self.cfg.mqtt.enabled)
        health.add_cpu_by_role(self.metrics, self)
        if self.cfg.cameras:
            add_camera_metrics(self.metrics, lambda: self.cameras.runtimes if self.cameras is not None else [])
        prom = self.cfg.telemetry.prometheus
        if prom.enabled:
            self.http = MetricsServer(
                self.metrics.registry, prom.port,
                live=lambda: health.live(self, self._started, self._stopping),
                ready=lambda: health.ready(self, self._started, self._stopping, self.cfg.dicom.enabled)).start()
            log.info("metrics on http://127.0.0.1:%d/metrics; health on /health/live and /health/ready", self.http.port)

    def _start_control(self) -> None:
        path = self.cfg.power.control_socket
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.control = ControlServer(path, control_handlers(self), admin_group=self.cfg.power.admin_group)
            self.control.start()
        except OSError as exc:  # e.g. /run/edged missing outside systemd (RuntimeDirectory=edged)
            log.warning("control socket %s unavailable (%s): edgectl cannot reach this daemon", path, exc)
            self.control = None

    # -- what control handlers may use (edged.control.handlers.ControlTarget) --------------
    def snapshot(self) -> dict:
        payload = self.status_payload("online")
        payload.update({
            "healthy": self.healthy(),
            "degraded": self.writer.stalled_reason if self.writer else None,
            "spool_pending": len(self.spool.pending()) if self.spool else 0,
            "quarantined": len(self.spool.quarantined()) if self.spool else 0,
            "outbox_pending": self.outbox.pending_count(),
            "processed": self.writer.settled_count if self.writer else 0,
            "mqtt_connected": bool(self.publisher and self.publisher.connected.is_set()),
            "dicom_port": self.scp.port if self.scp else None,
            "sr_outbox": self.sr_sender.outbox.counts() if self.sr_sender else None,
            "dicom_ae": self.cfg.dicom.ae_title,
            "mqtt_broker": f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}" if self.cfg.mqtt.enabled else None,
            "batchers": {m.batcher.name: {"queue": m.batcher.depth(), **m.batcher.stats}
                         for m in [*self.models.values(), *self.camera_models.values()]},
            "cameras": self.cameras.stats() if self.cameras else {},
        })
        return payload

    def refresh_power_mode(self) -> tuple[dict | None, dict | None]:
        assert self.power is not None
        return self.power.refresh_mode()

    def retune(self) -> dict[str, dict]:
        """Apply the current power mode's batching to every model and re-warm the backends."""
        assert self.power is not None
        out = {}
        for name, m in [*self.models.items(), *self.camera_models.items()]:
            spec = self.power.batching(self.base_batching[name], m.name, m.manifest.onnx.sha256)
            m.batcher.retune(spec.max_batch_size, spec.max_queue_delay_ms)
            m.backend.warmup(spec.max_batch_size, m.sample_shape())
            out[m.batcher.name] = {"max_batch_size": spec.max_batch_size, "max_queue_delay_ms": spec.max_queue_delay_ms}
        return out

    def emit_event(self, type_: str, reason: str, **fields: object) -> None:
        self.events.emit(type_, reason, **fields)

    def republish_status(self) -> None:
        if self.publisher is not None:
            self.publisher.republish_status()

    # -- health and status ---------------------------------------------------------------
    def healthy(self) -> bool:
        """The watchdog's question: are the pipeline, the writer and the publisher alive and
        progressing? A full disk is not a hang: the writer retries and the status says why."""
        return (self.pipeline is not None and self.pipeline.healthy() and self.writer is not None
                and self.writer.alive() and (self.publisher is None or self.publisher.is_alive())
                and (self.camera_pipeline is None or self.camera_pipeline.healthy())
                and (self.cameras is None or self.cameras.healthy()))

    def wake_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.wake()

    def status_payload(self, state: str) -> dict:
        models = []
        for name, m in [*self.models.items(), *self.camera_models.items()]:
            models.append({
                "name": name, "version": m.manifest.version, "sha256": m.manifest.onnx.sha256,
                "backend": m.info.backend, "precision": m.info.precision, "device": m.info.device,
                "clinical": m.manifest.clinical, "backend_reason": m.reason,
                "max_batch_size": m.batcher.max_batch_size, "source": m.source,
            })
        mode = self.power.mode if self.power else None
        unavailable = [{"name": n, "reason": messages.bounded(why)} for n, why in self.unavailable.items()]
        return messages.status(self.cfg.node_id, state, models, power_mode=mode, unavailable=unavailable or None)

    # -- run / stop ----------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        # The kernel may deliver SIGTERM to any thread (ONNX Runtime's, an association's);
        # CPython runs the handler only when the main thread next executes bytecode. The
        # wake-up fd makes the C-level handler, in whichever thread, wake the main thread's
        # select() at once; the timeout covers a stop requested by another thread.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            while not self._stop.is_set():
                if select.select([wake_r], [], [], 0.5)[0]:
                    _drain(wake_r)
        finally:
            signal.set_wakeup_fd(previous)
            wake_r.close()
            wake_w.close()
        self.stop()
        return 0

    def stop(self, budget_s: float = 35.0) -> None:
        """Stop within ``budget_s`` (systemd's TimeoutStopSec is 45 s): the pipeline drains what
        the batchers hold, the publisher flushes with what is left. Nothing here is needed for
        durability — whatever is not finished stays in the spool or the outbox."""
        deadline = time.monotonic() + budget_s
        self._stopping = True  # /health/ready answers 503 from now on
        log.info("stopping: no new associations; finishing queued work")
        if self.watchdog is not None:
            self.watchdog.stop()
        self.notifier.stopping("finishing queued work, flushing the outbox")
        if self.scp is not None:
            self.scp.stop()
        if self.control is not None:
            self.control.stop()
        if self.dicom is not None:
            self.dicom.stop()
        if self.cameras is not None:
            self.cameras.stop()  # helpers end, availability "offline" is offered before the publisher stops
        if self.camera_pipeline is not None:
            self.camera_pipeline.stop(timeout=3.0)
        if self.pipeline is not None:
            self.pipeline.stop(timeout=max(1.0, 0.6 * (deadline - time.monotonic())))
        if self.writer is not None:
            self.writer.stop(timeout=max(1.0, 0.3 * (deadline - time.monotonic())))
        if self.sr_sender is not None:
            self.sr_sender.stop()
        if self.decoders is not None:
            self.decoders.close()
        if self.power is not None:
            self.power.stop()
        if self.publisher is not None:
            self.publisher.stop(flush_timeout=max(1.0, deadline - time.monotonic() - 2))
        for m in [*self.models.values(), *self.camera_models.values()]:
            m.backend.close()
        if self.http is not None:
            self.http.stop()
        if self.spool is not None:
            log.info("stopped; %d instance(s) left in the spool for the next start", len(self.spool.pending()))


def _drain(sock: socket.socket) -> None:
    """Read a non-blocking socket empty (the signal numbers the wake-up fd wrote)."""
    try:
        while sock.recv(512):
            pass
    except BlockingIOError:
        pass


def configure_dicom_libraries(spool: Spool, log_level: str = "info") -> None:
    """Process-wide settings of pydicom and pynetdicom that the daemon's promises depend on."""
    # pynetdicom streams each received dataset into a NamedTemporaryFile it creates without a
    # dir argument: pointing tempfile at the spool's filesystem is the only way to have the
    # file renamed, not copied, into the spool. This process's other temp files go there too.
    tempfile.tempdir = str(spool.incoming)
    # Data elements are never "validated" on read: pydicom would log the offending value
    # (a non-conformant UID is a patient's study UID), and the daemon does not fix datasets.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # pynetdicom.utils logs every non-conformant UID it checks, value included (AE titles
    # too); it has nothing else to say, so it stays quiet.
    logging.getLogger("pynetdicom.utils").setLevel(logging.CRITICAL)
    # pynetdicom's standard event handlers describe every association's negotiation and every
    # DIMSE message in INFO/DEBUG lines, which edged shows only at log_level debug (logsetup's
    # DemoteInfo); below that they were formatted and dropped: ~15 % of an association's CPU
    # and part of each C-STORE's (issue #14). Not bound at all then (its documented setting).
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if log_level == "debug" else "none"


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
