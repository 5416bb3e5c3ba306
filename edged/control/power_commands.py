"""``edgectl power list|get|set|clocks``: the nvpmodel and jetson_clocks commands (see edgectl for the rules)."""

from __future__ import annotations

import argparse
import os
import sys

from edged.control.cli_support import _emit, _fmt, _table, _who
from edged.control.client import ControlClient, ControlError, DaemonUnavailable
from edged.power.clocks import JetsonClocks
from edged.power.config import PowerConfig
from edged.power.context import PowerContext
from edged.power.nvpmodel import NvpmodelError, SwitchResult
from edged.power.table import ModeView, UnknownMode

EXIT = {"ok": 0, "unchanged": 0, "rebooting": 0, "failed": 1, "pending_reboot": 3, "refused": 4}


def _header(ctx: PowerContext) -> str:
    p = ctx.platform
    title = f"{ctx.profile.title} ({ctx.profile.module})" if ctx.profile else (p.model or "unknown Jetson module")
    release = f"L4T {p.l4t}, JetPack {p.jetpack}" if p.l4t else "L4T release unknown"
    conf = f"conf {ctx.conf.path}" if ctx.conf else "no live conf"
    return f"{title} - {release}; {conf}"


def _mode_rows(ctx: PowerContext, current: int | None) -> list[list[str]]:
    assert ctx.table is not None
    rows = []
    for m in ctx.table.modes.values():
        u = set(m.unverified)
        flags = ("*" if m.id == current else "") + ("D" if m.id == ctx.table.default_mode else "")
        if current is None or m.id == current or current not in ctx.table.modes:
            reboot = "-"
        else:
            reboot = ctx.table.reboot(current, m.id).label
        caps = [_fmt(getattr(m, k), k in u) for k in ("cpu_max_mhz", "gpu_max_mhz", "emc_max_mhz")]
        cpus = f"{_fmt(m.cpus_online, 'cpus_online' in u)}/{_fmt(m.cpus_total)}"
        batch = [str(m.batching.max_batch_size), _fmt(m.batching.max_queue_delay_ms)]
        tail = [_fmt(m.budget_w), _fmt(m.tpc_pg_mask, "tpc_pg_mask" in u), reboot, *batch, ",".join(m.aliases)]
        rows.append([flags, str(m.id), m.name, cpus, *caps, *tail])
    return rows


def _warn(ctx: PowerContext) -> None:
    for warning in ctx.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_power_list(args: argparse.Namespace, ctx: PowerContext) -> int:
    if ctx.table is None:
        reason = ctx.unavailable_reason() or "no power modes"
        _emit(
            args,
            {"available": False, "reason": reason, "platform": ctx.platform.as_dict()},
            f"no power modes: {reason}",
        )
        return 5
    current = ctx.current_mode()
    data = {
        "platform": ctx.platform.as_dict(),
        "profile_selected_by": ctx.profile_reason,
        "current": current,
        **ctx.table.as_dict(),
        "warnings": ctx.warnings,
    }
    if current and current["id"] in ctx.table.modes:
        for mode in data["modes"]:
            prediction = ctx.table.reboot(current["id"], mode["id"])
            mode["reboot"] = {"needed": prediction.needed, "why": prediction.why}
    headers = "|ID|NAME|CPUS|CPU MHz|GPU MHz|EMC MHz|BUDGET W|TPC MASK|REBOOT|BATCH|DELAY ms|ALIASES".split("|")
    legend = ("legend: * current, D default, REBOOT = from the current mode (yes / no / ? = nvpmodel decides), "
              "? after a value = unverified, max = uncapped")
    text = "\n".join([_header(ctx), _table(headers, _mode_rows(ctx, current["id"] if current else None)), legend])
    _emit(args, data, text)
    if not args.json:
        _warn(ctx)
    return 0


