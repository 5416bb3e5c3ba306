"""``edged selftest``: a technician runs it once on a new board and sends the report back.

It proves on the device what CI cannot (no machine of this project has a GPU): the TensorRT
checks (``trt_checks.py``), detector + secondary classifiers timed per frame (``secondary.py``), the power checks of ``edged.power.checks`` when this build has them
(mode switches only with ``--switch-modes``: switching is the operator's explicit consent), and
the TensorRT checks again as the service user inside the unit's systemd sandbox
(``sandbox.py``). Every check is a row ``(group, target, PASS|FAIL|SKIP, note, data)``
(``report.py``); the result is a table on the terminal and one JSON file. A SKIP says why; any
FAIL makes the exit status 1. Off a device every TensorRT row is a SKIP naming what is missing,
and the checks that need no GPU (the worker, a worker killed mid-batch) still run. ``preprocess.py``
checks this device's OpenCV against the grey-level table the pipeline's line path stands for.

The self-test builds into its own cache (``<cache_dir>/selftest-<user>``), never into the
daemon's engine cache: as root it would leave root-owned engines and locks the service cannot
replace.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import edged
from edged.selftest.report import Report, Row, meta

GROUPS = ("tensorrt", "power", "sandbox", "cameras", "secondary", "preprocess")


@dataclass
class SelftestOptions:
    model_dir: Path | None = None
    kind: str = "densenet121"
    max_batch: int = 8
    repeats: int = 5
    json_path: Path | None = Path("selftest.json")
    require_tensorrt: bool = False
    switch_modes: bool = False
    service_user: str = "edged"
    sandbox: bool = True
    only: frozenset[str] = frozenset()  # groups to run; empty: all
    child_args: list[str] = field(default_factory=list)  # config arguments, repeated for the sandboxed run

    def wants(self, group: str) -> bool:
        return not self.only or group in self.only


def user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def run_selftest(ctx: Any, opts: SelftestOptions, out: TextIO | None = None) -> int:
    """Run the groups ``opts`` asks for, print the table, write the JSON; return the exit status.

    ``ctx`` is the engines context of the CLI (``cfg``, ``cache_dir``, ``env``, ``models``,
    ``power``).
    """
    out = out or sys.stdout
    report = Report(meta=meta(edged=edged.__version__, user=user_name(), switch_modes=opts.switch_modes,
                              groups=sorted(g for g in GROUPS if opts.wants(g))))
    cache_dir = Path(ctx.cache_dir) / f"selftest-{user_name()}"
    if opts.wants("tensorrt"):
        report.add(tensorrt_rows(ctx, opts, cache_dir, out))
    if opts.wants("power"):
        report.add(power_rows(getattr(ctx, "power", None), opts))
    if opts.wants("sandbox"):
        if opts.sandbox:
            from edged.selftest.sandbox import run_sandboxed

            args = ["--kind", opts.kind, "--max-batch", str(opts.max_batch), "--repeats", str(opts.repeats),
                    *opts.child_args]
            report.add(run_sandboxed(opts.service_user, args, ctx.cfg.build_timeout_s * 4))
        else:
            report.add(Row("sandbox", "tensorrt as the service user", "SKIP", "--no-sandbox"))
    if opts.wants("cameras"):
        from edged.sources.camera.check import camera_rows

        config = getattr(ctx, "config", None)
        report.add([Row.of(r) for r in camera_rows(config)] if config is not None else
                   [Row("cameras", "capture helper", "SKIP", "no configuration given")])
    if opts.wants("secondary"):
        from edged.selftest.secondary import secondary_rows

        report.add(secondary_rows(getattr(ctx, "config", None), cache_dir, opts.repeats))
    if opts.wants("preprocess"):
        from edged.selftest.preprocess import preprocess_rows

        report.add(preprocess_rows(opts.repeats))
    report.print_table(out)
    if opts.json_path:
        report.write_json(opts.json_path)
        print(f"report written to {opts.json_path}", file=out)
    return 1 if report.failed else 0


def tensorrt_rows(ctx: Any, opts: SelftestOptions, cache_dir: Path, out: TextIO) -> list[Row]:
    from edged.models.manifest import load_manifest
    from edged.selftest.accuracy import Reference, reference_model
    from edged.selftest.trt_checks import TensorRTChecks, TrtContext

    cfg = ctx.cfg.model_copy(update={"engine_dir": None, "timing_cache_dir": None})
    try:
        model = load_manifest(opts.model_dir) if opts.model_dir else reference_model(cache_dir, opts.kind)
        ref, ref_row = Reference.make(model, opts.max_batch, opts.repeats)
    except Exception as exc:
        return [Row("tensorrt", "reference model", "FAIL", f"{type(exc).__name__}: {exc}")]

    def progress(text: str, fraction: float | None) -> None:
        print(f"  {text}" + (f" ({fraction:.0%})" if fraction is not None else ""), file=out, flush=True)

    tctx = TrtContext(cfg, cache_dir, env=ctx.env, configured=tuple(getattr(ctx, "models", ()) or ()),
                      progress=progress, require_tensorrt=opts.require_tensorrt,
                      preprocess_for=getattr(ctx, "preprocess_for", None))
    return [ref_row] + TensorRTChecks(tctx, ref).run()


def power_rows(power_cfg: Any, opts: SelftestOptions) -> list[Row]:
    """The power group from ``edged.power.checks`` (delivered separately), or why there is none."""
    try:
        from edged.power.checks import power_checks
    except ModuleNotFoundError as exc:
        if exc.name == "edged.power.checks":
            return [Row("power", "power checks", "SKIP", "not in this build of edged (no edged.power.checks)")]
        return [Row("power", "power checks", "FAIL", f"edged.power.checks cannot be imported: {exc}")]
    except Exception as exc:
        return [Row("power", "power checks", "FAIL", f"edged.power.checks cannot be imported: {type(exc).__name__}: {exc}")]
    if power_cfg is None:
        from edged.power.config import PowerConfig

        power_cfg = PowerConfig()
    try:
        pwd.getpwnam(opts.service_user)
        user: str | None = opts.service_user
    except KeyError:
        user = None
    try:
        raw = power_checks(power_cfg, switch_modes=opts.switch_modes, service_user=user)
        return [Row.of(r, "power") for r in raw]
    except Exception as exc:
        return [Row("power", "power checks", "FAIL", f"{type(exc).__name__}: {exc}")]
