"""The paper's synthetic figures drawn from their records: pure plotting, no computing.

Each ``plot_figN(records)`` takes what :mod:`experiments.figures`' ``figN_records``
returns, or the same records read back from the figure's CSVs
(:func:`experiments.figures.read_records`), and returns a matplotlib Figure. Nothing
here runs JAX, builds a world, calls the sweep or touches a file: everything a plot
shows is a column of the figure's CSV, so ``python -m experiments.figures --replot``
redraws every figure from its CSVs alone.
"""

from __future__ import annotations

import math

import numpy as np

from experiments.plotting import design_label, design_style, log_ticks, paper_style, plot_gap_vs_budget

__all__ = ["FIG1_WORLDS", "POOL_SIZE_DESIGNS", "plot_fig1", "plot_fig2", "plot_fig3", "plot_fig4", "plot_fig5", "plot_fig6"]

#: Figure 1's panels, left to right (Figure 3 orders its panels the same way).
FIG1_WORLDS = ("tabular", "contextual")
#: Designs Figure 5's legend names (the union of its panels).
POOL_SIZE_DESIGNS = ("oracle", "plug_in", "uniform", "best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable")


# ------------------------------------------------------------------ figure 1


def plot_fig1(records: dict):
    """Figure 1 from ``{"gap": rows, "band": rows, "panels": rows}``: one panel per row of
    ``panels`` (``world``, ``title``, ``estimator``, ``reference_gap``,
    ``upper_bound_from``, ``upper_bound_from_design``, ``num_edges``), each with its
    world's gap rows, Theorems 4-5's band, the gap of ``pi0`` as a dotted line and the
    budgets ``n <= E`` (each comparison labelled at most once) shaded."""
    import matplotlib.pyplot as plt

    panels = records["panels"]
    if not panels:
        raise ValueError("plot_fig1: records['panels'] is empty (one row per world is needed)")
    paper_style()
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2, 3.0), constrained_layout=True, squeeze=False)
    axes = axes[0]
    for ax, p in zip(axes, panels):
        got = [r for r in records["gap"] if r["world"] == p["world"]]
        plot_gap_vs_budget([r for r in got if np.isfinite(r["mean_gap"])], title=p["title"], ax=ax, prediction=False, legend=False)
        g0 = p["reference_gap"]
        ax.axhline(g0, color="0.4", lw=0.8, ls=":")
        ax.annotate(r"$\pi_0$ itself ($\theta = 0$)", (1.0, g0), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=5.5, color="0.3")
        band = [b for b in records["band"] if b["world"] == p["world"]]
        note = _draw_band(ax, band, p["upper_bound_from"], p["upper_bound_from_design"], max(r["budget"] for r in got))
        _shade_capped(ax, p["num_edges"], min(r["budget"] for r in got))
        _note_missing(ax, got, [note] if note else [])
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    fig.suptitle(f"estimator: {panels[-1]['estimator']}", fontsize=7, x=0.01, ha="left")
    for ax in axes[1:]:
        ax.set_ylabel("")
    return fig


def _shade_capped(ax, num_edges, smallest) -> None:
    """Shade the budgets ``n <= E`` (``num_edges``), where Figure 1 labels each comparison
    at most once (``max_labels_per_edge = auto``); nothing if ``E`` is below the panel."""
    if not (np.isfinite(num_edges) and num_edges >= smallest):
        return
    ax.axvspan(smallest / 1.3, num_edges, color="0.92", lw=0, zorder=0, label=r"$n \leq E$: each pair labelled once at most")


def _draw_band(ax, band, first, first_design, largest) -> str:
    """Each design's [lower, upper] as a vertical bar in its colour (offset a little per
    design, in the order of ``band``, so that bars at one budget do not hide each other).
    Returns a note where no design's upper bound holds inside the panel (``first``: the
    smallest budget from which some design's upper bound holds, that of ``first_design``;
    ``""`` where no design has a band), else ``""``."""
    order = list(dict.fromkeys(b["design"] for b in band))
    for b in band:
        color, _ = design_style(b["design"])
        x = b["budget"] * 1.07 ** (order.index(b["design"]) - (len(order) - 1) / 2)
        ax.plot([x, x], [b["lower"], b["upper"]], color=color, lw=2.2, alpha=0.45, solid_capstyle="butt", zorder=1)
    if band:
        ax.plot([], [], color="0.5", lw=2.2, alpha=0.45, label="Theorems 4-5: lower to upper bound")
    if first_design and first > largest:
        return f"upper bound finite from n = {first:.2g}\n({first_design.replace('_', ' ')}), beyond this panel"
    return ""