def cmd_power_get(args: argparse.Namespace, ctx: PowerContext) -> int:
    current = ctx.current_mode()
    if ctx.table is None or current is None:
        reason = ctx.unavailable_reason() or "current mode unknown"
        _emit(args, {"available": False, "reason": reason}, f"no power mode: {reason}")
        return 5
    mode = ctx.table.modes.get(current["id"])
    data = {
        "current": current,
        "mode": mode.as_dict() if mode else None,
        "module": ctx.profile.module if ctx.profile else None,
    }
    lines = [f"mode: {current['id']} {current['name']} (from {current['source']})", _header(ctx)]
    if mode:
        lines.append(
            f"cpus {_fmt(mode.cpus_online)}/{_fmt(mode.cpus_total)}, cpu {_fmt(mode.cpu_max_mhz)} MHz, "
            f"gpu {_fmt(mode.gpu_max_mhz)} MHz, budget {_fmt(mode.budget_w)} W"
            + (f", aliases {','.join(mode.aliases)}" if mode.aliases else "")
        )
    lines.append(
        f"batching: max_batch_size {current['batching']['max_batch_size']}, "
        f"max_queue_delay_ms {current['batching']['max_queue_delay_ms']:g}"
    )
    if "query_error" in current:
        lines.append(f"note: nvpmodel -q failed ({current['query_error']})")
    _emit(args, data, "\n".join(lines))
    return 0


def _notify(cfg: PowerConfig, cmd: str, payload: dict) -> dict:
    """Tell the daemon; its absence is normal (it reads the mode when it starts)."""
    try:
        return {"notified": True, "reply": ControlClient(cfg.control_socket, cfg.control_timeout_s).call(cmd, payload)}
    except DaemonUnavailable as exc:
        return {"notified": False, "reason": f"{exc}; it will read the mode when it starts"}
    except ControlError as exc:
        return {"notified": False, "reason": f"daemon not told: {exc}"}


def cmd_power_set(args: argparse.Namespace, ctx: PowerContext) -> int:
    reason = ctx.unavailable_reason()
    if reason or ctx.table is None:
        _emit(args, {"outcome": "refused", "reason": reason}, f"refused: {reason}")
        return 5
    try:
        target: ModeView = ctx.table.resolve(args.mode)
    except UnknownMode as exc:
        _emit(args, {"outcome": "refused", "reason": str(exc)}, f"refused: {exc}")
        return 2
    who, via_sudo = _who()
    if os.geteuid() != 0:
        why = f"switching power modes runs nvpmodel and needs root: sudo edgectl power set {args.mode}"
        _emit(args, {"outcome": "refused", "reason": why}, f"refused: {why}")
        return EXIT["refused"]
    declined: list[str] = []
    told: dict = {}  # the daemon is told before a reboot, from inside the callback
    current = ctx.current_mode()
    before_mode = {"id": current["id"], "name": current["name"]} if current else None
    prediction = ctx.table.reboot(current["id"], target.id) if current and current["id"] in ctx.table.modes else None

    def event(result_outcome: str, before: dict | None, why: str) -> dict:
        return {
            "who": who,
            "via_sudo": via_sudo,
            "from": before,
            "to": {"id": target.id, "name": target.name},
            "outcome": result_outcome,
            "reason": why,
        }

    def on_reboot_required() -> bool:
        if not args.reboot:
            return False
        if not args.yes:
            if not sys.stdin.isatty():
                declined.append("a reboot needs --yes when edgectl is not run interactively")
                return False
            answer = input(f"Mode {target.id} {target.name} needs a reboot. Reboot the board NOW? Type 'reboot': ")
            if answer.strip().lower() != "reboot":
                declined.append("reboot not confirmed")
                return False
        rebooting = event("rebooting", before_mode, "rebooting into the new mode")
        told.update(_notify(ctx.config, "power.changed", rebooting))
        return True

    clocks = ctx.clocks()
    clocks_note = _clocks_before_switch(clocks, before_mode, target)
    result: SwitchResult = ctx.nvpmodel.set_mode(target.id, on_reboot_required=on_reboot_required,
                                                 verifier=ctx.verifier())
    if declined and result.outcome == "pending_reboot":
        result.outcome, result.reason = "refused", f"{result.reason}; {declined[0]}"
    before = {"id": result.before.id, "name": result.before.name} if result.before else before_mode
    if clocks_note is not None:
        clocks_note = _clocks_after_switch(clocks, result, before, target, clocks_note)
    notified: dict = told or {"notified": False, "reason": "nothing changed"}
    if result.outcome not in ("unchanged", "rebooting"):
        notified = _notify(ctx.config, "power.changed", event(result.outcome, before, result.reason))
    data = {**result.as_dict(), "target": target.as_dict(), "daemon": notified,
            "reboot_predicted": {"needed": prediction.needed, "why": prediction.why} if prediction else None,
            "jetson_clocks": clocks_note}
    label = {"ok": "switched", "pending_reboot": "pending reboot", "failed": "FAILED"}.get(result.outcome)
    after = f"{result.after.id} {result.after.name}" if result.after else "?"
    lines = [
        f"{label or result.outcome}: mode {target.id} {target.name} (was {before['id'] if before else '?'} "
        f"{before['name'] if before else ''}, now {after})".replace(" )", ")")
    ]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    if prediction is not None and result.outcome not in ("unchanged",):
        asked = "asked for one" if result.reboot_prompted else "did not ask"
        lines.append(f"reboot: predicted {prediction.label} ({prediction.why}); nvpmodel {asked}")
    if result.outcome == "ok" and result.verification is not None:
        lines.append(f"verified: {result.verification.summary()}")
    if result.outcome == "pending_reboot":
        lines.append(f"to switch and reboot now: sudo edgectl power set {args.mode} --reboot")
    if result.outcome == "ok":
        lines.append(
            f"batching: max_batch_size {target.batching.max_batch_size}, "
            f"max_queue_delay_ms {target.batching.max_queue_delay_ms:g}"
        )
    if clocks_note is not None:
        lines.append(f"jetson_clocks: {clocks_note['summary']}")
    lines.append("daemon: " + ("told" if notified["notified"] else notified["reason"]))
    _emit(args, data, "\n".join(lines))
    return EXIT[result.outcome]


