"""The settings ``edged engines`` and ``edged selftest`` run with, and the options they share.

Kept apart from the parsers (:mod:`edged.backends.tensorrt.cli`) and the commands
(:mod:`edged.backends.tensorrt.commands`) so both can use it without importing each other, and
light: nothing here imports numpy, ONNX Runtime or the worker.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edged.backends.tensorrt.config import TensorRTConfig

if TYPE_CHECKING:
    from edged.backends.tensorrt.builder import Preprocess
    from edged.models.manifest import LoadedModel

DEFAULT_CACHE_DIR = Path("/var/cache/edged")


@dataclass
class EnginesContext:
    cfg: TensorRTConfig
    cache_dir: Path
    preprocess_for: Callable[[LoadedModel], Preprocess] | None = None
    env: dict[str, str] | None = None
    models: tuple["ModelBuild", ...] = ()  # what `build --all` builds (the config's auto/tensorrt models)
    power: Any = None  # edged.power.config.PowerConfig of the config (edged selftest's power checks)
    config: Any = None  # the whole edged.config.schema.Config (edged selftest's camera checks)


@dataclass(frozen=True)
class ModelBuild:
    """One configured model's engine request: the same overrides the daemon will ask for, so the
    first-boot prebuild builds exactly the engines the daemon then finds in the cache."""

    manifest: Path
    precision: str | None = None
    dla_core: int | None = None
    max_batch: int | None = None


ContextFactory = Callable[[argparse.Namespace], EnginesContext]


def default_context(args: argparse.Namespace) -> EnginesContext:
    cfg = TensorRTConfig()
    if getattr(args, "worker_python", None):
        cfg = cfg.model_copy(update={"worker_python": args.worker_python})
    return EnginesContext(cfg, Path(getattr(args, "cache_dir", None) or DEFAULT_CACHE_DIR))


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="edged config file (tensorrt:, cache_dir, models)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable)")
    p.add_argument("--cache-dir", type=Path, help=f"cache directory (default: config or {DEFAULT_CACHE_DIR})")
    p.add_argument("--worker-python", help="interpreter with TensorRT (default: tensorrt.worker_python)")
