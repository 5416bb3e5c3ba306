"""Power inside the daemon: the current mode, batching per mode, telemetry and energy.

The daemon never switches modes itself (it does not run as root); edgectl switches and then
tells it over the control socket, and :meth:`PowerRuntime.refresh_mode` re-reads what the
board really runs. Telemetry is volatile (a stale temperature is worth nothing), so it is
offered to the publisher, not written to the outbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from edged.models.manifest import BatchingSpec
from edged.mqtt import messages
from edged.power.config import PowerConfig, TelemetryConfig
from edged.power.context import PowerContext, open_power
from edged.power.accounting import EnergyAccounting
from edged.power.energy import EnergyMeter
from edged.power.table import effective_batching
from edged.power.telemetry import TelemetrySampler
from edged.power.tuned import TunedOverrides

log = logging.getLogger("edged.power")


class PowerRuntime:
    def __init__(self, power: PowerConfig, telemetry: TelemetryConfig, tuned: TunedOverrides | None = None):
        self.power_cfg, self.telemetry_cfg = power, telemetry
        self.tuned = tuned  # edged tune's measured values; they win over the profile's for what they cover
        self.ctx: PowerContext = open_power(power)
        self.mode: dict | None = self.ctx.current_mode()
        self.sampler = TelemetrySampler(power.sysroot, mode_provider=lambda: self.mode)
        self.meter = EnergyMeter(self.sampler.power_source, interval_s=telemetry.energy_interval_s,
                                 max_wait_s=telemetry.energy_max_wait_s)
        self.last_sample: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.accounting = EnergyAccounting(self.meter)
        reason = self.ctx.unavailable_reason()
        source = self.sampler.power_source
        why = "; ".join(f"{k}: {v}" for k, v in (self.sampler.power_unavailable or {}).items()) or "none found"
        log.info("power: %s; mode %s; power source %s", self.ctx.platform.as_dict().get("model") or "generic Linux",
                 f"{self.mode['id']} {self.mode['name']}" if self.mode else "none",
                 getattr(source, "name", "unnamed") if source else f"unavailable ({why})")
        if self.meter.available:
            log.info("energy: sampling every %.0f ms (source refresh %s), a result waits up to %.1f s for the "
                     "sample that closes its window", self.meter.interval_s * 1000,
                     f"{self.meter.refresh_s * 1000:.0f} ms" if self.meter.refresh_s else "unknown",
                     self.meter.max_wait_s)
        if reason:
            log.info("power modes unavailable: %s", reason)
        for warning in self.ctx.warnings:
            log.warning("power: %s", warning)

    # -- batching per mode ---------------------------------------------------------------
    def batching(self, spec: BatchingSpec, model: str | None = None, sha256: str | None = None) -> BatchingSpec:
        """``spec`` under the current mode: ``edged tune``'s values for ``model`` where the tuned
        file covers this mode and was measured with this ONNX (``sha256``), else the profile's
        (the manifest's own where there are no modes). Logs where the values came from."""
        stale = self.tuned.stale(model, sha256) if self.tuned is not None and model else None
        if stale:
            log.warning("batching of %s: %s", model, stale)
        spec, source = self.batching_source(spec, model, sha256)
        log.info("batching%s: max_batch_size %d, max_queue_delay_ms %g (%s)", f" of {model}" if model else "",
                 spec.max_batch_size, spec.max_queue_delay_ms, source)
        return spec

    def batching_source(self, spec: BatchingSpec, model: str | None = None,
                        sha256: str | None = None) -> tuple[BatchingSpec, str]:
        mode_id = self.mode["id"] if self.mode else None
        tuned = self.tuned.apply(model, mode_id, spec, sha256) if self.tuned is not None and model else None
        if tuned is not None:
            return tuned
        settings = self.ctx.batching_for(mode_id) if mode_id is not None else None
        if settings is not None:
            module = self.ctx.profile.module if self.ctx.profile else "fallback"
            return effective_batching(spec, settings), f"power profile {module} mode {mode_id}"
        return spec, "model manifest or config (no power mode, no tuned value)"

    def refresh_mode(self) -> tuple[dict | None, dict | None]:
        old, self.mode = self.mode, self.ctx.current_mode()
        return old, self.mode

    # -- telemetry -----------------------------------------------------------------------
    def start(self, node: str, offer: Callable[[dict], None] | None) -> None:
        """Start energy metering and — when there is somewhere to ``offer`` samples (MQTT) or
        ``/metrics`` serves them (:attr:`last_sample`) — periodic telemetry."""
        if self.meter.available:
            self.meter.start()
        if self.telemetry_cfg.prometheus.enabled and offer is None:  # no MQTT: /metrics needs fresh samples
            offer = lambda sample: None  # noqa: E731
        if self.telemetry_cfg.enabled and offer is not None:
            self._thread = threading.Thread(target=self._run, args=(node, offer), name="telemetry", daemon=True)
            self._thread.start()

    def telemetry(self, node: str) -> dict:
        sample = self.sampler.sample()
        images, per_image_mj = self.accounting.take()
        self.last_sample = messages.telemetry(node, sample, images, per_image_mj, self.accounting.scope())
        return self.last_sample

    def _run(self, node: str, offer: Callable[[dict], None]) -> None:
        while not self._stop.is_set():
            try:
                offer(self.telemetry(node))
            except Exception:
                log.exception("telemetry sample failed")
            self._stop.wait(self.telemetry_cfg.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self.meter.stop()
