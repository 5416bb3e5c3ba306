"""The DLA loadable budget: at most 16 loadables per DLA core, checked before anything is built.

"Due to hardware and software memory limitations, only 16 DLA loadables can be loaded
concurrently per core" (TensorRT developer guide, DLA restrictions). Every engine on a DLA core
holds one loadable per DLA subgraph, and edged builds one static engine per batch size (DLA has
no dynamic shapes), so a model with ``max_batch_size`` 8 on DLA0 holds at least 8 loadables on
that core for as long as it is served, more when GPU fallback splits its network. Past 16 the
next engine fails to load at start-up, after an hour of building on the device. So the
configured models are summed per core first (``edged check``, the daemon's start,
``edged engines build --all``), with one loadable per engine (a lower bound); once an engine
is built, the engine inspector's subgraph count replaces the bound (``EngineManager``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

LOADABLES_PER_CORE = 16


@dataclass(frozen=True)
class DlaRequest:
    model: str
    core: int
    engines: int  # static engines: batch sizes 1..max_batch_size
    loadables_per_engine: int = 1  # DLA subgraphs per engine; 1 until the inspector says otherwise

    @property
    def loadables(self) -> int:
        return self.engines * max(1, self.loadables_per_engine)


def budget_problems(requests: Iterable[DlaRequest], cores: int | None = None) -> list[str]:
    """One sentence per DLA core that would hold more than 16 loadables, saying what to change."""
    by_core: dict[int, list[DlaRequest]] = defaultdict(list)
    for r in requests:
        by_core[r.core].append(r)
    problems = []
    for core, reqs in sorted(by_core.items()):
        total = sum(r.loadables for r in reqs)
        if total <= LOADABLES_PER_CORE:
            continue
        parts = ", ".join(
            f"{r.model}: {r.engines} engine(s)" + (f" x {r.loadables_per_engine} DLA subgraphs"
                                                   if r.loadables_per_engine > 1 else "")
            for r in reqs)
        others = [c for c in range(cores if cores is not None else 2) if c != core]
        move = f"move a model to DLA core {others[0]} (dla_core: {others[0]}) or " if others else "move a model "
        problems.append(
            f"DLA core {core} would hold {total} loadables ({parts}) but runs at most {LOADABLES_PER_CORE} at once "
            f"(one static engine per batch size): lower batching.max_batch_size, {move}to the GPU (dla_core: null)"
            + (", or let fewer layers fall back to the GPU" if any(r.loadables_per_engine > 1 for r in reqs) else ""))
    return problems


def requests_from_config(cfg, manifests: dict) -> list[DlaRequest]:
    """The DLA engines a config asks for: models with backend auto/tensorrt and a DLA core.

    ``manifests`` maps model name → LoadedModel (for the manifest's batching when the entry has
    none); entries whose manifest is missing are skipped (they fail elsewhere with their reason).
    """
    out = []
    for entry in cfg.models:
        if entry.backend == "onnxruntime":
            continue
        core = entry.dla_core if entry.dla_core is not None else cfg.tensorrt.dla_core
        model = manifests.get(entry.name)
        if core is None or (model is None and entry.batching is None):
            continue
        batching = entry.batching or model.manifest.batching
        out.append(DlaRequest(entry.name, int(core), int(batching.max_batch_size)))
    return out
