"""A flashed image, booted: ``make flash-test`` (bookworm, JetPack 6 analogue) and
``make flash-test-jp5`` (bullseye + a relocatable CPython 3.11, JetPack 5 analogue).

What an integrator does, on an arm64 Debian root built here: ``edged wheelhouse``, ``edged
install --root`` (``--python-dist`` for JetPack 5), then two boots with systemd as PID 1 under
qemu-user. Boot 1 has no network (``--private-network``): the venv must build offline from the
staged wheels. Boot 2 shares the host's network: a C-STORE from the host's DCMTK ``storescu``
must come back as a result on the host's mosquitto. What only a device shows (GPU, TensorRT,
power rails, real hardening) is listed in the README's "verified where" table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from edged.localbroker import LocalBroker
from flashlib import Boot, Journal, build_root, jobs, unit_lines, wait_for_unit, write_test_dropins
from helpers import REPO, Collector, cr_variants, storescu

TARGET = os.environ.get("EDGED_FLASH", "bookworm")
EDGED = str(Path(sys.executable).with_name("edged"))
PACKAGES = {
    # JetPack 6 analogue: the system python3 (3.11 here, 3.10 on JetPack 6) builds the venv.
    "bookworm": ["systemd", "python3"],
    # JetPack 5 analogue: python3 (3.9 here, 3.8 on JetPack 5) stays for TensorRT's worker; the
    # daemon runs on the staged CPython 3.11, whose modules load these libraries from the root.
    "bullseye": ["systemd", "python3", "libsqlite3-0", "libffi7", "libssl1.1"],
}
TIMINGS: dict[str, float] = {}
FAILED: list[str] = []  # set when building or booting the image failed: keep the work directory


class Timer:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.monotonic()

    def __exit__(self, *exc):
        TIMINGS[self.name] = round(time.monotonic() - self.t0, 1)


@pytest.fixture(scope="module")
def workdir(request: pytest.FixtureRequest):
    given = os.environ.get("EDGED_FLASH_WORKDIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix=f"edged-flash-{TARGET}-", dir="/var/tmp"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    print("\nflash-test timings (s): " + ", ".join(f"{k} {v}" for k, v in TIMINGS.items()))
    if request.session.testsfailed or FAILED:
        print(f"kept {path} for inspection (boot logs, journal in root/var/log/journal)")
    elif not given and not os.environ.get("EDGED_FLASH_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


def quiet_port() -> int:
    """A free TCP port below the kernel's ephemeral range (32768-60999 by default), where no
    outgoing connection of another process can take it between now and the boot."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _in_background(fn, *args) -> threading.Thread:
    box: dict = {}

    def target():
        try:
            fn(*args)
        except BaseException as exc:  # re-raised by join()
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.box = box  # type: ignore[attr-defined]
    return thread


def _join(thread: threading.Thread) -> None:
    thread.join()
    if "error" in thread.box:  # type: ignore[attr-defined]
        raise thread.box["error"]  # type: ignore[attr-defined]


