"""``edged engines list|build|verify|prune`` and ``edged selftest``: the parsers.

The main CLI mounts these with ``add_engines_parser(subparsers)`` / ``add_selftest_parser(
subparsers)`` and calls ``args.func(args)``, which returns the exit status. Settings come from
``context(args)`` when the main CLI passes one (it knows the config file); otherwise from the
defaults of ``TensorRTConfig`` plus ``--cache-dir`` / ``--worker-python``. The commands themselves
live in :mod:`edged.backends.tensorrt.commands`, imported only when one runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edged.backends.tensorrt.config import TensorRTConfig

if TYPE_CHECKING:  # the commands (edged.backends.tensorrt.commands) import the heavy modules
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="edged config file (tensorrt:, cache_dir, models)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable)")
    p.add_argument("--cache-dir", type=Path, help=f"cache directory (default: config or {DEFAULT_CACHE_DIR})")
    p.add_argument("--worker-python", help="interpreter with TensorRT (default: tensorrt.worker_python)")


def add_engines_parser(subparsers, context: ContextFactory | None = None) -> argparse.ArgumentParser:
    ctx = context or default_context
    p = subparsers.add_parser("engines", help="list, build, verify and prune TensorRT engines")
    sub = p.add_subparsers(dest="engines_command", required=True)
    ls = sub.add_parser("list", help="cached engines with their keys")
    ls.add_argument("--json", action="store_true")
    b = sub.add_parser("build", help="build (or reuse) a model's engines and run its accuracy gate")
    b.add_argument("model", type=Path, nargs="?", help="model folder or model.yaml")
    b.add_argument("--all", action="store_true", help="every model of the config whose backend is auto/tensorrt")
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    b.add_argument("--dla-core", type=int)
    b.add_argument("--max-batch", type=int)
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.add_argument("--no-gate", action="store_true", help="skip the accuracy gate")
    b.add_argument("--skip-without-tensorrt", action="store_true",
                   help="exit 0 with a log line when TensorRT is unavailable (the first-boot unit on a "
                        "device or image without it) instead of 2")
    v = sub.add_parser("verify", help="check cached engines against their metadata (and load them with --load)")
    v.add_argument("--load", action="store_true", help="deserialize each engine in the worker")
    pr = sub.add_parser("prune", help="remove engines for other TensorRT versions/devices, corrupt and orphan files")
    pr.add_argument("--keep-model", type=Path, action="append", default=[], help="keep only engines of these models")
    pr.add_argument("--dry-run", action="store_true")
    for s in (ls, b, v, pr):
        _common(s)
    p.set_defaults(func=lambda args: _run(args, ctx))
    return p


def _run(args: argparse.Namespace, ctx: ContextFactory) -> int:
    from edged.backends.tensorrt.commands import ENGINE_COMMANDS

    return ENGINE_COMMANDS[args.engines_command](args, ctx(args))


def add_selftest_parser(subparsers, context: ContextFactory | None = None) -> argparse.ArgumentParser:
    ctx = context or default_context
    p = subparsers.add_parser("selftest", help="build, compare and time engines on this device; pass/fail table")
    p.add_argument("--model", type=Path, help="model folder (default: the generated reference model)")
    p.add_argument("--kind", default="densenet121", help="reference model kind when --model is not given")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=Path("selftest.json"), help="where to write the report")
    p.add_argument("--require-tensorrt", action="store_true", help="fail when TensorRT is unavailable")
    _common(p)

    def run(args: argparse.Namespace) -> int:
        from edged.selftest import run_selftest

        c = ctx(args)
        return run_selftest(c.cfg, c.cache_dir, model_dir=args.model, kind=args.kind, max_batch=args.max_batch,
                            repeats=args.repeats, json_path=args.json, require_tensorrt=args.require_tensorrt, env=c.env)

    p.set_defaults(func=run)
    return p
