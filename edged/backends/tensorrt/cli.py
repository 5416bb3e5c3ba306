"""``edged engines list|build|verify|prune``, and the settings context ``edged selftest`` shares.

The main CLI mounts these with ``add_engines_parser(subparsers)`` (and ``edged.selftest.cli``'s
``add_selftest_parser``) and calls ``args.func(args)``, which returns the exit status. Settings
come from ``context(args)`` when the main CLI passes one (it knows the config file); otherwise
from the defaults of ``TensorRTConfig`` plus ``--cache-dir`` / ``--worker-python``.
``build --all`` checks the configured DLA engines against the 16-loadables-per-core budget
before building anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edged.backends.selection import trt_worker
from edged.backends.tensorrt.builder import EngineBuildError, Preprocess
from edged.backends.tensorrt.cache import EngineCache
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.dla import DlaRequest, budget_problems
from edged.backends.tensorrt.engines import (
    FROM_CONFIG,
    EngineManager,
    current_device_filter,
    trt_available,
)
from edged.backends.tensorrt.gate import gate_engine
from edged.backends.worker import WorkerLoadError, probe_python
from edged.models.manifest import LoadedModel, load_manifest

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
    v = sub.add_parser("verify", help="check cached engines against their metadata (and load them with --load)")
    v.add_argument("--load", action="store_true", help="deserialize each engine in the worker")
    pr = sub.add_parser("prune", help="remove engines for other TensorRT versions/devices, corrupt and orphan files")
    pr.add_argument("--keep-model", type=Path, action="append", default=[], help="keep only engines of these models")
    pr.add_argument("--dry-run", action="store_true")
    for s in (ls, b, v, pr):
        common_options(s)
    p.set_defaults(func=lambda args: ENGINE_COMMANDS[args.engines_command](args, ctx(args)))
    return p


def cmd_list(args: argparse.Namespace, c: EnginesContext) -> int:
    cache = EngineCache(c.cfg.engines_root(c.cache_dir))
    entries = list(cache.entries())
    if args.json:
        print(json.dumps([dict(e.meta, path=str(e.engine)) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no engines in {cache.root}")
    for e in entries:
        k = e.meta["key"]
        where = "GPU" if k["dla_core"] is None else f"DLA{k['dla_core']}"
        print(f"{e.engine.name}\n    model {k['model']} ({k['model_sha256'][:12]}) TensorRT {k['trt_version']} "
              f"sm{k['device']['compute_capability']} {k['device']['soc']} | {k['precision']} {where} batch "
              f"{k['batch'][0]}..{k['batch'][2]} | {e.meta.get('engine_bytes', 0) / 2**20:.1f} MiB built {e.meta.get('built_at')}")
    return 0


def _probe_or_explain(c: EnginesContext) -> dict | None:
    probe = probe_python(c.cfg.worker_python, c.cfg.probe_timeout_s, env=c.env)
    ok, why = trt_available(probe)
    if not ok:
        print(f"cannot build TensorRT engines here: {why}.\nEngines are built on the Jetson that runs them "
              f"(set tensorrt.worker_python to the Python that carries JetPack's TensorRT bindings).", file=sys.stderr)
        return None
    return probe


def cmd_build(args: argparse.Namespace, c: EnginesContext) -> int:
    if bool(args.model) == bool(args.all):
        print("engines build: name a model folder, or --all for the models of the config", file=sys.stderr)
        return 2
    targets = [ModelBuild(args.model)] if args.model else list(c.models)
    if not targets:
        print("engines build --all: no model of the config uses backend auto or tensorrt; nothing to build")
    problems = dla_budget(targets, c.cfg, args)
    if problems:
        for p in problems:
            print(f"engines build: {p}", file=sys.stderr)
        return 2
    probe = _probe_or_explain(c)
    if probe is None:
        return 2
    status = 0
    for t in targets:
        status = max(status, _build_one(args, c, probe, load_manifest(t.manifest), t))
    return status


def dla_budget(targets: list[ModelBuild], cfg: TensorRTConfig, args: argparse.Namespace) -> list[str]:
    """The targets' DLA engines against the 16-loadables-per-core budget, before building any."""
    requests = []
    for t in targets:
        core = args.dla_core if args.dla_core is not None else t.dla_core if t.dla_core is not None else cfg.dla_core
        if core is None:
            continue
        try:
            batch = args.max_batch or t.max_batch or load_manifest(t.manifest).manifest.batching.max_batch_size
        except Exception:  # a broken manifest fails in its own build, with its reason
            continue
        requests.append(DlaRequest(load_manifest(t.manifest).name, int(core), int(batch)))
    return budget_problems(requests)