def _note_missing(ax, rows, extra=()) -> None:
    """Say in the panel at which budgets most replicates have no MLE (every replicate is
    still averaged, with the gap of its ridge-path limit) or a point has no number (the
    CSV has each row's ``mle_fraction``), then the ``extra`` lines."""
    few, miss = {}, {}
    for r in rows:
        if not np.isfinite(r["mean_gap"]):
            miss.setdefault(r["budget"], []).append(r["design"])
        elif r.get("mle_fraction", r["valid_fraction"]) < 0.5:
            few.setdefault(r["budget"], []).append(r["design"])
    designs = len({r["design"] for r in rows})
    lines = []
    if few:
        parts = [f"n = {n:,}: {'all' if len(d) == designs else len(d)}" for n, d in sorted(few.items())]
        parts = ["; ".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        lines.append("designs with an MLE in under half the replicates\n(their ridge-path limit counts):\n" + "\n".join(parts))
    lines += [f"n = {n:,}: no number for {', '.join(sorted(d))}" for n, d in sorted(miss.items())]
    lines += list(extra)
    if lines:
        txt = ax.text(0.02, 0.02, "\n".join(lines), transform=ax.transAxes, fontsize=4.8, va="bottom", ha="left", color="0.25")
        txt.set_in_layout(False)


# ------------------------------------------------------------------ figure 2


def plot_fig2(rows: list[dict]):
    """Figure 2 from the bounds table's rows: ``n x`` gap against ``n``, a panel per (world, design)."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_fig2: no rows")
    paper_style()
    worlds = list(dict.fromkeys(r["world"] for r in rows))
    designs = list(dict.fromkeys(r["design"] for r in rows))
    fig, axes = plt.subplots(len(worlds), len(designs), figsize=(1.55 * len(designs) + 0.6, 1.9 * len(worlds) + 0.5),
                             constrained_layout=True, sharex=True, squeeze=False)
    for i, world in enumerate(worlds):
        for j, design in enumerate(designs):
            ax = axes[i, j]
            rs = sorted((r for r in rows if r["world"] == world and r["design"] == design), key=lambda r: r["n"])
            n = np.array([r["n"] for r in rs])
            color, marker = design_style(design)
            ax.errorbar(n, n * [r["mc_mean"] for r in rs], yerr=1.96 * n * [r["mc_se"] for r in rs], fmt=marker, color=color,
                        ms=3, lw=0.8, label="MC risk at $\\theta^*$")
            if "bayes_new_mean" in rs[0]:
                ax.errorbar(n, n * [r["bayes_new_mean"] for r in rs], yerr=1.96 * n * [r["bayes_new_se"] for r in rs], fmt="x",
                            color="0.45", ms=3, lw=0.6, label="MC Bayes risk (Thm 5's prior)")
            ax.plot(n, n * [r["asymptotic"] for r in rs], "k--", lw=0.8, label=r"$\frac{\beta}{2}\mathrm{tr}(I\Sigma^+)$")
            if "second_order" in rs[0]:
                so = np.array([r["second_order"] for r in rs])
                ok2 = np.isfinite(so)
                ax.plot(n[ok2], (n * so)[ok2], ":", color="#0072B2", lw=1.1, label="second order (+ $c_2/n$)")
            for key, colour, style, lab in (("lower", "#009E73", "-", "lower bound (Thm 2)"),
                                            ("upper", "#D55E00", "-", "upper bound (Thm 1)"),
                                            ("lower_new", "#009E73", "-", "lower bound (Thm 5)"),
                                            ("upper_new", "#D55E00", "-", "upper bound (Thm 4, $a = 2$)"),
                                            ("upper_tuned", "#D55E00", "--", "upper bound (Thm 4, best $a$)")):
                if key not in rs[0]:
                    continue
                b = np.array([r[key] for r in rs])
                keep = np.isfinite(b) & (b > 0)
                new = key.endswith(("_new", "_tuned"))
                ax.plot(n[keep], (n * b)[keep], style, color=colour, lw=1.1 if new else 0.6, alpha=1.0 if new else 0.45, label=lab)
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Just above its n0 an upper bound is valid but can be astronomically loose: the panel
            # keeps the data in view and lets such a bound leave through the top.
            seen = [n * [r[k] for r in rs] for k in ("mc_mean", "bayes_new_mean", "asymptotic") if k in rs[0]]
            top = np.nanmax(np.concatenate(seen))
            if np.isfinite(top) and top > 0:
                ax.set_ylim(top=30 * top)
            ax.grid(True, which="major", alpha=0.3, lw=0.4)
            if i == 0:
                ax.set_title(design_label(design))
            if j == 0:
                ax.set_ylabel(f"{world.split(' (')[0]}\n$n \\times$ gap (nats)")
            if i == len(worlds) - 1:
                ax.set_xlabel("budget $n$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    return fig


# ------------------------------------------------------------------ figure 3


def plot_fig3(eff: list[dict]):
    """Figure 3 from :func:`experiments.figures.sample_efficiency`'s rows: a panel per world."""
    import matplotlib.pyplot as plt

    if not eff:
        raise ValueError("plot_fig3: no rows")
    paper_style()
    worlds = sorted({r["world"] for r in eff}, key=lambda w: FIG1_WORLDS.index(w) if w in FIG1_WORLDS else 99)
    fig, axes = plt.subplots(1, len(worlds), figsize=(7.2, 3.0), constrained_layout=True, squeeze=False)
    for ax, world in zip(axes[0], worlds):
        er = sorted((r for r in eff if r["world"] == world), key=lambda r: (math.isinf(r["ratio"]), r["ratio"]))
        y = np.arange(len(er))[::-1]
        finite = [r["ratio"] for r in er if math.isfinite(r["ratio"])]
        right = max(finite + [1.0]) * 3
        for yi, r in zip(y, er):
            color, _ = design_style(r["design"])
            if math.isfinite(r["ratio"]):
                extra = bool(r.get("extrapolated", False))  # past the design's last budget: hatched, and the label says so
                ax.barh(yi, r["ratio"], color=color, height=0.7, left=0, edgecolor="k", lw=0.3,
                        alpha=0.45 if extra else 1.0, hatch="..." if extra else None)
                lo, hi = r["ratio_low"], min(r["ratio_high"], right)
                ax.plot([lo, hi], [yi, yi], color="k", lw=0.8)
                ax.text(max(r["ratio"], hi) * 1.1, yi, f"{r['ratio']:.2g}" + (f" (extrapolated past n = {r['last_budget']:,})" if extra else ""),
                        va="center", fontsize=6)
            else:
                ax.barh(yi, right, color=color, height=0.7, alpha=0.25, hatch="///", edgecolor="k", lw=0.3)
                ax.text(right / 1.1, yi, "not reached", va="center", ha="right", fontsize=6)
        ax.axvline(1.0, color="k", lw=0.6, ls="--")
        ax.set_xscale("log")
        log_ticks(ax.xaxis)
        ax.set_xlim(min([r["ratio_low"] for r in er if math.isfinite(r["ratio_low"])] + [1.0]) / 2, right)
        ax.set_yticks(y, [design_label(r["design"]) for r in er])
        ax.set_xlabel(f"labels to match uniform at $n = {er[0]['uniform_budget']:,}$ (ratio)")
        ax.set_title(f"{world} world")
        ax.grid(True, axis="x", which="major", alpha=0.3, lw=0.4)
    return fig


# ------------------------------------------------------------------ figure 4


def plot_fig4(rows: list[dict]):
    """Figure 4 from its rows (one per solved design; ``budget``, ``dim`` and
    ``directions`` are the run's, the same on every row)."""
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_fig4: no rows")
    paper_style()
    fig, ax = plt.subplots(figsize=(4.4, 3.0), constrained_layout=True)
    rand = [x for x in rows if x["kind"] == "random"]
    radii = sorted({x["radius"] for x in rand})
    directions = rows[0]["directions"]
    jitter = {j: (j - (directions - 1) / 2) * 0.012 for j in range(directions)}
    c_plug, m_plug = design_style("plug_in")
    for x in rand:
        xr = x["radius"] * (1 + jitter[x["direction"]]) if x["radius"] > 0 else 0.0
        ax.errorbar(xr, x["gap_ratio"], yerr=1.96 * x["gap_ratio_se"], fmt="o", color=c_plug, ms=3, lw=0.7, alpha=0.8)
    mean_crit = [np.mean([x["criterion_ratio"] for x in rand if x["radius"] == r]) for r in radii]
    bound = [min(x["bound_factor"] for x in rand if x["radius"] == r) for r in radii]
    ax.plot(radii, mean_crit, "-", color="k", lw=1.0, label=r"criterion ratio $\Phi(w_{\theta_0})/\Phi(w^*)$ (mean over directions)")
    ax.plot(radii, bound, ":", color="#D55E00", lw=1.2, label="Theorem 3 bound (smallest over directions)")
    ref = next(x for x in rows if x["kind"] == "reference")
    ax.errorbar(ref["radius"], ref["gap_ratio"], yerr=1.96 * ref["gap_ratio_se"], fmt=m_plug, color="#E69F00", ms=5, mec="k", mew=0.5,
                label=r"plug-in at $\theta_0 = 0$")
    ax.errorbar([], [], yerr=[], fmt="o", color=c_plug, ms=3, label=r"MC gap ratio, $\theta_0 = \theta^* + r u$")
    ax.axhline(1.0, color="0.5", lw=0.5)
    lin = radii[1] if len(radii) > 1 else 0.1
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_xlim(-0.3 * lin, max(radii) * 1.3)
    ax.set_yscale("log")
    top = max(x["gap_ratio"] + 2 * x["gap_ratio_se"] for x in rows) * 2
    ax.set_ylim(0.8, max(top, 2.0))
    ax.set_xlabel(r"$r_0 = \|\theta_0 - \theta^*\|$")
    ax.set_ylabel(f"gap ratio design at $\\theta_0$ / oracle ($n = {rows[0]['budget']:,}$)")
    ax.set_title(f"plug-in robustness, contextual world ($d = {rows[0]['dim']}$)")
    ax.grid(True, which="major", alpha=0.3, lw=0.4)
    ax.legend(frameon=False, loc="upper left", fontsize=6)
    return fig


# ------------------------------------------------------------------ figure 5


def _panel_rows(rows, panel):
    return [r for r in rows if r["panel"] == panel]


def plot_fig5(rows: list[dict]):
    """Figure 5 from its rows: (a) and (b) the parts of the gap against ``K`` (panels
    ``check`` and ``seed003`` at their ``mc_scale``), (c) best-vs-worst's estimation part
    against ``K`` per reward scale, (d) each design's over best-vs-worst's against the scale.
    Pool sizes, designs (in the order of the rows), scales and budgets are read off the rows."""
    import matplotlib.pyplot as plt

    paper_style()
    fig, axes = plt.subplots(2, 2, figsize=(7.4, 6.0), constrained_layout=True)
    info = {}
    for panel in ("check", "seed003"):
        pr = _panel_rows(rows, panel)
        if not pr:
            raise ValueError(f"plot_fig5: no rows of panel {panel!r}")
        info[panel] = {"pool_sizes": sorted({r["num_completions"] for r in pr}), "designs": list(dict.fromkeys(r["design"] for r in pr)),
                       "scale": pr[0]["mc_scale"], "budget": pr[0]["budget"], "scales": sorted({r["theta_scale"] for r in pr})}

    def parts_panel(ax, panel, title):
        p = info[panel]
        rs = [r for r in rows if r["panel"] == panel and r["theta_scale"] == p["scale"]]
        ks = p["pool_sizes"]
        approx = [next(r["approximation"] for r in rs if r["num_completions"] == k) for k in ks]
        ax.plot(ks, approx, "-", color="0.55", lw=2.2, label="approximation part (0 at $K_{max}$)")
        for d in p["designs"]:
            dr = sorted((r for r in rs if r["design"] == d), key=lambda r: r["num_completions"])
            color, marker = design_style(d)
            k = [r["num_completions"] for r in dr]
            ax.plot(k, [r["total_asymptotic"] for r in dr], "-", color=color, lw=0.9, marker=marker, ms=3,
                    label=f"{design_label(d)}: total")
            ax.plot(k, [r["estimation_asymptotic"] for r in dr], "--", color=color, lw=0.8)
            mc = [r for r in dr if np.isfinite(r["estimation_mc"])]
            if mc:
                ax.errorbar([r["num_completions"] for r in mc], [r["estimation_mc"] for r in mc],
                            yerr=[[r["estimation_mc"] - r["estimation_mc_ci_low"] for r in mc],
                                  [r["estimation_mc_ci_high"] - r["estimation_mc"] for r in mc]], fmt=marker, color=color, mfc="none", ms=4, lw=0.7)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-4, linscale=0.3)  # the approximation part is 0 at K_max
        ax.set_ylim(0.0, None)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("completions per prompt $K$ (nested pools)")
        ax.set_ylabel(r"$G_{K_{max}}(\hat\pi_K)$ and its parts (nats)")
        ax.set_title(title, fontsize=7)
        ax.grid(True, which="major", alpha=0.3, lw=0.4)

    c, s = info["check"], info["seed003"]
    parts_panel(axes[0, 0], "check", f"(a) contextual, $d = 15$, $K_{{max}} = {max(c['pool_sizes'])}$, index order, $n = {c['budget']:,}$")
    parts_panel(axes[0, 1], "seed003", f"(b) contextual, $d = 8$, $K_{{max}} = {max(s['pool_sizes'])}$, "
                                       f"$\\pi_0$-sampled order, $n = {s['budget']:,}$, theta_scale {s['scale']:g}")
    co = {r["num_completions"]: r for r in rows if r["panel"] == "coincidence"}
    txt = "sweet_spot = best_vs_worst pair: " + ", ".join(
        f"$K$={k}: {100 * co[k]['coincidence_world']:.0f}%" for k in s["pool_sizes"] if k in co and co[k]["coincidence_world"] != "")
    axes[0, 1].text(0.02, 0.02, txt, transform=axes[0, 1].transAxes, fontsize=5, color="0.25", va="bottom").set_in_layout(False)
    handles = [plt.Line2D([], [], color="0.55", lw=2.2, label="approximation part"),
               plt.Line2D([], [], color="k", lw=0.9, label="total (asymptotic estimation)"),
               plt.Line2D([], [], color="k", lw=0.8, ls="--", label=r"estimation part $\frac{\beta}{2n}\Phi_K$"),
               plt.Line2D([], [], color="k", marker="o", mfc="none", ls="none", ms=4, label="estimation part, Monte Carlo (95%)")]
    for d in POOL_SIZE_DESIGNS:
        color, marker = design_style(d)
        handles.append(plt.Line2D([], [], color=color, marker=marker, ms=4, lw=0.9, label=design_label(d)))
    fig.legend(handles=handles, frameon=False, fontsize=6, loc="outside lower center", ncol=6)

    # (c) best-vs-worst's estimation part against K, relative to the smallest pool, per reward scale
    ax = axes[1, 0]
    scales = s["scales"]
    cmap = plt.get_cmap("viridis")
    for i, sc in enumerate(scales):
        dr = sorted((r for r in rows if r["panel"] == "seed003" and r["theta_scale"] == sc and r["design"] == "best_vs_worst"),
                    key=lambda r: r["num_completions"])
        base = dr[0]["estimation_asymptotic"]
        ax.plot([r["num_completions"] for r in dr], [r["estimation_asymptotic"] / base for r in dr], "-o", ms=3,
                color=cmap(i / max(1, len(scales) - 1)), label=f"theta_scale {sc:g}")
    ax.axhline(1.0, color="0.5", lw=0.5)
    _ratio_axes(ax, s["pool_sizes"], [str(k) for k in s["pool_sizes"]], "completions per prompt $K$",
                f"best-vs-worst estimation part / at $K = {s['pool_sizes'][0]}$",
                "(c) max-vs-min pairs as the pool grows (asymptotic, world of (b))")

    # (d) each design's estimation part over best-vs-worst's at the largest pool, against the reward scale
    ax = axes[1, 1]
    kmax = max(s["pool_sizes"])
    at_kmax = {(r["design"], r["theta_scale"]): r["estimation_asymptotic"] for r in rows
               if r["panel"] == "seed003" and r["num_completions"] == kmax}
    for d in s["designs"]:
        if d == "best_vs_worst":
            continue
        color, marker = design_style(d)
        ax.plot(scales, [at_kmax[d, sc] / at_kmax["best_vs_worst", sc] for sc in scales], "-", marker=marker, color=color, ms=3.5,
                label=design_label(d))
    ax.axhline(1.0, color="0.5", lw=0.6, ls="--")
    _ratio_axes(ax, scales, [f"{x:g}" for x in scales], "reward scale theta_scale (within-prompt reward sd, logits)",
                f"estimation part / best-vs-worst's ($K = {kmax}$)", "(d) below 1: better than max-vs-min (asymptotic)")
    return fig


def _ratio_axes(ax, ticks, tick_labels, xlabel, ylabel, title) -> None:
    """Log-log axes of a ratio panel of Figure 5: the given x ticks, labels, grid and legend."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ticks, tick_labels)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    log_ticks(ax.yaxis)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=7)
    ax.grid(True, which="major", alpha=0.3, lw=0.4)
    ax.legend(frameon=False, fontsize=5.5)


# ------------------------------------------------------------------ figure 6


def plot_fig6(rows: list[dict]):
    """Figure 6 (:func:`experiments.practical.plot_practical`)."""
    from experiments.practical import plot_practical

    return plot_practical(rows)
