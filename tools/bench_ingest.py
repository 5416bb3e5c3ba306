#!/usr/bin/env python3
"""Ingest cost: edged's CPU per received image beside DCMTK ``storescp``'s, and the idle queue wait.

    python tools/bench_ingest.py [--images 24] [--rounds 2]

Both receivers get the same files (copies of the 7.2 MB chest CR) over one ``storescu``
association each, in the same run, alternating ``--rounds`` times. CPU is read from
``/proc/<pid>/stat`` (utime + stime) of each receiver and of its descendants (edged's decode
process), before and after, and divided by the images received. edged serves the tiny model
(inference ~1 ms) and its CPU is counted until every result is on MQTT, so it covers receive,
fsync, preprocessing, inference, outbox and publishing; ``storescp`` only writes the files.
The daemon's ``edged_cpu_seconds_total{role}`` (edged/metrics/cpu.py, read from its /metrics
around each round) splits that: ``dicom`` is the associations' work (receive, spool, C-STORE
answer), the part that compares with storescp's; ``decode`` the decode workers' pixel work.
Each receiver first gets one warm-up round that is not counted: storescp's first round on a
fresh machine cost twice its later ones (13.8 against 6.7 ms per image here: the page cache's
first pages, the VM's first touch of them), edged's did not (its first round reuses the pages
storescp's deleted files just freed), so counting it flattered edged. The ratio is also printed
round by round, with both receivers' figures, so a round that moved is visible.
Then both receivers get images on one association each (``storescu`` per file, as modalities
that associate per image send them): that adds each association's set-up to the image's cost.
Then one image is sent to the idle daemon and its result's ``timings_ms.queue`` is reported, and
the daemon's CPU per second is read idle and with one association open that does nothing (the
cost of pynetdicom's polling reactors, edged/sources/dicom/reactor.py).
``tools/bench.py`` runs this as its last section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edged.localbroker import LocalBroker, free_port  # noqa: E402
from edged.metrics.cpu import stat_cpu_s  # noqa: E402


def tree_cpu_s(pid: int, descendants: bool = True) -> float:
    """utime + stime of ``pid`` and (``descendants``) every live descendant, from /proc/<pid>/stat."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        spent = stat_cpu_s(Path(f"/proc/{p}/stat"))
        if spent is None:
            continue
        total += spent
        for task in Path(f"/proc/{p}/task").glob("*") if descendants else ():
            try:  # threads come and go while this reads: one gone must not hide its siblings' children
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                pass
    return total


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    import socket

    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited")
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen")


SEND_PDU: list[str] = []  # --pdu N: storescu --max-send-pdu N (DCMTK's default sends up to what the peer takes)


def storescu(port: int, files: list[Path], aec: str) -> None:
    r = subprocess.run(["/usr/bin/storescu", *SEND_PDU, "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port),
                        *map(str, files)], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.decode()[-500:])


class Results:
    """MQTT results of the daemon, counted (and the last one kept)."""

    def __init__(self, port: int, node: str):
        self.count, self.last, self.cond = 0, None, threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ingest", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"edged/v1/{node}/results/#", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on(self, client, userdata, msg) -> None:
        with self.cond:
            self.count += 1
            self.last = json.loads(msg.payload)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 120) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= n, timeout):
                raise TimeoutError(f"{self.count}/{n} results")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Sets:
    """The files :func:`bench_ingest` sends, each instance with its own SOP Instance UID (one
    edged has processed is acknowledged without inference)."""

    warmup: list[Path]  # one round to each receiver, not counted
    rounds: list[list[Path]]  # counted rounds, one association each
    per_association: list[Path]  # one association per image, as many modalities send
    lone: list[Path]  # three images to the idle daemon, one at a time


def make_sets(work: Path, images: int, rounds: int) -> Sets:
    from bench import make_variants

    def files(name: str, n: int) -> list[Path]:
        (work / name).mkdir()
        return [p for p, _ in make_variants(work / name, n)]

    return Sets(files("warmup", images), [files(f"set{r}", images) for r in range(rounds)],
                files("per-association", max(6, images)), files("lone", 3))


