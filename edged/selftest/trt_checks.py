"""The TensorRT checks of ``edged selftest``: what only a device can show, one row each.

On a Jetson they build and run the reference model's engines through the same worker, cache and
builder the daemon uses. Without TensorRT each TensorRT row is a SKIP that says why; the checks
that need no GPU (ONNX Runtime through the worker, a worker killed mid-batch) run anywhere.
``CHECKS`` is the list ``edged selftest --help`` prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edged.backends.selection import load_trt, ort_worker, trt_worker
from edged.backends.tensorrt import platforms
from edged.backends.tensorrt.builder import Calibration
from edged.backends.tensorrt.config import TensorRTConfig
from edged.backends.tensorrt.dla import DlaRequest, budget_problems
from edged.backends.tensorrt.engines import EngineManager, EngineSet, trt_available
from edged.backends.worker import child, probe_python
from edged.selftest.catalog import TRT_CHECKS as CHECKS  # noqa: F401  (the list --help prints)
from edged.models.manifest import load_manifest, sha256_file
from edged.selftest.accuracy import WORKER_ORT_TOLERANCE, Reference
from edged.selftest.report import Row

G = "tensorrt"
Progress = Callable[[str, "float | None"], None]


@dataclass
class TrtContext:
    cfg: TensorRTConfig
    cache_dir: Path
    env: dict[str, str] | None = None
    configured: tuple = ()  # edged.backends.tensorrt.cli.ModelBuild of the config's auto/tensorrt models
    progress: Progress | None = None
    require_tensorrt: bool = False
    preprocess_for: Callable | None = None  # LoadedModel -> preprocess, for configured INT8 models' calibration


@dataclass
class TensorRTChecks:
    ctx: TrtContext
    ref: Reference
    probe: dict = field(default_factory=dict)
    why: str = ""
    engines: dict[str, EngineSet] = field(default_factory=dict)  # target -> engines built for it

    def run(self) -> list[Row]:
        ctx, ref = self.ctx, self.ref
        rows = [ref.check("onnxruntime via worker", ort_worker(ref.model.onnx_path, ref.model.name, ctx.cfg, env=ctx.env),
                          WORKER_ORT_TOLERANCE)]
        self.probe = probe_python(ctx.cfg.worker_python, ctx.cfg.probe_timeout_s, env=ctx.env)
        ok, self.why = trt_available(self.probe)
        rows.insert(0, self.probe_row(ok))
        if not ok:
            skip = "FAIL" if ctx.require_tensorrt else "SKIP"
            for target, _ in CHECKS[2:-1]:
                rows.append(Row(G, target, skip, "needs TensorRT and a GPU, unavailable here (see probe)"))
            rows.append(self.guard("worker killed mid-batch", self.worker_kill))
            return rows
        targets = [("fp32", None), ("fp16", None)] + [("fp16", k) for k in range(int(self.probe.get("dla_cores") or 0))]
        for precision, dla in targets:
            rows.append(self.accuracy(precision, dla))
        if not self.probe.get("dla_cores"):
            rows.append(Row(G, "fp16 DLA<n>", "SKIP", "this device has no DLA (Nano, TX2, Orin Nano)"))
        for target, fn in (("int8 build twice", self.int8_twice), ("DLA placement", self.dla_placement),
                           ("all DLA engines loaded", self.dla_all_loaded), ("foreign/corrupt plan", self.bad_plan),
                           ("worker killed mid-batch", self.worker_kill)):
            rows.append(self.guard(target, fn))
        return rows

    def guard(self, target: str, fn: Callable[[], Row]) -> Row:
        try:
            return fn()
        except Exception as exc:
            return Row(G, target, "FAIL", f"{type(exc).__name__}: {exc}")

    def manager(self, precision: str, dla: int | None, **kw) -> EngineManager:
        return EngineManager(self.ref.model, self.probe, self.ctx.cfg, self.ctx.cache_dir, precision=precision,
                             dla_core=dla, max_batch=self.ref.max_batch, env=self.ctx.env, progress=self.ctx.progress,
                             **kw)

    # -- rows --------------------------------------------------------------------------------
    def probe_row(self, ok: bool) -> Row:
        p = self.probe
        data = {k: p.get(k) for k in ("python", "executable", "numpy", "tensorrt", "gpu", "cuda", "dla_cores", "model",
                                      "compatible", "l4t", "nvpmodel_mode", "tensorrt_error", "gpu_error")}
        if not ok:
            return Row(G, "probe", "FAIL" if self.ctx.require_tensorrt else "SKIP", f"TensorRT unavailable: {self.why}", data)
        gpu = p.get("gpu") or {}
        note = f"{self.why}, {gpu.get('multiprocessors', '?')} SMs, {p.get('dla_cores', 0)} DLA core(s)"
        rel = platforms.release(p.get("l4t"))
        if rel is None:
            note += f"; L4T {p.get('l4t') or 'unknown'} is not in the JetPack table"
        else:
            same = platforms.version_matches(p.get("tensorrt"), rel.tensorrt)
            note += (f"; L4T {rel.l4t} = JetPack {rel.jetpack}, which ships TensorRT {rel.tensorrt}"
                     + ("" if same else f" — this device has {p.get('tensorrt')}"))
            data["jetpack"] = rel.jetpack
            data["tensorrt_matches_jetpack"] = same
        return Row(G, "probe", "PASS", note, data)

    def accuracy(self, precision: str, dla: int | None) -> Row:
        target = f"{precision} {'GPU' if dla is None else f'DLA{dla}'}"
        try:
            engines = self.manager(precision, dla).ensure()
        except Exception as exc:
            return Row(G, target, "FAIL", f"build: {exc}")
        self.engines[target] = engines
        tolerance = self.ref.model.manifest.accuracy.max_abs_diff if precision != "fp32" else 1e-3
        row = self.ref.check(target, trt_worker(engines, self.ref.model.name, self.ctx.cfg, env=self.ctx.env), tolerance)
        row.data["engines"] = [e.engine.name for _, e in engines.entries]
        if engines.placement:
            row.data["placement"] = engines.placement
        return row

    def int8_twice(self) -> Row:
        why = platforms.int8_refusal((self.probe.get("gpu") or {}).get("compute_capability"))
        if why:
            return Row(G, "int8 build twice", "SKIP", f"INT8 is refused on this GPU, as it should be: {why}")
        cal = self._calibration()
        cal.cache.unlink(missing_ok=True)  # the first build must calibrate
        manager = self.manager("int8", None, calibration=cal)
        first = manager.ensure(force=True).entries[0][1].meta
        engines = manager.ensure(force=True)
        second = engines.entries[0][1].meta
        data = {"first": _build_facts(first), "second": _build_facts(second)}
        backend = trt_worker(engines, self.ref.model.name, self.ctx.cfg, env=self.ctx.env)
        try:
            backend.load()
            data["max_abs_diff"] = self.ref.compare(backend)
        finally:
            backend.close()
        cal2, tc2 = second.get("calibration") or {}, second.get("timing_cache") or {}
        missing = [what for what, ok in (("calibration cache", cal2.get("reused_cache")),
                                         ("timing cache", tc2.get("accepted"))) if not ok]
        note = (f"first {first.get('build_seconds')} s ({(first.get('calibration') or {}).get('batches')} calibration "
                f"batches), second {second.get('build_seconds')} s; INT8 max |diff| {data['max_abs_diff']:.2g}")
        if missing:
            return Row(G, "int8 build twice", "FAIL", "the second build did not reuse the " + " and ".join(missing)
                       + f"; {note}", data)
        return Row(G, "int8 build twice", "PASS", f"second build reused the calibration and timing caches; {note}", data)

    def _calibration(self) -> Calibration:
        folder = Path(self.ctx.cache_dir) / "selftest" / "calibration"
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(self.ref.model.sha256.encode() + self.ref.inputs.tobytes()).hexdigest()
        tensors = folder / f"calib-{digest[:16]}.npy"
        if not tensors.exists():
            np.save(tensors, self.ref.inputs, allow_pickle=False)
        return Calibration(tensors, folder / f"calib-{digest[:16]}.cache", digest, len(self.ref.inputs))

    def dla_placement(self) -> Row:
        dla = sorted(t for t in self.engines if "DLA" in t)
        if not dla:
            why = "no DLA engine was built" if self.probe.get("dla_cores") else "this device has no DLA"
            return Row(G, "DLA placement", "SKIP", why)
        p = self.engines[dla[0]].placement or {}
        if p.get("source") != "inspector":
            status = "SKIP" if "no IEngineInspector" in str(p.get("reason")) else "FAIL"
            return Row(G, "DLA placement", status, f"only the prediction is known: {p.get('reason')}", {"placement": p})
        pred = p.get("prediction") or {}
        predicted_gpu = [n for n, _ in pred.get("gpu_layers", [])]
        surprise = [n for n, _ in p["gpu_layers"] if not any(q and q in n for q in predicted_gpu)]
        note = (f"{dla[0]}: {p['dla_subgraphs']} DLA subgraph(s), {p['gpu']} layer(s) on the GPU; predicted "
                f"{pred.get('dla_subgraphs')} subgraph(s), {pred.get('gpu')} GPU layer(s)")
        if surprise:
            note += f"; on the GPU against the prediction: {', '.join(surprise[:5])}"
        return Row(G, "DLA placement", "PASS", note, {"placement": p, "unpredicted_gpu_layers": surprise})

    def dla_all_loaded(self) -> Row:
        cores = int(self.probe.get("dla_cores") or 0)
        if not cores:
            return Row(G, "all DLA engines loaded", "SKIP", "this device has no DLA")
        wanted = []
        for m in self.ctx.configured:
            core = m.dla_core if m.dla_core is not None else self.ctx.cfg.dla_core
            if core is not None:
                wanted.append((load_manifest(m.manifest), m.precision, core, m.max_batch))
        what = "the configured DLA models"
        if not wanted:
            what = "no DLA model is configured: the reference model on every core"
            wanted = [(self.ref.model, "fp16", k, self.ref.max_batch) for k in range(cores)]
        requests = [DlaRequest(m.name, core, mb or m.manifest.batching.max_batch_size) for m, _, core, mb in wanted]
        problems = budget_problems(requests, cores)
        if problems:
            return Row(G, "all DLA engines loaded", "FAIL", "; ".join(problems), {"requests": [r.__dict__ for r in requests]})
        backends, loaded = [], {}
        try:
            for model, precision, core, mb in wanted:
                preprocess = self.ctx.preprocess_for(model) if self.ctx.preprocess_for else None
                engines = EngineManager(model, self.probe, self.ctx.cfg, self.ctx.cache_dir, precision=precision,
                                        dla_core=core, max_batch=mb, env=self.ctx.env, progress=self.ctx.progress,
                                        preprocess=preprocess).ensure()
                backend = trt_worker(engines, model.name, self.ctx.cfg, env=self.ctx.env)
                backends.append(backend)
                backend.load()
                per = int((engines.placement or {}).get("dla_subgraphs") or 1)
                loaded[core] = loaded.get(core, 0) + per * len(engines.entries)
        finally:
            for b in backends:
                b.close()
        return Row(G, "all DLA engines loaded", "PASS", f"{what}: loaded at once, loadables per core {loaded} "
                   f"(at most 16 each)", {"loadables": loaded})

    def bad_plan(self) -> Row:
        events: list[tuple[str, dict]] = []
        manager = self.manager("fp16", None, on_event=lambda k, f: events.append((k, f)))
        said = []
        for variant in ("foreign", "truncated"):
            engines = manager.ensure()
            _, entry = engines.entries[0]
            plan = entry.engine.read_bytes()
            bad = (b"NOT-A-TENSORRT-PLAN-OF-THIS-VERSION" + plan[35:]) if variant == "foreign" else plan[:len(plan) // 2]
            _replace_plan(entry, bad)
            events.clear()
            backend, engines = load_trt(manager, self.ctx.cfg, lambda k, f: events.append((k, f)), self.ctx.env)
            try:
                diff = self.ref.compare(backend)
            finally:
                backend.close()
            kinds = [k for k, _ in events]
            if "engine_invalidated" not in kinds or "engine_built" not in kinds:
                return Row(G, "foreign/corrupt plan", "FAIL", f"{variant} plan was not refused and rebuilt (events {kinds})")
            if diff > self.ref.model.manifest.accuracy.max_abs_diff:
                return Row(G, "foreign/corrupt plan", "FAIL", f"rebuilt engine differs: max |diff| {diff:.3g}")
            said.append(next(f["reason"] for k, f in events if k == "engine_invalidated"))
        return Row(G, "foreign/corrupt plan", "PASS", "a foreign and a truncated plan were refused by TensorRT, "
                   "rebuilt and served", {"tensorrt_said": said})

    def worker_kill(self) -> Row:
        env = dict(self.ctx.env or os.environ)
        env[child.FAULT_DELAY_ENV] = "0.5"  # each batch waits first: the kill lands while a batch is in flight
        events: list[tuple[str, dict]] = []
        on_event = lambda k, f: events.append((k, f))  # noqa: E731
        if "fp16 GPU" in self.engines:
            backend = trt_worker(self.engines["fp16 GPU"], self.ref.model.name, self.ctx.cfg, env=env, on_event=on_event)
            what, tolerance = "TensorRT fp16 worker", self.ref.model.manifest.accuracy.max_abs_diff
        else:
            backend = ort_worker(self.ref.model.onnx_path, self.ref.model.name, self.ctx.cfg, env=env, on_event=on_event)
            what, tolerance = "ONNX Runtime worker (no TensorRT engine here)", WORKER_ORT_TOLERANCE
        quiet = logging.getLogger("edged.worker")  # the crash and restart are this check's point, not news
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            backend.load()
            first = backend.pid
            killer = threading.Timer(0.2, lambda: os.kill(first, signal.SIGKILL))
            killer.start()
            t0 = time.monotonic()
            diff = self.ref.compare(backend)
            killer.join()
            kinds = [k for k, _ in events]
            data = {"events": kinds, "pid_before": first, "pid_after": backend.pid, "max_abs_diff": diff,
                    "seconds": round(time.monotonic() - t0, 3)}
            if "worker_crashed" not in kinds or "worker_restarted" not in kinds or backend.pid == first:
                return Row(G, "worker killed mid-batch", "FAIL", f"{what}: no crash/restart seen ({kinds})", data)
            if diff > tolerance:
                return Row(G, "worker killed mid-batch", "FAIL", f"{what}: retried batch differs by {diff:.3g}", data)
            crash = next(f for k, f in events if k == "worker_crashed")
            return Row(G, "worker killed mid-batch", "PASS", f"{what}: {crash.get('error')}; batch retried on pid "
                       f"{backend.pid} and correct", data)
        finally:
            quiet.setLevel(level)
            backend.close()


def _build_facts(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("build_seconds", "calibration", "timing_cache", "warnings")}


def _replace_plan(entry, data: bytes) -> None:
    """Put ``data`` where the plan was and make its metadata agree, so only TensorRT can refuse it."""
    tmp = entry.engine.with_name(entry.engine.name + ".selftest")
    tmp.write_bytes(data)
    os.replace(tmp, entry.engine)
    meta = json.loads(entry.meta_path.read_text())
    meta.update(engine_bytes=len(data), engine_sha256=sha256_file(entry.engine))
    entry.meta_path.write_text(json.dumps(meta, indent=2))
