"""``edged``: run the daemon, check a config, run the demo, export results, prepare an image.

Heavy modules (numpy, ONNX Runtime, pydicom, OpenCV) are imported by the commands that use
them, never at parse time: ``edged --version`` and ``edged check`` run in a fraction of a second
on a Nano and work where those libraries do not (tests/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edged import __version__
from edged.config.loader import ConfigError, load_config, load_config_notes


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted key, e.g. --set dicom.port=11113 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="Inference daemon for NVIDIA Jetson.")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file and the model manifests it names")
    _config_args(p)
    p.add_argument("--root", type=Path, help="check a config of an image: resolve its absolute paths under "
                   "ROOT (default: inferred when the file is ROOT/etc/edged/edged.yaml)")
    p.add_argument("--connect", action="store_true", help="also connect to the MQTT broker with the configured "
                   "credentials and TLS")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="loopback demo: broker, daemon, one chest radiograph over C-STORE")
    p.add_argument("--broker", metavar="HOST:PORT", help="use this broker instead of starting mosquitto")
    p.add_argument("--file", type=Path, help="DICOM file to send (default: pydicom-data's RG1_UNCR.dcm)")
    p.add_argument("--camera", action="store_true", help="camera demo instead: an RTSP server it starts (or a test "
                   "pattern) and a still picture, CenterFace, detections printed as they arrive over MQTT")
    p.add_argument("--seconds", type=float, default=20.0, help="--camera: how long to show detections")
    p.set_defaults(func=cmd_demo)

    from edged.outbox.export import add_parsers as add_export_parsers

    add_export_parsers(sub, _config_args)  # export-results, pseudonym

    from edged.tune.cli import add_tune_parser

    add_tune_parser(sub, _config_args)

    from edged.backends.tensorrt.cli import add_engines_parser
    from edged.selftest.cli import add_selftest_parser
    from edged.service.install import add_install_parser
    from edged.service.wheelhouse import add_wheelhouse_parser

    add_engines_parser(sub, engines_context)
    add_selftest_parser(sub, engines_context)
    add_install_parser(sub)
    add_wheelhouse_parser(sub)
    return parser


def engines_context(args: argparse.Namespace):
    """TensorRT settings, cache dir and models from the main config for ``engines``/``selftest``."""
    from edged.backends.tensorrt.cli import EnginesContext, ModelBuild
    from edged.preprocess.files import preprocess_file

    cfg = load_config(args.config, args.sets)
    trt = cfg.tensorrt
    if getattr(args, "worker_python", None):
        trt = trt.model_copy(update={"worker_python": args.worker_python})
    models = tuple(
        ModelBuild(cfg.manifest_path(e), e.precision, e.dla_core, e.batching.max_batch_size if e.batching else None)
        for e in cfg.models if e.backend != "onnxruntime"
    )
    return EnginesContext(trt, args.cache_dir or cfg.cache_dir, preprocess_for=preprocess_file, models=models,
                          power=cfg.power, config=cfg)


def main(argv: list[str] | None = None) -> int:
    from edged.service.console import (
        guarded,  # a closed pipe or Ctrl-C: an exit status, no traceback
    )

    return guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2


def cmd_run(args: argparse.Namespace) -> int:
    from edged.config.check import preflight
    from edged.daemon import Daemon, NoModelServed
    from edged.service.logsetup import setup_logging

    cfg = load_config(args.config, args.sets)
    setup_logging(cfg.log_level)  # syslog priority prefixes under systemd, timestamps otherwise
    problems = preflight(cfg)  # what edged check finds in directories and credential/TLS files
    if problems:
        raise ConfigError(problems)
    try:
        return Daemon(cfg).run()
    except NoModelServed as exc:  # a configuration to fix: exit 2 stops systemd's restart loop
        logging.getLogger("edged").error("cannot start: %s", exc)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:  # port in use, unwritable state dir…
        log = logging.getLogger("edged")
        log.error("cannot start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1


def cmd_check(args: argparse.Namespace) -> int:
    from edged.config.check import report

    root = args.root or image_root(args.config)
    cfg, notes = load_config_notes(args.config, args.sets, root)
    return report(cfg, str(args.config or "defaults"), root, args.connect, notes)


def image_root(config: Path | None) -> Path | None:
    """``R`` when ``config`` is ``R/etc/edged/edged.yaml`` for some R other than ``/``: a config
    inside a rootfs being prepared for flashing, whose paths are the device's."""
    if config is None:
        return None
    path = config.resolve()
    if path.parts[-3:] != ("etc", "edged", "edged.yaml"):
        return None
    root = path.parents[2]
    return None if root == Path("/") else root


def cmd_demo(args: argparse.Namespace) -> int:
    if args.camera:
        from edged.demo_camera import run_camera_demo

        return run_camera_demo(broker=args.broker, seconds=args.seconds)
    from edged.demo import run_demo

    return run_demo(broker=args.broker, dicom_file=args.file)


if __name__ == "__main__":
    raise SystemExit(main())
