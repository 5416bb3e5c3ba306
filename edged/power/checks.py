"""The power half of ``edged selftest``: what a technician runs once on a new board and sends back.

Each check is a row ``{"group": "power", "target", "status": PASS|FAIL|SKIP, "note", "data"}``;
SKIP always says why (not a Jetson, no nvpmodel, not root, no rails...). What is checked:

* identity — device-tree compatible and model, /etc/nv_tegra_release, the nvpmodel.conf in use
  and the profile it selects; the (ID, name) pairs ``nvpmodel -p --verbose`` reads against the
  live conf and the profile; present CPUs against the conf and the profile;
* ``nvpmodel -q`` as the service user and as root (the daemon reads the mode without root);
* with ``switch_modes`` (explicit consent: it changes the board's mode, one mode after another,
  and returns to the first) every live switch: whether nvpmodel asked for a reboot against
  edged's prediction (a prompt is always declined here), and the CPUs and clocks on the board
  after it (:mod:`edged.power.verify`);
* a jetson_clocks on/off round trip, sysfs status cross-checked with ``jetson_clocks --show``;
* the power rails with their update interval; VDD_IN not below any sub-rail; the energy of
  10 ms, 50 ms and 1 s windows from :class:`EnergyMeter` against an independent integration of
  raw readings taken as fast as the rails can be read.

Nothing here answers a reboot prompt, and the running daemon is not told about switches (stop it,
or let it re-read the mode at its next start).
"""

from __future__ import annotations

import os
import pwd
import time

from edged.power.config import PowerConfig
from edged.power.context import PowerContext, open_power
from edged.power.energy import EnergyMeter
from edged.power.nvpmodel import NvpmodelError
from edged.power.platform import read_text, under
from edged.power.rails import PowerSource, discover_power_source
from edged.power.verify import parse_cpu_list

WINDOWS_S = (0.01, 0.05, 1.0)
# windows shorter than the source's refresh are estimates from the averages around them
TOLERANCE_SHORT, TOLERANCE_LONG = 0.20, 0.10


# What ``edged selftest --help`` lists for the power group (the rows below, in words).
CHECKS = [
    ("identity", "device-tree compatible and model, L4T release, the nvpmodel.conf in use and its profile"),
    ("nvpmodel -p --verbose vs profile", "the (ID, name) pairs nvpmodel reads against the live conf and the profile"),
    ("present CPUs", "CPUs present against the conf and the profile"),
    ("nvpmodel -q as the service user / as root", "the daemon reads the mode without root"),
    ("mode switches (--switch-modes)", "every live switch: reboot prompt against the prediction, CPUs and clocks after"),
    ("jetson_clocks round trip", "on then off, sysfs status cross-checked with jetson_clocks --show"),
    ("power rails", "rails with their update interval; VDD_IN not below any sub-rail"),
    ("energy windows", "10 ms / 50 ms / 1 s windows against an independent integration of raw readings"),
]


def _row(target: str, status: str, note: str, **data: object) -> dict:
    return {"group": "power", "target": target, "status": status, "note": note, "data": data}


def power_checks(cfg: PowerConfig, *, switch_modes: bool = False, service_user: str | None = None) -> list[dict]:
    """Run every power check on this host (``cfg.sysroot`` for a fake tree); never raises."""
    ctx = open_power(cfg)
    rows = _identity(ctx)
    rows += _queries(ctx, service_user)
    rows += _switches(ctx) if switch_modes else [
        _row("mode switches", "SKIP", "not requested: --switch-modes changes the board's power mode (explicit consent)")
    ]
    rows.append(_clocks_round_trip(ctx))
    rows += _rails_and_energy(ctx)
    return rows


def _is_root() -> bool:
    return os.geteuid() == 0


