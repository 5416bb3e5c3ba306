"""``edged selftest`` group ``secondary``: detector + secondary classifiers timed per frame, on the
backends this device would serve them with.

For each configured camera detector with secondary classifiers, both models are loaded as the
daemon loads them (:func:`edged.backends.selection.make_backend`: the TensorRT engine on a Jetson
when the config asks for it, built into the self-test's own cache, never the daemon's; ONNX
Runtime elsewhere), then a frame of the detector's input size is inferred and 0, 1, 4 and 16
crops per classifier are classified in one batch each (as the classifier's batcher forms them, up
to its ``max_batch_size``), ``repeats`` times. The row reports median milliseconds per frame for
each object count and per crop. Inputs are synthetic: the row times the networks on this device,
not a camera (CPU of cropping and the capture path are ``make bench-sgie``'s).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from edged.selftest.report import Row

COUNTS = (0, 1, 4, 16)


def _time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def secondary_rows(config: Any, cache_dir: Path, repeats: int = 5) -> list[Row]:
    import numpy as np

    from edged.backends.selection import make_backend
    from edged.models.manifest import load_manifest

    if config is None:
        return [Row("secondary", "detector + secondary", "SKIP", "no configuration given")]
    pairs = {(m.name, tuple(s.model for s in m.secondary)) for cam in config.cameras for m in cam.models if m.secondary}
    if not pairs:
        return [Row("secondary", "detector + secondary", "SKIP", "no camera has secondary classifiers")]
    cfg = config.model_copy(update={"cache_dir": cache_dir})
    entries = {e.name: e for e in cfg.models}
    rows = []
    for detector, secondaries in sorted(pairs):
        target = f"{detector} + {'+'.join(secondaries)}"
        loaded = []
        try:
            for name in (detector, *secondaries):
                model = load_manifest(cfg.manifest_path(entries[name]))
                backend, reason = make_backend(cfg, entries[name], model)
                spec = model.manifest.input
                shape = (spec.channels, spec.height, spec.width) if spec.layout == "NCHW" else \
                    (spec.height, spec.width, spec.channels)
                loaded.append((name, backend, shape, reason))
            (_, det, det_shape, det_reason), classifiers = loaded[0], loaded[1:]
            frame = np.zeros((1, *det_shape), np.float32)
            det.infer(frame)  # first call allocates
            per_frame = {}
            for n in COUNTS:
                crops = [np.random.default_rng(n).random((max(n, 1), *shape), dtype=np.float32)
                         for _, _, shape, _ in classifiers]

                def run(n: int = n, crops: list = crops) -> None:
                    det.infer(frame)
                    for (_, backend, _, _), batch in zip(classifiers, crops):
                        if n:
                            backend.infer(batch[:n])
                run()
                per_frame[n] = round(_time(run, repeats), 2)
            per_crop = round((per_frame[16] - per_frame[0]) / 16 / max(1, len(classifiers)), 3)
            note = (f"ms per frame with 0/1/4/16 objects: {per_frame[0]}/{per_frame[1]}/{per_frame[4]}/"
                    f"{per_frame[16]}; {per_crop} ms per crop per classifier; {det_reason}")
            rows.append(Row("secondary", target, "PASS", note[:300],
                            {"ms_per_frame": per_frame, "ms_per_crop": per_crop,
                             "backends": {name: reason for name, _, _, reason in loaded}}))
        except Exception as exc:
            rows.append(Row("secondary", target, "FAIL", f"{type(exc).__name__}: {exc}"[:300]))
        finally:
            for _, backend, _, _ in loaded:
                backend.close()
    return rows
