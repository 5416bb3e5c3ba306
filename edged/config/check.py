"""``edged check``: find what ``edged run`` would fail on, before a device is flashed or restarted.

Schema validation (:func:`edged.config.loader.load_config`) catches what a config *says*; this
module checks what it *refers to*, the way the daemon will use it:

* every model: its manifest (with "did you mean" and the models the repository has when the
  name is unknown), the ONNX file and its pinned sha256 (the daemon refuses another digest);
* ``backend: auto|tensorrt``: the worker Python runs and imports TensorRT (a warning off a
  Jetson, where the image's Python is not this host's; an error for ``tensorrt`` on a Jetson);
* ``state_dir``, ``cache_dir`` (and ``tensorrt.engine_dir``): directories this user can create
  and write;
* MQTT credential and TLS files: readable, not empty, and loadable as certificates and keys —
  every message names the file;
* optionally (``--connect``) a real connection to the broker with those credentials and TLS.

:func:`preflight` is the subset ``edged run`` repeats before starting, so the same mistakes are
an exit status 2 there too (``RestartPreventExitStatus=2`` then stops systemd's restart loop).
A check of an image (``root``) reads files under that root and runs nothing from it.
"""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from edged.config.hints import did_you_mean
from edged.config.schema import Config, ModelEntry
from edged.config.yamlsrc import ConfigError


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "info"
    text: str


