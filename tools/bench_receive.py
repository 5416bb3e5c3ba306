#!/usr/bin/env python3
"""Does decoding stall receiving? The next C-STORE after a JPEG 2000 image vs after an uncompressed one.

One association sends pairs: a first image (the chest CR, uncompressed or its JPEG 2000 twin),
then an uncompressed image whose C-STORE round trip is timed while the daemon decodes the first.
The daemon runs twice in this one run: with ``pipeline.decode_processes: 0`` (decoding in the
daemon's threads, as before) and with the default 1 (a decode process). Prints a table, writes
JSON. Usage: ``python tools/bench_receive.py [--pairs 8] [--out bench-out]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402

from edged.localbroker import LocalBroker, free_port  # noqa: E402
from edged.models.synth import write_model  # noqa: E402
from helpers import DaemonProcess, dicom_file, write_config  # noqa: E402

CR = "1.2.840.10008.5.1.4.1.1.1"


def fresh(name: str):
    ds = dcmread(dicom_file(name))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def run(decode_processes: int, pairs: int, tmp: Path, broker: LocalBroker) -> dict[str, list[float]]:
    work = tmp / f"p{decode_processes}"
    work.mkdir(parents=True)
    cfg = write_config(work / "edged.yaml", node_id="bench", state_dir=str(work / "state"),
                       cache_dir=str(work / "cache"), model_repository=str(tmp / "repo"),
                       models=[{"name": "chexnet-tiny"}], dicom={"bind": "127.0.0.1", "port": free_port()},
                       mqtt={"host": "127.0.0.1", "port": broker.port},
                       pipeline={"decode_processes": decode_processes},
                       power={"control_socket": str(work / "ctl.sock")})
    daemon = DaemonProcess(cfg, work / "daemon.log").start()
    ae = AE("BENCH")
    ae.add_requested_context(CR, [JPEG2000Lossless])
    ae.add_requested_context(CR, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", daemon.port, ae_title="EDGED")
    after: dict[str, list[float]] = {"uncompressed": [], "jpeg2000": []}
    try:
        for i in range(pairs):
            for first in ("uncompressed", "jpeg2000"):
                assoc.send_c_store(fresh("RG1_UNCR.dcm" if first == "uncompressed" else "RG1_J2KR.dcm"))
                second = fresh("RG1_UNCR.dcm")
                t0 = time.perf_counter()
                status = assoc.send_c_store(second)
                after[first].append((time.perf_counter() - t0) * 1000)
                assert status.Status == 0, status
                time.sleep(1.0)  # let both be inferred before the next pair
            print(f"  decode_processes={decode_processes}: pair {i + 1}/{pairs}", file=sys.stderr, flush=True)
    finally:
        assoc.release()
        daemon.terminate()
    return after


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edged-bench-receive-"))
    write_model("tiny", tmp / "repo" / "chexnet-tiny")  # inference costs ~1 ms: decoding is what is measured
    (tmp / "broker").mkdir()
    broker = LocalBroker(tmp / "broker").start()
    try:
        results = {n: run(n, args.pairs, tmp, broker) for n in (0, 1)}
    finally:
        broker.stop()
    rows = []
    print(f"\n{'decode':<22} {'after uncompressed':>19} {'after JPEG 2000':>16} {'ratio':>6}   (median C-STORE ms, "
          f"{args.pairs} pairs)")
    for n, after in results.items():
        base, j2k = statistics.median(after["uncompressed"]), statistics.median(after["jpeg2000"])
        where = "in the daemon's threads" if n == 0 else f"in {n} process(es)"
        rows.append({"decode_processes": n, "after_uncompressed_ms": round(base, 1), "after_j2k_ms": round(j2k, 1),
                     "ratio": round(j2k / base, 2), "samples": after})
        print(f"{where:<22} {base:>19.1f} {j2k:>16.1f} {j2k / base:>6.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_receive.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwritten to {args.out / 'bench_receive.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
