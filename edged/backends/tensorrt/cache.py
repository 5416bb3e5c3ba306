"""The engine cache: complete keys, readable names, metadata, atomic writes, one builder at a time.

A TensorRT engine is valid only for the exact model bytes, TensorRT version, GPU (compute
capability; on Jetson also SoC and module), precision, DLA core, batch profile, builder flags and
(INT8) calibration data. Peers key on subsets and users end up deleting ``.engine`` files after
a JetPack upgrade; here the key holds all of it, so an upgrade or a new model is simply a miss.

Files per engine, side by side: ``<stem>.engine`` (the plan), ``<stem>.json`` (the full key, the
plan's sha256 and build facts), ``<stem>.build.log`` (everything TensorRT said). The stem is
readable (``chexnet_1a2b3c4d_trt8.5.2_sm72-tegra194_gpu_fp16_b1-8_<digest>``) and ends in a digest of
the key, so two keys never share a file. Writes go to a temp file and are renamed into place,
plan first, metadata last: metadata that names a plan whose sha256 does not match is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edged.backends.tensorrt.lock import FileLock, lock_held, try_lock
from edged.models.manifest import sha256_file

META_SCHEMA = "edged.engine/v1"


@dataclass(frozen=True)
class DeviceId:
    """What an engine is bound to besides the TensorRT version."""

    compute_capability: str
    soc: str = "unknown"
    module: str = "unknown"
    cuda: str = ""

    @classmethod
    def from_probe(cls, probe: dict) -> "DeviceId":
        """From ``device_probe.py``: the GPU's compute capability, the device tree's SoC and model."""
        gpu = probe.get("gpu") or {}
        compatible = [c for c in (probe.get("compatible") or "").split(",") if c]
        soc = next((c.split(",")[-1] for c in compatible if "tegra" in c), compatible[-1] if compatible else "unknown")
        return cls(gpu.get("compute_capability", "unknown"), soc.replace("nvidia", "").strip() or "unknown",
                   (probe.get("model") or gpu.get("name") or "unknown").strip(), probe.get("cuda") or "")

    def slug(self) -> str:
        return f"sm{self.compute_capability.replace('.', '')}-{_safe(self.soc)}"


@dataclass(frozen=True)
class EngineKey:
    model: str
    model_sha256: str
    trt_version: str
    device: DeviceId
    precision: str
    dla_core: int | None
    batch: tuple[int, int, int]  # (min, opt, max) of the optimization profile; min == max on DLA
    builder_flags: tuple[str, ...] = ()
    calibration_hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batch"] = list(self.batch)
        d["builder_flags"] = sorted(self.builder_flags)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    def stem(self) -> str:
        where = "gpu" if self.dla_core is None else f"dla{self.dla_core}"
        lo, _, hi = self.batch
        return (f"{_safe(self.model)}_{self.model_sha256[:8]}_trt{_safe(self.trt_version)}_{self.device.slug()}_"
                f"{where}_{self.precision}_b{lo}-{hi}_{self.digest()[:10]}")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


@dataclass
class CacheEntry:
    engine: Path
    meta_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.engine.with_suffix(".build.log")


class EngineCache:
    def __init__(self, root: str | Path, lock_timeout_s: float = 6 * 3600):
        self.root = Path(root)
        self.lock_timeout_s = lock_timeout_s

    def paths(self, key: EngineKey) -> CacheEntry:
        stem = key.stem()
        return CacheEntry(self.root / f"{stem}.engine", self.root / f"{stem}.json")

    def lookup(self, key: EngineKey) -> tuple[CacheEntry | None, str]:
        """The cached entry for ``key`` or None with the reason it is not usable."""
        entry = self.paths(key)
        if not entry.meta_path.exists():
            return None, "not built yet"
        try:
            entry.meta = json.loads(entry.meta_path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"unreadable metadata ({exc})"
        if entry.meta.get("key") != key.as_dict():
            return None, "metadata belongs to a different key"
        if not entry.engine.exists():
            return None, "engine file missing"
        if entry.engine.stat().st_size != entry.meta.get("engine_bytes") or sha256_file(entry.engine) != entry.meta.get("engine_sha256"):
            return None, "engine file does not match its recorded sha256 (corrupt or replaced)"
        return entry, "cached"

    def store(self, key: EngineKey, plan: Path, facts: dict[str, Any]) -> CacheEntry:
        """Move the built ``plan`` into place and write its metadata (both atomic renames)."""
        entry = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        os.replace(plan, entry.engine)
        meta = {"schema": META_SCHEMA, "key": key.as_dict(), "engine": entry.engine.name,
                "engine_sha256": sha256_file(entry.engine), "engine_bytes": entry.engine.stat().st_size,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts}
        atomic_write_text(entry.meta_path, json.dumps(meta, indent=2, sort_keys=True))
        entry.meta = meta
        return entry

    def update_meta(self, entry: CacheEntry, **fields: Any) -> None:
        """Add facts learned after the build (e.g. accuracy-gate results) to the metadata, atomically."""
        entry.meta.update(fields)
        atomic_write_text(entry.meta_path, json.dumps(entry.meta, indent=2, sort_keys=True))

    def invalidate(self, key: EngineKey, reason: str) -> None:
        """Drop an engine TensorRT refused (deserialize returned None); keep the log, note why."""
        entry = self.paths(key)
        for p in (entry.meta_path, entry.engine):
            p.unlink(missing_ok=True)
        with open(entry.log, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} [edged] engine invalidated: {reason}\n")

    def get_or_build(self, key: EngineKey, build: Callable[[Path, Path], dict], force: bool = False) -> tuple[CacheEntry, bool, str]:
        """Return ``(entry, built, why)``; ``build(plan_tmp, log)`` runs under the per-key lock.

        The lookup is repeated under the lock: a process that waited for another builder finds
        the engine it just built instead of building it again.
        """
        if not force:
            entry, why = self.lookup(key)
            if entry is not None:
                return entry, False, why
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / f"{key.stem()}.lock", self.lock_timeout_s):
            entry, why = self.lookup(key)
            if entry is not None and not force:
                return entry, False, "built by another process while we waited"
            reason = "forced rebuild" if force else why
            tmp = self.root / f".{key.stem()}.{os.getpid()}.plan.tmp"
            log = self.paths(key).log
            with open(log, "a") as f:
                f.write(f"\n{time.strftime('%Y-%m-%d %H:%M:%S')} [edged] building: {reason}\n")
            try:
                facts = build(tmp, log)
                return self.store(key, tmp, facts), True, reason
            except BaseException as exc:
                with open(log, "a") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} [edged] build failed: {exc}\n")
                raise
            finally:
                tmp.unlink(missing_ok=True)

    def entries(self) -> Iterator[CacheEntry]:
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            if meta.get("schema") == META_SCHEMA:
                yield CacheEntry(meta_path.with_suffix(".engine"), meta_path, meta)

    def verify(self, entry: CacheEntry) -> list[str]:
        """Problems with one entry on disk (empty: intact). Loading it is the worker's job."""
        if not entry.engine.exists():
            return ["engine file missing"]
        problems = []
        if entry.engine.stat().st_size != entry.meta.get("engine_bytes"):
            problems.append("size differs from metadata")
        if sha256_file(entry.engine) != entry.meta.get("engine_sha256"):
            problems.append("sha256 differs from metadata (corrupt or replaced)")
        return problems

    def prune(self, keep: Callable[[CacheEntry], bool], dry_run: bool = False, tmp_age_s: float = 3600,
              on_busy: Callable[[str], None] | None = None) -> list[Path]:
        """Remove entries ``keep`` rejects, orphan plans/logs, old temp files and stale lock files.

        Coordinated with builds: a key whose lock a live process holds is being built right now
        (its log, temp plan and soon its metadata are in use), so none of its files are touched
        and ``on_busy(stem)`` is told. Every other key is pruned while holding its lock, so a
        build cannot start in the middle. Lock and ``.break`` files left by killed processes go
        too. Returns what went (or, with ``dry_run``, what would go).
        """
        candidates: dict[str, list[Path]] = {}
        live: set[str] = set()
        for entry in self.entries():
            stem = entry.meta_path.stem
            if keep(entry):
                live.add(stem)
                continue
            candidates.setdefault(stem, []).extend(p for p in (entry.engine, entry.meta_path, entry.log) if p.exists())
        for p in self.root.glob("*.engine"):
            if p.stem not in live and p not in candidates.get(p.stem, []):
                candidates.setdefault(p.stem, []).append(p)  # a plan without metadata can never be trusted
        for p in self.root.glob("*.build.log"):
            stem = p.name[: -len(".build.log")]
            if stem not in live and p not in candidates.get(stem, []):
                candidates.setdefault(stem, []).append(p)
        lock_files: dict[str, list[Path]] = {}
        for suffix in (".lock", ".lock.break"):
            for p in self.root.glob(f"*{suffix}"):
                lock_files.setdefault(p.name[: -len(suffix)], []).append(p)
        gone: list[Path] = []
        busy: set[str] = set()
        for stem in sorted(set(candidates) | set(lock_files)):
            lock_path = self.root / f"{stem}.lock"
            lock = None if dry_run else try_lock(lock_path)
            if (lock_held(lock_path) if dry_run else lock is None):
                busy.add(stem)
                if on_busy is not None:
                    on_busy(stem)
                continue
            try:
                for p in candidates.get(stem, []):
                    gone.append(p)
                    if not dry_run:
                        p.unlink(missing_ok=True)
            finally:
                if lock is not None:
                    lock.release()  # also removes the lock and .break files, stale ones included
            gone += lock_files.get(stem, [])
        now = time.time()
        for p in self.root.glob(".*.tmp"):
            if any(p.name.startswith(f".{stem}.") for stem in busy):
                continue  # a plan or metadata being written by the build in progress
            try:
                old = now - p.stat().st_mtime > tmp_age_s
            except FileNotFoundError:
                continue
            if old:
                gone.append(p)
                if not dry_run:
                    p.unlink(missing_ok=True)
        return gone


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
