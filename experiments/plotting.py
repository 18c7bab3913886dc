"""Plotting of experiment records (compute and plotting kept apart).

Each design has one colour across every figure of the project (``DESIGN_COLORS``).
"""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["DESIGN_COLORS", "DESIGN_LABELS", "plot_gap_vs_budget"]

DESIGN_COLORS = {
    "oracle": "#000000",
    "plugin": "#0072B2",
    "uniform": "#E69F00",
    "reference": "#D55E00",
    "first_two": "#009E73",
}
DESIGN_LABELS = {
    "uniform": "uniform over edges",
    "reference": "reference-weighted",
    "first_two": "first two completions",
}


def plot_gap_vs_budget(rows, title: str = ""):
    """Gap against budget, log-log, one curve per design with a 95% band and the
    asymptotic prediction as a dashed line of the same colour.

    Args:
      rows: iterable of dicts with keys ``design``, ``budget``, ``mean_gap``,
        ``ci_low``, ``ci_high``, ``predicted_gap``.

    Returns:
      The matplotlib figure.
    """
    by_design = defaultdict(list)
    for r in rows:
        by_design[r["design"]].append(r)
    fig, ax = plt.subplots(figsize=(5.2, 3.8), constrained_layout=True)
    for name, rs in by_design.items():
        rs = sorted(rs, key=lambda r: r["budget"])
        n = [r["budget"] for r in rs]
        color = DESIGN_COLORS.get(name)
        label = DESIGN_LABELS.get(name, name)
        ax.plot(n, [r["mean_gap"] for r in rs], "o-", color=color, label=label, lw=1.6, ms=4)
        ax.fill_between(n, [max(r["ci_low"], 1e-300) for r in rs], [r["ci_high"] for r in rs], color=color, alpha=0.2, lw=0)
        ax.plot(n, [r["predicted_gap"] for r in rs], "--", color=color, lw=1.0)
    ax.plot([], [], "k--", lw=1.0, label=r"$\frac{\beta}{2n}\,\mathrm{tr}(I\,\Sigma^+)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("label budget $n$ (comparisons)")
    ax.set_ylabel(r"optimality gap $J(\pi^*) - J(\hat\pi_n)$ (nats)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25, lw=0.5)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    return fig
