"""``edged selftest``: the report a technician sends back, here (everything skipped that needs a
device, with the reason) and against the TensorRT/pycuda doubles (every TensorRT check runs)."""

from __future__ import annotations

import argparse
import json
import sys
import types

import pytest

from edged.backends.tensorrt.cli import EnginesContext, ModelBuild
from edged.backends.tensorrt.config import TensorRTConfig
from edged.selftest import sandbox
from edged.selftest.cli import add_selftest_parser
from edged.selftest.report import Row

FAST = ["--kind", "tiny", "--max-batch", "2", "--repeats", "1"]


def run(argv, env, cache_dir, *, cfg=None, models=(), power=None) -> int:
    parser = argparse.ArgumentParser(prog="edged")
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = cfg or TensorRTConfig(worker_python=sys.executable, restart_backoff_s=0.05)
    add_selftest_parser(sub, context=lambda args: EnginesContext(cfg, cache_dir, env=env, models=models, power=power))
    args = parser.parse_args(argv)
    return args.func(args)


def rows_of(path) -> dict[str, dict]:
    report = json.loads(path.read_text())
    assert report["schema"] == "edged.selftest/v1"
    for r in report["rows"]:
        assert set(r) == {"group", "target", "status", "note", "data"} and r["status"] in ("PASS", "FAIL", "SKIP")
        assert r["status"] != "SKIP" or r["note"], f"a SKIP must say why: {r}"
    return {f"{r['group']}/{r['target']}": r for r in report["rows"]}


def test_help_lists_every_check(capsys):
    from edged.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["selftest", "--help"])
    out = capsys.readouterr().out
    for check in ("probe", "int8 build twice", "DLA placement", "all DLA engines loaded", "foreign/corrupt plan",
                  "worker killed mid-batch", "tensorrt as the service user", "--switch-modes", "power:"):
        assert check in out, check


def test_without_a_device_every_skip_says_why(tmp_path, plain_env, capsys):
    report = tmp_path / "selftest.json"
    assert run(["selftest", *FAST, "--json", str(report)], plain_env(), tmp_path) == 0
    out = capsys.readouterr().out
    assert "SKIP" in out and "selftest: passed" in out and "skipped" in out
    rows = rows_of(report)
    worker = rows["tensorrt/onnxruntime via worker"]
    assert worker["status"] == "PASS" and worker["data"]["max_abs_diff"] <= 1e-5
    assert set(worker["data"]["timings"]) == {"1", "2"}
    for target in ("probe", "fp32 GPU / fp16 GPU", "int8 build twice", "DLA placement", "all DLA engines loaded",
                   "foreign/corrupt plan"):
        assert rows[f"tensorrt/{target}"]["status"] == "SKIP"
    assert "cannot import tensorrt" in rows["tensorrt/probe"]["note"]
    assert "unavailable here (see probe)" in rows["tensorrt/int8 build twice"]["note"]
    kill = rows["tensorrt/worker killed mid-batch"]  # needs no GPU: runs on the ONNX Runtime worker
    assert kill["status"] == "PASS" and kill["data"]["pid_before"] != kill["data"]["pid_after"]
    assert "SIGKILL" in kill["note"]
    assert rows["sandbox/tensorrt as the service user"]["status"] == "SKIP"
    assert set(rows) >= {"power/power checks"} or any(k.startswith("power/") for k in rows)
    assert run(["selftest", *FAST, "--json", str(report), "--require-tensorrt", "--only", "tensorrt"],
               plain_env(), tmp_path) == 1


