"""The source-neutral unit of work: what every source hands the pipeline.

A source (the DICOM SCP, a camera) turns its input into a :class:`WorkItem`: a stable
pseudonymous key, the models that take it, PHI-free metadata for payloads, a way to make each
model's input tensor, and a :class:`Sink` that learns every outcome. The pipeline knows nothing
else about the source: it never reads a file, a dataset or a frame itself.

Outcomes, each reported to the sink exactly once per (item, model):

* ``completed(item, model, completion, pre, last, incomplete)``: a model's batch finished, with
  outputs or an error; ``last`` says it is the item's final outcome, ``incomplete`` that some
  model could not be given the item at all (the daemon was stopping);
* ``failed(item, reason, detail, transient)``: the item could not be prepared for any model
  (undecodable pixels, an unexpected exception); ``transient`` says a retry may succeed;
* ``dropped(item, model)``: a live item found its model's queue full (counted, never waited for).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

Prepared = tuple[np.ndarray, dict[str, float]]  # tensor, {"decode_ms": .., "transform_ms": ..}


class Sink(Protocol):
    def completed(self, item: "WorkItem", model: Any, completion: Any, pre: dict[str, float], last: bool,
                  incomplete: bool) -> None: ...

    def failed(self, item: "WorkItem", reason: str, detail: str, transient: bool) -> None: ...

    def dropped(self, item: "WorkItem", model: Any) -> None: ...


@dataclass(eq=False)
class WorkItem:
    key: str  # stable and pseudonymous: message ids and ledger rows derive from it
    models: tuple[str, ...]  # the models that accepted the item, in the order they are served
    source: dict  # PHI-free facts for payloads (already validated by the source)
    prepare: Callable[[Any], Prepared]  # model manifest -> that model's input tensor
    sink: Sink
    group: str | None = None  # e.g. the study pseudonym
    live: bool = False  # True: drop when a queue is full (frames); False: wait (acknowledged images)
    arrived: float = field(default_factory=time.monotonic)
    discard: Callable[[], None] = lambda: None  # free decoded data once every tensor is made
    context: Any = None  # the source's own state for this item (attempt, calling AE, ...)
