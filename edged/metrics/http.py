"""``/metrics``, ``/health/live`` and ``/health/ready`` on 127.0.0.1 only.

It binds to loopback unconditionally: the device's network is a clinical site's, and metrics
leave the box through a local agent or an SSH tunnel, never an open port.

The health URLs have Triton's semantics (``/v2/health/live`` and ``/v2/health/ready``):

* **live**: the process answers and is not hung — 200 while models load, 503 once the
  pipeline, the result writer or the publisher has died or a backend call has hung (the same
  question the systemd watchdog asks).
* **ready**: it can take work — 200 only when the DICOM listener is serving (where enabled)
  and *every* configured model is loaded; 503 while loading, while stopping, and for as long
  as any model failed to load (the daemon serves the others, but it is not what was configured).

Both answer a small JSON object saying why, so ``curl`` shows the reason without the logs.
Scrapes never trigger work beyond reading counters: ``/metrics`` is rendered by
``prometheus_client`` from the daemon's registry (OpenMetrics when the scraper asks for it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Probe = Callable[[], tuple[bool, str]]


class MetricsServer:
    """Serve ``registry`` and the two health probes on ``127.0.0.1:port`` (``port=0``: a free port)."""

    def __init__(self, registry: CollectorRegistry, port: int, live: Probe, ready: Probe):
        self.registry, self.requested_port = registry, port
        self.live, self.ready = live, ready
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> MetricsServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    try:
                        self._send(200, content_type, encoder(server.registry))
                    except Exception as exc:  # a collector bug must not kill the endpoint
                        self._send(500, "text/plain; charset=utf-8", f"# metrics failed: {exc}\n".encode())
                elif path in ("/health/live", "/health/ready"):
                    probe = server.live if path.endswith("live") else server.ready
                    try:
                        ok, why = probe()
                    except Exception as exc:
                        ok, why = False, f"health check failed: {exc}"
                    body = json.dumps({"status": "ok" if ok else "unavailable", "reason": why}).encode() + b"\n"
                    self._send(200 if ok else 503, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found: /metrics, /health/live, /health/ready\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds would flood the journal
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="edged-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
