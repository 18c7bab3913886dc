"""The paper's synthetic figures, each from records that a tested function made.

    python -m experiments.figures                 # all five figures (see the README for the wall time)
    python -m experiments.figures --only fig1 fig3
    python -m experiments.figures --small --out /tmp/figs --results /tmp/res   # a minute, for a smoke test

1. ``fig1_gap_vs_budget``: Figure 1 of the paper, tabular and linear contextual panels:
   Monte-Carlo gap against budget per design (95% bands), from the sweep grids
   ``experiment=figure1_tabular`` and ``experiment=figure1_contextual``.
2. ``fig2_theory_vs_simulation``: ``n x`` gap against ``n``: Monte-Carlo risk, Bayes
   risk, the lower and upper bounds and the asymptotic line, per design
   (:mod:`experiments.bounds_table` makes the data).
3. ``fig3_sample_efficiency``: labels each design needs to reach uniform's gap at the
   largest budget, as a ratio to that budget (from Figure 1's records).
4. ``fig4_plug_in_robustness``: Monte-Carlo gap of the design solved at ``theta0``
   over the oracle's, against ``||theta0 - theta*||``, with the exact criterion ratio
   and the Theorem 3 bound.
5. ``fig5_pool_size``: gap against completions per prompt ``K`` at a fixed budget.

Cells of Figures 1 and 5 are cells of the sweep app (:mod:`experiments.sweep`): the
same ids, files and resumability, so a grid run through a Hydra launcher elsewhere
is picked up here, and an interrupted run resumes. Figure 4's items are cached the
same way. Every figure is written as PNG and PDF with the CSV of its data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from experiments import sweep  # noqa: E402
from experiments.plotting import design_label, design_style, log_ticks, paper_style, plot_gap_vs_budget, save_figure, write_csv  # noqa: E402

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5")
FIG1_WORLDS = ("tabular", "contextual")
POOL_SIZE_DESIGNS = ("oracle", "uniform", "best_vs_worst", "sweet_spot")

# --small: the same pipeline on small worlds, few replicates and budgets (tests, smoke runs).
SMALL = {
    "fig1_tabular": ["world.params.num_completions=8", "num_replicates=20", "design=oracle,uniform,first_two,two_stage", "budget=200,2000"],
    "fig1_contextual": ["num_replicates=20", "design=oracle,plug_in,uniform,best_vs_worst", "budget=200,2000"],
    "fig4": {"radii": [0.0, 0.5, 2.0], "directions": 2, "replicates": 20, "budget": 1000},
    "fig5": {"pool_sizes": [2, 4, 6], "replicates": 20, "budget": 500},
    "fig2_replicates": 20,
    "fig2_max_budget": 1e5,
}
FULL = {
    "fig4": {"radii": [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0], "directions": 4, "replicates": 200, "budget": 3000},
    "fig5": {"pool_sizes": [2, 3, 4, 6, 8, 12, 16], "replicates": 200, "budget": 2000},
    "fig2_replicates": 400,
    "fig2_max_budget": 1e10,
}


# ------------------------------------------------------------------ cells


# ------------------------------------------------------------------ figure 1 and 3


def figure1(out: Path, results: Path, small: bool, progress: bool = True) -> list[dict]:
    import matplotlib.pyplot as plt

    paper_style()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), constrained_layout=True)
    rows = []
    for ax, world in zip(axes, FIG1_WORLDS):
        exp = f"figure1_{world}"
        jobs = sweep.grid(exp, SMALL[f"fig1_{world}"] if small else ())
        paths = sweep.run_jobs(jobs, results / exp, progress, desc=exp)
        got = sweep.aggregate_files(paths)
        rows += got
        cfg = sweep.compose_job(jobs[0])
        title = {
            "tabular": f"tabular ($d = {cfg.world.params.num_completions}$, one prompt)",
            "contextual": "linear contextual (held-out prompts)",
        }[world]
        estimator = _ESTIMATOR_LABEL.get(cfg.estimator.name, cfg.estimator.name)
        plot_gap_vs_budget([r for r in got if np.isfinite(r["mean_gap"])], title=title, ax=ax, prediction=False, legend=False)
        g0 = reference_gap(cfg)
        ax.axhline(g0, color="0.4", lw=0.8, ls=":")
        ax.annotate(r"$\pi_0$ itself ($\theta = 0$)", (1.0, g0), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=5.5, color="0.3")
        for r in got:
            r["reference_gap"] = g0
        _note_missing(ax, got)
    handles, labels = axes[0].get_legend_handles_labels()
    for h, lab in zip(*axes[1].get_legend_handles_labels()):
        if lab not in labels:
            handles.append(h)
            labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    fig.suptitle(f"estimator: {estimator}", fontsize=7)
    axes[1].set_ylabel("")
    write_csv(rows, out / "fig1_gap_vs_budget.csv")
    save_figure(fig, out / "fig1_gap_vs_budget")
    return rows


_ESTIMATOR_LABEL = {"newton": "DPO MLE (ridge-path limit where it does not exist), all replicates",
                    "map": "MAP DPO (Gaussian prior)", "optax": "gradient DPO (optax)"}


def reference_gap(cfg) -> float:
    """The gap of the reference policy itself, ``G(0)`` on the evaluation pool: what not training gives."""
    from experiments.cell import float64
    from experiments.worlds import make_world
    from theory import optimality_gap

    with float64():
        world = make_world(cfg.world, jax.random.key(cfg.world_seed))
        ev = world.eval
        return float(optimality_gap(jnp.zeros(world.theta_star.shape[0]), world.theta_star, ev.features, ev.log_ref, world.beta,
                                    ev.prompt_weights))


def _note_missing(ax, rows) -> None:
    """Say in the panel at which budgets most replicates have no MLE (every replicate is
    still averaged, with the gap of its ridge-path limit) or a point has no number; the
    CSV has each row's ``mle_fraction``."""
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
        lines.append("designs with an MLE in under half the replicates\n(their ridge-path limit counts):\n" + "; ".join(parts))
    lines += [f"n = {n:,}: no number for {', '.join(sorted(d))}" for n, d in sorted(miss.items())]
    if lines:
        txt = ax.text(0.02, 0.02, "\n".join(lines), transform=ax.transAxes, fontsize=4.8, va="bottom", ha="left", color="0.25")
        txt.set_in_layout(False)


