"""``edgectl status`` for people: what the daemon serves and how it is doing, in plain lines.

The data is what ``--json`` prints (the daemon's ``status`` answer, the platform, the power mode
and a telemetry sample); this module only words it. No Python reprs reach the screen: every
value is formatted on purpose, and absent facts say why.
"""

from __future__ import annotations


def _num(value: object, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "?"
    return f"{float(value):.{digits}f}{unit}" if isinstance(value, (int, float)) else str(value)


def _daemon_lines(d: dict) -> list[str]:
    if not d.get("running"):
        return [f"daemon: not running — {d.get('reason', 'no answer')}"]
    health = "healthy" if d.get("healthy") else "UNHEALTHY (a pipeline part died or a backend call hung)"
    lines = [f"daemon: edged {d.get('version', '?')} on node {d.get('node', '?')}, {health}"]
    if d.get("degraded"):
        lines.append(f"  degraded: {d['degraded']}")
    batchers = d.get("batchers") or {}
    lines.append("models:" if d.get("models") or d.get("unavailable") else "models: none served")
    for m in d.get("models") or []:
        if not isinstance(m, dict):  # an older daemon listed names only
            lines.append(f"  {m}")
            continue
        b = batchers.get(m.get("name"), {})
        clinical = "" if m.get("clinical") else ", NOT clinical"
        lines.append(
            f"  {m.get('name')} {m.get('version')}: {m.get('backend')}/{m.get('precision')} on {m.get('device')}"
            f"{clinical}; batch up to {m.get('max_batch_size')}; queue {b.get('queue', 0)}; "
            f"{b.get('requests', 0)} inferred in {b.get('batches', 0)} batches, {b.get('failed', 0)} failed")
    for u in d.get("unavailable") or []:
        lines.append(f"  {u.get('name')}: NOT SERVED — {u.get('reason')}")
    dicom = f"AE {d['dicom_ae']} on port {d['dicom_port']}" if d.get("dicom_port") else "listener off"
    lines.append(f"dicom: {dicom}")
    lines.append(f"queues: spool {d.get('spool_pending', 0)} waiting, {d.get('quarantined', 0)} quarantined; "
                 f"outbox {d.get('outbox_pending', 0)} unsent; {d.get('processed', 0)} images done since start")
    sr = d.get("sr_outbox")
    if sr:
        lines.append(f"dicom sr: {sr.get('pending', 0)} waiting for the PACS, {sr.get('delivered', 0)} delivered, "
                     f"{sr.get('failed', 0)} failed")
    broker = f" to {d['mqtt_broker']}" if d.get("mqtt_broker") else ""
    lines.append("mqtt: " + (f"connected{broker}" if d.get("mqtt_connected") else f"NOT connected{broker}"))
    return lines


def render(data: dict, platform_line: str) -> str:
    """The human form of ``edgectl status --json``."""
    lines = _daemon_lines(data["daemon"])
    lines.append(f"platform: {platform_line}")
    mode = data.get("power_mode")
    lines.append("power mode: " + (f"{mode['id']} {mode['name']}" if mode else "none on this host"))
    sample = data.get("telemetry") or {}
    power = sample.get("power")
    if power and power.get("total_mw") is not None:
        summed = ", sum of rails" if power.get("total_is_sum") else ""
        lines.append(f"power: {_num(power['total_mw'], ' mW')} ({power.get('source')}{summed})")
    else:
        lines.append("power: unavailable")
    thermal = sample.get("thermal_c") or {}
    if thermal:
        hottest = sorted(thermal.items(), key=lambda kv: -kv[1])
        lines.append("temperatures: " + ", ".join(f"{zone} {_num(t, ' C', 1)}" for zone, t in hottest))
    else:
        lines.append("temperatures: none readable")
    for section, why in (sample.get("unavailable") or {}).items():
        lines.append(f"  ({section} unavailable: {why})")
    return "\n".join(lines)
