"""What ``edged engines list|build|verify|prune`` do. :mod:`edged.backends.tensorrt.cli` holds
the parsers and imports this module only when one of these commands runs, because it pulls in
numpy, ONNX Runtime and the worker (``edged --version`` and ``edged check`` must stay light).
"""

from __future__ import annotations

import argparse
import json
import sys

from edged.backends.selection import trt_worker
from edged.backends.tensorrt.builder import EngineBuildError
from edged.backends.tensorrt.cache import EngineCache
from edged.backends.tensorrt.cli_context import EnginesContext, ModelBuild
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


def _probe_or_explain(c: EnginesContext, skip: bool = False) -> dict | None:
    probe = probe_python(c.cfg.worker_python, c.cfg.probe_timeout_s, env=c.env)
    ok, why = trt_available(probe)
    if not ok:
        if skip:  # the first-boot unit on an image without TensorRT: nothing to do is a success
            print(f"nothing to build: TensorRT is unavailable ({why}); models with backend auto are "
                  "served by ONNX Runtime", flush=True)
        else:
            print(f"cannot build TensorRT engines here: {why}.\nEngines are built on the Jetson that runs them "
                  f"(set tensorrt.worker_python to the Python that carries JetPack's TensorRT bindings).",
                  file=sys.stderr)
        return None
    return probe


def cmd_build(args: argparse.Namespace, c: EnginesContext) -> int:
    if bool(args.model) == bool(args.all):
        print("engines build: name a model folder, or --all for the models of the config", file=sys.stderr)
        return 2
    targets = [ModelBuild(args.model)] if args.model else list(c.models)
    if not targets:
        print("engines build --all: no model of the config uses backend auto or tensorrt; nothing to build")
        return 0
    problems = dla_budget(targets, c.cfg, args)
    if problems:
        for p in problems:
            print(f"engines build: {p}", file=sys.stderr)
        return 2
    skip = getattr(args, "skip_without_tensorrt", False)
    probe = _probe_or_explain(c, skip)
    if probe is None:
        return 0 if skip else 2
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
