"""``edgectl``: the technician's CLI — ``status`` and ``power list|get|set|clocks``.

Who switches the mode (the root-privilege decision)
    The daemon never needs root. ``nvpmodel -m`` does, so **edgectl runs it**: a technician
    uses ``sudo edgectl power set MODE``; edgectl calls nvpmodel itself (stdin closed, timeout,
    verified by a second ``nvpmodel -q``), then tells the daemon over the control socket::

        power.changed {"who", "via_sudo", "from": {id, name}, "to": {id, name}, "outcome", "reason"}

    so the daemon re-reads the mode, retunes each model's batching, re-warms its backend and
    publishes the event. No setuid helper, no root daemon, no socket command that runs
    anything as root. The socket carries claims, not proof: whoever may connect (root, the
    daemon user, members of ``edged-admin``; see :mod:`edged.control`) can send a
    ``power.changed`` of their own, and the daemon then re-reads the mode, retunes and re-warms
    every model if the mode differs from the one it knew, and publishes a power event whose
    ``who``/``to``/``outcome``/``reason`` are the sender's. With ``--reboot``, the daemon is
    told ``outcome: rebooting`` *before* nvpmodel is answered, because the board goes down
    right after.

Under sudo (the sudoers rule)
    edgectl runs nvpmodel and jetson_clocks as root, so under sudo it takes their paths only
    from the installed configuration (``/etc/edged/edged.yaml``, root-owned) and the defaults
    (found on sudo's ``secure_path``). ``--nvpmodel``, ``--config``, ``--root``, ``--profiles``,
    ``EDGED_CONFIG`` and ``EDGED_SYSROOT`` are refused with exit status 2 when edgectl runs as
    root with ``SUDO_USER`` set: each lets the caller choose what runs as root or what root reads
    and writes (a binary; a config naming one; a tree whose mode table is believed and under
    which ``jetson_clocks --store`` writes; profiles that set the batching). ``--socket`` stays
    allowed: it only chooses where the facts are sent. The rule to install (``visudo -f
    /etc/sudoers.d/edged``)::

        %edged-admin ALL=(root) NOPASSWD: /opt/edged/venv/bin/edgectl power *

    A ``*`` in sudoers arguments matches anything, other options included, which is why the
    refusal lives in edgectl rather than in the rule. Keep sudo's ``env_reset``/``secure_path``
    and grant no ``SETENV``. A root shell opened with ``sudo -s``/``sudo -i`` keeps
    ``SUDO_USER``; unset it there to test against a fake tree.

Read-only commands (``status``, ``power list``, ``power get``, ``power clocks status``) work
without root and without the daemon. Exit status: 0 done (or nothing to do), 1 failed,
2 bad usage or unknown MODE, 3 pending reboot (nothing changed), 4 refused (not root, or the
reboot was not confirmed), 5 no power modes on this host. ``--root``/``EDGED_SYSROOT`` point
every /proc, /sys and /etc read at a fake tree; ``--nvpmodel`` picks another nvpmodel binary
(both refused under sudo, above).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from pathlib import Path

from edged.config.yamlsrc import ConfigError
from edged.control import ControlClient, ControlError, DaemonUnavailable
from edged.power.config import PowerConfig, load_power_sections
from edged.power.context import PowerContext, open_power
from edged.power.nvpmodel import JetsonClocks, NvpmodelError, SwitchResult
from edged.power.platform import under
from edged.power.table import ModeView, UnknownMode
from edged.power.telemetry import TelemetrySampler

EXIT = {"ok": 0, "unchanged": 0, "rebooting": 0, "failed": 1, "pending_reboot": 3, "refused": 4}


def _fmt(value: object, unverified: bool = False) -> str:
    if value is None:
        text = "-"
    elif value == "uncapped":
        text = "max"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return text + ("?" if unverified and value is not None else "")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _who() -> tuple[str, bool]:
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user, True
    try:
        return pwd.getpwuid(os.getuid()).pw_name, False
    except KeyError:
        return str(os.getuid()), False


# Options and variables that choose what edgectl executes or parses as root.
_SUDO_REFUSED_OPTIONS = ("config", "root", "nvpmodel", "profiles")
_SUDO_REFUSED_ENV = ("EDGED_CONFIG", "EDGED_SYSROOT")


def _sudo_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides given to a root edgectl started by sudo (empty otherwise)."""
    if os.geteuid() != 0 or not os.environ.get("SUDO_USER"):
        return []
    given = [f"--{key}" for key in _SUDO_REFUSED_OPTIONS if getattr(args, key)]
    return given + [name for name in _SUDO_REFUSED_ENV if os.environ.get(name)]


