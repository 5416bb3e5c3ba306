"""What ``edged tune`` shows: a table of every point per model and mode, and a PNG of throughput
against p99 latency per mode with the chosen point marked.

matplotlib is not a runtime dependency (it is in the ``bench`` and ``test`` extras; a Jetson image
need not carry it): without it the table and the override file are still produced and
:func:`draw_png` says how to get the picture.
"""

from __future__ import annotations

from pathlib import Path

from edged.tune.sweep import Point


def table(points: list[Point], chosen: dict[tuple[str, str], Point | None], slo_ms: float) -> str:
    headers = ["", "MODEL", "MODE", "BATCH", "DELAY ms", "CONC", "REQ", "THROUGHPUT/s", "p50 ms", "p99 ms",
               "MEAN BATCH", "SLO"]
    rows = []
    for p in sorted(points, key=lambda p: (p.model, p.mode, p.max_batch_size, p.max_queue_delay_ms, p.concurrency)):
        mark = "*" if chosen.get((p.model, p.mode)) == p else ""
        rows.append([mark, p.model, p.mode, str(p.max_batch_size), f"{p.max_queue_delay_ms:g}", str(p.concurrency),
                     str(p.requests), f"{p.throughput_per_s:.1f}", f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}",
                     f"{p.mean_batch:.2f}", "ok" if p.meets(slo_ms) else "MISS"])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    lines.append(f"* chosen per model and mode: best throughput with p99 <= {slo_ms:g} ms")
    for (model, mode), p in sorted(chosen.items()):
        if p is None:
            lines.append(f"{model} mode {mode}: no configuration meets the SLO (nothing written for it)")
    return "\n".join(lines)


def draw_png(points: list[Point], chosen: dict[tuple[str, str], Point | None], slo_ms: float, path: Path) -> str:
    """Draw the PNG; returns a sentence saying where it is or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG not drawn: matplotlib is not installed (pip install matplotlib, or edged[bench])"
    models = sorted({p.model for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [p for p in points if p.model == model]
        for i, mode in enumerate(sorted({p.mode for p in mine})):
            pts = [p for p in mine if p.mode == mode]
            color = f"C{i}"
            ax.scatter([p.p99_ms for p in pts], [p.throughput_per_s for p in pts], color=color, alpha=0.7,
                       label=f"mode {mode}")
            best = chosen.get((model, mode))
            if best is not None:
                ax.scatter([best.p99_ms], [best.throughput_per_s], marker="*", s=320, color=color,
                           edgecolors="black", zorder=5, label=f"chosen, mode {mode}")
                ax.annotate(f"batch {best.max_batch_size}, delay {best.max_queue_delay_ms:g} ms, "
                            f"conc {best.concurrency}", (best.p99_ms, best.throughput_per_s),
                            textcoords="offset points", xytext=(8, -14), fontsize=8)
        ax.axvline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
        ax.set_xlabel("p99 latency (ms)")
        ax.set_ylabel("throughput (inferences/s)")
        ax.set_title(f"edged tune: {model}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"PNG: {path}"
