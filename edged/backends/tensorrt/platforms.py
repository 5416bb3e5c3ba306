"""What each JetPack ships and what each Jetson GPU can do, for TensorRT decisions and reports.

Two tables, both from NVIDIA's JetPack release notes and the TensorRT support matrix:

- ``RELEASES``: L4T release → JetPack, TensorRT, system Python. The TensorRT version changes
  *within* a JetPack major: 4.6 (R32.6.1) ships 8.0.1 and 4.6.1+ (R32.7.x) 8.2.1; 5.0.2 (R35.1)
  ships 8.4.1 and 5.1.x (R35.2+) 8.5.2; 6.0 (R36.2/R36.3) ships 8.6.2 and 6.1+ (R36.4) 10.3.
  So anything that depends on the TensorRT API keys on the release revision, never on the major.
- ``GPUS``: compute capability → module family, fast FP16/INT8, DLA cores. Nano (Maxwell, SM 5.3)
  and TX2 (Pascal, SM 6.2) have no fast INT8 (no DP4A): TensorRT builds INT8 there "with
  negatively affected performance", so edged refuses INT8 with that reason. Orin Nano has no
  DLA although Orin does: the DLA count comes from the device (``Runtime.num_DLA_cores``), the
  table only explains.

``edged selftest`` compares what the probe found with these tables and says where they differ.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    l4t: str  # "32.7.1": R32 (release), REVISION 7.1
    jetpack: str
    tensorrt: str  # major.minor.patch as JetPack ships it
    python: str


RELEASES = (
    Release("32.6.1", "4.6", "8.0.1", "3.6"),
    Release("32.7.1", "4.6.1", "8.2.1", "3.6"),
    Release("32.7.2", "4.6.2", "8.2.1", "3.6"),
    Release("32.7.3", "4.6.3", "8.2.1", "3.6"),
    Release("32.7.4", "4.6.4", "8.2.1", "3.6"),
    Release("32.7.5", "4.6.5", "8.2.1", "3.6"),
    Release("32.7.6", "4.6.6", "8.2.1", "3.6"),
    Release("35.1.0", "5.0.2", "8.4.1", "3.8"),
    Release("35.2.1", "5.1", "8.5.2", "3.8"),
    Release("35.3.1", "5.1.1", "8.5.2", "3.8"),
    Release("35.4.1", "5.1.2", "8.5.2", "3.8"),
    Release("35.5.0", "5.1.3", "8.5.2", "3.8"),
    Release("35.6.0", "5.1.4", "8.5.2", "3.8"),
    Release("35.6.1", "5.1.5", "8.5.2", "3.8"),
    Release("36.2.0", "6.0 DP", "8.6.2", "3.10"),
    Release("36.3.0", "6.0", "8.6.2", "3.10"),
    Release("36.4.0", "6.1", "10.3.0", "3.10"),
    Release("36.4.3", "6.2", "10.3.0", "3.10"),
    Release("36.4.4", "6.2.1", "10.3.0", "3.10"),
)


@dataclass(frozen=True)
class Gpu:
    family: str
    fast_fp16: bool
    fast_int8: bool
    dla_cores: int  # the most any module of the family has (Orin Nano: 0)


GPUS = {
    "5.3": Gpu("Jetson Nano / TX1 (Maxwell)", True, False, 0),
    "6.2": Gpu("Jetson TX2 (Pascal)", True, False, 0),
    "7.2": Gpu("Jetson Xavier (Volta)", True, True, 2),
    "8.7": Gpu("Jetson Orin (Ampere)", True, True, 2),
}


def release(l4t: str | None) -> Release | None:
    """The release for an L4T version like ``32.7.1`` (or ``R32.7.1``); None when not in the table."""
    if not l4t:
        return None
    key = l4t.lstrip("Rr")
    parts = (key.split(".") + ["0", "0"])[:3]
    key = ".".join(parts)
    return next((r for r in RELEASES if r.l4t == key), None)


def tensorrt_for(l4t: str | None) -> str | None:
    r = release(l4t)
    return r.tensorrt if r else None


def gpu(compute_capability: str | None) -> Gpu | None:
    return GPUS.get(compute_capability or "")


def int8_refusal(compute_capability: str | None) -> str | None:
    """Why INT8 is refused on this GPU, or None where it has fast INT8 (or is unknown)."""
    g = gpu(compute_capability)
    if g is None or g.fast_int8:
        return None
    return (f"{g.family}, compute {compute_capability}, has no fast INT8: TensorRT would build an INT8 engine slower "
            f"than FP16; set precision fp16")


def version_matches(probed: str | None, shipped: str | None) -> bool:
    """Whether TensorRT ``8.2.1.8`` is the ``8.2.1`` a release ships (major.minor.patch)."""
    if not probed or not shipped:
        return False
    return probed.split(".")[:3] == shipped.split(".")[:3]
