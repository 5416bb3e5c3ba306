"""What a device decides, decided before building: probe facts, timing-cache keys, INT8 on Nano,
GPU means GPU, the DLA loadable budget (per model, per config, in `edged check`, at daemon start
and in `engines build --all`), and the JetPack/GPU table."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import yaml

from edged.backends.tensorrt import platforms
from edged.backends.tensorrt.builder import EngineBuildError
from edged.backends.tensorrt.cli import EnginesContext, ModelBuild, add_engines_parser
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.dla import DlaRequest, budget_problems
from edged.backends.tensorrt.engines import EngineManager
from edged.backends.worker import probe_python
from edged.models.manifest import load_manifest

XAVIER = {"ok": True, "tensorrt": "8.2.1.8", "gpu": {"name": "Xavier", "compute_capability": "7.2",
                                                     "multiprocessors": 8},
          "dla_cores": 2, "model": "NVIDIA Jetson Xavier NX", "compatible": "nvidia,p3668-0001,nvidia,tegra194",
          "nvpmodel_mode": 2}
NANO = dict(XAVIER, gpu={"name": "NVIDIA Tegra X1", "compute_capability": "5.3", "multiprocessors": 1},
            dla_cores=0, compatible="nvidia,p3448-0002,nvidia,tegra210")


def test_probe_reads_dla_cores_from_a_runtime_never_a_builder(doubles_env, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, "
                                                   "EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n")
    (root / "var" / "lib" / "nvpmodel").mkdir(parents=True)
    (root / "var" / "lib" / "nvpmodel" / "status").write_text("pmode:0002 fmode:quiet\n")
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Xavier NX Developer Kit\0")
    record = tmp_path / "calls.jsonl"
    env = doubles_env("8.2", EDGED_TRT_DOUBLE_RECORD=str(record), EDGED_PROBE_ROOT=str(root),
                      EDGED_CUDA_DOUBLE_SMS="6")
    probe = probe_python(sys.executable, env=env)
    names = [json.loads(line)[0] for line in record.read_text().splitlines()]
    assert "Runtime()" in names and "Builder()" not in names, "a Builder costs hundreds of MB on a Nano"
    assert probe["dla_cores"] == 2 and probe["gpu"]["multiprocessors"] == 6
    assert probe["l4t"] == "32.7.1" and probe["nvpmodel_mode"] == 2
    assert probe["model"] == "NVIDIA Jetson Xavier NX Developer Kit"


def test_timing_caches_are_keyed_by_sm_count_and_power_mode(tiny_model, tmp_path):
    cfg = TensorRTConfig(worker_python=sys.executable)
    model = load_manifest(tiny_model)
    path = EngineManager(model, XAVIER, cfg, tmp_path).timing_cache()
    fewer_sms = EngineManager(model, dict(XAVIER, gpu=dict(XAVIER["gpu"], multiprocessors=6)), cfg, tmp_path)
    other_mode = EngineManager(model, dict(XAVIER, nvpmodel_mode=0), cfg, tmp_path)
    assert len({path, fewer_sms.timing_cache(), other_mode.timing_cache()}) == 3
    assert "8sm" in path.name and "mode2" in path.name


def test_int8_is_refused_on_nano_before_anything_is_built(tiny_model, tmp_path):
    cfg = TensorRTConfig(worker_python="/nonexistent/python3")  # a build attempt would fail differently
    manager = EngineManager(load_manifest(tiny_model), NANO, cfg, tmp_path, precision="int8")
    with pytest.raises(EngineBuildError) as info:
        manager.ensure()
    assert info.value.code == "int8" and "Nano" in str(info.value) and "fp16" in str(info.value)


def test_gpu_means_gpu_whatever_the_configs_dla_core(tiny_model, tmp_path):
    cfg = TensorRTConfig(worker_python=sys.executable, dla_core=0)
    model = load_manifest(tiny_model)
    assert EngineManager(model, XAVIER, cfg, tmp_path, dla_core=None).options()[0].dla_core is None
    assert EngineManager(model, XAVIER, cfg, tmp_path).options()[0].dla_core == 0  # default: the config's


def test_one_model_past_the_budget_is_refused_before_building(tiny_model, tmp_path):
    cfg = TensorRTConfig(worker_python="/nonexistent/python3")
    manager = EngineManager(load_manifest(tiny_model), XAVIER, cfg, tmp_path, dla_core=1, max_batch=17)
    with pytest.raises(EngineBuildError) as info:
        manager.ensure()
    assert info.value.code == "dla" and "DLA core 1 would hold 17 loadables" in str(info.value)
    assert "dla_core: 0" in str(info.value) and "max_batch_size" in str(info.value)


def test_budget_counts_subgraphs_once_known():
    assert budget_problems([DlaRequest("a", 0, 8), DlaRequest("b", 0, 8), DlaRequest("c", 1, 16)]) == []
    (problem,) = budget_problems([DlaRequest("a", 0, 8, loadables_per_engine=3)])
    assert "24 loadables" in problem and "3 DLA subgraphs" in problem and "fall back" in problem


def write_config(tmp_path, model_dir, models) -> str:
    cfg = {"state_dir": str(tmp_path / "state"), "cache_dir": str(tmp_path / "cache"),
           "model_repository": str(model_dir.parent), "dicom": {"enabled": False}, "mqtt": {"enabled": False},
           "tensorrt": {"dla_core": 0}, "models": models}
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def dla_models(model_dir) -> list[dict]:
    """Two models (copies of the tiny one named a and b) on the config's DLA core 0: 10 + 8 engines."""
    entries = []
    for name, batch in (("a", 10), ("b", 8)):
        folder = model_dir.parent.parent / "repo" / name
        if not folder.exists():
            folder.mkdir(parents=True)
            for f in model_dir.iterdir():
                (folder / f.name).write_bytes(f.read_bytes())
            manifest = yaml.safe_load((folder / "model.yaml").read_text())
            manifest["name"] = name
            (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
        entries.append({"name": name, "manifest": str(folder / "model.yaml"), "backend": "auto",
                        "batching": {"max_batch_size": batch, "max_queue_delay_ms": 5}})
    return entries


def test_edged_check_adds_up_dla_engines_per_core(model_copy, tmp_path, capsys):
    from edged.cli import main

    path = write_config(tmp_path, model_copy, dla_models(model_copy))
    assert main(["check", "-c", path]) == 2
    err = capsys.readouterr().err
    assert "DLA core 0 would hold 18 loadables (a: 10 engine(s), b: 8 engine(s))" in err
    ok = dla_models(model_copy)
    ok[1]["dla_core"] = 1
    assert main(["check", "-c", write_config(tmp_path, model_copy, ok)]) == 0


def test_daemon_refuses_to_start_past_the_budget(model_copy, tmp_path, plain_env):
    """Exit status 2 (a config error: the unit's RestartPreventExitStatus) before any model loads."""
    import subprocess

    path = write_config(tmp_path, model_copy, dla_models(model_copy))
    proc = subprocess.run([sys.executable, "-m", "edged", "run", "-c", path], capture_output=True, text=True,
                          timeout=120, env=plain_env())
    assert proc.returncode == 2, proc.stderr
    assert "DLA core 0 would hold 18 loadables" in proc.stderr
    assert "loading model" not in proc.stderr


def test_build_all_checks_the_budget_before_building(tiny_model, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="edged")
    sub = parser.add_subparsers(dest="command", required=True)
    models = (ModelBuild(tiny_model / "model.yaml", "fp16", 0, 12), ModelBuild(tiny_model / "model.yaml", "fp16", None, 6))
    cfg = TensorRTConfig(worker_python="/nonexistent/python3", dla_core=0)
    add_engines_parser(sub, context=lambda args: EnginesContext(cfg, tmp_path, models=models))
    args = parser.parse_args(["engines", "build", "--all"])
    assert args.func(args) == 2
    assert "DLA core 0 would hold 18 loadables" in capsys.readouterr().err


def test_jetpack_table_has_the_tensorrt_each_release_ships():
    assert platforms.tensorrt_for("32.6.1") == "8.0.1"  # JetPack 4.6
    assert platforms.tensorrt_for("R32.7.1") == "8.2.1"  # JetPack 4.6.1
    assert platforms.tensorrt_for("35.4.1") == "8.5.2"
    assert platforms.tensorrt_for("36.3") == "8.6.2"  # JetPack 6.0
    assert platforms.tensorrt_for("36.4.0") == "10.3.0"  # JetPack 6.1
    assert platforms.tensorrt_for("31.1") is None
    assert platforms.version_matches("8.2.1.8", "8.2.1") and not platforms.version_matches("8.0.1.6", "8.2.1")
    assert "Nano" in platforms.int8_refusal("5.3") and platforms.int8_refusal("7.2") is None


def test_the_unit_test_config_helper_is_valid(tiny_model, tmp_path):
    """The config written above must be one `edged check` accepts apart from the budget."""
    from edged.config.loader import load_config

    cfg = load_config(write_config(tmp_path, tiny_model, [{"name": "chexnet-tiny",
                                                           "manifest": str(tiny_model / "model.yaml")}]), [])
    assert cfg.tensorrt.dla_core == 0 and cfg.models[0].name == "chexnet-tiny"


def test_budget_is_checked_again_with_the_inspectors_subgraph_count(tiny_model, tmp_path, doubles_env):
    """6 engines pass the first check (one loadable each); built, each holds 3 DLA subgraphs: 18."""
    network = {"inputs": [["image", [-1, 3, 64, 64]]], "outputs": [["logits", [-1, 14]]],
               "layers": [["c0", "Conv"], ["r0", "Reshape"], ["c1", "Conv"], ["r1", "Reshape"], ["c2", "Conv"]]}
    env = doubles_env("8.5", EDGED_TRT_DOUBLE_NETWORK=json.dumps(network))
    probe = probe_python(sys.executable, env=env)
    cfg = TensorRTConfig(worker_python=sys.executable)
    manager = EngineManager(load_manifest(tiny_model), probe, cfg, tmp_path, precision="fp16", dla_core=0,
                            max_batch=6, env=env)
    with pytest.raises(EngineBuildError) as info:
        manager.ensure()
    assert "DLA core 0 would hold 18 loadables (chexnet-tiny: 6 engine(s) x 3 DLA subgraphs)" in str(info.value)
