"""What the daemon answers on its control socket (``edgectl`` is the client).

Handlers take a narrow interface, :class:`ControlTarget`, not the daemon: four questions and
three actions, each thread-safe, because handlers run on the control server's threads while
the pipeline runs on its own. Anything a handler needs that is not on this interface is a
change to the interface, made on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from edged import __version__
from edged.control.server import Handler, Peer

log = logging.getLogger("edged.control")


class ControlTarget(Protocol):
    """What control handlers may see and do in a running daemon."""

    def snapshot(self) -> dict:
        """The status payload plus live counters (queues, outbox, health)."""

    def refresh_power_mode(self) -> tuple[dict | None, dict | None]:
        """Re-read the board's mode: ``(old, new)``."""

    def retune(self) -> dict[str, dict]:
        """Apply the current mode's batching to every model; what each model now uses."""

    def emit_event(self, type_: str, reason: str, **fields: object) -> None:
        """Queue an event durably (outbox) and wake the publisher."""

    def republish_status(self) -> None:
        """Send a fresh retained status."""


def control_handlers(target: ControlTarget) -> dict[str, Handler]:
    def status(args: dict, peer: Peer) -> dict:
        return {**target.snapshot(), "version": __version__}

    def power_changed(args: dict, peer: Peer) -> dict:
        """edgectl switched (or tried to); re-read the real mode rather than trusting ``to``."""
        old, new = target.refresh_power_mode()
        batching = target.retune() if (new or {}).get("id") != (old or {}).get("id") else {}
        outcome = str(args.get("outcome", "ok"))
        who = _who(args, peer)
        detail = (f"{who} switched the power mode {_name(args.get('from') or old)} → {_name(args.get('to'))}: "
                  f"{outcome}; running {_name(new)}")
        log.info("%s", detail)
        target.emit_event(
            "power", outcome.replace("-", "_") or "unknown", detail=detail,
            fields={"who": who, "via_sudo": bool(args.get("via_sudo")), "from": old, "to": args.get("to"),
                    "now": new, "outcome": outcome, "reason": args.get("reason"), "batching": batching},
        )
        target.republish_status()
        return {"mode": new, "batching": batching}

    def power_clocks(args: dict, peer: Peer) -> dict:
        """jetson_clocks pins clocks at their maximum: timings change, so gateways should know."""
        who = _who(args, peer)
        on = args.get("on")
        state = "on" if on else "off" if on is False else "unknown"
        detail = f"{who} set jetson_clocks {state}"
        log.info("%s", detail)
        target.emit_event("power", f"clocks_{state}", detail=detail,
                          fields={"who": who, "via_sudo": bool(args.get("via_sudo")), "clocks_pinned": on})
        return {"clocks_pinned": on}

    handlers: dict[str, Callable[[dict, Peer], dict]] = {
        "status": status, "power.changed": power_changed, "power.clocks": power_clocks,
    }
    return handlers


def _who(args: dict, peer: Peer) -> str:
    return str(args.get("who") or peer.user or peer.uid)


def _name(mode: object) -> str:
    if isinstance(mode, dict):
        return f"{mode.get('id')} {mode.get('name') or ''}".strip()
    return str(mode) if mode is not None else "?"