def _identity(ctx: PowerContext) -> list[dict]:
    p = ctx.platform
    ident = {"compatible": list(p.compatible), "model": p.model, "soc": p.soc, "parts": list(p.parts),
             "nv_tegra_release": (read_text(under(p.root, "/etc/nv_tegra_release")) or "").strip() or None,
             "l4t": p.l4t, "stack": p.stack, "nvpmodel_conf": str(p.nvpmodel_conf) if p.nvpmodel_conf else None,
             "nvpmodel_conf_name": p.nvpmodel_conf_name,
             "profile": ctx.profile.module if ctx.profile else None, "profile_selected_by": ctx.profile_reason}
    if not p.is_jetson:
        why = f"not a Jetson ({p.machine}): no NVIDIA device tree, /etc/nv_tegra_release or /etc/nvpmodel.conf"
        return [_row("identity", "SKIP", why, **ident),
                _row("nvpmodel -p --verbose vs profile", "SKIP", why),
                _row("present CPUs", "SKIP", why)]
    problems = [w for w in ctx.problems]
    if ctx.profile is None:
        problems.append(ctx.profile_reason)
    status = "FAIL" if problems else "PASS"
    note = "; ".join(problems) or (f"{ctx.profile.title if ctx.profile else '?'}, L4T {p.l4t or '?'} "
                                   f"(JetPack {p.jetpack or '?'}), conf {p.nvpmodel_conf_name or p.nvpmodel_conf}")
    return [_row("identity", status, note, **ident), _parsed_modes(ctx), _present_cpus(ctx)]


def _parsed_modes(ctx: PowerContext) -> dict:
    target = "nvpmodel -p --verbose vs profile"
    if ctx.nvpmodel.path is None:
        return _row(target, "SKIP", f"nvpmodel not found ({ctx.nvpmodel.binary})")
    try:
        parsed = ctx.nvpmodel.parse_conf()
    except NvpmodelError as exc:
        return _row(target, "FAIL", str(exc))
    diffs: list[str] = []
    if ctx.conf is not None and parsed.modes != ctx.conf.names():
        diffs.append(f"edged reads the conf as {ctx.conf.names()}, nvpmodel as {parsed.modes}")
    if ctx.profile is not None:
        for mode_id, spec in ctx.profile.modes.items():
            got = parsed.modes.get(mode_id)
            if got is None and not spec.optional:
                diffs.append(f"profile mode {mode_id} {spec.name} is not in nvpmodel's list")
            elif got is not None and got.upper() != spec.name.upper():
                diffs.append(f"mode {mode_id}: profile {spec.name}, nvpmodel {got}")
        diffs += [f"nvpmodel mode {i} {n} is not in the profile" for i, n in parsed.modes.items()
                  if i not in ctx.profile.modes]
        if parsed.default is not None and parsed.default != ctx.profile.default_mode:
            diffs.append(f"default: profile {ctx.profile.default_mode}, nvpmodel {parsed.default}")
    data = {"nvpmodel": {str(i): n for i, n in parsed.modes.items()}, "default": parsed.default,
            "profile": {str(i): m.name for i, m in ctx.profile.modes.items()} if ctx.profile else None}
    return _row(target, "FAIL" if diffs else "PASS", "; ".join(diffs) or f"{len(parsed.modes)} modes agree", **data)


def _present_cpus(ctx: PowerContext) -> dict:
    present = sorted(parse_cpu_list(read_text(under(ctx.platform.root, "/sys/devices/system/cpu/present")) or ""))
    conf_cores = max((m.cpus_total or 0 for m in ctx.conf.modes.values()), default=0) if ctx.conf else None
    expected = ctx.profile.cpus_total if ctx.profile else None
    data = {"present": len(present), "conf_cores": conf_cores, "profile_cpus_total": expected}
    if not present:
        return _row("present CPUs", "SKIP", "no /sys/devices/system/cpu/present", **data)
    sources = (("the profile", expected), ("the conf", conf_cores))
    bad = [f"{name} says {n}" for name, n in sources if n and n != len(present)]
    note = f"{len(present)} CPUs present" + (", but " + ", ".join(bad) if bad else "")
    return _row("present CPUs", "FAIL" if bad else "PASS", note, **data)


def _queries(ctx: PowerContext, service_user: str | None) -> list[dict]:
    if ctx.nvpmodel.path is None:
        why = f"nvpmodel not found ({ctx.nvpmodel.binary})" if ctx.platform.is_jetson else "not a Jetson: no nvpmodel"
        return [_row("nvpmodel -q as service user", "SKIP", why), _row("nvpmodel -q as root", "SKIP", why)]
    rows = []
    if service_user is None:
        rows.append(_row("nvpmodel -q as service user", "SKIP", "no service user given"))
    elif not _is_root():
        rows.append(_row("nvpmodel -q as service user", "SKIP", "running it as another user needs root"))
    else:
        try:
            pwd.getpwnam(service_user)
        except KeyError:
            rows.append(_row("nvpmodel -q as service user", "FAIL", f"user {service_user} does not exist"))
        else:
            rows.append(_query_row(ctx, f"nvpmodel -q as {service_user}", service_user))
    rows.append(_query_row(ctx, "nvpmodel -q as root", None) if _is_root()
                else _row("nvpmodel -q as root", "SKIP", "not root"))
    return rows


