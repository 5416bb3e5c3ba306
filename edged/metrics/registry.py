"""The daemon's Prometheus metrics, named like Triton's so dashboards and alerts carry over.

One :class:`Metrics` per daemon owns a private ``CollectorRegistry`` (a second daemon in the
same process — ``edged demo``, tests — never mixes its counts in). Three kinds of metric live
here:

* **Counters and histograms fed by events**, from the places that see them happen:
  :class:`~edged.pipeline.Pipeline` reports every (item, model) completion and every failure
  before batching (:meth:`inference`, :meth:`failure`); the durable result writer reports each
  committed result (:meth:`request_done`, arrival → result committed); the DICOM SCP reports
  associations and C-STORE statuses (:meth:`association`, :meth:`store`).
* **Gauges read when scraped** from live state (spool and outbox backlog, MQTT connection,
  queue depths): :meth:`gauge_from` / :meth:`counter_from` take a function called at each
  scrape, so nothing is sampled between scrapes and no value can go stale. A new source
  (cameras keep plain counters) adds its metrics the same way, without touching this module::

      metrics.counter_from("edged_camera_frames", "Frames by camera and stage.", ("camera", "stage"),
                           lambda: {(c.name, stage): n for c in cams for stage, n in c.counters().items()})

* ``edged_build_info`` and the process collector (RSS, CPU seconds, open fds).

Per-model metrics carry ``model`` and ``version`` labels, as Triton's ``nv_inference_*`` do.
Histograms are observed once per image (per request), so their ``_count`` equals the number of
images a model has seen; the compute histogram holds each image's batch execution time.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edged import __version__

# Seconds; from a fast CPU batch (1 ms) to a TensorRT engine on a loaded Nano or a long retry.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

Values = float | int | bool | None | Mapping[tuple[str, ...], float | int | bool]


class _Callback(Collector):
    """One metric family whose values a function returns at scrape time."""

    def __init__(self, kind: str, name: str, help_: str, labels: tuple[str, ...], read: Callable[[], Values]):
        self.kind, self.name, self.help, self.labels, self.read = kind, name, help_, labels, read

    def describe(self) -> Iterable[Metric]:
        return [self._family()]  # no samples: the registry only learns the name (duplicate check)

    def _family(self) -> GaugeMetricFamily | CounterMetricFamily:
        cls = GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily
        return cls(self.name, self.help, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            values = self.read()
        except Exception:  # a component stopping or failing must not break the whole scrape
            values = None
        if values is None:
            return
        if isinstance(values, Mapping):
            for key, value in values.items():
                family.add_metric(list(key), float(value))
        elif not self.labels:
            family.add_metric([], float(values))
        yield family


class Metrics:
    """Everything ``/metrics`` serves for one daemon (see the module docstring)."""

    def __init__(self, node: str, *, process: bool = True):
        self.registry = CollectorRegistry(auto_describe=True)
        r, per_model = self.registry, ("model", "version")
        self.success = Counter("edged_inference_request_success", "Successful inference requests (one per image "
                               "and model), all batch sizes.", per_model, registry=r)
        self.failure = Counter("edged_inference_request_failure", "Failed inference requests by reason "
                               "(backend: the batch failed; preprocess: the image could not be made a tensor; "
                               "dropped: a live frame found the queue full).", (*per_model, "reason"), registry=r)
        self.count = Counter("edged_inference_count", "Inferences performed: images, summed over batches.",
                             per_model, registry=r)
        self.exec_count = Counter("edged_inference_exec_count", "Model executions (batches) performed.", per_model,
                                  registry=r)
        self.queue = Histogram("edged_inference_queue_duration_seconds", "Time an image waited in the model's "
                               "batcher queue.", per_model, buckets=BUCKETS, registry=r)
        self.compute = Histogram("edged_inference_compute_duration_seconds", "Execution time of the batch an "
                                 "image was inferred in.", per_model, buckets=BUCKETS, registry=r)
        self.request = Histogram("edged_request_duration_seconds", "Arrival of an image to its result committed "
                                 "to the outbox (decode, preprocess, queue, inference, commit).", per_model,
                                 buckets=BUCKETS, registry=r)
        self.associations = Counter("edged_dicom_associations", "DICOM associations by result (accepted, "
                                    "rejected) and the reason code of a rejection.", ("result", "reason"),
                                    registry=r)
        self.stores = Counter("edged_dicom_stores", "C-STORE requests by the DICOM status answered "
                              "(0x0000 success, 0xA700 out of resources, 0xA900 mismatch, 0xC000 cannot "
                              "understand).", ("status",), registry=r)
        Info("edged_build", "edged version and runtime (value 1).", registry=r).info(
            {"version": __version__, "python": platform.python_version(), "machine": platform.machine(),
             "node": node})
        if process:
            ProcessCollector(registry=r)

    # -- scrape-time metrics -----------------------------------------------------------------
    def gauge_from(self, name: str, help_: str, labels: tuple[str, ...], read: Callable[[], Values]) -> None:
        """A gauge whose value(s) ``read()`` returns at each scrape: a number, or ``{label values: number}``."""
        self.registry.register(_Callback("gauge", name, help_, labels, read))

    def counter_from(self, name: str, help_: str, labels: tuple[str, ...], read: Callable[[], Values]) -> None:
        """A counter kept elsewhere (a plain attribute that only grows), read at each scrape.
        ``name`` is given without ``_total``; the exposition adds it."""
        self.registry.register(_Callback("counter", name, help_, labels, read))

    def add(self, collector: Collector) -> None:
        """Any other prometheus_client collector (the power and thermal gauges)."""
        self.registry.register(collector)

    # -- events: inference (Pipeline, ResultWriter) ---------------------------------------------
    def _labels(self, model: Any) -> tuple[str, str]:
        return model.name, str(model.manifest.version)

    def inference(self, model: Any, completion: Any) -> None:
        """A request left the model's batch: success or ``backend`` failure, its queue and compute
        time; the first request of each batch also counts the execution and its size."""
        labels = self._labels(model)
        if completion.batch_size > 0 and getattr(completion, "index", 0) == 0:
            self.exec_count.labels(*labels).inc()
            self.count.labels(*labels).inc(completion.batch_size)
        if completion.batch_size > 0:
            self.queue.labels(*labels).observe(max(0.0, completion.queue_ms) / 1000.0)
            self.compute.labels(*labels).observe(max(0.0, completion.compute_ms) / 1000.0)
        if completion.error is None and completion.outputs is not None:
            self.success.labels(*labels).inc()
        else:
            self.failure.labels(*labels, "backend").inc()

    def failure_before_batch(self, model: Any, reason: str) -> None:
        """A request that never reached the batch: ``preprocess`` or ``dropped``."""
        self.failure.labels(*self._labels(model), reason).inc()

    def request_done(self, model: Any, seconds: float) -> None:
        self.request.labels(*self._labels(model)).observe(max(0.0, seconds))

    # -- events: DICOM (StorageSCP) -------------------------------------------------------------
    def association(self, result: str, reason: str = "") -> None:
        self.associations.labels(result, reason).inc()

    def store(self, status: int) -> None:
        self.stores.labels(f"0x{status:04X}").inc()