def labels_to_match(budgets, gaps, target: float, plateau_slope: float = -0.5) -> float:
    """Budget at which a design's gap curve reaches ``target``.

    Log-log linear interpolation between the measured budgets; beyond them, the end
    segment's power law is extended if it still falls at least like ``n^plateau_slope``,
    otherwise the target is taken as not reached (``inf``).
    """
    n = np.log(np.asarray(budgets, np.float64))
    g = np.log(np.maximum(np.asarray(gaps, np.float64), 1e-300))
    if n.size < 2:
        raise ValueError("labels_to_match needs at least two budgets")
    t = math.log(target)
    for i in range(n.size - 1):
        lo, hi = sorted((g[i], g[i + 1]))
        if lo <= t <= hi and g[i] != g[i + 1]:
            return float(math.exp(n[i] + (t - g[i]) * (n[i + 1] - n[i]) / (g[i + 1] - g[i])))
    if t < g.min():
        slope = (g[-1] - g[-2]) / (n[-1] - n[-2])
        return float(math.exp(n[-1] + (t - g[-1]) / slope)) if slope <= plateau_slope else math.inf
    slope = (g[1] - g[0]) / (n[1] - n[0])
    return float(math.exp(n[0] + (t - g[0]) / slope)) if slope <= plateau_slope else math.inf


def sample_efficiency(rows: list[dict]) -> list[dict]:
    """Per (world, design): labels to reach uniform's mean gap at the largest budget, over that budget.

    The interval uses the design's 95% band (its upper curve needs more labels).
    """
    out = []
    rows = [r for r in rows if np.isfinite(r["mean_gap"]) and r["valid_fraction"] >= 0.5]
    for world in sorted({r["world"] for r in rows}):
        wr = [r for r in rows if r["world"] == world]
        uni = sorted((r for r in wr if r["design"] == "uniform"), key=lambda r: r["budget"])
        if not uni:
            continue
        n_max, target = uni[-1]["budget"], uni[-1]["mean_gap"]
        for design in sorted({r["design"] for r in wr}):
            rs = sorted((r for r in wr if r["design"] == design), key=lambda r: r["budget"])
            b = [r["budget"] for r in rs]
            if len(b) < 2:
                continue
            out.append({
                "world": world, "design": design, "target_gap": target, "uniform_budget": n_max,
                "ratio": labels_to_match(b, [r["mean_gap"] for r in rs], target) / n_max,
                "ratio_low": labels_to_match(b, [r["ci_low"] for r in rs], target) / n_max,
                "ratio_high": labels_to_match(b, [r["ci_high"] for r in rs], target) / n_max,
            })
    return out