def _query_row(ctx: PowerContext, target: str, user: str | None) -> dict:
    try:
        q = ctx.nvpmodel.query(user=user)
    except (NvpmodelError, OSError) as exc:
        return _row(target, "FAIL", f"{exc}", user=user)
    note = f"mode {q.id} {q.name}" + (f" (with: {'; '.join(q.messages)})" if q.messages else "")
    return _row(target, "PASS", note, id=q.id, name=q.name, messages=list(q.messages), user=user)


def _switches(ctx: PowerContext) -> list[dict]:
    if ctx.table is None or ctx.unavailable_reason():
        return [_row("mode switches", "SKIP", ctx.unavailable_reason() or "no power modes")]
    if not _is_root():
        return [_row("mode switches", "SKIP", "switching modes runs nvpmodel -m and needs root")]
    first = ctx.current_mode()
    if first is None:
        return [_row("mode switches", "FAIL", "the current mode cannot be read")]
    clocks = ctx.clocks()
    was_pinned = clocks.status().on is True
    if was_pinned:
        try:
            clocks.off({"id": first["id"], "name": first["name"]}, ctx.nvpmodel.apply if ctx.nvpmodel.path else None)
        except NvpmodelError:
            pass
    rows, current = [], first["id"]
    for mode_id in [m for m in ctx.table.modes if m != first["id"]] + [first["id"]]:
        rows.append(_switch_row(ctx, current, mode_id))
        now = ctx.current_mode()
        current = now["id"] if now else current
    if was_pinned:
        try:
            clocks.on({"id": current, "name": ctx.table.modes[current].name if current in ctx.table.modes else ""})
        except NvpmodelError as exc:
            rows.append(_row("jetson_clocks after switches", "FAIL", f"could not pin the clocks again: {exc}"))
    return rows


def _switch_row(ctx: PowerContext, current: int, mode_id: int) -> dict:
    assert ctx.table is not None
    mode = ctx.table.modes[mode_id]
    target = f"switch {current} -> {mode_id} {mode.name}"
    prediction = ctx.table.reboot(current, mode_id) if current in ctx.table.modes else None
    result = ctx.nvpmodel.set_mode(mode_id, verifier=ctx.verifier())  # a reboot prompt is declined
    data = {"from": current, "to": mode_id, "outcome": result.outcome, "reboot_prompted": result.reboot_prompted,
            "predicted": prediction.label if prediction else None,
            "prediction_why": prediction.why if prediction else None,
            "verification": result.verification.as_dict() if result.verification else None}
    said = f"predicted reboot {prediction.label if prediction else '?'}, nvpmodel " + (
        "asked for one" if result.reboot_prompted else "did not ask")
    if result.outcome == "unchanged":
        return _row(target, "PASS", "already in this mode", **data)
    if prediction is not None and prediction.needed is not None and prediction.needed != result.reboot_prompted:
        return _row(target, "FAIL", f"{said}: the prediction is wrong for this board ({prediction.why})", **data)
    if result.outcome == "pending_reboot":
        return _row(target, "PASS", f"{said}; not switched (a reboot is never answered here)", **data)
    if result.outcome != "ok":
        return _row(target, "FAIL", f"{said}; {result.outcome}: {result.reason}", **data)
    check = result.verification
    verified = check.summary() if check else "no live conf to verify against"
    return _row(target, "PASS" if check is None or check.ok else "FAIL", f"{said}; {verified}", **data)


