"""Camera metrics on ``/metrics``: frames received, inferred per model and dropped per reason.

The cameras keep plain counters (the same ones their retained ``state`` messages and ``edgectl
status`` report); this module reads them at scrape time through :class:`CameraView`, a narrow
read-only view of a camera runtime, so a scrape and a state message taken at the same moment
agree and nothing is sampled between scrapes. Drop reasons are whatever the camera counts —
``reader`` (a newer frame replaced one nobody took), ``busy`` (a due frame found the camera's
model still working on its previous one), ``queue`` (the batcher's queue was full), ``failed``
(preprocess or inference failed) — so a reason added at the source appears here without a change;
the one that is not a frame's, ``secondary`` (a classifier's queue was full for a crop), is
reported with the other crop outcomes instead.
Counters are named like Triton's (``_total`` added by the exposition), one family per question an
operator asks of a camera: is it streaming, how much arrives, how much is used, what is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from edged.metrics.registry import Metrics


class CameraView(Protocol):
    """What the exporter reads of one camera runtime (``edged.sources.camera.runtime.CameraRuntime``)."""

    name: str
    capture: Any  # .state, .counters.frames_in/.drops/.reconnects/.restarts
    inferred: dict[str, int]
    crops: dict[str, int]  # secondary classifier crops by outcome (classified, too_small, late, failed)
    lock: threading.Lock


def _read(cameras: Iterable[CameraView], pick: Callable[[CameraView], dict[tuple[str, ...], float]]
          ) -> dict[tuple[str, ...], float]:
    values: dict[tuple[str, ...], float] = {}
    for cam in list(cameras):
        with cam.lock:  # most counters move under this lock (dict copies cover the reader's own)
            values.update(pick(cam))
    return values


def _crops(c: CameraView) -> dict[tuple[str, ...], float]:
    outcomes = dict(c.crops)
    dropped = dict(c.capture.counters.drops).get("secondary")
    if dropped is not None:
        outcomes["dropped"] = dropped
    return {(c.name, k): n for k, n in outcomes.items()}


def add_camera_metrics(metrics: Metrics, cameras: Callable[[], Iterable[CameraView]]) -> None:
    """Register the camera families; ``cameras()`` returns the live runtimes at each scrape."""
    def each(pick: Callable[[CameraView], dict[tuple[str, ...], float]]) -> Callable[[], dict]:
        return lambda: _read(cameras(), pick)

    metrics.gauge_from("edged_camera_streaming", "1 while the camera delivers frames, 0 while it connects, "
                       "waits to retry or is disabled.", ("camera",),
                       each(lambda c: {(c.name,): float(c.capture.state == "streaming")}))
    metrics.counter_from("edged_camera_frames_received", "Frames that reached the daemon from the camera.",
                         ("camera",), each(lambda c: {(c.name,): c.capture.counters.frames_in}))
    metrics.counter_from("edged_camera_frames_inferred", "Frames of the camera a model inferred.",
                         ("camera", "model"), each(lambda c: {(c.name, m): n for m, n in dict(c.inferred).items()}))
    metrics.counter_from("edged_camera_frames_dropped", "Frames not inferred, by reason (reader: replaced by a "
                         "newer frame; busy: the model still had the previous frame; queue: the batcher queue "
                         "was full; failed: preprocess or inference failed).", ("camera", "reason"),
                         each(lambda c: {(c.name, r): n for r, n in dict(c.capture.counters.drops).items()
                                         if r != "secondary"}))
    metrics.counter_from("edged_camera_secondary_crops", "Secondary classifier crops of the camera by outcome: "
                         "classified, dropped (the classifier's queue was full), too_small, late, failed.",
                         ("camera", "outcome"), each(_crops))
    metrics.counter_from("edged_camera_reconnects", "Times the camera's stream was lost and connected again.",
                         ("camera",), each(lambda c: {(c.name,): c.capture.counters.reconnects}))
    metrics.counter_from("edged_camera_helper_restarts", "Times the camera's capture helper process was "
                         "started again after it ended.", ("camera",),
                         each(lambda c: {(c.name,): c.capture.counters.restarts}))
