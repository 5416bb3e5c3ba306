#!/usr/bin/env python3
"""edged benchmark: raw backend vs end to end, on this machine, in one run.

    python tools/bench.py [--images 24] [--out bench-out]

Prints a table and writes ``bench-out/bench.json`` (+ ``bench.png`` when matplotlib is there):
  1. raw backend throughput per batch size for the reference model (ONNX Runtime, CPU);
  2. preprocessing ms per image (decode + LUT/resize/normalize) of the chest CR;
  3. end to end: DCMTK storescu → edged (a real daemon process) → mosquitto → subscriber,
     with 1 and 5 concurrent senders: throughput and latency p50/p90/p99;
  4. the daemon's peak RSS (VmHWM);
  5. ingest CPU per image for the tiny model beside DCMTK storescp's (same files, same run), and
     the queue wait of a lone image on an idle daemon (tools/bench_ingest.py).
Ratios are computed within this one run, so they compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from edged.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from edged.localbroker import LocalBroker, free_port  # noqa: E402
from edged.models.manifest import load_manifest  # noqa: E402
from edged.preprocess.pixels import prepare_timed  # noqa: E402
from edged.privacy import Pseudonymizer  # noqa: E402

CR = Path(get_testdata_file("RG1_UNCR.dcm"))


def say(text: str) -> None:
    print(text, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- 1. raw backend -----------------------------------------------------------------------
def bench_backend(onnx: Path, sizes: list[int], seconds: float = 3.0) -> list[dict]:
    be = OnnxRuntimeBackend(onnx, threads=0)
    be.load()
    rows = []
    for n in sizes:
        x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
        be.infer(x)
        times = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            be.infer(x)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1000
        rows.append({"batch": n, "ms_per_batch": round(ms, 2), "img_per_s": round(n * 1000 / ms, 2)})
        say(f"  backend batch {n:>2}: {ms:7.1f} ms/batch  {n * 1000 / ms:6.1f} img/s")
    be.close()
    return rows


# -- 2. preprocessing ---------------------------------------------------------------------
def bench_preprocess(model, repeats: int = 15) -> dict:
    m = model.manifest
    decode, transform = [], []
    for _ in range(repeats):
        ds = dcmread(CR)  # a fresh dataset each time: no cached pixel_array
        _, t = prepare_timed(ds, m.input, m.preprocess)
        decode.append(t["decode_ms"])
        transform.append(t["transform_ms"])
    out = {"decode_ms": round(statistics.median(decode), 2), "transform_ms": round(statistics.median(transform), 2)}
    out["total_ms"] = round(out["decode_ms"] + out["transform_ms"], 2)
    say(f"  preprocess RG1_UNCR: decode {out['decode_ms']:.1f} ms + transform {out['transform_ms']:.1f} ms")
    return out


# -- 3. end to end ------------------------------------------------------------------------
def make_variants(folder: Path, n: int) -> list[tuple[Path, str]]:
    ds = dcmread(CR)
    out = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"cr-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, str(ds.SOPInstanceUID)))
    return out


class Daemon:
    def __init__(self, work: Path, broker_port: int):
        self.port = free_port()
        self.state = work / "state"
        cfg = {"node_id": "bench", "state_dir": str(self.state), "cache_dir": str(work / "cache"),
               "log_level": "warning", "dicom": {"bind": "127.0.0.1", "port": self.port},
               "mqtt": {"host": "127.0.0.1", "port": broker_port}}
        self.config = work / "edged.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.log = open(work / "daemon.log", "ab")

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(self.config)], cwd=REPO,
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        import socket

        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, "daemon exited; see daemon.log"
                time.sleep(0.1)
        raise TimeoutError("daemon did not start")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def bench_e2e(daemon: Daemon, broker_port: int, files: list[tuple[Path, str]], senders: int,
              per_study: bool = False) -> dict:
    """``per_study``: each sender pushes all its images in one association (a PACS forwarding a
    study) instead of one association per image (a modality sending as it acquires)."""
    pseudo = Pseudonymizer((daemon.state / "site.key").read_bytes())
    key_of = {pseudo.pseudonym("instance", uid): uid for _, uid in files}
    arrived: dict[str, float] = {}
    done = threading.Event()

    def on_message(client, userdata, msg) -> None:
        instance = json.loads(msg.payload).get("instance")
        if instance in key_of and instance not in arrived:
            arrived[instance] = time.monotonic()
            if len(arrived) == len(files):
                done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{senders}", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker_port)
    sub.subscribe("edged/v1/bench/results/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    sent_at: dict[str, float] = {}
    chunks = [files[i::senders] for i in range(senders)]

    def sender(chunk: list[tuple[Path, str]]) -> None:
        groups = [chunk] if per_study else [[f] for f in chunk]
        for group in groups:
            for _, uid in group:  # a study push: every image counts from the moment the push starts
                sent_at[pseudo.pseudonym("instance", uid)] = time.monotonic()
            r = subprocess.run(["/usr/bin/storescu", "-aet", "BENCH", "-aec", "EDGED", "127.0.0.1",
                                str(daemon.port), *(str(p) for p, _ in group)], capture_output=True)
            if r.returncode != 0:
                raise RuntimeError(r.stderr.decode()[-500:])

    t0 = time.monotonic()
    threads = [threading.Thread(target=sender, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not done.wait(300):
        raise TimeoutError(f"only {len(arrived)}/{len(files)} results arrived")
    sub.loop_stop()
    sub.disconnect()
    latencies = [(arrived[k] - sent_at[k]) * 1000 for k in arrived]
    wall = max(arrived.values()) - t0
    out = {"senders": senders, "association": "per study" if per_study else "per image",
           "images": len(files), "img_per_s": round(len(files) / wall, 2),
           "p50_ms": round(pct(latencies, 50), 1), "p90_ms": round(pct(latencies, 90), 1),
           "p99_ms": round(pct(latencies, 99), 1)}
    say(f"  e2e {senders} sender(s), association {out['association']}: {out['img_per_s']:.2f} img/s, p50 {out['p50_ms']:.0f} ms, "
        f"p90 {out['p90_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms")
    return out


# -- report -------------------------------------------------------------------------------
def report(res: dict) -> str:
    best = max(r["img_per_s"] for r in res["backend"])
    b1 = next(r["ms_per_batch"] for r in res["backend"] if r["batch"] == 1)
    e2e_best = max(r["img_per_s"] for r in res["e2e"] if r["association"] == "per image")
    checks = [
        ("end-to-end throughput / raw backend best", e2e_best / best, ">= 0.80", e2e_best / best >= 0.8),
        ("preprocess ms / batch-1 inference ms", res["preprocess"]["transform_ms"] / b1, "<= 0.25",
         res["preprocess"]["transform_ms"] / b1 <= 0.25),
        ("daemon peak RSS (MB)", res["peak_rss_mb"], "<= 400", res["peak_rss_mb"] <= 400),
    ]
    lines = ["| batch | ms/batch | img/s |", "|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['ms_per_batch']:.1f} | {r['img_per_s']:.1f} |" for r in res["backend"]]
    lines += ["", "| senders | association | images | img/s | p50 ms | p90 ms | p99 ms | daemon CPU ms/img |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['senders']} | {r['association']} | {r['images']} | {r['img_per_s']:.2f} | {r['p50_ms']:.0f} "
              f"| {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['daemon_cpu_ms_per_image']:.0f} |" for r in res["e2e"]]
    p = res["preprocess"]
    lines += ["", f"Preprocessing of the chest CR (1955×1841, 15-bit): decode {p['decode_ms']:.1f} ms, "
                  f"transform {p['transform_ms']:.1f} ms.", "", "| target | measured | goal | |", "|---|---:|---|---|"]
    lines += [f"| {name} | {value:.2f} | {goal} | {'met' if ok else 'MISSED'} |" for name, value, goal, ok in checks]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> bool:
    """Three panels, each series on its own axis: raw backend throughput against batch size; end-to-end
    throughput per scenario (a scenario is not a batch size); latency percentiles per scenario.
    Legends sit below the axes, where they cover no data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    batches = [r["batch"] for r in res["backend"]]
    a.plot(batches, [r["img_per_s"] for r in res["backend"]], "o-", color="C0")
    for x, r in zip(batches, res["backend"]):
        a.annotate(f"{r['img_per_s']:.0f}", (x, r["img_per_s"]), textcoords="offset points", xytext=(0, 6),
                   ha="center", fontsize=8)
    a.set(xlabel="batch size", ylabel="images / s", title="Raw backend (ONNX Runtime, CPU)",
          ylim=(0, max(r["img_per_s"] for r in res["backend"]) * 1.15), xticks=batches)
    names = [f"{r['senders']} sender{'s' if r['senders'] > 1 else ''}\n{r['association']}" for r in res["e2e"]]
    x = np.arange(len(names))
    bars = b.bar(x, [r["img_per_s"] for r in res["e2e"]], 0.6, color="C1")
    b.bar_label(bars, fmt="%.1f", fontsize=8)
    best = max(r["img_per_s"] for r in res["backend"])
    b.axhline(best, ls="--", color="C0", label=f"raw backend best ({best:.0f} img/s)")
    b.set_xticks(x, names)
    b.set(ylabel="images / s", title="End to end (C-STORE → MQTT)", ylim=(0, best * 1.15))
    b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, frameon=False)
    for i, q in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        c.bar(x + (i - 1) * 0.27, [r[q] for r in res["e2e"]], 0.27, label=q.split("_")[0], color=f"C{i + 2}")
    c.set_xticks(x, names)
    c.set(ylabel="ms", title="Latency: C-STORE sent → MQTT result received")
    c.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"edged on {res['machine']['cpu']} ({res['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24, help="images per end-to-end run")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--replot", type=Path, metavar="BENCH_JSON", help="only draw the plot of an earlier run's JSON")
    args = ap.parse_args()
    if args.replot:
        target = args.out / "bench.png"
        args.out.mkdir(parents=True, exist_ok=True)
        return 0 if plot(json.loads(args.replot.read_text()), target) else 1
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_manifest(REPO / "engines" / "chexnet")
    model.verify_onnx()
    res: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "python": platform.python_version()}, "model": model.name}
    say("[1/4] raw backend (ONNX Runtime, CPU, all cores)")
    res["backend"] = bench_backend(model.onnx_path, [1, 2, 4, 8])
    say("[2/4] preprocessing")
    res["preprocess"] = bench_preprocess(model)
    say("[3/4] end to end: storescu → edged → mosquitto")
    with tempfile.TemporaryDirectory(prefix="edged-bench-") as tmp:
        work = Path(tmp)
        files = make_variants(work, args.images * 3)
        (work / "broker").mkdir()
        with LocalBroker(work / "broker") as broker:
            daemon = Daemon(work, broker.port)
            daemon.start()
            try:
                n = args.images
                runs = [(files[:n], 1, False), (files[n:2 * n], 5, False), (files[2 * n:], 5, True)]
                res["e2e"] = []
                for chunk, senders, per_study in runs:
                    cpu0 = daemon.cpu_seconds()
                    row = bench_e2e(daemon, broker.port, chunk, senders, per_study)
                    row["daemon_cpu_ms_per_image"] = round((daemon.cpu_seconds() - cpu0) * 1000 / len(chunk), 1)
                    res["e2e"].append(row)
                res["peak_rss_mb"] = round(daemon.peak_rss_mb(), 1)
            finally:
                daemon.stop()
    say(f"  daemon peak RSS: {res['peak_rss_mb']:.0f} MB")
    say("[4/4] ingest CPU per image (tiny model) beside DCMTK storescp, and a lone image's queue wait")
    from bench_ingest import bench_ingest, make_sets
    from bench_ingest import report as ingest_report

    with tempfile.TemporaryDirectory(prefix="edged-ingest-") as tmp:
        work = Path(tmp)
        sets = make_sets(work, args.images, 2)
        (work / "broker").mkdir()
        with LocalBroker(work / "broker") as broker:
            res["ingest"] = bench_ingest(work, broker.port, sets)
    table = report(res) + "\n\n" + ingest_report(res["ingest"])
    print(table)
    (args.out / "bench.json").write_text(json.dumps(res, indent=2))
    (args.out / "bench.md").write_text(table + "\n")
    if plot(res, args.out / "bench.png"):
        say(f"\nwrote {args.out}/bench.json, bench.md, bench.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
