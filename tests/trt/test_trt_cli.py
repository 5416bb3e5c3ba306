"""``edged engines ...`` and ``edged selftest`` through their argparse entry points."""

from __future__ import annotations

import argparse
import json
import sys

from edged.backends.tensorrt.cli import EnginesContext, add_engines_parser
from edged.backends.tensorrt.config import TensorRTConfig
from edged.selftest.cli import add_selftest_parser


def run(argv: list[str], env: dict, cache_dir) -> int:
    parser = argparse.ArgumentParser(prog="edged")
    sub = parser.add_subparsers(dest="command", required=True)
    ctx = lambda args: EnginesContext(TensorRTConfig(worker_python=sys.executable), cache_dir, env=env)  # noqa: E731
    add_engines_parser(sub, context=ctx)
    add_selftest_parser(sub, context=ctx)
    args = parser.parse_args(argv)
    return args.func(args)


def test_engines_build_without_tensorrt_explains_and_fails(model_copy, tmp_path, plain_env, capsys):
    assert run(["engines", "build", str(model_copy)], plain_env(), tmp_path) == 2
    err = capsys.readouterr().err
    assert "cannot build TensorRT engines here" in err and "cannot import tensorrt" in err
    assert "worker_python" in err


def test_engines_build_list_verify_prune(model_copy, tmp_path, doubles_env, capsys):
    env = doubles_env("8.5")
    assert run(["engines", "build", str(model_copy), "--max-batch", "2"], env, tmp_path) == 0
    out = capsys.readouterr().out
    assert "built  " in out and "accuracy gate passed" in out
    assert run(["engines", "build", str(model_copy), "--max-batch", "2"], env, tmp_path) == 0
    assert "cached " in capsys.readouterr().out

    assert run(["engines", "list", "--json"], env, tmp_path) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["key"]["trt_version"] == "8.5.2.2" and entry["key"]["batch"] == [1, 2, 2]

    assert run(["engines", "verify", "--load"], env, tmp_path) == 0
    assert capsys.readouterr().out.startswith("OK")
    engine = tmp_path / "engines" / entry["engine"]
    engine.write_bytes(engine.read_bytes()[:-1] + b"!")
    assert run(["engines", "verify"], env, tmp_path) == 1
    assert "sha256 differs" in capsys.readouterr().out

    assert run(["engines", "prune", "--dry-run"], env, tmp_path) == 0
    assert "would remove" in capsys.readouterr().out and engine.exists()
    assert run(["engines", "prune"], env, tmp_path) == 0
    assert not engine.exists()
    assert run(["engines", "list"], env, tmp_path) == 0
    assert "no engines" in capsys.readouterr().out


def test_engines_build_reports_parse_or_build_failure(model_copy, tmp_path, doubles_env, capsys):
    env = doubles_env("10.3", EDGED_TRT_DOUBLE_FAIL="build")
    assert run(["engines", "build", str(model_copy)], env, tmp_path) == 1
    assert "build failed: TensorRT could not build the engine" in capsys.readouterr().err


def test_build_all_builds_what_the_config_asks_for(model_copy, tmp_path, doubles_env, capsys):
    """``edged engines build --all`` (the first-boot unit) takes each configured model's precision
    and batch from the config, so the daemon later finds exactly those engines in the cache."""
    from edged.backends.tensorrt.cli import ModelBuild

    def run_all(models) -> int:
        parser = argparse.ArgumentParser(prog="edged")
        sub = parser.add_subparsers(dest="command", required=True)
        ctx = lambda args: EnginesContext(TensorRTConfig(worker_python=sys.executable), tmp_path,  # noqa: E731
                                          env=doubles_env("10.3"), models=models)
        add_engines_parser(sub, context=ctx)
        args = parser.parse_args(["engines", "build", "--all", "--no-gate"])
        return args.func(args)

    assert run_all((ModelBuild(model_copy / "model.yaml", precision="fp32", max_batch=3),)) == 0
    capsys.readouterr()
    assert run(["engines", "list", "--json"], doubles_env("10.3"), tmp_path) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["key"]["precision"] == "fp32" and entry["key"]["batch"][-1] == 3
    assert run_all(()) == 0
    assert "nothing to build" in capsys.readouterr().out


def test_first_boot_build_without_tensorrt_is_a_success_with_a_reason(model_copy, tmp_path, plain_env, capsys):
    """edged-engines.service runs `build --all --skip-without-tensorrt`: on an image without
    TensorRT it must end successfully (not leave the system "degraded" at every boot) and say why."""
    from edged.backends.tensorrt.cli import ModelBuild

    parser = argparse.ArgumentParser(prog="edged")
    sub = parser.add_subparsers(dest="command", required=True)
    ctx = lambda args: EnginesContext(TensorRTConfig(worker_python=sys.executable), tmp_path, env=plain_env(),  # noqa: E731
                                      models=(ModelBuild(model_copy),))
    add_engines_parser(sub, context=ctx)
    args = parser.parse_args(["engines", "build", "--all", "--skip-without-tensorrt"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "nothing to build: TensorRT is unavailable" in out and "cannot import tensorrt" in out
    args = parser.parse_args(["engines", "build", "--all"])
    assert args.func(args) == 2, "without the flag a missing TensorRT is still an error"