def bench_ingest(work: Path, broker_port: int, sets: Sets, src: Path = REPO) -> dict:
    """Send ``sets`` (:func:`make_sets`) to storescp and to edged alternately and return CPU
    per image. ``src``: the source tree the daemon runs from (another checkout, e.g. ``git
    archive`` of an older commit, compares before and after in one run)."""
    from edged.models.synth import write_model

    if not (work / "repo" / "chexnet-tiny").exists():
        write_model("tiny", work / "repo" / "chexnet-tiny")
    port, scp_port, metrics_port = free_port(), free_port(), free_port()
    run = f"{len(list(work.glob('istate*')))}"
    cfg = {"node_id": "ingest", "state_dir": str(work / f"istate{run}"), "cache_dir": str(work / "icache"),
           "log_level": "warning", "model_repository": str(work / "repo"), "models": [{"name": "chexnet-tiny"}],
           "dicom": {"bind": "127.0.0.1", "port": port}, "mqtt": {"host": "127.0.0.1", "port": broker_port},
           "power": {"control_socket": str(work / f"ingest{run}.sock")},
           "telemetry": {"prometheus": {"enabled": True, "port": metrics_port}}}
    (work / "ingest.yaml").write_text(yaml.safe_dump(cfg))
    out_dir = work / f"storescp-out{run}"
    out_dir.mkdir()
    with open(work / "ingest-daemon.log", "ab") as log, open(work / "storescp.log", "ab") as slog:
        daemon = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(work / "ingest.yaml")], cwd=src,
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        scp = subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out_dir), str(scp_port)],
                               stdout=slog, stderr=slog, stdin=subprocess.DEVNULL)
    results = None
    try:
        wait_port(port, daemon, "edged")
        wait_port(scp_port, scp, "storescp")
        results = Results(broker_port, "ingest")
        main_cpu = unlink_cpu = 0.0
        by_role: dict[str, float] = {}
        rounds: list[tuple[float, float]] = []  # (edged, storescp) CPU s of each round
        received = 0
        for index, files in enumerate([sets.warmup, *sets.rounds]):
            counted = index > 0  # the first is the warm-up round
            c0 = tree_cpu_s(scp.pid)
            storescu(scp_port, files, "STORESCP")
            scp_round = tree_cpu_s(scp.pid) - c0
            u0 = sum(os.times()[:2])  # deleting storescp's files: edged's spool deletes its own
            for f in out_dir.iterdir():
                f.unlink()
            unlink_cpu += sum(os.times()[:2]) - u0
            r0 = cpu_by_role(metrics_port)  # scraped first: the scrape's own CPU stays out of c0/m0
            c0, m0 = tree_cpu_s(daemon.pid), tree_cpu_s(daemon.pid, False)
            storescu(port, files, "EDGED")
            received += len(files)
            results.wait(received)
            edged_round, main_round = tree_cpu_s(daemon.pid) - c0, tree_cpu_s(daemon.pid, False) - m0
            time.sleep(0.3)  # the association's threads have ended (and retired their CPU)
            if not counted:
                continue
            rounds.append((edged_round, scp_round))
            main_cpu += main_round
            for role, seconds in cpu_by_role(metrics_port).items():
                by_role[role] = by_role.get(role, 0.0) + seconds - r0.get(role, 0.0)
        per_assoc = per_association_cpu(sets.per_association, (scp.pid, scp_port, "STORESCP"),
                                        (daemon.pid, port, "EDGED"), results, received)
        received += len(sets.per_association)
        for f in out_dir.iterdir():
            f.unlink()
        time.sleep(1.0)  # idle: nothing queued, the backend waiting
        queue_ms = []
        for f in sets.lone:
            storescu(port, [f], "EDGED")
            received += 1
            results.wait(received)
            queue_ms.append(float(results.last["timings_ms"]["queue"]))
            time.sleep(0.5)
        idle, idle_assoc = idle_cpu(daemon.pid, port)
        images = sum(len(r) for r in sets.rounds)
        edged_cpu, scp_cpu = (sum(r[k] for r in rounds) for k in (0, 1))
        row = {"idle_daemon_cpu_ms_per_s": idle, "idle_association_cpu_ms_per_s": idle_assoc, "images": images,
               "edged_cpu_ms_per_image": round(edged_cpu * 1000 / images, 1),
               "edged_daemon_cpu_ms_per_image": round(main_cpu * 1000 / images, 1),
               "storescp_cpu_ms_per_image": round(scp_cpu * 1000 / images, 1),
               "storescp_files_deleted_cpu_ms_per_image": round(unlink_cpu * 1000 / images, 1),
               "lone_image_queue_ms": round(max(queue_ms), 2)}
        row["by_role_ms_per_image"] = {role: round(s * 1000 / images, 1) for role, s in sorted(by_role.items())}
        scp_ms = max(row["storescp_cpu_ms_per_image"], 0.1)
        row["receive_ratio"] = round(row["by_role_ms_per_image"].get("dicom", 0.0) / scp_ms, 2)
        row["ratio"] = round(row["edged_cpu_ms_per_image"] / scp_ms, 2)
        row["daemon_ratio"] = round(row["edged_daemon_cpu_ms_per_image"] / scp_ms, 2)
        row["ratio_by_round"] = [round(e / max(c, 1e-4), 2) for e, c in rounds]  # how far one round moves it
        row["ms_by_round"] = [(round(e * 1000 / len(f), 1), round(c * 1000 / len(f), 1))
                              for (e, c), f in zip(rounds, sets.rounds)]  # (edged, storescp): which one moved
        row["per_association"] = per_assoc
        return row
    finally:
        if results is not None:
            results.close()
        for p in (daemon, scp):
            p.terminate()
            p.wait(60)


