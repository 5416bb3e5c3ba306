"""Control of a running daemon over a local socket: the server (daemon side), the handlers
that answer it through a narrow interface, the client, and ``edgectl`` built on the client."""

from edged.control.client import ControlClient, ControlError, DaemonUnavailable
from edged.control.server import ControlServer, Peer, authorize

__all__ = ["ControlClient", "ControlError", "ControlServer", "DaemonUnavailable", "Peer", "authorize"]