def _build_one(args: argparse.Namespace, c: EnginesContext, probe: dict, model: LoadedModel,
               target: ModelBuild) -> int:
    from edged.service.sdnotify import Notifier

    notifier = Notifier()  # under edged-engines.service: STATUS= for systemctl, and more start time

    def progress(text: str, frac: float | None) -> None:
        pct = f" ({frac:.0%})" if frac is not None else ""
        print(f"  {text}{pct}", flush=True)
        notifier.status(f"building engine {model.name}: {text}{pct}")
        notifier.extend_timeout(300_000_000)  # 5 more minutes, for as long as the build progresses

    print(f"{model.name}: engines", flush=True)
    preprocess = c.preprocess_for(model) if c.preprocess_for else None
    manager = EngineManager(model, probe, c.cfg, c.cache_dir, precision=args.precision or target.precision,
                            dla_core=args.dla_core if args.dla_core is not None else
                            target.dla_core if target.dla_core is not None else FROM_CONFIG,
                            max_batch=args.max_batch or target.max_batch, preprocess=preprocess, env=c.env,
                            progress=progress)
    try:
        engines = manager.ensure(force=args.force)
    except EngineBuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    for key, entry in engines.entries:
        print(f"{'built ' if entry.engine.name in engines.built else 'cached'} {entry.engine}")
    if args.no_gate:
        return 0
    backend = trt_worker(engines, model.name, c.cfg, env=c.env)
    try:
        backend.load()
        result = gate_engine(manager, backend, preprocess, engines)
    except WorkerLoadError as exc:
        print(f"engine does not load: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    print(f"accuracy gate {result.reason}")
    return 0 if result.passed else 1


def cmd_verify(args: argparse.Namespace, c: EnginesContext) -> int:
    cache = EngineCache(c.cfg.engines_root(c.cache_dir))
    probe = probe_python(c.cfg.worker_python, c.cfg.probe_timeout_s, env=c.env) if args.load else None
    here = current_device_filter(probe) if probe and trt_available(probe)[0] else None
    bad = 0
    for e in cache.entries():
        problems = cache.verify(e)
        if not problems and args.load:
            if here is None:
                problems.append("cannot load: TensorRT unavailable here")
            elif not here(e.meta):
                problems.append("built for another TensorRT version or device")
            else:
                problems += _try_load(e, c)
        bad += bool(problems)
        print(f"{'OK  ' if not problems else 'BAD '} {e.engine.name}" + "".join(f"\n     {p}" for p in problems))
    return 1 if bad else 0


def _try_load(entry, c: EnginesContext) -> list[str]:
    from edged.backends.tensorrt.engines import EngineSet

    k = entry.meta["key"]
    engines = EngineSet([(None, entry)], k["precision"], k["dla_core"], k["batch"][2])  # type: ignore[list-item]
    backend = trt_worker(engines, k["model"], c.cfg, env=c.env)
    try:
        backend.load()
        return []
    except Exception as exc:
        return [f"does not load: {exc}"]
    finally:
        backend.close()


def cmd_prune(args: argparse.Namespace, c: EnginesContext) -> int:
    cache = EngineCache(c.cfg.engines_root(c.cache_dir))
    probe = probe_python(c.cfg.worker_python, c.cfg.probe_timeout_s, env=c.env)
    here = current_device_filter(probe) if trt_available(probe)[0] else None
    shas = {load_manifest(m).sha256 for m in args.keep_model}

    def keep(e) -> bool:
        if cache.verify(e):
            return False
        if here is not None and not here(e.meta):
            return False
        return not shas or e.meta["key"]["model_sha256"] in shas

    def busy(stem: str) -> None:
        print(f"kept {stem}.*: an engine build holds its lock", file=sys.stderr)

    gone = cache.prune(keep, dry_run=args.dry_run, on_busy=busy)
    for p in gone:
        print(f"{'would remove' if args.dry_run else 'removed'} {p}")
    if here is None:
        print("note: TensorRT is unavailable here, so engines of other versions/devices were kept", file=sys.stderr)
    return 0


ENGINE_COMMANDS = {"list": cmd_list, "build": cmd_build, "verify": cmd_verify, "prune": cmd_prune}