def per_association_cpu(files: list[Path], scp: tuple[int, int, str], edged: tuple[int, int, str],
                        results: Results, received: int) -> dict:
    """CPU per image when every image comes on its own association (many modalities send so):
    storescp first, then edged (until each result is on MQTT), ``storescu`` once per file."""
    out = {"images": len(files)}
    for name, (pid, port, aec) in (("storescp", scp), ("edged", edged)):
        c0 = tree_cpu_s(pid)
        for f in files:
            storescu(port, [f], aec)
        if name == "edged":
            results.wait(received + len(files))
        time.sleep(0.3)
        out[f"{name}_cpu_ms_per_image"] = round((tree_cpu_s(pid) - c0) * 1000 / len(files), 1)
    out["ratio"] = round(out["edged_cpu_ms_per_image"] / max(out["storescp_cpu_ms_per_image"], 0.1), 2)
    return out


def cpu_by_role(port: int) -> dict[str, float]:
    """The daemon's ``edged_cpu_seconds_total`` by role (edged/metrics/cpu.py), from /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.labels["role"]: s.value for f in text_string_to_metric_families(text) if f.name == "edged_cpu_seconds"
            for s in f.samples if s.name == "edged_cpu_seconds_total"}


def idle_cpu(pid: int, port: int, seconds: float = 3.0) -> tuple[float, float]:
    """The daemon's CPU (ms per second) idle, then with one association open that does nothing
    (a modality that keeps its association between studies): what the reactors cost at rest."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    def rate() -> float:
        c0 = tree_cpu_s(pid, False)
        time.sleep(seconds)
        return round((tree_cpu_s(pid, False) - c0) * 1000 / seconds, 1)

    idle = rate()
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGED")
    try:
        time.sleep(0.5)
        return idle, rate()
    finally:
        assoc.release()


ROLE_NOTES = {"dicom": ": receive, spool (write, fsync), C-STORE answer — storescp's work",
              "decode": ": decode worker processes (read, pixel LUT, resize)",
              "inference": ": batchers and the backend", "results": ": result writer, outbox, MQTT"}


def per_association_lines(pa: dict | None) -> list[str]:
    if not pa:
        return []
    return [f"one association per image ({pa['images']} images, as many modalities send): edged "
            f"{pa['edged_cpu_ms_per_image']} ms, storescp {pa['storescp_cpu_ms_per_image']} ms per image "
            f"({pa['ratio']} ×)", ""]


def report(row: dict) -> str:
    scp = max(row["storescp_cpu_ms_per_image"], 0.1)
    return "\n".join([
        "| receiver (same files, same run) | images | CPU ms/image | × storescp |",
        "|---|---:|---:|---:|",
        f"| edged daemon process: receive, spool (fsync), batch, infer, outbox, MQTT | {row['images']} | "
        f"{row['edged_daemon_cpu_ms_per_image']} | {row['daemon_ratio']} |",
        f"| edged with its decode process (+ pixel decode, LUT, resize) | {row['images']} | "
        f"{row['edged_cpu_ms_per_image']} | {row['ratio']} |",
        f"| DCMTK storescp (writes the files, no fsync) | {row['images']} | {row['storescp_cpu_ms_per_image']} | 1 |",
        f"| (deleting storescp's files afterwards, which edged's spool does itself: "
        f"{row.get('storescp_files_deleted_cpu_ms_per_image', 0)} ms/image, not counted above) | | | |",
        "",
        "edged with its decode process × storescp, round by round: "
        + ", ".join(str(r) for r in row.get("ratio_by_round", []))
        + " (edged / storescp ms per image: "
        + ", ".join(f"{e} / {c}" for e, c in row.get("ms_by_round", [])) + ")",
        "",
        "edged's CPU by role (edged_cpu_seconds_total, same images):",
        "",
        "| role | CPU ms/image | × storescp |",
        "|---|---:|---:|",
        *(f"| {role}{ROLE_NOTES.get(role, '')} | {ms} | {ms / scp:.2f} |"
          for role, ms in row["by_role_ms_per_image"].items()),
        "",
        *per_association_lines(row.get("per_association")),
        f"lone image on an idle daemon: queue {row['lone_image_queue_ms']} ms (max of 3)",
        f"idle daemon: {row['idle_daemon_cpu_ms_per_s']} ms CPU/s; with one idle association open: "
        f"{row['idle_association_cpu_ms_per_s']} ms CPU/s",
    ])


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", type=Path, metavar="SRC", help="also measure the daemon of this source tree "
                    "(e.g. git archive of an older commit), in the same run, first")
    ap.add_argument("--pdu", type=int, help="storescu --max-send-pdu (e.g. 16384, what many modalities send)")
    args = ap.parse_args()
    if args.pdu:
        SEND_PDU[:] = ["--max-send-pdu", str(args.pdu)]
    with tempfile.TemporaryDirectory(prefix="edged-ingest-") as tmp:
        work = Path(tmp)
        sets = make_sets(work, args.images, args.rounds)
        (work / "broker").mkdir()
        with LocalBroker(work / "broker") as broker:
            if args.before:
                before = bench_ingest(work, broker.port, sets, args.before)
                print(f"before ({args.before}):")
                print(report(before))
                print(json.dumps(before))
                print("\nafter (this tree):")
            row = bench_ingest(work, broker.port, sets)
    print(report(row))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