def _wheelhouse(dest: Path, log: Path) -> None:
    jetpack, python = ("6", "3.11") if TARGET == "bookworm" else ("5.1", "3.11")
    with Timer("wheelhouse"), open(log, "ab") as out:
        subprocess.run([EDGED, "wheelhouse", "--jetpack", jetpack, "--python", python, "-d", str(dest)],
                       check=True, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def _root(root: Path, log: Path) -> None:
    with Timer("root"):
        build_root(TARGET, root, PACKAGES[TARGET], log)


def _python_dist(work: Path, log: Path) -> None:
    from crosspython import build_relocatable_cpython

    with Timer("cpython-cross-build"):
        build_relocatable_cpython(work, log)


@pytest.fixture(scope="module")
def image(workdir: Path):
    """The root with edged installed, plus the facts of its two boots."""
    try:
        return _image(workdir)
    except BaseException:
        FAILED.append("image")
        raise


def _image(workdir: Path) -> dict:
    root, house, log = workdir / "root", workdir / "wheelhouse", workdir / "build.log"
    t0 = time.monotonic()
    threads = []
    if not (root / "usr/bin/python3").exists():
        threads.append(_in_background(_root, root, log))
    if not any(house.glob("edged-*.whl")):
        threads.append(_in_background(_wheelhouse, house, workdir / "wheelhouse.log"))
    if TARGET == "bullseye" and not (workdir / "python.tar.gz").exists():
        threads.append(_in_background(_python_dist, workdir, workdir / "cpython.log"))
    for t in threads:
        _join(t)

    install = [EDGED, "install", "--root", str(root), "--wheelhouse", str(house)]
    if TARGET == "bullseye":
        from edged.service.pythondist import sha256_file

        tarball = workdir / "python.tar.gz"
        install += ["--python-dist", str(tarball), "--python-dist-sha256", sha256_file(tarball)]
    with Timer("install"):
        done = subprocess.run(install, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr

    from edged.models.synth import write_model

    write_model("tiny", root / "opt/edged/engines/chexnet-tiny")
    (workdir / "broker").mkdir(exist_ok=True)
    broker = LocalBroker(workdir / "broker").start()
    dropin = {"mqtt": {"host": "127.0.0.1", "port": broker.port}, "dicom": {"port": quiet_port()},
              "models": [{"name": "chexnet-tiny", "backend": "auto"}],
              # ~800x slower than a CPU core under emulation: give the first batch time
              "tensorrt": {"batch_timeout_s": 600, "load_timeout_s": 600}}
    config_dropin = root / "etc/edged/edged.d/50-flash-test.yaml"
    config_dropin.write_text(yaml.safe_dump(dropin))
    write_test_dropins(root)
    journal = Journal(root)
    first = len(journal.boots())  # 0 from scratch; more when EDGED_FLASH_WORKDIR reuses a root
    facts: dict = {"root": root, "journal": journal, "install": done.stdout}
    try:
        with Timer("boot1"):
            box = Boot(root, workdir / "boot1.log", private_network=True).start()
            try:
                facts["boot1"] = wait_for_unit(journal, first, "edged.service", box, timeout=900)
            finally:
                box.stop()
        facts["machine_id"] = (root / "etc/machine-id").read_text().strip()
        # Boot 2 shares the host's network: pick the DICOM port now, outside the ephemeral range
        # that other processes' connections draw from, so nothing takes it during the boot.
        dicom_port = dropin["dicom"]["port"] = quiet_port()
        config_dropin.write_text(yaml.safe_dump(dropin))
        collector = Collector(broker.port)
        try:
            with Timer("boot2"):
                box = Boot(root, workdir / "boot2.log", private_network=False).start()
                try:
                    facts["boot2"] = wait_for_unit(journal, first + 1, "edged.service", box, timeout=600)
                    collector.wait_for(lambda c: any(p.get("state") == "online" for p in c.of("status")), 120)
                    sent = storescu(dicom_port, *cr_variants(workdir, 1))
                    facts["storescu"] = sent
                    collector.wait_for(lambda c: c.results(), 600)
                finally:
                    box.stop()
                    facts["boot2"] = journal.boots()[first + 1]
            facts["messages"] = list(collector.messages)
        finally:
            collector.close()
    finally:
        broker.stop()
    TIMINGS["total"] = round(time.monotonic() - t0, 1)
    return facts


def test_first_boot_builds_the_venv_offline_and_starts_in_order(image) -> None:
    boot = image["boot1"]
    built = unit_lines(boot, "edged-bootstrap.service")
    assert any(line.startswith("built /opt/edged/venv from edged==") for line in built), built
    done = jobs(boot)
    order = ["edged-bootstrap.service", "edged-engines.service", "edged.service"]
    for unit in order:
        assert done.get(unit, ("missing",))[0] == "done", (unit, done.get(unit))
    times = [done[u][1] for u in order]
    assert times == sorted(times), list(zip(order, times))
    # sysusers and tmpfiles-setup may finish before journald runs, so their start jobs are not
    # always in the journal: when they are, they come first; their effects are checked anyway.
    for unit in ("systemd-sysusers.service", "systemd-tmpfiles-setup.service"):
        if unit in done:
            assert done[unit][0] == "done" and done[unit][1] < times[0], (unit, done[unit])
    root = image["root"]
    assert "\nedged:x:" in "\n" + (root / "etc/passwd").read_text()
    etc = (root / "etc/edged").stat()
    assert oct(etc.st_mode & 0o777) == "0o750" and etc.st_uid == 0
    group = {line.split(":")[2]: line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}
    assert group[str(etc.st_gid)] == "edged", "tmpfiles gave /etc/edged to group edged"
    engines = unit_lines(boot, "edged-engines.service")
    assert any("nothing to build: TensorRT is unavailable" in line for line in engines), engines
    assert not [e for e in boot if "already exists but the mode is different" in str(e.get("MESSAGE"))]


def test_ready_only_after_models_load(image) -> None:
    # Type=notify: the start job of edged.service is "done" only once READY=1 arrived.
    lines = unit_lines(image["boot1"], "edged.service")
    assert any("chexnet-tiny" in line for line in lines), lines[-20:]
    assert jobs(image["boot1"])["edged.service"][0] == "done"


def test_second_boot_does_not_rebuild(image) -> None:
    lines = unit_lines(image["boot2"], "edged-bootstrap.service")
    assert "/opt/edged/venv is up to date" in lines, lines
    assert not unit_lines(image["boot2"], "edged-engines.service"), "its stamp was written in boot 1"
    # systemd 252: "... was skipped because of an unmet condition check"; 247: "Condition check
    # resulted in ... being skipped." Both carry UNIT=edged-engines.service.
    skipped = [str(e.get("MESSAGE")) for e in image["boot2"]
               if e.get("UNIT") == "edged-engines.service" and "skipped" in str(e.get("MESSAGE"))]
    assert skipped, "edged-engines.service was not skipped by its condition in boot 2"


def test_a_cstore_from_the_host_gives_a_result_on_the_host_broker(image) -> None:
    assert image["storescu"].returncode == 0, image["storescu"].stderr
    results = [p for t, p, _ in image["messages"] if "/results/" in t]
    assert results and results[0]["model"]["name"] == "chexnet-tiny", results
    assert results[0]["model"]["backend"] == "onnxruntime"


def test_the_node_id_is_the_device_s(image) -> None:
    machine_id = image["machine_id"]
    assert len(machine_id) == 32, "systemd generated and committed a machine id at first boot"
    node = f"node-{machine_id[:12]}"
    topics = {t for t, _, _ in image["messages"]}
    assert f"edged/v1/{node}/status" in topics, topics
    assert all(f"/{node}/" in t for t in topics), topics


def test_no_telemetry_store(image) -> None:
    stores = [p for p in image["root"].rglob("*onnxruntime*") if ".onnxruntime" in p.parts or
              p.name == ".onnxruntime"]
    assert not stores, stores
    assert not (image["root"] / "var/lib/edged/.cache/Microsoft").exists()


@pytest.mark.skipif(TARGET != "bullseye", reason="the JetPack 5 analogue only")
def test_daemon_runs_on_the_staged_python_and_trt_stays_on_the_system_one(image) -> None:
    cfg = (image["root"] / "opt/edged/venv/pyvenv.cfg").read_text()
    assert "home = /opt/edged/python/bin" in cfg, cfg
    lines = unit_lines(image["boot1"], "edged.service")
    assert any("Python 3.9" in line or "TensorRT not used" in line for line in lines), lines[-20:]


def test_the_venv_built_on_the_device_carries_the_power_profiles(image) -> None:
    shipped = sorted(p.name for p in (REPO / "power_profiles").glob("*.yaml"))
    venv = image["root"] / "opt/edged/venv/share/edged/power_profiles"
    assert sorted(p.name for p in venv.glob("*.yaml")) == shipped
