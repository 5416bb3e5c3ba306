"""What the daemon answers on its control socket (edgectl is the client).

Handlers run on the control server's thread; they only read daemon state or call the same
thread-safe operations the daemon uses itself (batcher retune, outbox insert).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edged import __version__
from edged.mqtt import messages

if TYPE_CHECKING:
    from edged.control import Peer
    from edged.daemon import Daemon

log = logging.getLogger("edged.control")


def control_handlers(daemon: "Daemon") -> dict:
    def status(args: dict, peer: "Peer") -> dict:
        payload = daemon.status_payload("online")
        payload.update({
            "version": __version__,
            "healthy": daemon.pipeline.healthy() if daemon.pipeline else False,
            "spool_pending": len(daemon.spool.pending()),
            "outbox_pending": daemon.outbox.pending_count(),
            "processed": daemon.pipeline.processed if daemon.pipeline else 0,
            "mqtt_connected": bool(daemon.publisher and daemon.publisher.connected.is_set()),
            "dicom_port": daemon.scp.port if daemon.scp else None,
            "batchers": {n: {"queue": m.batcher.depth(), **m.batcher.stats} for n, m in daemon.models.items()},
        })
        return payload

    def power_changed(args: dict, peer: "Peer") -> dict:
        """edgectl switched (or tried to); re-read the real mode rather than trusting ``to``."""
        old, new = daemon.power.refresh_mode()
        batching = daemon.retune() if (new or {}).get("id") != (old or {}).get("id") else {}
        outcome = str(args.get("outcome", "ok"))
        who = str(args.get("who") or peer.user or peer.uid)
        detail = (f"{who} switched the power mode {_name(args.get('from') or old)} → {_name(args.get('to'))}: "
                  f"{outcome}; running {_name(new)}")
        log.info("%s", detail)
        event = messages.event(
            daemon.cfg.node_id, "power", outcome.replace("-", "_") or "unknown", detail=detail,
            fields={"who": who, "via_sudo": bool(args.get("via_sudo")), "from": old, "to": args.get("to"),
                    "now": new, "outcome": outcome, "reason": args.get("reason"), "batching": batching},
        )
        daemon.outbox.add_message(daemon.topics.events, event)
        daemon.wake_publisher()
        if daemon.publisher is not None:
            daemon.publisher.republish_status()
        return {"mode": new, "batching": batching}

    def power_clocks(args: dict, peer: "Peer") -> dict:
        """jetson_clocks pins clocks at their maximum: timings change, so gateways should know."""
        who = str(args.get("who") or peer.user or peer.uid)
        on = args.get("on")
        state = "on" if on else "off" if on is False else "unknown"
        detail = f"{who} set jetson_clocks {state}"
        log.info("%s", detail)
        event = messages.event(daemon.cfg.node_id, "power", f"clocks_{state}", detail=detail,
                               fields={"who": who, "via_sudo": bool(args.get("via_sudo")), "clocks_pinned": on})
        daemon.outbox.add_message(daemon.topics.events, event)
        daemon.wake_publisher()
        return {"clocks_pinned": on}

    return {"status": status, "power.changed": power_changed, "power.clocks": power_clocks}


def _name(mode: object) -> str:
    if isinstance(mode, dict):
        return f"{mode.get('id')} {mode.get('name') or ''}".strip()
    return str(mode) if mode is not None else "?"