def _clocks_before_switch(clocks: JetsonClocks, mode: dict | None, target: ModeView) -> dict | None:
    """Turn jetson_clocks off before a switch, as jtop does; None when it was not on."""
    if mode is not None and mode["id"] == target.id:
        return None
    if clocks.status().on is not True:
        return None
    try:
        _, how = clocks.off(mode, switching=True)
        return {"was_on": True, "off": how, "summary": f"turned off for the switch ({how})"}
    except NvpmodelError as exc:
        return {"was_on": True, "off": f"failed: {exc}", "summary": f"could not be turned off: {exc}"}


def _clocks_after_switch(clocks: JetsonClocks, result: SwitchResult, before: dict | None, target: ModeView,
                         note: dict) -> dict:
    """Pin the clocks again: in the new mode after a switch, in the old one when nothing changed."""
    if result.outcome == "rebooting":
        return {**note, "summary": note["summary"] + "; not persistent: run `edgectl power clocks on` after the reboot"}
    mode = {"id": target.id, "name": target.name} if result.outcome == "ok" else before
    try:
        _, how = clocks.on(mode)
        where = mode["id"] if mode else "?"
        return {**note, "on": how, "summary": f"{note['summary']}; on again in mode {where} ({how})"}
    except NvpmodelError as exc:
        return {**note, "on": f"failed: {exc}", "summary": f"{note['summary']}; NOT on again: {exc}"}


def cmd_power_clocks(args: argparse.Namespace, ctx: PowerContext) -> int:
    """``status`` reads sysfs (any user: jetson_clocks itself refuses --show without root);
    ``on``/``off`` run jetson_clocks as root, in the current mode (see :mod:`edged.power.clocks`)."""
    if not ctx.platform.is_jetson:
        _emit(args, {"available": False}, "no jetson_clocks: " + (ctx.unavailable_reason() or ""))
        return 5
    clocks = ctx.clocks()
    if args.action != "status" and os.geteuid() != 0:
        _emit(args, {"outcome": "refused"}, f"refused: jetson_clocks {args.action} needs root (sudo)")
        return 4
    current = ctx.current_mode()
    mode = {"id": current["id"], "name": current["name"]} if current else None
    how = ""
    try:
        if args.action == "status":
            status = clocks.status()
        elif args.action == "on":
            status, how = clocks.on(mode)
        else:
            status, how = clocks.off(mode, ctx.nvpmodel.apply if ctx.nvpmodel.path else None)
    except NvpmodelError as exc:
        _emit(args, {"outcome": "failed", "reason": str(exc)}, f"failed: {exc}")
        return 1
    if args.action != "status":
        who, via_sudo = _who()
        _notify(ctx.config, "power.clocks", {"who": who, "via_sudo": via_sudo, "on": status.on})
    state = "on" if status.on else "off" if status.on is False else "unknown"
    _emit(args, {**status.as_dict(), "mode": mode, "how": how},
          f"jetson_clocks: {state}" + (f" ({how})" if how else ""))
    return 0
