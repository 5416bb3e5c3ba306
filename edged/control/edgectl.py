"""``edgectl``: the technician's CLI — ``status`` and ``power list|get|set|clocks``.

Who switches the mode (the root-privilege decision)
    The daemon never needs root. ``nvpmodel -m`` does, so **edgectl runs it**: a technician
    uses ``sudo edgectl power set MODE``; edgectl calls nvpmodel itself (stdin closed, timeout,
    verified on the board: online CPUs, clock caps, gating masks; jetson_clocks turned off around
    the switch and on again in the new mode), then tells the daemon over the control socket::

        power.changed {"who", "via_sudo", "from": {id, name}, "to": {id, name}, "outcome", "reason"}

    so the daemon re-reads the mode, retunes each model's batching, re-warms its backend and
    publishes the event. No setuid helper, no root daemon, no socket command that runs
    anything as root. The socket carries claims, not proof: whoever may connect (root, the
    daemon user, members of ``edged-admin``; see :mod:`edged.control.server`) can send a
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
without root and without the daemon (``status`` then shows the board and exits 1, so scripts
and ``--watch`` users see that the daemon is down; ``clocks status`` reads sysfs, because
jetson_clocks refuses ``--show`` without root). Exit statuses are listed in ``--help``
(:data:`EXIT_CODES`). ``--root``/``EDGED_SYSROOT`` point every /proc, /sys and /etc read at a
fake tree; ``--nvpmodel`` picks another nvpmodel binary (both refused under sudo, above, and
hidden from ``--help`` with ``--profiles``: they are for tests and bring-up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edged.config.yamlsrc import ConfigError
from edged.control import status_view
from edged.control.cli_support import _config, _emit, _sudo_overrides
from edged.control.client import ControlClient, ControlError, DaemonUnavailable
from edged.control.power_commands import _header, cmd_power_clocks, cmd_power_get, cmd_power_list, cmd_power_set
from edged.power.context import PowerContext, open_power
from edged.power.telemetry import TelemetrySampler
from edged.service.console import guarded


def status_data(ctx: PowerContext) -> tuple[dict, int]:
    """Everything ``status`` shows, and its exit status (0 the daemon answered, 1 it did not, 4 refused)."""
    code = 0
    try:
        daemon = {
            "running": True,
            **ControlClient(ctx.config.control_socket, ctx.config.control_timeout_s).call("status"),
        }
    except DaemonUnavailable as exc:
        daemon, code = {"running": False, "reason": str(exc)}, 1
    except ControlError as exc:
        daemon, code = {"running": None, "reason": str(exc)}, 4 if exc.code == "forbidden" else 1
    mode = ctx.current_mode()
    sample = TelemetrySampler(ctx.platform.root, mode_provider=lambda: mode).sample()
    data = {
        "daemon": daemon,
        "platform": ctx.platform.as_dict(),
        "module": ctx.profile.module if ctx.profile else None,
        "power_mode": mode,
        "telemetry": sample,
    }
    return data, code


def cmd_status(args: argparse.Namespace, ctx: PowerContext) -> int:
    platform = _header(ctx) if ctx.platform.is_jetson else f"generic Linux ({ctx.platform.machine})"
    if args.watch is None:
        data, code = status_data(ctx)
        _emit(args, data, status_view.render(data, platform))
        return code
    clear = sys.stdout.isatty() and not args.json
    try:
        while True:
            data, code = status_data(ctx)
            if args.json:
                print(json.dumps(data, default=str), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S")
                head = f"edgectl status --watch {args.watch:g} (every {args.watch:g} s; Ctrl-C ends) {stamp}"
                print(("\x1b[H\x1b[2J" if clear else "") + head + "\n" + status_view.render(data, platform) +
                      ("" if clear else "\n"), flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:  # the way a watch ends
        return 0


EXIT_CODES = """exit status:
  0  done (status: the daemon answered), or nothing to do
  1  failed (status: the daemon is not running or did not answer)
  2  bad usage, unknown MODE, or an invalid config file
  3  pending reboot: the mode needs one and --reboot was not given (nothing changed)
  4  refused: not root, not allowed on the control socket, or the reboot was not confirmed
  5  no power modes on this host (not a Jetson, or nvpmodel missing)
  130 interrupted (Ctrl-C); 141 the output was closed early (| head)
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument("--config", default=argparse.SUPPRESS, help="edged config file (env EDGED_CONFIG)")
    # Test and bring-up overrides (refused under sudo): not for everyday use, so not in --help.
    common.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--nvpmodel", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--profiles", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="daemon control socket")
    kw = {"epilog": EXIT_CODES, "formatter_class": argparse.RawDescriptionHelpFormatter}
    parser = argparse.ArgumentParser(prog="edgectl", parents=[common], description="Control a running edged.", **kw)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", parents=[common], help="daemon, models, queues, MQTT, power, temperatures",
                            description="What the daemon serves and how it is doing, with power and temperatures.",
                            **kw)
    status.add_argument("--watch", nargs="?", type=_seconds, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    power = sub.add_parser("power", parents=[common], help="nvpmodel power modes", **kw).add_subparsers(
        dest="action", required=True
    )
    power.add_parser("list", parents=[common], help="modes of this module", **kw)
    power.add_parser("get", parents=[common], help="the current mode", **kw)
    setp = power.add_parser("set", parents=[common], help="switch mode (root)", **kw)
    setp.add_argument("mode", help="mode ID, name or alias (max, balanced, eco)")
    setp.add_argument("--reboot", action="store_true", help="reboot now if the mode needs it")
    setp.add_argument("--yes", action="store_true", help="do not ask before rebooting")
    clocks = power.add_parser("clocks", parents=[common], help="jetson_clocks on/off/status", **kw)
    clocks.add_argument("clock_action", nargs="?", choices=("status", "on", "off"), default="status")
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("between 0.1 and 3600 seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed pipe (``| head``) or Ctrl-C ends it without a traceback."""
    return guarded(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> int:
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
