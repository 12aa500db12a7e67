"""The report's chart: one panel per workload that ran, dagexec's bars in one colour.

(a) us per task per shape (grouped bars, largest N); (b) wall time with the parallel
efficiency written on each bar; (c) peak RSS of the process tree (log scale: the
variants that hold every parse are ~25x the others); (d) wall time. A variant that
failed is drawn as an empty bar labelled FAILED, so it is never silently missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

DAGEXEC = "#d95f02"
PEER = "#7570b3"
FLOOR = "#999999"


def _colour(variant: str) -> str:
    if variant.startswith("dagexec"):
        return DAGEXEC
    return FLOOR if variant == "sequential" else PEER


def _hbars(
    ax: Any, rows: list[dict[str, Any]], value: Any, label: Any, title: str, xlabel: str
) -> None:
    names = [r["variant"] for r in rows][::-1]
    vals, labels, colours = [], [], []
    for r in rows[::-1]:
        ok = "error" not in r
        vals.append(value(r) if ok else 0.0)
        labels.append(label(r) if ok else "FAILED")
        colours.append(_colour(r["variant"]))
    y = range(len(names))
    bars = ax.barh(list(y), vals, color=colours)
    top = max(vals, default=1.0) or 1.0
    for bar, text, r in zip(bars, labels, rows[::-1], strict=True):
        bad = "error" in r or r.get("problems")
        ax.text(
            bar.get_width() + top * 0.01 if ax.get_xscale() == "linear" else bar.get_width() * 1.05,
            bar.get_y() + bar.get_height() / 2,
            text + ("  MISMATCH" if bad and "error" not in r else ""),
            va="center",
            fontsize=7,
            color="red" if bad else "black",
        )
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if ax.get_xscale() == "linear":
        ax.set_xlim(0, top * 1.35)


def _overhead(ax: Any, rows: list[dict[str, Any]]) -> None:
    n = max(r["n"] for r in rows)
    rows = [r for r in rows if r["n"] == n]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(len(variants), 1)
    peers = iter(["#999999", "#7570b3", "#1b9e77", "#66a61e", "#e7298a"])
    ours = iter([DAGEXEC, "#fdae61", "#a6611a"])
    for j, v in enumerate(variants):
        xs, hs = [], []
        for i, shape in enumerate(shapes):
            r = next((r for r in rows if r["variant"] == v and r["shape"] == shape), None)
            if r is None:
                continue
            xs.append(i + (j - (len(variants) - 1) / 2) * width)
            hs.append(r.get("us_per_task", 0.0) if "error" not in r else 0.0)
        colour = next(ours) if v.startswith("dagexec") else next(peers)
        ax.bar(xs, hs, width, label=v, color=colour)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, fontsize=8)
    ax.set_ylabel("us per task (build + run)", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 8)  # room for the legend
    ax.set_title(f"(a) scheduling overhead, no-op tasks, N={n:,}", fontsize=9)
    ax.legend(fontsize=6, loc="upper center", ncol=3)
    ax.tick_params(axis="y", labelsize=7)


def draw(report: dict[str, Any], path: Path) -> None:
    """Draw the report's chart to ``path`` (PNG)."""
    wl = report["workloads"]
    panels = [w for w in ("a", "b", "c", "d") if wl.get(w)]
    if not panels:
        return
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7 * cols, 4.2 * nrows), squeeze=False)
    for ax, w in zip(axes.flat, panels, strict=False):
        rows = wl[w]
        if w == "a":
            _overhead(ax, rows)
        elif w == "b":
            _hbars(
                ax, rows, lambda r: r["wall_s"],
                lambda r: f"{r['wall_s']:.2f} s" + (f", eff {r['efficiency']:.2f}" if "efficiency" in r else ""),
                "(b) CPU fan-out with shared work: wall time", "seconds (median)",
            )  # fmt: skip
        elif w == "c":
            ax.set_xscale("log")
            _hbars(
                ax, rows, lambda r: r["peak_rss"] / 2**20,
                lambda r: f"{r['peak_rss'] / 2**20:.0f} MB",
                "(c) memory: peak RSS of the process tree", "MB (log scale)",
            )  # fmt: skip
            top = max((r["peak_rss"] / 2**20 for r in rows if "error" not in r), default=1.0)
            ax.set_xlim(10, top * 4)
        else:
            _hbars(
                ax, rows, lambda r: r["wall_s"],
                lambda r: f"{r['wall_s']:.2f} s" + (f", {r['speedup']:.2f}x" if "speedup" in r else ""),
                "(d) standard-library lint: wall time", "seconds (median)",
            )  # fmt: skip
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    m = report["machine"]
    fig.suptitle(
        f"dagexec benchmark report ({report['mode']} mode): {m['workers']} workers, "
        f"{m['cores_physical']} physical cores, {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
