"""Ask an interpreter what it can host, without importing anything heavy into the daemon.

Backend selection needs to know whether the Jetson system Python imports ``tensorrt`` and sees
a GPU. Importing TensorRT initializes CUDA (seconds on a Nano) and may crash on a broken
install, so the question is asked in a throw-away child running ``device_probe.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

PROBE_PATH = Path(__file__).with_name("device_probe.py").resolve()


def probe_python(python_exe: str, timeout_s: float = 120.0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the child's probe dict; ``{"ok": False, "error": ...}`` when it cannot even run."""
    try:
        proc = subprocess.run(
            [python_exe, "-B", str(PROBE_PATH)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            env=env,
        )
    except FileNotFoundError:
        return {"ok": False, "error": f"{python_exe}: no such interpreter"}
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"{python_exe} did not finish probing within {timeout_s:g} s"}
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return {"ok": False, "error": f"{python_exe} probe exited with {proc.returncode}: {' | '.join(tail)}"}
    try:
        out = json.loads(lines[-1])
    except ValueError:
        return {"ok": False, "error": f"{python_exe} probe printed no JSON: {lines[-1][:200]}"}
    out["ok"] = True
    return out