def test_on_a_device_every_tensorrt_check_runs(tmp_path, doubles_env, capsys):
    """Xavier-like double with two DLA cores; the config names DLA core 0 as the default, and the
    GPU rows must still run on the GPU (they fell back to the config's DLA core before)."""
    report = tmp_path / "selftest.json"
    cfg = TensorRTConfig(worker_python=sys.executable, restart_backoff_s=0.05, dla_core=0)
    version = "8.2"  # JetPack 4.6.1: bindings API, no progress monitor, aborting trampolines
    env = doubles_env(version, EDGED_TRT_DOUBLE_DLA_STATE=str(tmp_path / "dla"))
    assert run(["selftest", *FAST, "--json", str(report), "--only", "tensorrt"], env, tmp_path, cfg=cfg) == 0, \
        capsys.readouterr().out
    rows = rows_of(report)
    for target in ("probe", "fp32 GPU", "fp16 GPU", "fp16 DLA0", "fp16 DLA1", "int8 build twice", "DLA placement",
                   "all DLA engines loaded", "foreign/corrupt plan", "worker killed mid-batch"):
        assert rows[f"tensorrt/{target}"]["status"] == "PASS", rows[f"tensorrt/{target}"]
    assert rows["tensorrt/fp32 GPU"]["data"]["device"] == "gpu" and rows["tensorrt/fp16 GPU"]["data"]["device"] == "gpu"
    assert rows["tensorrt/fp16 DLA1"]["data"]["device"] == "dla1"
    int8 = rows["tensorrt/int8 build twice"]["data"]
    assert int8["first"]["calibration"]["batches"] > 0 and int8["second"]["calibration"]["reused_cache"]
    assert int8["second"]["timing_cache"]["accepted"] is True
    placement = rows["tensorrt/DLA placement"]["data"]["placement"]
    assert placement["source"] == "inspector" and placement["prediction"]["source"] == "prediction"
    assert rows["tensorrt/all DLA engines loaded"]["data"]["loadables"] == {"0": 2, "1": 2}
    said = rows["tensorrt/foreign/corrupt plan"]["data"]["tensorrt_said"]
    assert "magicTag" in said[0] and "Magic tag does not match" in said[1]
    assert "worker_restarted" in rows["tensorrt/worker killed mid-batch"]["data"]["events"]
    assert rows["tensorrt/probe"]["data"]["tensorrt"].startswith(version)
    assert not list(tmp_path.glob("engines")), "the self-test must not build into the daemon's engine cache"


def checks_for(env, tmp_path, model_dir, *, configured=(), cfg=None):
    """TensorRTChecks on the tiny model, probed under ``env``, for calling single checks."""
    from edged.models.manifest import load_manifest
    from edged.selftest.accuracy import Reference
    from edged.selftest.trt_checks import TensorRTChecks, TrtContext
    from edged.backends.worker import probe_python

    cfg = cfg or TensorRTConfig(worker_python=sys.executable, restart_backoff_s=0.05)
    ref, _ = Reference.make(load_manifest(model_dir), 2, 1)
    checks = TensorRTChecks(TrtContext(cfg, tmp_path, env=env, configured=configured), ref)
    checks.probe = probe_python(sys.executable, env=env)
    return checks


def test_dla_placement_is_only_a_prediction_on_tensorrt_8_0(tiny_model, tmp_path, doubles_env):
    checks = checks_for(doubles_env("8.0"), tmp_path, tiny_model)
    assert checks.accuracy("fp16", 0).status == "PASS"
    row = checks.dla_placement()
    assert row.status == "SKIP" and "no IEngineInspector" in row.note
    assert row.data["placement"]["source"] == "prediction"


def test_nano_refuses_int8_and_has_no_dla(tiny_model, tmp_path, doubles_env):
    checks = checks_for(doubles_env("8.2", EDGED_CUDA_DOUBLE_CC="5.3"), tmp_path, tiny_model)
    assert checks.probe["dla_cores"] == 0 and checks.probe["gpu"]["compute_capability"] == "5.3"
    row = checks.int8_twice()
    assert row.status == "SKIP" and "no fast INT8" in row.note and "Nano" in row.note
    assert checks.dla_placement().status == "SKIP" and checks.dla_all_loaded().status == "SKIP"


def test_configured_dla_models_over_the_loadable_budget_fail_with_what_to_change(model_copy, tmp_path, doubles_env):
    models = (ModelBuild(model_copy / "model.yaml", "fp16", 0, 12), ModelBuild(model_copy / "model.yaml", "fp16", 0, 8))
    checks = checks_for(doubles_env("8.5"), tmp_path, model_copy, configured=models)
    row = checks.dla_all_loaded()
    assert row.status == "FAIL" and "DLA core 0 would hold 20 loadables" in row.note
    assert "max_batch_size" in row.note and "dla_core: 1" in row.note