def _config(args: argparse.Namespace) -> PowerConfig:
    cfg, _ = load_power_sections(args.config or os.environ.get("EDGED_CONFIG") or _installed_config())
    update: dict[str, object] = {}
    root = args.root or os.environ.get("EDGED_SYSROOT")
    if root:
        update["sysroot"] = Path(root)
    for key, attr in (("nvpmodel", "nvpmodel"), ("profiles", "profile_dir"), ("socket", "control_socket")):
        if getattr(args, key):
            update[attr] = getattr(args, key)
    return PowerConfig.model_validate({**cfg.model_dump(), **update}) if update else cfg


def _installed_config() -> str | None:
    """The daemon's config as installed (systemd unit: -c /etc/edged/edged.yaml), when present,
    so edgectl finds the same control socket and tool paths without being told."""
    path = Path("/etc/edged/edged.yaml")
    return str(path) if path.is_file() else None


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
            reboot = {True: "yes", False: "no", None: "?"}[ctx.table.needs_reboot(current, m.id)]
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
    headers = "|ID|NAME|CPUS|CPU MHz|GPU MHz|EMC MHz|BUDGET W|TPC MASK|REBOOT|BATCH|DELAY ms|ALIASES".split("|")
    legend = "legend: * current, D default, REBOOT = needed from the current mode, ? unverified, max = uncapped"
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
        current = ctx.current_mode()
        before = {"id": current["id"], "name": current["name"]} if current else None
        told.update(_notify(ctx.config, "power.changed", event("rebooting", before, "rebooting into the new mode")))
        return True

    result: SwitchResult = ctx.nvpmodel.set_mode(target.id, on_reboot_required=on_reboot_required)
    if declined and result.outcome == "pending_reboot":
        result.outcome, result.reason = "refused", f"{result.reason}; {declined[0]}"
    before = {"id": result.before.id, "name": result.before.name} if result.before else None
    notified: dict = told or {"notified": False, "reason": "nothing changed"}
    if result.outcome not in ("unchanged", "rebooting"):
        notified = _notify(ctx.config, "power.changed", event(result.outcome, before, result.reason))
    data = {**result.as_dict(), "target": target.as_dict(), "daemon": notified}
    label = {"ok": "switched", "pending_reboot": "pending reboot", "failed": "FAILED"}.get(result.outcome)
    after = f"{result.after.id} {result.after.name}" if result.after else "?"
    lines = [
        f"{label or result.outcome}: mode {target.id} {target.name} (was {before['id'] if before else '?'} "
        f"{before['name'] if before else ''}, now {after})".replace(" )", ")")
    ]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    if result.outcome == "pending_reboot":
        lines.append(f"to switch and reboot now: sudo edgectl power set {args.mode} --reboot")
    if result.outcome == "ok":
        lines.append(
            f"batching: max_batch_size {target.batching.max_batch_size}, "
            f"max_queue_delay_ms {target.batching.max_queue_delay_ms:g}"
        )
    lines.append("daemon: " + ("told" if notified["notified"] else notified["reason"]))
    _emit(args, data, "\n".join(lines))
    return EXIT[result.outcome]


def cmd_power_clocks(args: argparse.Namespace, ctx: PowerContext) -> int:
    if not ctx.platform.is_jetson:
        _emit(args, {"available": False}, "no jetson_clocks: " + (ctx.unavailable_reason() or ""))
        return 5
    # The store is a device path like /etc and /sys, so it follows --root too.
    clocks = JetsonClocks(ctx.config.jetson_clocks, under(ctx.platform.root, str(ctx.config.jetson_clocks_store)))
    if args.action != "status" and os.geteuid() != 0:
        _emit(args, {"outcome": "refused"}, f"refused: jetson_clocks {args.action} needs root (sudo)")
        return 4
    try:
        status = {"status": clocks.status, "on": clocks.on, "off": clocks.off}[args.action]()
    except NvpmodelError as exc:
        _emit(args, {"outcome": "failed", "reason": str(exc)}, f"failed: {exc}")
        return 1
    if args.action != "status":
        who, via_sudo = _who()
        _notify(ctx.config, "power.clocks", {"who": who, "via_sudo": via_sudo, "on": status.on})
    _emit(args, status.as_dict(), f"jetson_clocks: {'on' if status.on else 'off' if status.on is False else 'unknown'}")
    return 0