def figure3(out: Path, rows: list[dict]) -> list[dict]:
    import matplotlib.pyplot as plt

    paper_style()
    eff = sample_efficiency(rows)
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
                ax.barh(yi, r["ratio"], color=color, height=0.7, left=0, edgecolor="k", lw=0.3)
                lo, hi = r["ratio_low"], min(r["ratio_high"], right)
                ax.plot([lo, hi], [yi, yi], color="k", lw=0.8)
                ax.text(max(r["ratio"], hi) * 1.1, yi, f"{r['ratio']:.2g}", va="center", fontsize=6)
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
    write_csv(eff, out / "fig3_sample_efficiency.csv")
    save_figure(fig, out / "fig3_sample_efficiency")
    return eff


# ------------------------------------------------------------------ figure 2


def figure2(out: Path, results: Path, small: bool) -> list[dict]:
    import csv

    import matplotlib.pyplot as plt

    from experiments import bounds_table

    spec = SMALL if small else FULL
    data = results / "bounds_table"
    csv_path = data.with_suffix(".csv")
    argv = ["--replicates", str(spec["fig2_replicates"]), "--max-budget", str(spec["fig2_max_budget"]), "--out", str(data),
            "--plug-in-draws", "0" if small else "5"]
    # The table is reused only if the same arguments and the same code made it.
    version = json.dumps({"argv": argv, "code": sweep.code_version(("experiments.bounds_table",))})
    stamp = data.with_suffix(".version")
    if not (csv_path.exists() and stamp.exists() and stamp.read_text() == version):
        bounds_table.main(argv)
        stamp.write_text(version)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k not in ("world", "design"):
                r[k] = float(v) if v not in ("True", "False") else v == "True"
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
            ax.errorbar(n, n * [r["bayes_mean"] for r in rs], yerr=1.96 * n * [r["bayes_se"] for r in rs], fmt="x", color="0.45",
                        ms=3, lw=0.6, label="MC Bayes risk (prior)")
            ax.plot(n, n * [r["asymptotic"] for r in rs], "k--", lw=0.8, label=r"$\frac{\beta}{2}\mathrm{tr}(I\Sigma^+)$")
            lower = np.array([r["lower"] for r in rs])
            ax.plot(n[lower > 0], (n * lower)[lower > 0], "-", color="#009E73", lw=1.0, label="lower bound (Thm 2)")
            up = np.array([r["upper"] for r in rs])
            ok = np.isfinite(up)
            ax.plot(n[ok], (n * up)[ok], "-", color="#D55E00", lw=1.0, label="upper bound (Thm 1)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3, lw=0.4)
            if i == 0:
                ax.set_title(design_label(design))
            if j == 0:
                ax.set_ylabel(f"{world.split(' (')[0]}\n$n \\times$ gap (nats)")
            if i == len(worlds) - 1:
                ax.set_xlabel("budget $n$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5, frameon=False)
    write_csv(rows, out / "fig2_theory_vs_simulation.csv")
    save_figure(fig, out / "fig2_theory_vs_simulation")
    return rows


# ------------------------------------------------------------------ figure 4


def plug_in_item(world, problem, theta0, budget: int, replicates: int, key) -> dict:
    """Gap of the L-optimal design solved at ``theta0``, rounded to ``budget`` labels."""
    from synthetic.monte_carlo import replicate_gaps
    from synthetic.rounding import round_design
    from theory import bounds as TB
    from theory import design_criterion, optimal_design

    z = problem.edges.diffs
    theta0 = jnp.asarray(theta0)
    sol = optimal_design(z, theta0, problem.curvature(theta0), world.beta, tol=1e-4)
    k_round, k_rep = jax.random.split(key)
    counts = round_design(k_round, np.asarray(sol.weights), budget, "efficient").dense_counts(problem.num_edges)
    res = replicate_gaps(jax.random.split(k_rep, replicates), world.theta_star, z, counts, world.beta, world.eval)
    ev = world.eval
    curv = problem.curvature(world.theta_star)
    return {
        "gap_mean": float(np.mean(res.gap)), "gap_se": float(np.std(res.gap, ddof=1) / math.sqrt(replicates)),
        "valid_fraction": float(np.mean(res.valid)),
        "mle_fraction": float(np.mean(getattr(res, "mle_exists", res.valid))),
        "criterion": float(design_criterion(jnp.asarray(counts / budget), world.theta_star, z, curv, world.beta)),
        "weights_criterion": float(design_criterion(sol.weights, world.theta_star, z, curv, world.beta)),
        "bound_factor": TB.plug_in_factor(theta0, world.theta_star, ev.features, ev.log_ref, z, world.beta, sol.relative_certificate),
    }


def figure4(out: Path, results: Path, small: bool, progress: bool = True) -> list[dict]:
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    from experiments.worlds import make_world
    from synthetic.designs import design_problem

    spec = (SMALL if small else FULL)["fig4"]
    cfg = sweep.compose_job(["experiment=figure1_contextual"])
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    problem = design_problem(world)
    d = world.dim
    rng = np.random.default_rng(2026)
    dirs = rng.normal(size=(spec["directions"], d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    items = [("reference", -1, float(np.linalg.norm(world.theta_star)))]
    items += [("random", j, r) for r in spec["radii"] for j in range(spec["directions"]) if r > 0 or j == 0]
    cache = results / "fig4"
    code = sweep.code_version(("experiments.figures",))  # plug_in_item lives here
    rows = []
    for kind, j, r in tqdm(items, desc="fig4", unit="design", disable=not progress):
        theta0 = np.zeros(d) if kind == "reference" else np.asarray(world.theta_star) + r * (dirs[j] if r > 0 else 0.0)
        ident = {"kind": kind, "direction": j, "radius": r, "budget": spec["budget"], "replicates": spec["replicates"],
                 "world": OmegaConf.to_container(cfg.world), "world_seed": cfg.world_seed}
        cid = "fig4_" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        path = cache / f"{cid}.npz"
        got = _read_item(path, code)
        if got is None:
            key = jax.random.fold_in(jax.random.key(7), len(rows))
            got = plug_in_item(world, problem, theta0, spec["budget"], spec["replicates"], key)
            sweep.write_atomic(path, {k: np.asarray(v) for k, v in got.items()}, {**ident, "code_version": code})
        rows.append({"kind": kind, "direction": j, "radius": r, **got})
    oracle = next(x for x in rows if x["kind"] == "random" and x["radius"] == 0.0)
    for x in rows:
        x["gap_ratio"] = x["gap_mean"] / oracle["gap_mean"]
        x["gap_ratio_se"] = x["gap_ratio"] * math.hypot(x["gap_se"] / x["gap_mean"], oracle["gap_se"] / oracle["gap_mean"])
        x["criterion_ratio"] = x["criterion"] / oracle["criterion"]
    paper_style()
    fig, ax = plt.subplots(figsize=(4.4, 3.0), constrained_layout=True)
    rand = [x for x in rows if x["kind"] == "random"]
    radii = sorted({x["radius"] for x in rand})
    jitter = {j: (j - (spec["directions"] - 1) / 2) * 0.012 for j in range(spec["directions"])}
    c_plug, m_plug = design_style("plug_in")
    for x in rand:
        xr = x["radius"] * (1 + jitter[x["direction"]]) if x["radius"] > 0 else 0.0
        ax.errorbar(xr, x["gap_ratio"], yerr=1.96 * x["gap_ratio_se"], fmt="o", color=c_plug, ms=3, lw=0.7, alpha=0.8)
    mean_crit = [np.mean([x["criterion_ratio"] for x in rand if x["radius"] == r]) for r in radii]
    bound = [min(x["bound_factor"] for x in rand if x["radius"] == r) for r in radii]
    ax.plot(radii, mean_crit, "-", color="k", lw=1.0, label=r"criterion ratio $\Phi(w_{\theta_0})/\Phi(w^*)$ (mean over directions)")
    ax.plot(radii, bound, ":", color="#D55E00", lw=1.2, label="Theorem 3 bound (smallest over directions)")
    ref = rows[0]
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
    ax.set_ylabel(f"gap ratio design at $\\theta_0$ / oracle ($n = {spec['budget']:,}$)")
    ax.set_title(f"plug-in robustness, contextual world ($d = {d}$)")
    ax.grid(True, which="major", alpha=0.3, lw=0.4)
    ax.legend(frameon=False, loc="upper left", fontsize=6)
    write_csv(rows, out / "fig4_plug_in_robustness.csv")
    save_figure(fig, out / "fig4_plug_in_robustness")
    return rows


def _read_item(path: Path, code: str):
    """A cached Figure 4 item made by the code of version ``code``, else ``None`` (recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])).get("code_version") != code:
                return None
            return {k: float(z[k]) for k in z.files if k != "meta"}
    except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed and overwritten
        return None


# ------------------------------------------------------------------ figure 5


def figure5(out: Path, results: Path, small: bool, progress: bool = True) -> list[dict]:
    import matplotlib.pyplot as plt

    spec = (SMALL if small else FULL)["fig5"]
    jobs = [["experiment=figure1_contextual", f"design={d}", f"budget={spec['budget']}", f"num_replicates={spec['replicates']}",
             f"world.params.num_completions={max(spec['pool_sizes'])}", f"+world.keep_completions={k}"]
            for k in spec["pool_sizes"] for d in POOL_SIZE_DESIGNS]
    paths = sweep.run_jobs(jobs, results / "figure5_pool_size", progress, desc="fig5")
    rows = []
    for path in paths:
        k = int(sweep.read_cell(path)[1]["world"]["keep_completions"])  # from the record, not the job's text
        (r,) = sweep.aggregate_files([path])
        rows.append({"num_completions": k, **r})
    paper_style()
    fig, ax = plt.subplots(figsize=(4.4, 3.0), constrained_layout=True)
    for design in POOL_SIZE_DESIGNS:
        rs = sorted((r for r in rows if r["design"] == design), key=lambda r: r["num_completions"])
        k = [r["num_completions"] for r in rs]
        color, marker = design_style(design)
        ax.plot(k, [r["mean_gap"] for r in rs], marker=marker, color=color, label=design_label(design))
        ax.fill_between(k, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], color=color, alpha=0.18, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(spec["pool_sizes"], [str(k) for k in spec["pool_sizes"]])
    ax.set_xlabel("completions per prompt $K$")
    ax.set_ylabel(f"gap at $n = {spec['budget']:,}$ labels (nats)")
    ax.set_title("pool size, linear contextual world (nested pools)")
    ax.grid(True, which="major", alpha=0.3, lw=0.4)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    write_csv(rows, out / "fig5_pool_size.csv")
    save_figure(fig, out / "fig5_pool_size")
    return rows


# ------------------------------------------------------------------ command


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Draw the paper's synthetic figures (records are reused; reruns resume).")
    ap.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="figures to draw (default: all)")
    ap.add_argument("--out", default="figures", help="where the figures and their CSV go")
    ap.add_argument("--results", default="results/figures", help="where the cell records go (reused by reruns)")
    ap.add_argument("--small", action="store_true", help="small worlds and few replicates (a smoke run)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only; set here, not on import, so notebooks keep their backend
    jax.config.update("jax_enable_x64", True)  # this script computes in float64 (importing the module does not switch)
    out, results = Path(args.out), Path(args.results)
    if args.small:
        results = results / "small"
    progress = not args.no_progress
    timings, t_all = {}, time.time()
    fig1_rows = None
    for name in FIGURES:
        if name not in args.only and not (name == "fig1" and "fig3" in args.only):
            continue
        t0 = time.time()
        if name == "fig1":
            fig1_rows = figure1(out, results, args.small, progress)
        elif name == "fig2":
            figure2(out, results, args.small)
        elif name == "fig3":
            figure3(out, fig1_rows)
        elif name == "fig4":
            figure4(out, results, args.small, progress)
        elif name == "fig5":
            figure5(out, results, args.small, progress)
        timings[name] = time.time() - t0
        print(f"{name}: {timings[name]:.0f} s", flush=True)
    timings["total"] = time.time() - t_all
    print(f"all figures: {timings['total']:.0f} s; written to {out}/")
    return timings


if __name__ == "__main__":
    main()
