"""Plotting of experiment records (compute and plotting kept apart).

Every design has one colour and marker across all figures of the project
(``DESIGN_STYLE``, keyed by the registered design name), so a reader can follow a
design from figure to figure. Figures are saved as PNG (300 dpi) and PDF (vector).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["DESIGN_STYLE", "log_ticks", "design_label", "design_style", "plot_gap_vs_budget", "save_figure", "write_csv", "paper_style"]

# Okabe-Ito for the designs the paper compares, then tab20 shades; markers keep
# designs apart in greyscale.
DESIGN_STYLE = {
    "oracle": ("#000000", "o", "oracle $D^*(\\theta^*)$"),
    "plug_in": ("#0072B2", "s", "plug-in $D^*(\\theta_0)$"),
    "two_stage": ("#56B4E9", "D", "two-stage"),
    "uniform": ("#E69F00", "^", "uniform"),
    "reference_weighted": ("#D55E00", "v", "reference-weighted"),
    "first_two": ("#009E73", "<", "first two"),
    "best_vs_worst": ("#CC79A7", ">", "best vs worst"),
    "sweet_spot": ("#F0E442", "P", "sweet spot"),
    "sweet_spot_scalable": ("#bcbd22", "p", "sweet spot (scalable)"),
    "reference_filter": ("#8c564b", "X", "reference-guided"),
    "adpo_greedy": ("#7f7f7f", "*", "greedy D-opt. (ADPO+)"),
    "apo_greedy": ("#c7c7c7", "h", "greedy (APO)"),
    "a_optimal": ("#9467bd", "d", "A-optimal"),
    "d_optimal": ("#17becf", "H", "D-optimal"),
    "first_n": ("#98df8a", "1", "first n"),
    "uncertainty": ("#ff9896", "2", "uncertainty"),
    "most_certain": ("#c49c94", "3", "most certain"),
    "response_selection": ("#1f77b4", "4", "response selection"),
    "prompt_selection": ("#aec7e8", "8", "prompt selection"),
}


def design_style(name: str) -> tuple[str, str]:
    """``(colour, marker)`` of a design; unknown (user-registered) designs get a grey."""
    c, m, _ = DESIGN_STYLE.get(name, ("#555555", "o", name))
    return c, m


def log_ticks(axis) -> None:
    """Label a log axis at decades and 2x/5x steps with plain numbers, no minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def design_label(name: str) -> str:
    return DESIGN_STYLE.get(name, (None, None, name))[2]


def paper_style() -> None:
    """Matplotlib settings for paper-like figures (small serif-free fonts, thin axes)."""
    plt.rcParams.update({
        "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 9, "legend.fontsize": 7,
        "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.linewidth": 0.6, "lines.linewidth": 1.3,
        "lines.markersize": 3.5, "savefig.bbox": "tight", "pdf.fonttype": 42,
    })


def plot_gap_vs_budget(rows, title: str = "", ax=None, prediction: bool = True, legend: bool = True):
    """Gap against budget, log-log, one curve per design with a 95% band and (if
    ``prediction``) the asymptotic prediction as a dashed line of the same colour.

    Args:
      rows: iterable of dicts with keys ``design``, ``budget``, ``mean_gap``,
        ``ci_low``, ``ci_high``, ``predicted_gap``.
      ax: axes to draw on (a new figure if ``None``).
      legend: put a legend to the right of the axes (outside the data).

    Returns:
      The matplotlib figure.
    """
    paper_style()
    by_design = defaultdict(list)
    for r in rows:
        by_design[r["design"]].append(r)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 3.4), constrained_layout=True)
    order = list(DESIGN_STYLE)
    for name, rs in sorted(by_design.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        rs = sorted(rs, key=lambda r: r["budget"])
        n = [r["budget"] for r in rs]
        color, marker = design_style(name)
        ax.plot(n, [r["mean_gap"] for r in rs], marker=marker, ls="-", color=color, label=design_label(name))
        ax.fill_between(n, [max(r["ci_low"], 1e-300) for r in rs], [r["ci_high"] for r in rs], color=color, alpha=0.18, lw=0)
        if prediction:
            ax.plot(n, [r["predicted_gap"] for r in rs], "--", color=color, lw=0.8)
    if prediction:
        ax.plot([], [], "k--", lw=0.8, label=r"$\frac{\beta}{2n}\,\mathrm{tr}(I\,\Sigma^+)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("label budget $n$ (comparisons)")
    ax.set_ylabel(r"gap $J(\pi^*) - J(\hat\pi_n)$ (nats)")
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3, lw=0.4)
    if legend:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def save_figure(fig, out) -> list[Path]:
    """Save ``fig`` as ``<out>.png`` and ``<out>.pdf``; returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in (".png", ".pdf"):
        p = out.with_suffix(ext)
        fig.savefig(p, dpi=300, metadata={"CreationDate": None} if ext == ".pdf" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def write_csv(rows, path) -> Path:
    """Write dict rows to ``path`` atomically (all keys of the first row, in order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path