def cmd_status(args: argparse.Namespace, ctx: PowerContext) -> int:
    try:
        daemon = {
            "running": True,
            **ControlClient(ctx.config.control_socket, ctx.config.control_timeout_s).call("status"),
        }
    except DaemonUnavailable as exc:
        daemon = {"running": False, "reason": str(exc)}
    except ControlError as exc:
        daemon = {"running": None, "reason": str(exc)}
    mode = ctx.current_mode()
    sample = TelemetrySampler(ctx.platform.root, mode_provider=lambda: mode).sample()
    data = {
        "daemon": daemon,
        "platform": ctx.platform.as_dict(),
        "module": ctx.profile.module if ctx.profile else None,
        "power_mode": mode,
        "telemetry": sample,
    }
    power = sample["power"]
    lines = [
        "daemon: " + ("running" if daemon["running"] else daemon["reason"]),
        "platform: " + (_header(ctx) if ctx.platform.is_jetson else f"generic Linux ({ctx.platform.machine})"),
        "power mode: " + (f"{mode['id']} {mode['name']}" if mode else "none on this host"),
        "power: "
        + (
            f"{power['total_mw']:.0f} mW ({power['source']}{', sum of rails' if power['total_is_sum'] else ''})"
            if power and power["total_mw"] is not None
            else "unavailable"
        ),
    ]
    if sample["thermal_c"]:
        zone, temp = max(sample["thermal_c"].items(), key=lambda kv: kv[1])
        lines.append(f"hottest zone: {zone} {temp:.1f} C")
    lines += [f"unavailable: {k}: {v}" for k, v in sample["unavailable"].items()]
    lines += [f"{k}: {v}" for k, v in daemon.items() if k not in ("running", "reason")]
    _emit(args, data, "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--config", default=argparse.SUPPRESS, help="edged config file (env EDGED_CONFIG)")
    common.add_argument(
        "--root", default=argparse.SUPPRESS, help="filesystem root for /proc, /sys, /etc (env EDGED_SYSROOT)"
    )
    common.add_argument("--nvpmodel", default=argparse.SUPPRESS, help="nvpmodel binary to use")
    common.add_argument("--profiles", default=argparse.SUPPRESS, help="power profile directory")
    common.add_argument("--socket", default=argparse.SUPPRESS, help="daemon control socket")
    parser = argparse.ArgumentParser(prog="edgectl", parents=[common], description="Control a running edged.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="daemon, platform, power mode, telemetry")
    power = sub.add_parser("power", parents=[common], help="nvpmodel power modes").add_subparsers(
        dest="action", required=True
    )
    power.add_parser("list", parents=[common], help="modes of this module")
    power.add_parser("get", parents=[common], help="the current mode")
    setp = power.add_parser("set", parents=[common], help="switch mode (root)")
    setp.add_argument("mode", help="mode ID, name or alias (max, balanced, eco)")
    setp.add_argument("--reboot", action="store_true", help="reboot now if the mode needs it")
    setp.add_argument("--yes", action="store_true", help="do not ask before rebooting")
    clocks = power.add_parser("clocks", parents=[common], help="jetson_clocks on/off/status")
    clocks.add_argument("clock_action", nargs="?", choices=("status", "on", "off"), default="status")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key in ("json", "config", "root", "nvpmodel", "profiles", "socket"):
        if not hasattr(args, key):
            setattr(args, key, False if key == "json" else None)
    refused = _sudo_overrides(args)
    if refused:
        print(
            f"edgectl: refusing {', '.join(refused)} under sudo: as root, edgectl runs nvpmodel and "
            "jetson_clocks only as the installed configuration (/etc/edged/edged.yaml) names them. "
            "Run it without these; to test against a fake tree, run it as root without sudo "
            "(a root shell from sudo -s/-i keeps SUDO_USER: unset it).",
            file=sys.stderr,
        )
        return 2
    try:
        ctx = open_power(_config(args))
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    if args.command == "status":
        return cmd_status(args, ctx)
    if args.action == "clocks":
        args.action = args.clock_action
        return cmd_power_clocks(args, ctx)
    return {"list": cmd_power_list, "get": cmd_power_get, "set": cmd_power_set}[args.action](args, ctx)


if __name__ == "__main__":
    raise SystemExit(main())
