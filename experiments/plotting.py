"""Plotting of experiment records (compute and plotting kept apart).

Every design has one colour and marker across all figures of the project
(``DESIGN_STYLE``, keyed by the registered design name), so a reader can follow a
design from figure to figure. Figures are saved as PNG (300 dpi) and PDF (vector).
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

# No backend is set here: notebooks keep their inline backend, and a script without
# a display gets Agg from matplotlib's own fallback (scripts that save files may call
# ``matplotlib.use("Agg")`` in their entry point).

__all__ = ["DESIGN_STYLE", "log_ticks", "budget_ticks", "design_label", "design_style", "plot_gap_vs_budget", "save_figure", "write_csv", "paper_style"]

# Okabe-Ito for the designs the paper compares, then tab20 shades; markers keep
# designs apart in greyscale. Figures label a design by its registered name, the
# name a user types (design=<name>), so a figure and a config read the same.
DESIGN_STYLE = {
    "oracle": ("#000000", "o"),
    "plug_in": ("#0072B2", "s"),
    "two_stage": ("#56B4E9", "D"),
    "uniform": ("#E69F00", "^"),
    "reference_weighted": ("#D55E00", "v"),
    "first_two": ("#009E73", "<"),
    "best_vs_worst": ("#CC79A7", ">"),
    "sweet_spot": ("#F0E442", "P"),
    "sweet_spot_scalable": ("#bcbd22", "p"),
    "sweet_spot_pm2sigma": ("#dbdb8d", "P"),
    "reference_filter": ("#8c564b", "X"),
    "reference_filter_labelled": ("#c49c94", "X"),
    "adpo_greedy": ("#7f7f7f", "*"),
    "apo_greedy": ("#8c8c8c", "h"),
    "apo_sequential": ("#7b7b7b", "h"),
    "a_optimal": ("#9467bd", "d"),
    "d_optimal": ("#17becf", "H"),
    "first_n": ("#98df8a", "1"),
    "uncertainty": ("#ff9896", "2"),
    "most_certain": ("#c49c94", "3"),
    "response_selection": ("#1f77b4", "4"),
    "prompt_selection": ("#aec7e8", "8"),
    "adpo_adaptive": ("#e377c2", "*"),
    "sequential_plug_in": ("#3f007d", "s"),
    "uncertainty_adaptive": ("#d62728", "2"),
    "most_certain_adaptive": ("#ff7f0e", "3"),
}


def design_style(name: str) -> tuple[str, str]:
    """``(colour, marker)`` of a design; unknown (user-registered) designs get a grey."""
    return DESIGN_STYLE.get(name, ("#555555", "o"))


def log_ticks(axis) -> None:
    """Label a log axis at decades and 2x/5x steps with plain numbers, no minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def budget_ticks(axis, budgets) -> None:
    """Label a log axis at exactly the budgets that were run (plain numbers, no minor labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, StrMethodFormatter

    ticks = sorted({float(b) for b in budgets})
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


def design_label(name: str) -> str:
    """The legend label of a design: its registered name."""
    return name


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
        ``ci_low``, ``ci_high``, ``predicted_gap`` (and ``world``, ``estimator``, ``config``:
        rows that differ in any of them are separate curves, labelled by what differs).
      ax: axes to draw on (a new figure if ``None``).
      legend: put a legend to the right of the axes (outside the data).

    Returns:
      The matplotlib figure.
    """
    paper_style()
    # one curve per world, estimator, design and config (rows that share a design name but not the rest are
    # other curves; experiments.records puts what else tells them apart in the config)
    series = defaultdict(list)
    for r in rows:
        series[(r["design"], r.get("world", ""), r.get("estimator", ""), r.get("config") or "")].append(r)
    several = {k: len({r.get(k, "") for r in rows}) > 1 for k in ("world", "estimator")}
    if ax is None:
        _, ax = plt.subplots(figsize=(5.6, 3.4), constrained_layout=True)
    order = list(DESIGN_STYLE)
    styles = ["-", "-.", ":", (0, (5, 1))]
    seen: dict = {}
    # An interval that reaches 0 or below (Student's t over a few allocation draws of a skewed
    # gap) is drawn down to the panel's floor: a third of its smallest positive mean or
    # interval end, which becomes the axis' bottom, instead of to 1e-300 (the old clip).
    positive = [v for r in rows for v in (r["mean_gap"], r["ci_low"]) if math.isfinite(v) and v > 0]
    floor = min(positive) / 3 if positive else 1e-300
    clipped = False
    for (name, world, estimator, config), rs in sorted(series.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else len(order), kv[0])):
        rs = sorted(rs, key=lambda r: r["budget"])
        n = [r["budget"] for r in rs]
        color, marker = design_style(name)
        ls = styles[seen.setdefault(name, 0) % len(styles)]
        seen[name] += 1
        tags = [v for k, v in (("world", world), ("estimator", estimator)) if several[k]] + ([config] if config else [])
        label = f"{design_label(name)} [{', '.join(tags)}]" if tags else design_label(name)
        ax.plot(n, [r["mean_gap"] for r in rs], marker=marker, ls=ls, color=color, label=label)
        clipped |= any(r["ci_low"] <= 0 for r in rs)  # a row without an interval (nan) has no band
        ax.fill_between(n, [floor if r["ci_low"] <= 0 else r["ci_low"] for r in rs], [r["ci_high"] for r in rs], color=color, alpha=0.18, lw=0)
        if prediction:
            ax.plot(n, [r["predicted_gap"] for r in rs], "--", color=color, lw=0.8)
    if prediction:
        ax.plot([], [], "k--", lw=0.8, label=r"$\frac{\beta}{2n}\,\mathrm{tr}(I\,\Sigma^+)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if clipped:
        ax.set_ylim(bottom=floor)
    budget_ticks(ax.xaxis, [r["budget"] for r in rows])
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


def write_csv(rows, path, fieldnames=None) -> Path:
    """Write dict rows to ``path`` atomically (``fieldnames``, default all keys of the
    first row, in order; with no rows, ``fieldnames`` gives the header)."""
    path = Path(path)
    if not rows and fieldnames is None:
        raise ValueError(f"write_csv: no rows for {path} and no fieldnames for its header")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path
