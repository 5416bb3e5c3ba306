"""Will nvpmodel ask for a reboot? A conservative prediction per SoC; nvpmodel has the last word.

No NVIDIA document states the rule. What is known (reference facts, owners' reports):

* Every SoC: a mode whose GPU power-gating masks (``TPC_PG_MASK``, ``FBP_PG_MASK``) differ from
  the current mode's cannot be applied live (the GPU's golden context exists): **reboot**.
* t234 (Orin): owners also report prompts when the online CPU count changes (Orin Nano 7 W,
  AGX Orin 30 W -> MAXN) and some for every change. So: masks or CPU count differ -> **reboot**;
  anything else -> **unknown, nvpmodel decides**.
* t194 (Xavier): a change of online CPU count alone does not prompt -> equal masks: **no reboot**.
* t210 (Nano): its confs have no power-gating settings; switches apply live -> **no reboot**.
* Any other SoC (t186, t264 Thor, unknown) -> **unknown, nvpmodel decides**.

A mask or CPU count that is not known (a profile without a live conf) makes the answer unknown
unless another known difference already says reboot. Whatever is predicted, edged reacts to
nvpmodel's own prompt (:mod:`edged.power.nvpmodel`): a prediction only informs the technician.
"""

from __future__ import annotations

from dataclasses import dataclass

NVPMODEL_DECIDES = "nvpmodel decides"


@dataclass(frozen=True)
class ModeFacts:
    """What the rule needs of one mode; ``masks_known`` is False when a None mask means "not stated"."""

    id: int
    tpc_pg_mask: int | None
    fbp_pg_mask: int | None
    cpus_online: int | None
    masks_known: bool = True


@dataclass(frozen=True)
class RebootPrediction:
    needed: bool | None  # None: unknown, nvpmodel decides
    why: str

    @property
    def label(self) -> str:
        return {True: "yes", False: "no", None: "?"}[self.needed]


def predict_reboot(soc: str | None, a: ModeFacts, b: ModeFacts) -> RebootPrediction:
    """Switching from ``a`` to ``b`` on ``soc`` (``t210``, ``t194``, ``t234``, ...)."""
    if a.id == b.id:
        return RebootPrediction(False, "same mode")
    masks_known = a.masks_known and b.masks_known
    for name, x, y in (("TPC", a.tpc_pg_mask, b.tpc_pg_mask), ("FBP", a.fbp_pg_mask, b.fbp_pg_mask)):
        if x != y and (masks_known or (x is not None and y is not None)):
            return RebootPrediction(True, f"GPU power-gating changes ({name}_PG_MASK {_m(x)} -> {_m(y)})")
    cpus_known = a.cpus_online is not None and b.cpus_online is not None
    if soc == "t234":
        if cpus_known and a.cpus_online != b.cpus_online:
            return RebootPrediction(True, f"online CPUs change ({a.cpus_online} -> {b.cpus_online}); "
                                          "Orin's nvpmodel asks for a reboot then")
        return RebootPrediction(None, f"{NVPMODEL_DECIDES} (Orin prompts for some other switches too)")
    if not masks_known:
        return RebootPrediction(None, f"{NVPMODEL_DECIDES} (power-gating masks not known without the live conf)")
    if soc == "t194":
        return RebootPrediction(False, "same GPU power-gating; Xavier changes online CPUs live")
    if soc == "t210":
        return RebootPrediction(False, "no GPU power-gating settings; Nano switches live")
    return RebootPrediction(None, f"{NVPMODEL_DECIDES} (no rule for SoC {soc or 'unknown'})")


def _m(mask: int | None) -> str:
    return "none" if mask is None else str(mask)
