"""``edged tune``: sweep batching per power mode on this device and write the override file.

For each power mode the operator allows (``--modes``; default the current mode only) and each
configured model, it sweeps ``max_batch_size × max_queue_delay_ms × concurrency`` against the
backend the daemon would use (:func:`edged.backends.selection.make_backend`, same config) with
synthetic input of the model's input shape, picks the best throughput whose p99 meets
``--slo-ms``, writes ``<state_dir>/tuned-batching.yaml`` (:mod:`edged.power.tuned`; the daemon
reads it), prints a table and draws a PNG.

Switching to another mode is the operator's decision: it needs ``--switch-modes`` (and root, as
``edgectl power set`` does), a mode whose switch would need a reboot is skipped, and the mode
found at start is restored on every exit — normal, error, SIGINT or SIGTERM. Measured points
are saved as they are measured (``<state_dir>/tune/partial.json``), so an interrupted run loses
at most one point and a rerun measures only what is missing (``--fresh`` starts over).
Stop the daemon while tuning: it would share the CPU with the sweep and skew every point.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from typing import TYPE_CHECKING

from edged.config.loader import load_config

if TYPE_CHECKING:  # numpy, the batcher and the backends load when the command runs, not at parse time
    from edged.config.schema import Config
    from edged.tune.sweep import Point

DEFAULT_BATCHES = "1,4,8"
DEFAULT_DELAYS = "0,5,20"
DEFAULT_CONCURRENCY = "1,4"


def _ints(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def _floats(text: str) -> list[float]:
    return sorted({float(x) for x in text.split(",") if x.strip()})


def add_tune_parser(sub: argparse._SubParsersAction, config_args) -> None:
    p = sub.add_parser("tune", help="measure batching per power mode and write the device's override file")
    config_args(p)
    p.add_argument("--slo-ms", type=float, required=True, help="p99 latency a configuration must meet")
    p.add_argument("--modes", default="current", help="'current' (default), 'all', or mode IDs/names, e.g. 0,2")
    p.add_argument("--switch-modes", action="store_true", help="consent to switching power modes (needs root); "
                   "the mode found at start is restored on exit")
    p.add_argument("--model", action="append", default=[], help="tune only this configured model (repeatable)")
    p.add_argument("--batch-sizes", default=DEFAULT_BATCHES, help=f"max_batch_size values (default {DEFAULT_BATCHES}; "
                   "capped by each manifest's)")
    p.add_argument("--delays-ms", default=DEFAULT_DELAYS, help=f"max_queue_delay_ms values (default {DEFAULT_DELAYS})")
    p.add_argument("--concurrency", default=DEFAULT_CONCURRENCY, help=f"concurrent clients (default "
                   f"{DEFAULT_CONCURRENCY})")
    p.add_argument("--seconds", type=float, default=0.5, help="measurement time per point (default 0.5)")
    p.add_argument("--out-dir", type=Path, help="table and PNG (default <state_dir>/tune)")
    p.add_argument("--fresh", action="store_true", help="forget saved points and measure everything again")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from edged.power.context import open_power

    cfg = load_config(args.config, args.sets)
    out_dir = args.out_dir or cfg.state_dir / "tune"
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    ctx = open_power(cfg.power)
    found = ctx.current_mode()
    try:
        modes = _modes(args, ctx, found)
        if modes is None:
            return 4
        return _sweep(args, cfg, ctx, found, modes, out_dir, stop)
    finally:
        _restore(ctx, found)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _modes(args: argparse.Namespace, ctx, found: dict | None) -> list[int | None] | None:
    """The modes to measure (None = this host has no power modes); None on refusal."""
    if found is None or ctx.table is None:
        if args.modes != "current":
            print(f"refused: --modes {args.modes}: {ctx.unavailable_reason() or 'current mode unknown'}",
                  file=sys.stderr)
            return None
        return [None]
    if args.modes == "current":
        return [found["id"]]
    wanted = list(ctx.table.modes) if args.modes == "all" else [ctx.table.resolve(m.strip()).id
                                                                 for m in args.modes.split(",")]
    others = [m for m in wanted if m != found["id"]]
    if others and not args.switch_modes:
        print(f"refused: measuring modes {', '.join(map(str, others))} switches power modes; "
              "add --switch-modes to consent (the current mode is restored on exit)", file=sys.stderr)
        return None
    if others and ctx.unavailable_reason():
        print(f"refused: {ctx.unavailable_reason()}", file=sys.stderr)
        return None
    import os

    if others and os.geteuid() != 0:
        print("refused: switching power modes runs nvpmodel and needs root (sudo edged tune ...)", file=sys.stderr)
        return None
    return [found["id"]] + others  # the current one first: no switch until it is measured


def _switch(ctx, mode_id: int | None, found: dict | None) -> str | None:
    """Switch to ``mode_id`` (never with a reboot); the reason it could not, or None."""
    current = ctx.current_mode()
    if mode_id is None or (current and current["id"] == mode_id):
        return None
    result = ctx.nvpmodel.set_mode(mode_id, on_reboot_required=lambda: False, verifier=ctx.verifier())
    return None if result.outcome == "ok" else f"{result.outcome}: {result.reason}"


def _restore(ctx, found: dict | None) -> None:
    if found is None or ctx.nvpmodel.path is None:
        return
    current = ctx.current_mode()
    if current is not None and current["id"] != found["id"]:
        result = ctx.nvpmodel.set_mode(found["id"], on_reboot_required=lambda: False, verifier=ctx.verifier())
        print(f"restored mode {found['id']} {found['name']}: {result.outcome}", file=sys.stderr)


def _sweep(args, cfg: Config, ctx, found, modes: list[int | None], out_dir: Path, stop: threading.Event) -> int:
    from edged.backends.selection import make_backend
    from edged.models.manifest import load_manifest
    from edged.power.tuned import mode_key
    from edged.tune.report import draw_png, table
    from edged.tune.sweep import Interrupted, PartialStore, choose, measure

    entries = [e for e in cfg.models if not args.model or e.name in args.model]
    if not entries:
        print(f"no configured model named {', '.join(args.model)}", file=sys.stderr)
        return 2
    store = PartialStore(out_dir / "partial.json")
    if args.fresh:
        store.points = {}
    batches, delays, concs = _ints(args.batch_sizes), _floats(args.delays_ms), _ints(args.concurrency)
    points: list[Point] = []
    chosen: dict[tuple[str, str], Point | None] = {}
    meta: dict[str, tuple[str, str]] = {}
    skipped = measured = 0
    interrupted = False
    try:
        for mode_id in modes:
            why = _switch(ctx, mode_id, found)
            if why:
                print(f"mode {mode_id}: skipped ({why})", file=sys.stderr)
                continue
            for entry in entries:
                model = load_manifest(cfg.manifest_path(entry))
                model.verify_onnx()  # the daemon refuses another digest; so does the tuner
                backend, reason = make_backend(cfg, entry, model)
                try:
                    meta[model.name] = (model.sha256, reason)
                    spec = model.manifest.input
                    shape = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else \
                        (spec.height, spec.width, spec.channels)
                    import numpy as np

                    sample = np.random.default_rng(0).standard_normal(shape).astype(backend.input_spec.dtype)
                    cap = (entry.batching or model.manifest.batching).max_batch_size
                    grid = [(b, d, c) for b in sorted({min(b, cap) for b in batches}) for d in delays for c in concs]
                    identity = f"{model.name}|{model.sha256[:16]}|{reason}"
                    mine: list[Point] = []
                    for b in sorted({b for b, _, _ in grid}):
                        backend.warmup(b, shape)
                    for i, (b, d, c) in enumerate(grid, 1):
                        key = store.key(identity, mode_key(mode_id), b, d, c, args.seconds)
                        point = store.get(key)
                        label = f"[{i}/{len(grid)}] {model.name} mode {mode_key(mode_id)} batch {b} delay {d:g} ms conc {c}"
                        if point is None:
                            point = measure(backend, sample, model.name, mode_key(mode_id), b, d, c, args.seconds, stop)
                            store.put(key, point)
                            measured += 1
                        else:
                            skipped += 1
                            label += " (saved)"
                        print(f"{label}: {point.throughput_per_s:.1f}/s p99 {point.p99_ms:.2f} ms", file=sys.stderr,
                              flush=True)
                        mine.append(point)
                    points.extend(mine)
                    chosen[(model.name, mode_key(mode_id))] = choose(mine, args.slo_ms)
                finally:
                    backend.close()
    except Interrupted:
        interrupted = True
    if interrupted or stop.is_set():
        print(f"interrupted: {measured} point(s) measured and saved in {store.path}; run the same command again "
              "to resume", file=sys.stderr)
        return 130
    print(table(points, chosen, args.slo_ms))
    print(f"measured {measured} point(s), {skipped} from the saved run ({store.path})")
    written = _write(cfg, ctx, chosen, meta, args.slo_ms)
    (out_dir / "table.txt").write_text(table(points, chosen, args.slo_ms) + "\n")
    print(draw_png(points, chosen, args.slo_ms, out_dir / "tune.png"))
    if not written:
        print(f"nothing written: no configuration meets p99 <= {args.slo_ms:g} ms", file=sys.stderr)
        return 3
    from edged.power.tuned import tuned_path

    print(f"wrote {tuned_path(cfg.state_dir)} ({written} model/mode value(s)); the daemon reads it at start")
    return 0


def _write(cfg: Config, ctx, chosen: dict[tuple[str, str], Point | None], meta: dict[str, tuple[str, str]],
           slo_ms: float) -> int:
    """Merge the chosen points into the override file (other models and modes are kept)."""
    import yaml

    from edged.power.tuned import NO_MODES, SCHEMA, load_tuned, tuned_path
    from edged.tune.sweep import write_atomic

    path = tuned_path(cfg.state_dir)
    old = load_tuned(path)
    models = old.model_dump(by_alias=True, exclude_none=True)["models"] if old is not None else {}
    device = (ctx.profile.module if ctx.profile else ctx.platform.model) or f"generic Linux {ctx.platform.machine}"
    data = {"schema": SCHEMA, "device": device, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": models}
    n = 0
    for (model, mode), p in chosen.items():
        if p is None:
            continue
        sha, reason = meta[model]
        entry = data["models"].get(model)
        if entry is None or entry.get("sha256") != sha:  # another ONNX: its old values mean nothing
            entry = {"modes": {}}
        entry.update(sha256=sha, backend=reason)
        entry["modes"][mode] = {
            "max_batch_size": p.max_batch_size, "max_queue_delay_ms": p.max_queue_delay_ms,
            "measured": {"concurrency": p.concurrency, "throughput_per_s": p.throughput_per_s, "p50_ms": p.p50_ms,
                         "p99_ms": p.p99_ms, "slo_ms": slo_ms, "requests": p.requests},
        }
        data["models"][model] = entry
        n += 1
    if n:
        header = (f"# written by edged tune; mode keys are nvpmodel IDs ({NO_MODES!r}: no power modes).\n"
                  "# The daemon uses max_batch_size and max_queue_delay_ms; `measured` is for people.\n")
        write_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
    return n