def test_power_rows_slot_in_and_mode_switching_needs_consent(tmp_path, plain_env, monkeypatch):
    """edged.power.checks is delivered separately; its rows join the report as they are."""
    seen = {}

    def power_checks(cfg, *, switch_modes=False, service_user=None):
        seen.update(cfg=cfg, switch_modes=switch_modes, service_user=service_user)
        return [{"group": "power", "target": "nvpmodel -q as root", "status": "PASS", "note": "mode 2", "data": {"id": 2}},
                {"group": "power", "target": "mode switches", "status": "SKIP" if not switch_modes else "PASS",
                 "note": "no --switch-modes", "data": {}}]

    module = types.ModuleType("edged.power.checks")
    module.power_checks = power_checks
    module.CHECKS = [("nvpmodel -q as root", "the current mode")]
    monkeypatch.setitem(sys.modules, "edged.power.checks", module)
    report = tmp_path / "selftest.json"
    assert run(["selftest", *FAST, "--json", str(report), "--only", "power"], plain_env(), tmp_path) == 0
    rows = rows_of(report)
    assert rows["power/nvpmodel -q as root"]["data"] == {"id": 2} and seen["switch_modes"] is False
    assert run(["selftest", *FAST, "--json", str(report), "--only", "power", "--switch-modes"], plain_env(),
               tmp_path) == 0
    assert seen["switch_modes"] is True and rows_of(report)["power/mode switches"]["status"] == "PASS"
    from edged.power.config import PowerConfig

    assert isinstance(seen["cfg"], PowerConfig)

    def broken(cfg, **kw):
        raise RuntimeError("nvpmodel vanished")

    module.power_checks = broken
    assert run(["selftest", *FAST, "--json", str(report), "--only", "power"], plain_env(), tmp_path) == 1
    assert "nvpmodel vanished" in rows_of(report)["power/power checks"]["note"]


def test_rows_from_elsewhere_are_checked():
    with pytest.raises(ValueError):
        Row.of({"target": "x", "status": "OK"})
    assert Row.of({"target": "x", "status": "SKIP", "note": "why"}, "power").group == "power"


def test_sandbox_takes_the_units_hardening_but_not_what_would_hurt_the_daemon():
    props, left = sandbox.plan(sandbox.service_settings([sandbox.REPO_UNIT]))
    keys = [k for k, _ in props]
    assert {"ProtectSystem", "DevicePolicy", "SystemCallFilter", "SupplementaryGroups", "CapabilityBoundingSet"} <= set(keys)
    assert ("DeviceAllow", "/dev/nvhost-ctrl-nvdla0 rw") in props and keys.count("SystemCallFilter") == 3
    assert "RuntimeDirectory" in left and "ExecStart" in left and "Type" in left and "WatchdogSec" in left
    env = dict(props)["Environment"]
    assert "CUDA_CACHE_PATH=/var/cache/edged/cuda" in env and "%" not in env
    cmd = sandbox.command(props, "edged", ["--only", "tensorrt"])
    assert cmd[:5] == ["systemd-run", "--quiet", "--pipe", "--wait", "--collect"] and "--uid=edged" in cmd
    assert "-p" in cmd and "CapabilityBoundingSet=" in cmd and cmd[-3:] == ["selftest", "--only", "tensorrt"]


def test_sandbox_skips_with_the_reason(monkeypatch):
    monkeypatch.delenv(sandbox.SANDBOXED_ENV, raising=False)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    assert "needs root" in sandbox.skip_reason("edged")
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox.Path, "is_dir", lambda self: False)
    assert "PID 1 is not systemd" in sandbox.skip_reason("edged")
    monkeypatch.setattr(sandbox.Path, "is_dir", lambda self: True)
    assert "does not exist" in sandbox.skip_reason("no-such-user-edged")
    monkeypatch.setenv(sandbox.SANDBOXED_ENV, "1")
    assert sandbox.skip_reason("root") == "this is the sandboxed run"