def _clocks_round_trip(ctx: PowerContext) -> dict:
    target = "jetson_clocks on/off"
    if not ctx.platform.is_jetson:
        return _row(target, "SKIP", "not a Jetson: no jetson_clocks")
    if not _is_root():
        return _row(target, "SKIP", "jetson_clocks needs root (it refuses even --show)")
    clocks = ctx.clocks()
    current = ctx.current_mode()
    mode = {"id": current["id"], "name": current["name"]} if current else None
    before = clocks.status()
    try:
        on, how_on = clocks.on(mode)
        shown = clocks.show()
        off, how_off = clocks.off(mode, ctx.nvpmodel.apply if ctx.nvpmodel.path else None)
        if before.on:
            clocks.on(mode)
    except NvpmodelError as exc:
        return _row(target, "FAIL", str(exc), before=before.on)
    agree = shown.on == on.on
    ok = on.on is True and off.on is False and agree
    note = f"on: {how_on}; off: {how_off}" + ("" if agree else f"; --show says on={shown.on}, sysfs on={on.on}")
    return _row(target, "PASS" if ok else "FAIL", note, before=before.on, on=on.on, show=shown.on, off=off.on)


def _rails_and_energy(ctx: PowerContext) -> list[dict]:
    source, reasons = discover_power_source(ctx.platform.root)
    if source is None:
        why = "no power source: " + "; ".join(f"{k}: {v}" for k, v in reasons.items())
        return [_row("power rails", "SKIP", why), _row("VDD_IN >= each rail", "SKIP", why),
                _row("energy windows", "SKIP", why)]
    reading = source.read()
    if reading is None:
        return [_row("power rails", "FAIL", f"{source.name} found but gave no reading")]
    refresh = reading.refresh_s
    rails = {r.name: round(r.mw, 1) for r in reading.rails.values()}
    rows = [_row("power rails", "PASS", f"{source.name}: {', '.join(rails)}; updates every "
                 + (f"{refresh * 1000:.0f} ms" if refresh else "? ms (not exposed)"),
                 source=source.name, scope=reading.energy_scope(), rails_mw=rails,
                 refresh_ms=None if refresh is None else round(refresh * 1000, 1))]
    if reading.total_rail and not reading.total_is_sum and reading.total_rail in reading.rails:
        total = reading.rails[reading.total_rail].mw
        above = {n: mw for n, mw in rails.items() if n != reading.total_rail and mw > total}
        rows.append(_row("VDD_IN >= each rail", "FAIL" if above else "PASS",
                         (f"{', '.join(above)} above {reading.total_rail} {total:.0f} mW" if above
                          else f"{reading.total_rail} {total:.0f} mW >= every sub-rail"), total=reading.total_rail))
    else:
        rows.append(_row("VDD_IN >= each rail", "SKIP",
                         f"{source.name} has no input rail here (the total is {reading.scope})"))
    rows.append(_energy_windows(source))
    return rows


def _energy_windows(source: PowerSource, windows: tuple[float, ...] | None = None) -> dict:
    """Meter (centred, interpolated samples) against raw readings integrated as fast as they come."""
    windows = WINDOWS_S if windows is None else windows
    meter = EnergyMeter(source, interval_s=0.01, max_wait_s=max(2.0, 3 * (source.refresh_s or 0.0))).start()
    results, failed = [], []
    try:
        meter.wait_for(time.monotonic() + 0.001)
        for w in windows:
            raw: list[tuple[float, float]] = []
            t0 = time.monotonic()
            while (now := time.monotonic()) < t0 + w:
                reading = source.read()
                if reading is not None and reading.total_mw is not None:
                    raw.append((now, reading.total_mw))
            t1 = time.monotonic()
            metered = meter.wait_energy_mj(t0, t1)
            independent = sum(mw * (b - a) for (a, mw), (b, _) in zip(raw, raw[1:] + [(t1, 0.0)])) if raw else None
            tolerance = TOLERANCE_LONG if source.refresh_s is None or w >= source.refresh_s else TOLERANCE_SHORT
            diff = None if metered is None or not independent else abs(metered - independent) / independent
            results.append({"window_ms": round(w * 1000), "duration_ms": round((t1 - t0) * 1000, 3),
                            "meter_mj": metered, "independent_mj": independent,
                            "raw_reads": len(raw), "rel_diff": diff, "tolerance": tolerance})
            if diff is None or diff > tolerance:
                failed.append(f"{w * 1000:g} ms: meter {metered}, raw {independent}")
    finally:
        meter.stop()
    note = ("; ".join(failed) if failed else
            ", ".join(f"{r['window_ms']} ms {r['meter_mj']:.1f} mJ (raw {r['independent_mj']:.1f})" for r in results))
    return _row("energy windows", "FAIL" if failed else "PASS", note, windows=results, refresh_ms=(
        None if source.refresh_s is None else round(source.refresh_s * 1000, 1)))
