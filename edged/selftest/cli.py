"""``edged selftest`` on the command line: options, and ``--help`` that lists every check."""

from __future__ import annotations

import argparse
from pathlib import Path

from edged.backends.tensorrt.cli import ContextFactory, common_options, default_context
from edged.selftest import GROUPS


def checks_epilog() -> str:
    """The checks, per group, as ``--help`` prints them (power's from edged.power.checks if present)."""
    from edged.selftest.catalog import TRT_CHECKS as CHECKS

    lines = ["checks (group: check — what it shows):", "  tensorrt: onnxruntime in-process (reference) — FP32 "
             "reference outputs and timings of the generated reference model"]
    lines += [f"  tensorrt: {name} — {what}" for name, what in CHECKS]
    try:
        from edged.power import checks as power

        listed = getattr(power, "CHECKS", None)
        if listed:
            lines += [f"  power: {name} — {what}" for name, what in listed]
        else:
            lines.append("  power: the checks of edged.power.checks (modes are switched only with --switch-modes)")
    except ImportError:
        lines.append("  power: not in this build (no edged.power.checks): reported as SKIP")
    lines.append("  sandbox: tensorrt as the service user — the TensorRT checks again as --service-user inside "
                 "edged.service's systemd sandbox (systemd-run; needs root and systemd)")
    lines.append("  secondary: DETECTOR + CLASSIFIERS — each camera detector with secondary classifiers and its "
                 "classifiers, loaded as the daemon would serve them, timed per frame with 0/1/4/16 objects")
    lines.append("  preprocess: grey-level line vs table — this device's OpenCV evaluates straight grey-level chains "
                 "within one unit in 65535 of the table, over every 8- and 16-bit value; gather vs line timed")
    lines.append("Every check is PASS, FAIL or SKIP with a reason; the table goes to the terminal and the report "
                 "to --json. Exit status 1 when anything failed.")
    return "\n".join(lines)


def add_selftest_parser(subparsers, context: ContextFactory | None = None) -> argparse.ArgumentParser:
    ctx = context or default_context
    p = subparsers.add_parser(
        "selftest", help="prove this device: TensorRT, power, the service sandbox; a table and a JSON report",
        description="Run once on a new board and send the JSON report back. Builds into its own cache "
                    "(<cache_dir>/selftest-<user>), never the daemon's.",
        epilog=checks_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model folder (default: the generated reference model)")
    p.add_argument("--kind", default="densenet121", help="reference model kind when --model is not given")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=Path("selftest.json"), help="where to write the report")
    p.add_argument("--require-tensorrt", action="store_true", help="fail (not skip) when TensorRT is unavailable")
    p.add_argument("--switch-modes", action="store_true",
                   help="consent to switching every nvpmodel power mode (live, one by one; restores the mode after)")
    p.add_argument("--service-user", default="edged", help="the unit's User= (default: edged)")
    p.add_argument("--no-sandbox", action="store_true", help="do not rerun the checks inside the systemd sandbox")
    p.add_argument("--only", action="append", choices=list(GROUPS), default=[],
                   help="run only this group (repeatable)")
    common_options(p)

    def run(args: argparse.Namespace) -> int:
        from edged.selftest import SelftestOptions, run_selftest

        child_args: list[str] = []
        if getattr(args, "config", None):
            child_args += ["-c", str(Path(args.config).resolve())]
        for s in getattr(args, "sets", []) or []:
            child_args += ["--set", s]
        if getattr(args, "worker_python", None):
            child_args += ["--worker-python", args.worker_python]
        if getattr(args, "cache_dir", None):
            child_args += ["--cache-dir", str(Path(args.cache_dir).resolve())]
        if args.model:
            child_args += ["--model", str(Path(args.model).resolve())]
        opts = SelftestOptions(model_dir=args.model, kind=args.kind, max_batch=args.max_batch, repeats=args.repeats,
                               json_path=args.json, require_tensorrt=args.require_tensorrt,
                               switch_modes=args.switch_modes, service_user=args.service_user,
                               sandbox=not args.no_sandbox, only=frozenset(args.only), child_args=child_args)
        return run_selftest(ctx(args), opts)

    p.set_defaults(func=run)
    return p