class Checker:
    def __init__(self, cfg: Config, root: Path | None = None):
        self.cfg, self.root = cfg, root
        self.findings: list[Finding] = []

    def error(self, text: str) -> None:
        self.findings.append(Finding("error", text))

    def warning(self, text: str) -> None:
        self.findings.append(Finding("warning", text))

    def info(self, text: str) -> None:
        self.findings.append(Finding("info", text))

    @property
    def errors(self) -> list[str]:
        return [f.text for f in self.findings if f.level == "error"]

    def here(self, path: Path) -> Path:
        """Where ``path`` of the device is on this host (under ``root`` for an image)."""
        return self.root / path.relative_to("/") if self.root is not None and path.is_absolute() else path

    # -- models ------------------------------------------------------------------------------
    def repository_models(self) -> list[str]:
        repo = self.here(self.cfg.model_repository)
        try:
            return sorted(p.parent.name for p in repo.glob("*/model.yaml"))
        except OSError:
            return []

    def models(self, probe_worker: bool = True) -> None:
        from edged.models.manifest import load_manifest, sha256_file

        available = self.repository_models()
        repo = self.here(self.cfg.model_repository)
        self.info(f"models in the repository {repo}: {', '.join(available) or 'none'}")
        manifests = {}
        for i, entry in enumerate(self.cfg.models):
            path = self.here(self.cfg.manifest_path(entry))
            if entry.manifest is None and not path.exists():
                hint = did_you_mean(entry.name, available)
                self.error(f"models[{i}].name: {entry.name}: no model of that name in {repo}{hint}; "
                           f"the repository has: {', '.join(available) or 'no models'}")
                continue
            try:
                model = load_manifest(path)
            except ConfigError as exc:
                for problem in exc.problems:
                    self.error(problem)
                continue
            manifests[entry.name] = model
            if model.name != entry.name:
                self.error(f"{path}: name: {model.name} but the config lists it as {entry.name}")
            for cam in self.cfg.cameras:  # what `run` refuses when loading the model for cameras
                if entry.name in cam.all_model_names and "camera" not in model.manifest.sources:
                    self.error(f"cameras: {cam.name} names model {entry.name}, whose manifest serves "
                               f"{', '.join(model.manifest.sources)} only (sources: in {path})")
            onnx = model.onnx_path
            if not onnx.exists():
                self.error(f"model {model.name}: {onnx} is missing (python tools/make_models.py generates the "
                           "reference models; copy a trained model there and pin its sha256)")
            else:
                digest = sha256_file(onnx)
                if digest != model.sha256:
                    self.error(f"model {model.name}: {onnx} has sha256 {digest}, but {path} pins {model.sha256} "
                               "(the daemon refuses it: copy the right file, or pin the new digest)")
            if entry.backend != "onnxruntime" and probe_worker:
                self.worker(i, entry)
        self.dla_budget(manifests)
        from edged.sources.camera.secondary_config import secondary_problems

        for problem in secondary_problems(self.cfg.cameras, {k: m.manifest for k, m in manifests.items()}, self.cfg.where):
            self.error(problem)

    def dla_budget(self, manifests: dict) -> None:
        """DLA runs at most 16 loadables per core: the configured models x static batch sizes."""
        from edged.backends.tensorrt.dla import budget_problems, requests_from_config

        for problem in budget_problems(requests_from_config(self.cfg, manifests)):
            self.error(f"models: {problem}")

    def worker(self, i: int, entry: ModelEntry) -> None:
        """The worker Python and its TensorRT import, as backend selection will ask."""
        from edged.backends.tensorrt.engines import trt_available
        from edged.backends.worker import probe_python
        from edged.power.platform import detect_platform

        python = self.cfg.tensorrt.worker_python
        where = f"models[{i}] {entry.name} (backend {entry.backend})"
        if self.root is not None:  # an image: its interpreter is not ours to run
            if not self.here(Path(python)).exists():
                self.warning(f"{where}: tensorrt.worker_python {python} is not in the image under {self.root}")
            return
        on_jetson = detect_platform(self.cfg.power.sysroot).is_jetson
        ok, why = trt_available(probe_python(python, self.cfg.tensorrt.probe_timeout_s))
        if ok:
            self.info(f"{where}: {why}")
            return
        if entry.backend == "tensorrt" and on_jetson:
            self.error(f"{where}: {why}; the daemon will not serve this model (tensorrt.worker_python, or "
                       "backend: auto to fall back to ONNX Runtime)")
        elif entry.backend == "tensorrt":
            self.warning(f"{where}: {why}; this host is not a Jetson, so that is expected here — on a device "
                         "the daemon would not serve this model")
        else:
            self.warning(f"{where}: TensorRT will not be used ({why}); ONNX Runtime serves the model"
                         + ("" if on_jetson else " (this host is not a Jetson)"))

    def dicom(self) -> None:
        """The DICOM transport patches pynetdicom in version-guarded ways: an unknown version is an error."""
        if not self.cfg.dicom.enabled:
            return
        from edged.sources.dicom.versions import UnsupportedPynetdicom, check_pynetdicom

        try:
            check_pynetdicom()
        except UnsupportedPynetdicom as exc:
            self.error(f"dicom: {exc}")

    # -- directories and files -------------------------------------------------------------------
    def directories(self) -> None:
        dirs = [("state_dir", self.cfg.state_dir), ("cache_dir", self.cfg.cache_dir)]
        if self.cfg.tensorrt.engine_dir is not None:
            dirs.append(("tensorrt.engine_dir", Path(self.cfg.tensorrt.engine_dir)))
        if self.root is not None:
            return  # created by systemd (StateDirectory=, CacheDirectory=) on the device
        for key, path in dirs:
            problem = unwritable(path)
            if problem:
                self.error(f"{key}: {path}: {problem}")
        if self.cfg.site_key_file is not None:  # provisioned for the site: must exist and load
            from edged.privacy import load_site_key

            try:
                load_site_key(self.here(self.cfg.site_key_file), provisioned=True)
            except (ValueError, OSError) as exc:
                self.error(f"site_key_file: {exc}")
            return
        key = self.cfg.site_key_path
        if key.is_file():  # created at first start; one that exists must be the daemon's secret, unshared
            mode = key.stat().st_mode & 0o777
            if mode & 0o077:
                self.error(f"state_dir: {key}: the site key is readable by group or others (mode {mode:o}); "
                           f"chmod 600 {key}")

    def files(self) -> None:
        for i, cam in enumerate(self.cfg.cameras):
            for key in ("username_file", "password_file"):
                path = getattr(cam, key)
                if path is not None:
                    text = self.read(f"cameras[{i}].{key}", path)
                    if text is not None and not text.strip():
                        self.error(f"cameras[{i}].{key}: {path} is empty")
        m = self.cfg.mqtt
        if not m.enabled:
            return
        for key in ("username_file", "password_file"):
            path = getattr(m, key)
            if path is not None:
                text = self.read(f"mqtt.{key}", path)
                if text is not None and not text.strip():
                    self.error(f"mqtt.{key}: {path} is empty")
        if m.tls is None:
            return
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(m.tls, key)
            if path is not None:
                self.read(f"mqtt.tls.{key}", path)
        if self.errors:
            return
        t = m.tls
        if (t.cert_file is None) != (t.key_file is None) and t.key_file is not None:
            self.error(f"mqtt.tls.key_file: {t.key_file} given without cert_file")
        ctx = ssl.create_default_context()
        if t.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.here(Path(t.ca_file))))
            except (ssl.SSLError, OSError) as exc:
                self.error(f"mqtt.tls.ca_file: {t.ca_file}: not a PEM CA certificate ({_ssl_reason(exc)})")
        if t.cert_file is not None:
            key = str(self.here(Path(t.key_file))) if t.key_file else None
            try:
                ctx.load_cert_chain(str(self.here(Path(t.cert_file))), key)
            except (ssl.SSLError, OSError) as exc:
                self.error(f"mqtt.tls.cert_file/key_file: {t.cert_file}, {t.key_file or '(key in the cert file)'}: "
                           f"not a certificate and its private key ({_ssl_reason(exc)})")

    def tuned(self) -> None:
        """``edged tune``'s override file: a broken one would stop ``run`` (see edged.power.tuned)."""
        from edged.power.tuned import problems, tuned_path

        path = self.here(tuned_path(self.cfg.state_dir))
        for problem in problems(path):
            self.error(f"tuned batching: {problem}")
        if path.exists() and not self.errors:
            self.info(f"tuned batching: {path} (measured values override the power profile's)")

    def read(self, key: str, path: Path) -> str | None:
        try:
            return self.here(Path(path)).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.error(f"{key}: {path}: cannot read: {exc.strerror} (the daemon reads it as user edged)")
            return None

    # -- the broker ----------------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect once with the configured client id suffix ``-check``, credentials and TLS."""
        from edged.mqtt.publisher import configured_client, describe_failure

        m = self.cfg.mqtt
        target = f"broker {m.host}:{m.port}" + (" (TLS)" if m.tls else "")
        outcome: dict[str, str] = {}
        done = threading.Event()
        try:
            client = configured_client(m, f"{self.cfg.client_id}-check")
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.error(f"mqtt: cannot set up the connection to {target}: {exc}")
            return

        def on_connect(c, userdata, flags, rc, props) -> None:
            outcome["rc"] = "ok" if not rc.is_failure else f"refused: {rc}"
            done.set()

        def on_connect_fail(c, userdata) -> None:
            outcome["rc"] = describe_failure(sys.exc_info()[1])
            done.set()

        client.on_connect, client.on_connect_fail = on_connect, on_connect_fail
        try:
            client.connect(m.host, m.port, keepalive=m.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            self.error(f"mqtt: cannot connect to {target}: {describe_failure(exc)}")
            return
        client.loop_start()
        done.wait(timeout_s)
        client.disconnect()
        client.loop_stop()
        result = outcome.get("rc", f"no answer within {timeout_s:g} s")
        if result == "ok":
            self.info(f"mqtt: connected to {target}" + (" with the configured credentials" if m.username_file else ""))
        else:
            self.error(f"mqtt: {target}: {result}")


def unwritable(path: Path) -> str | None:
    """Why this user could not create and write files in directory ``path`` (None: it can)."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a directory"
        try:
            with tempfile.TemporaryFile(dir=path):
                return None
        except OSError as exc:
            return f"not writable by uid {os.geteuid()}: {exc.strerror}"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable by uid {os.geteuid()}"
    return None


def _ssl_reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def check(cfg: Config, root: Path | None = None, connect: bool = False) -> Checker:
    from edged.sources.dicom.idle import problems as idle_problems

    c = Checker(cfg, root)
    c.dicom()
    c.directories()
    c.files()
    c.tuned()
    c.models()
    for warning in idle_problems(cfg.dicom.network_timeout_s) if cfg.dicom.enabled else ():
        c.warning(warning)
    if connect and cfg.mqtt.enabled:
        c.connect()
    return c


def report(cfg: Config, label: str, root: Path | None = None, connect: bool = False,
           notes: list[str] | None = None) -> int:
    """Print every finding (errors and warnings on stderr) and return the exit status: 2 on errors.
    ``notes`` are the loader's warnings (an image placeholder and the id it gave)."""
    if root is not None:
        print(f"checking as installed under {root} (absolute paths resolved there)")
    c = check(cfg, root, connect)
    for note in notes or []:
        c.warning(note)
    for f in c.findings:
        if f.level == "info":
            print(f.text)
        else:
            print(f"{f.level}: {f.text}", file=sys.stderr)
    if c.errors:
        print(f"{label}: {len(c.errors)} error(s): edged run would fail or not serve what is configured",
              file=sys.stderr)
        return 2
    print(f"{label}: OK (node {cfg.node_id}, models {', '.join(m.name for m in cfg.models)})")
    return 0


def preflight(cfg: Config) -> list[str]:
    """What ``edged run`` checks before starting: directories and credential/TLS files (models are
    the daemon's own business: it serves those that load)."""
    c = Checker(cfg)
    c.directories()
    c.files()
    c.tuned()
    return c.errors
