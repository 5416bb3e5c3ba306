"""``edged engines list|build|verify|prune``: the parsers.

The main CLI mounts them with ``add_engines_parser(subparsers)`` (and ``edged.selftest.cli``'s
``add_selftest_parser``) and calls ``args.func(args)``, which returns the exit status. Settings
come from ``context(args)`` when the main CLI passes one (it knows the config file); otherwise
from the defaults of ``TensorRTConfig`` plus ``--cache-dir`` / ``--worker-python``
(:mod:`edged.backends.tensorrt.cli_context`). The commands live in
:mod:`edged.backends.tensorrt.commands`, imported only when one runs: they pull in numpy, ONNX
Runtime and the worker, and ``edged --version`` / ``edged check`` must stay light.
``build --all`` checks the configured DLA engines against the 16-loadables-per-core budget
before building anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edged.backends.tensorrt.cli_context import (  # noqa: F401  (re-exported: the main CLI and tests use them)
    DEFAULT_CACHE_DIR,
    ContextFactory,
    EnginesContext,
    ModelBuild,
    common_options,
    default_context,
)


def _run(command: str, args: argparse.Namespace, context: EnginesContext) -> int:
    from edged.backends.tensorrt.commands import ENGINE_COMMANDS

    return ENGINE_COMMANDS[command](args, context)


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
        common_options(s)
    p.set_defaults(func=lambda args: _run(args.engines_command, args, ctx(args)))
    return p
