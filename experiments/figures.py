"""The paper's synthetic figures, each in two steps: records, then a pure plot.

    python -m experiments.figures                 # all six figures (see the README for the wall time)
    python -m experiments.figures --only fig1 fig3
    python -m experiments.figures --small --out /tmp/figs --results /tmp/res   # a minute, for a smoke test
    python -m experiments.figures --replot        # redraw every figure from its CSVs in --out, computing nothing

1. ``fig1_gap_vs_budget``: Figure 1 of the paper, tabular and linear contextual panels:
   Monte-Carlo gap against budget per design (95% bands), from the sweep grids
   ``experiment=figure1_tabular`` and ``experiment=figure1_contextual``.
2. ``fig2_theory_vs_simulation``: ``n x`` gap against ``n``: Monte-Carlo risk, Bayes
   risk, the lower and upper bounds and the asymptotic line, per design
   (:func:`experiments.bounds_table.compute_table` makes the data and the bounds table).
3. ``fig3_sample_efficiency``: labels each design needs to reach uniform's gap at the
   largest budget, as a ratio to that budget (from Figure 1's records).
4. ``fig4_plug_in_robustness``: Monte-Carlo gap of the design solved at ``theta0``
   over the oracle's, against ``||theta0 - theta*||``, with the exact criterion ratio
   and the Theorem 3 bound.
5. ``fig5_pool_size``: every pool's trained policy against one fixed objective, the
   largest pool's, split into its approximation and estimation parts, against
   completions per prompt ``K`` (up to 200), with the reward scale as a second axis.
6. ``fig6_practical_regimes``: :mod:`experiments.practical`.

Every figure ``N`` is ``figN_records(results, small, progress)`` (all computing and
caching; plain rows of numbers and strings, exactly what the figure's CSVs hold) and
``plot_figN(records)`` (:mod:`experiments.figure_plots`: drawing only, no JAX, no
world, no file). :func:`main` composes records, CSVs (:func:`write_records`), plot and
files; ``--replot`` reads the CSVs back (:func:`read_records`) and draws them.

Cells of Figures 1 and 6 are cells of the sweep app (:mod:`experiments.sweep`): the
same ids, files and resumability, so a grid run through a Hydra launcher elsewhere
is picked up here, and an interrupted run resumes. Figures 2, 4 and 5 are made of
items cached the same way (one record per item, keyed by its parameters and the code
version: :func:`figure_items`, :mod:`experiments.figure_items`), and the items app
(:mod:`experiments.items`) computes them as Hydra jobs, so any launcher fills them.
Every figure is written as PNG and PDF with the CSV of its data.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
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
from experiments.cell import one_blas_thread  # noqa: E402
from experiments.compiled import release_compiled, use_classic_emitters  # noqa: E402
from experiments.figure_items import FigureItem, in_float64, run_item  # noqa: E402
from experiments.figure_plots import FIG1_WORLDS, POOL_SIZE_DESIGNS, plot_fig1, plot_fig2, plot_fig3, plot_fig4, plot_fig5, plot_fig6  # noqa: E402, F401
from experiments.plotting import save_figure, write_csv  # noqa: E402
from synthetic.designs.cache import using_design_cache  # noqa: E402
from theory.checked import check_argument, one_of  # noqa: E402

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6")
#: Figure 1's adaptive designs (experiment per world): the contextual panel only (in the
#: tabular world, d = 100, a replicate refits a 100-dimensional MAP every round).
FIG1_ADAPTIVE = {"contextual": "figure1_contextual_adaptive"}
#: Figure 1's allocation draws per cell where a design's draw costs a design solve (the
#: panel's ``allocation_draws`` elsewhere): two-stage's pilot gives each draw its own
#: L-optimal solve, ~14 s at d = 100 (2026-11-29), against milliseconds for a rounding.
#: Its intervals then use Student's t with 3 degrees of freedom.
FIG1_DRAWS = {"tabular": {"two_stage": 4}}

# What Figure 5 computes. "check": the world (contextual_world(key(0)), 16
# completions, default parameters, index order, n = 2,000). "seed003": pools up to 200
# completions in the order pi0 samples them, many prompts, the reward scale as a
# second axis (panel b and its Monte Carlo at theta_scale 3, where the trade-off between
# the parts shows). "coincidence": Gaussian pools, 20,000 draws per K. "allocation_draws":
# each Monte-Carlo replicate labels its own draw of the design's allocation (a uniform subset,
# a sampled pair: no solve per draw), so the interval over the replicates covers that draw.
FIG5_FULL = {
    "check": {"world": {"num_completions": 16}, "pool_sizes": [2, 4, 8, 16], "budget": 2000, "replicates": 100, "allocation_draws": 100,
              "designs": ["oracle", "plug_in", "uniform", "best_vs_worst", "sweet_spot"], "mc": ["oracle", "uniform", "best_vs_worst"]},
    "seed003": {"world": {"prompt_dim": 2, "action_dim": 2, "num_train_prompts": 100, "num_eval_prompts": 200, "num_completions": 200},
                "pool_sizes": [8, 20, 50, 100, 200], "budget": 500, "replicates": 100, "allocation_draws": 100, "scale": 3.0, "scales": [0.2, 0.5, 1.0, 2.0, 3.0],
                "designs": ["plug_in", "uniform", "best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable"],
                "mc": ["best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable"]},
    "coincidence": {"pool_sizes": [5, 8, 10, 11, 12, 15, 20, 50, 100, 200], "draws": 20000},
}
FIG5_SMALL = {
    "check": {**FIG5_FULL["check"], "world": {"num_completions": 6, "num_train_prompts": 20, "num_eval_prompts": 40},
              "pool_sizes": [3, 6], "budget": 500, "replicates": 20, "allocation_draws": 20, "designs": ["oracle", "uniform", "best_vs_worst"],
              "mc": ["uniform"]},
    "seed003": {**FIG5_FULL["seed003"], "world": {"prompt_dim": 2, "action_dim": 2, "num_train_prompts": 20, "num_eval_prompts": 40,
                                                   "num_completions": 24}, "pool_sizes": [6, 24], "replicates": 20, "allocation_draws": 20,
                "designs": ["plug_in", "uniform", "best_vs_worst", "sweet_spot"],
                "scales": [1.0, 3.0], "mc": ["best_vs_worst"]},
    "coincidence": {"pool_sizes": [6, 12, 24], "draws": 2000},
}


# --small: the same pipeline on small worlds, few replicates and budgets (tests, smoke runs).
SMALL = {
    "fig1_tabular": ["world.params.num_completions=8", "num_replicates=20", "allocation_draws=4", "design=oracle,uniform,first_two,two_stage", "budget=200,2000"],
    "fig1_contextual": ["num_replicates=20", "allocation_draws=4", "design=oracle,plug_in,uniform,best_vs_worst", "budget=200,2000"],
    "figure1_contextual_adaptive": ["num_replicates=6", "design=adpo_adaptive", "budget=200"],
    "fig4": {"radii": [0.0, 0.5, 2.0], "directions": 2, "replicates": 20, "budget": 1000},
    "fig5": FIG5_SMALL,
    "fig2_replicates": 20,
    "fig2_max_budget": 1e5,
}
FULL = {
    "fig4": {"radii": [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0], "directions": 4, "replicates": 200, "budget": 3000},
    "fig5": FIG5_FULL,
    "fig2_replicates": 400,
    "fig2_max_budget": 1e10,
}


# ------------------------------------------------------------------ figure 1 and 3


def fig1_records(results: Path, small: bool, progress: bool = True) -> dict:
    """Figure 1's records: ``{"gap": rows, "band": rows, "panels": rows}``.

    ``gap``: one row per sweep cell of both panels (:func:`experiments.sweep.aggregate_files`,
    plus the panel's ``reference_gap``); ``band``: Theorems 4-5 (:func:`bound_band`) with
    the panel's ``world``; ``panels``: one row per world, left to right, with its
    ``title``, ``estimator`` (legend text), ``reference_gap`` (the gap of ``pi0``) and
    ``upper_bound_from`` (the smallest budget from which some band design's upper bound
    holds, that of ``upper_bound_from_design``; ``nan`` and ``""`` without band designs)
    and ``num_edges`` (``E`` of the training pool: below it every design is capped at one
    label per comparison).
    """
    rows, bands, panels = [], [], []
    for world in FIG1_WORLDS:
        grids = fig1_grids(world, small)
        (exp, jobs) = grids[0]
        paths = [p for e, js in grids for p in sweep.run_jobs(js, results / e, progress, desc=e)]
        got = sweep.aggregate_files(paths)
        cfg = sweep.compose_job(jobs[0])
        g0 = reference_gap(cfg)
        for r in got:
            r["reference_gap"] = g0
        rows += got
        designs = sorted({r["design"] for r in got})
        with using_design_cache(results / exp / "design_cache"):  # the cells' solves, wherever they ran
            band, n0 = bound_band(cfg, designs, sorted({r["budget"] for r in got}), sweep.compose_jobs(jobs))
        bands += [{"world": world, **b} for b in band]
        first = min(n0, key=n0.get) if n0 else ""
        panels.append({
            "world": world,
            "title": {"tabular": f"tabular ($d = {cfg.world.params.num_completions}$, one prompt)",
                      "contextual": "linear contextual (held-out prompts)"}[world],
            "estimator": _ESTIMATOR_LABEL.get(cfg.estimator.name, cfg.estimator.name),
            "reference_gap": g0, "upper_bound_from": n0[first] if first else math.nan, "upper_bound_from_design": first,
            "num_edges": _num_edges(cfg),
        })
    return {"gap": rows, "band": bands, "panels": panels}


def fig1_grids(world: str, small: bool) -> list[tuple[str, list[list[str]]]]:
    """Figure 1's sweep grids for the panel of ``world``: ``(experiment, jobs)``, the panel's own
    first, then its adaptive designs' (run once per replicate: their own grid, fewer budgets
    and replicates). Each experiment's records go to ``<results>/<experiment>``. A design of
    :data:`FIG1_DRAWS` gets its number of allocation draws (full figure only)."""
    exps = [(f"figure1_{world}", f"fig1_{world}")] + ([(FIG1_ADAPTIVE[world], FIG1_ADAPTIVE[world])] if world in FIG1_ADAPTIVE else [])
    draws = {} if small else FIG1_DRAWS.get(world, {})

    def with_draws(job):
        extra = [f"allocation_draws={draws[o.split('=', 1)[1]]}" for o in job if o.startswith("design=") and o.split("=", 1)[1] in draws]
        return [*job, *extra]

    return [(exp, [with_draws(j) for j in sweep.grid(exp, SMALL[key] if small else ())]) for exp, key in exps]


def _num_edges(cfg) -> int:
    """``E``, the candidate comparisons of the world's training pool (``max_labels_per_edge
    = auto`` caps each at one label where ``n <= E``)."""
    from experiments.cell import float64
    from experiments.worlds import make_world
    from synthetic import design_problem

    with float64():
        return int(design_problem(make_world(cfg.world, jax.random.key(cfg.world_seed))).num_edges)


#: Designs whose weights the instance fixes (no pilot labels, no randomness in the
#: weights): Theorems 4-5 are statements for a fixed allocation, so Figure 1 draws their
#: band for these only.
BAND_DESIGNS = ("oracle", "plug_in", "uniform", "a_optimal", "d_optimal", "reference_weighted")


def bound_band(cfg, designs, budgets, job_cfgs=()) -> tuple[list[dict], dict]:
    """Theorems 4-5 around Figure 1's curves: for each design of :data:`BAND_DESIGNS` in
    ``designs``, the upper bound (:func:`theory.bounds.upper_bound_bernstein_tuned`: Theorem 4
    at the best tail of a fixed grid) and the lower bound (:func:`theory.bounds.lower_bound_jensen`)
    at every budget where the upper bound holds and is below the gap of ``pi0`` itself (the dotted
    line of the panel, :func:`reference_gap`: not training is a policy every user has, so a larger
    bound says nothing; just above ``n0`` the bound is valid but can be far larger), for the empirical design of the
    allocation the design makes at that budget (efficient rounding of its weights, as in
    the bounds table).

    ``job_cfgs`` are the panel's jobs' composed configs; a design's own
    parameters (its ``max_labels_per_edge``, say) come from its config. Returns the rows
    ``{design, budget, lower, upper, prediction, n0}`` and ``{design: n0}``, ``n0`` the
    smallest budget from which the upper bound holds for the design's weights at the
    largest budget (that of the grid's smallest tail).
    """
    from experiments.cell import float64
    from experiments.worlds import make_world
    from synthetic import design_problem
    from synthetic.designs import run_design
    from synthetic.rounding import efficient_rounding
    from theory import bounds as TB

    params = {}
    for c in job_cfgs:
        params.setdefault(c.design.name, OmegaConf.to_container(c.design.params, resolve=True))
    rows, n0 = [], {}
    with float64():
        world = make_world(cfg.world, jax.random.key(cfg.world_seed))
        prob = design_problem(world)
        ev = world.eval

        def constants(design, n):
            out = run_design(design, jax.random.key(cfg.seed), prob, int(n), **params.get(design, {}))
            w = np.asarray(out.weights if out.weights is not None else out.allocation.dense_counts(prob.num_edges), np.float64)
            w_hat = efficient_rounding(w / w.sum(), int(n)).dense_counts(prob.num_edges) / int(n)
            return TB.instance_constants(w_hat, world.theta_star, ev.features, ev.log_ref, prob.edges.diffs, world.beta,
                                         prompt_weights=ev.prompt_weights)

        g0 = reference_gap(cfg)
        for design in [d for d in BAND_DESIGNS if d in designs]:
            at_max = constants(design, max(budgets))
            n0[design] = float(TB.upper_bound_bernstein_valid_from(at_max, min(TB.TAIL_GRID)))
            for n in budgets:
                if n < n0[design]:
                    continue
                c = at_max if n == max(budgets) else constants(design, n)
                up = TB.upper_bound_bernstein_tuned(c, int(n))
                if not up.valid or up.value >= g0:  # not below what not training gives: says nothing
                    continue
                lo = TB.lower_bound_jensen(c, int(n))
                rows.append({"design": design, "budget": int(n), "lower": float(lo.value), "upper": float(up.value),
                             "prediction": float(TB.asymptotic_prediction(c, int(n))), "n0": n0[design]})
    return rows, n0


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


def labels_to_match(budgets, gaps, target: float, plateau_slope: float = -0.5, rate_slope: float = -1.0) -> float:
    """Budget at which a design's gap curve reaches ``target``.

    Log-log linear interpolation between the measured budgets; beyond them, the end
    segment's power law is extended if it still falls at least like ``n^plateau_slope``,
    and no faster than ``n^rate_slope`` (the gap's asymptotic rate ``1/n``: an end segment
    steeper than that is pre-asymptotic, and extending it claimed that a curve measured to
    n = 1,000 falling like ``n^-1.66`` reached uniform's gap at 30,000 with 0.13 of its labels);
    otherwise a curve above the target at its last budget does not reach it (``inf``), and a
    curve below it from its first budget on reached it there at the latest (that budget). A value ``<= 0`` (the lower end
    of an interval that reaches 0, as Student's t over a few allocation draws can) reaches
    every target, but a log-log segment to it is undefined: a curve above the target at one
    budget and ``<= 0`` at the next crosses it somewhere between, and the earlier budget,
    the earliest it can, is returned (one ``<= 0`` at the first budget: that budget).
    """
    gaps = np.asarray(gaps, np.float64)
    n = np.log(np.asarray(budgets, np.float64))
    if n.size < 2:
        raise ValueError("labels_to_match needs at least two budgets")
    if gaps[0] <= 0:
        return float(budgets[0])
    g = np.log(np.where(gaps > 0, gaps, np.inf))
    t = math.log(target)
    for i in range(n.size - 1):
        if gaps[i + 1] <= 0:
            return float(budgets[i])
        lo, hi = sorted((g[i], g[i + 1]))
        if lo <= t <= hi and g[i] != g[i + 1]:
            return float(math.exp(n[i] + (t - g[i]) * (n[i + 1] - n[i]) / (g[i + 1] - g[i])))
    if t < g.min():
        slope = (g[-1] - g[-2]) / (n[-1] - n[-2])
        return float(math.exp(n[-1] + (t - g[-1]) / max(slope, rate_slope))) if slope <= plateau_slope else math.inf
    # below the target from the first budget on: reached there at the latest (earlier along the first
    # segment's power law where it falls at least like n^plateau_slope)
    slope = (g[1] - g[0]) / (n[1] - n[0])
    return float(math.exp(n[0] + (t - g[0]) / slope)) if slope <= plateau_slope else float(budgets[0])


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
            if len(set(b)) < len(b) or len({(r.get("estimator"), r.get("config") or "") for r in rs}) > 1:
                # one curve per (world, design) here: rows of two estimators or configs would be read as one
                raise ValueError(f"sample_efficiency: the rows of design {design!r} in world {world!r} are not one curve "
                                 "(a budget twice, or several estimators or configs); give one row per budget")
            if len(b) < 2:
                continue
            ratio = labels_to_match(b, [r["mean_gap"] for r in rs], target) / n_max
            high = labels_to_match(b, [r["ci_high"] for r in rs], target) / n_max

            def past(x):  # the budget lies past the design's last measured one: a power-law extension, not a measurement
                return bool(math.isfinite(x) and x * n_max > max(b) * (1 + 1e-9))

            out.append({
                "world": world, "design": design, "target_gap": target, "uniform_budget": n_max,
                "ratio": ratio,
                "ratio_low": labels_to_match(b, [r["ci_low"] for r in rs], target) / n_max,
                "ratio_high": high,
                "extrapolated": past(ratio), "band_extrapolated": past(high),
                "last_budget": max(b),
            })
    return out


def fig3_records(results: Path, small: bool, progress: bool = True, fig1: dict | None = None) -> list[dict]:
    """Figure 3's rows: :func:`sample_efficiency` of Figure 1's gap rows (``fig1``: Figure 1's
    records if already made, else :func:`fig1_records` makes them, from its cached cells)."""
    return sample_efficiency((fig1 if fig1 is not None else fig1_records(results, small, progress))["gap"])


# ------------------------------------------------------------------ figure 2


def fig2_records(results: Path, small: bool, progress: bool = True, out: Path | None = None) -> list[dict]:
    """Figure 2's rows: the bounds table's (:func:`experiments.bounds_table.compute_table`), one per (world, design, n).

    Its items (one per (world, design), :func:`figure_items`) are cached under ``results``.
    The full figure and the committed bounds table are one computation: the table is
    written to ``out`` (default ``results``) beside the figure; the small run's goes to
    ``results``. Each field has the type of its :class:`synthetic.bounds_check.BoundRow`
    field, numbers as floats (as :func:`_bounds_table_rows` reads the table's CSV).
    """
    from experiments import bounds_table

    spec = SMALL if small else FULL
    table = bounds_table.compute_table(results, spec["fig2_replicates"], spec["fig2_max_budget"], 0 if small else 5, progress)
    bounds_table.write_table(table, results / "bounds_table" if small or out is None else Path(out) / "bounds_table")
    return [_bounds_row_types(dict(r)) for r in table.records]


def _bounds_row_types(r: dict) -> dict:
    """A bounds-table row with each field of its :class:`BoundRow` type, numbers as floats,
    from the CSV's strings or from the computed values alike."""
    import typing

    from synthetic.bounds_check import BoundRow

    types = {**typing.get_type_hints(BoundRow), "world": str}
    for k, v in r.items():
        kind = types.get(k, float)
        if kind is str:
            r[k] = str(v)
        elif kind is bool:
            r[k] = v == "True" if isinstance(v, str) else bool(v)
        else:
            r[k] = float(v)
    return r


def _bounds_table_rows(path: Path) -> list[dict]:
    """The bounds table's CSV as rows, each column of the type its
    :class:`synthetic.bounds_check.BoundRow` field has (``world`` a string; ``n``, counts
    and values floats; flags booleans; names such as ``lower_new_shape`` strings)."""
    with Path(path).open(newline="") as fh:
        return [_bounds_row_types(r) for r in csv.DictReader(fh)]


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


#: Figures whose numbers are cached items (:mod:`experiments.figure_items`; Figures 1, 3 and 6 are sweep cells).
ITEM_FIGURES = ("fig2", "fig4", "fig5")


def figure_items(name: str, small: bool) -> list[FigureItem]:
    """Every cached item of Figure ``name`` (``fig2``, ``fig4`` or ``fig5``), in the order the figure computes them.

    Listing builds Figure 4's world (small); the other items build their worlds when computed.
    """
    check_argument("name", name, one_of(ITEM_FIGURES))
    spec = SMALL if small else FULL
    if name == "fig2":
        from experiments import bounds_table

        return bounds_table.table_items(spec["fig2_replicates"], spec["fig2_max_budget"], 0 if small else 5)
    return _fig4_items(spec[name]) if name == "fig4" else _fig5_items(spec[name])


@functools.lru_cache(maxsize=2)
def _fig4_instance(directions: int):
    """Figure 4's world (Figure 1's contextual panel, built in float64), its design problem and
    ``directions`` random unit directions."""
    from experiments.cell import float64
    from experiments.worlds import make_world
    from synthetic.designs import design_problem

    cfg = sweep.compose_job(["experiment=figure1_contextual"])
    with float64():
        world = make_world(cfg.world, jax.random.key(cfg.world_seed))
        problem = design_problem(world)
    rng = np.random.default_rng(2026)
    dirs = rng.normal(size=(directions, world.dim))
    return cfg, world, problem, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def _fig4_items(spec) -> list[FigureItem]:
    cfg, world, problem, dirs = _fig4_instance(spec["directions"])
    kinds = [("reference", -1, float(np.linalg.norm(world.theta_star)))]
    kinds += [("random", j, r) for r in spec["radii"] for j in range(spec["directions"]) if r > 0 or j == 0]
    items = []
    for i, (kind, j, r) in enumerate(kinds):
        theta0 = np.zeros(world.dim) if kind == "reference" else np.asarray(world.theta_star) + r * (dirs[j] if r > 0 else 0.0)

        def compute(i=i, theta0=theta0):
            # the item's key: its position in the list
            return plug_in_item(world, problem, theta0, spec["budget"], spec["replicates"], jax.random.fold_in(jax.random.key(7), i))

        ident = {"kind": kind, "direction": j, "radius": r, "budget": spec["budget"], "replicates": spec["replicates"],
                 "world": OmegaConf.to_container(cfg.world), "world_seed": cfg.world_seed, "key": i}
        items.append(FigureItem("fig4", "fig4_", ident, in_float64(compute)))
    return items


def fig4_records(results: Path, small: bool, progress: bool = True) -> list[dict]:
    """Figure 4's rows: one per solved design (the plug-in at ``theta0 = 0``, then
    ``theta* + r u`` for each radius and direction), each a cached :func:`plug_in_item`
    (:func:`figure_items`) with its ratios to the oracle's (radius 0), and the run's
    ``budget``, ``replicates``, ``dim`` and ``directions``."""
    from tqdm.auto import tqdm

    spec = (SMALL if small else FULL)["fig4"]
    items = figure_items("fig4", small)
    rows = []
    for item in tqdm(items, desc="fig4", unit="design", disable=not progress):
        rows.append({k: item.ident[k] for k in ("kind", "direction", "radius")} | run_item(item, results))
    dim = int(_fig4_instance(spec["directions"])[1].dim)  # the listing's world (cached)
    oracle = next(x for x in rows if x["kind"] == "random" and x["radius"] == 0.0)
    for x in rows:
        x["gap_ratio"] = x["gap_mean"] / oracle["gap_mean"]
        # the delta method for a ratio of two independent means; the oracle's ratio to itself is exactly 1
        x["gap_ratio_se"] = 0.0 if x is oracle else x["gap_ratio"] * math.hypot(x["gap_se"] / x["gap_mean"], oracle["gap_se"] / oracle["gap_mean"])
        x["criterion_ratio"] = x["criterion"] / oracle["criterion"]
        x.update(budget=spec["budget"], replicates=spec["replicates"], dim=dim, directions=spec["directions"])
    return rows


# ------------------------------------------------------------------ figure 5
#
# Every pool's trained policy is measured against ONE objective, the largest pool's
# (issue 19, section 4): G_Kmax(pi_hat_K) = beta E_x KL(pi_hat_K || pi*_Kmax), with
# pi_hat_K living on the first K completions. For y among the first K,
# log pi*_Kmax(y|x) = log pi*_K(y|x) + log pi*_Kmax(first K|x) (pi*_K is pi*_Kmax
# conditioned on the first K), so, exactly,
#
#   G_Kmax(pi_hat_K) = beta E_x[-log pi*_Kmax(first K | x)]     approximation part
#                      + G_K(theta_hat_K)                         estimation part, ~ (beta/2n) Phi_K.
#
# The estimation part is the gap to the pool's own optimum that the sweep measures
# (Monte Carlo, synthetic.monte_carlo) or predicts (theory.asymptotic_gap).


def _check_pool_size(k, kmax, name="k"):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= kmax:
        raise ValueError(f"{name} must be an integer in [1, {kmax}] (the largest pool's size), got {k!r}")


def nested_pool(pool, k: int):
    """``pool`` cut to each prompt's first ``k`` completions, padded to the same shape.

    Completions from index ``k`` on are absent (``log_ref = -inf``) and ``pi0`` is
    renormalised over the kept ones, as in :func:`synthetic.first_completions`; the
    shape stays ``[m, Kmax, d]``, so every ``k`` shares one compiled Monte-Carlo core.
    """
    from synthetic.worlds import Pool

    kmax = int(pool.log_ref.shape[1])
    _check_pool_size(k, kmax)
    keep = jnp.arange(kmax) < k
    lr = jnp.where(keep[None, :], pool.log_ref, -jnp.inf)
    if not bool(jnp.all(jnp.any(jnp.isfinite(lr), axis=1))):
        raise ValueError(f"k = {k} leaves a prompt with no completion")
    lr = lr - jax.scipy.special.logsumexp(lr, axis=1, keepdims=True)
    return Pool(pool.features, lr, pool.prompt_weights)


def reference_sampled_order(world, key):
    """The same world with each prompt's completions in the order sampling from ``pi0`` finds them.

    A Gumbel top-``K`` of ``log pi0`` (Efraimidis and Spirakis): the order of sampling
    without replacement in proportion to ``pi0``, which is also the order in which
    repeated draws from ``pi0`` meet new completions. The first ``K`` are then what a
    pool of ``K`` samples holds, and growing the pool adds completions ``pi0`` finds
    ever less likely. Training and evaluation pools get independent orders; features,
    ``pi0`` (per completion) and ``theta*`` are unchanged.
    """
    from synthetic.worlds import Pool, World

    def reorder(pool, k):
        g = jax.random.gumbel(k, pool.log_ref.shape, pool.features.dtype)
        order = jnp.argsort(-(pool.log_ref + g), axis=1)  # absent (-inf) completions go last
        feats = jnp.take_along_axis(pool.features, order[..., None], axis=1)
        return Pool(feats, jnp.take_along_axis(pool.log_ref, order, axis=1), pool.prompt_weights)

    k_train, k_eval = jax.random.split(key)
    return World(reorder(world.train, k_train), reorder(world.eval, k_eval), world.theta_star, world.beta)


def approximation_part(world, k: int) -> float:
    """``beta E_x[-log pi*_Kmax(first k | x)]`` on the world's evaluation pool.

    What the best policy on the first ``k`` completions still misses of the largest
    pool's objective: ``G_Kmax(pi*_k)``; 0 at ``k = Kmax``.
    """
    from theory.policy import normalized_prompt_weights, policy_log_probs

    ev = world.eval
    m, kmax = ev.log_ref.shape
    _check_pool_size(k, int(kmax))
    if k == kmax:
        return 0.0  # pi*(whole pool) = 1 exactly (summing it would leave a rounding residue)
    lp = policy_log_probs(world.theta_star, ev.features, ev.log_ref)
    log_mass = jax.scipy.special.logsumexp(lp[:, :k], axis=1)  # log pi*(first k | x) <= 0
    rho = normalized_prompt_weights(ev.prompt_weights, m, lp.dtype)
    return max(0.0, float(-world.beta * jnp.dot(rho, jnp.minimum(log_mass, 0.0))))


def fixed_objective_gap(theta, world, k: int) -> float:
    """``G_Kmax(pi_theta^(k)) = beta E_x KL(pi_theta^(k)(.|x) || pi*_Kmax(.|x))``, computed directly.

    ``pi_theta^(k)`` is the log-linear policy on each prompt's first ``k`` completions
    (``pi0`` renormalised over them); ``pi*_Kmax`` the optimum over the whole pool.
    Equals ``approximation_part(world, k) + G_k(theta)`` (see the comment above).
    """
    from theory.policy import normalized_prompt_weights, policy_log_probs

    ev = world.eval
    m, kmax = ev.log_ref.shape
    _check_pool_size(k, int(kmax))
    cut = nested_pool(ev, k)
    lp = policy_log_probs(jnp.asarray(theta), cut.features, cut.log_ref)[:, :k]
    lstar = policy_log_probs(world.theta_star, ev.features, ev.log_ref)[:, :k]
    p = jnp.exp(lp)
    kl = jnp.sum(jnp.where(p > 0, p * (lp - lstar), 0.0), axis=1)
    rho = normalized_prompt_weights(ev.prompt_weights, m, lp.dtype)
    return float(world.beta * jnp.dot(rho, kl))


def sweet_spot_coincidence(k: int, draws: int, key) -> tuple[float, float]:
    """How often seed 003's rejected completion is the pool's minimum: ``(fraction, standard error)``.

    Draws ``draws`` pools of ``k`` i.i.d. ``N(0, 1)`` rewards and counts those in which
    the completion nearest ``mu - 2 sigma`` (the pool's mean and population standard
    deviation, as :func:`synthetic.designs.sweet_spot` computes them) is the minimum:
    there ``sweet_spot`` selects the pair ``best_vs_worst`` selects (by symmetry,
    ``mu + 2 sigma`` is the maximum equally often). For ``k <= 10`` the fraction is
    exactly 1: if another value ``z2`` were nearer ``-2`` than the minimum ``z1`` of the
    standardised rewards, ``z1 + z2 < -4`` and Cauchy-Schwarz on the other ``k - 2``
    (sum ``-(z1 + z2)``, sum of squares ``k - z1^2 - z2^2``) gives ``(z1 + z2)^2 <= 2 (k - 2)``,
    so ``k > 10``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (completions per pool), got {k!r}")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2, got {draws!r}")
    r = jax.random.normal(key, (int(draws), int(k)), jnp.result_type(float))
    mu = jnp.mean(r, axis=1, keepdims=True)
    sd = jnp.std(r, axis=1, keepdims=True)
    near = jnp.argmin(jnp.abs(r - (mu - 2.0 * sd)), axis=1)
    f = int(jnp.sum(near == jnp.argmin(r, axis=1))) / int(draws)
    return f, math.sqrt(f * (1.0 - f) / draws)


def selection_coincidence(a, b) -> float:
    """Fraction of ``a``'s labelled edges that ``b`` labels too (two one-pair-per-prompt
    designs' weights ``[E]``: the fraction of prompts on which they pick the same pair)."""
    sa, sb = np.asarray(a) > 0, np.asarray(b) > 0
    if not sa.any():
        raise ValueError("a: the design labels no edge")
    return float(np.sum(sa & sb) / np.sum(sa))


def design_weights(name: str, key, problem, budget: int) -> np.ndarray:
    """The continuous design ``w`` of a registered design (what the asymptotic prediction is of).

    ``uniform``: :func:`synthetic.uniform_weights`; ``oracle`` and ``plug_in``: the
    L-optimal design at ``theta*`` and at ``0`` (as the registry solves them, no caps);
    these skip the rounding to ``budget`` labels, which costs seconds on pools of
    millions of edges. Any other design: ``run_design(...).weights``.
    """
    from synthetic import uniform_weights
    from synthetic.designs import run_design
    from theory import optimal_design

    if name == "uniform":
        return uniform_weights(problem.edges)
    if name in ("oracle", "plug_in"):
        theta = problem.theta_star if name == "oracle" else jnp.zeros(problem.dim, problem.edges.diffs.dtype)
        sol = optimal_design(problem.edges.diffs, theta, problem.curvature(theta), problem.beta, tol=1e-4)
        return np.asarray(sol.weights)
    out = run_design(name, key, problem, budget)
    if out.weights is None:
        raise ValueError(f"design {name!r} returns no continuous design; allowed: designs with weights")
    return np.asarray(out.weights)


def scaled_world(world, scale: float):
    """The world with ``theta*`` multiplied by ``scale``: ``contextual_world(theta_scale=s)``
    from the same key, where ``pi0`` does not track the reward (``ref_reward_correlation = 0``)."""
    _check_real_positive("scale", scale)
    return world._replace(theta_star=world.theta_star * float(scale))


def _check_real_positive(name, value):
    check_argument(name, value, "number > 0")


def pool_size_item(world, k: int, design: str, budget: int, key, replicates: int = 0, full=None,
                   scales=(1.0,), mc_scale: float = 1.0, cut=None, allocation_draws: int = 1) -> dict:
    """One point of Figure 5: pool of the first ``k`` completions, ``design``, ``budget`` labels.

    For each ``s`` in ``scales`` (keys ``<name>@<s>``): the approximation part, the
    asymptotic estimation part ``theory.asymptotic_gap`` and their sum, in the world
    whose ``theta*`` is ``s`` times ``world``'s (:func:`scaled_world`). The design is
    computed once, in ``world``: right for designs that do not read the reward's scale
    (uniform, plug-in at ``0``, and the reward-rank rules best-vs-worst and seed 003's,
    whose proxy reward is standardised), not for the oracle (give it ``scales=(1.0,)``).

    With ``replicates > 0``, in the world of scale ``mc_scale``: the Monte-Carlo estimation part,
    the gap of the DPO MLE (or its ridge-path limit) to the pool's own optimum in every
    replicate (``mc_gap``), on ``allocation_draws`` draws of the design's allocation
    (``mc_allocation``: each replicate's draw; the replicates split evenly among the draws,
    each draw with its own key split from the item's design key; one draw uses that key
    itself, as the asymptotic part does; ``allocation_draws = replicates``: each replicate
    its own allocation), ``mc_allocation_random`` (a pilot, or draws that differ; one draw
    is compared with the draws of up to three more keys), the
    approximation part at ``mc_scale`` (``mc_approximation``) and the fraction of replicates
    with an MLE; :func:`_mc_summary` makes the mean and its interval over the draws. The
    labelled edges are mapped to the edge ids of the largest pool (``full``: its design problem,
    ``design_problem(world)``) and the gap is taken on :func:`nested_pool`, so
    every ``k`` shares compiled shapes. ``cut``: ``(first_completions(world, k),
    its design problem)`` if already built (pools of millions of edges take seconds).
    """
    from synthetic.designs import allocation_is_random, design_problem, run_design
    from synthetic.monte_carlo import replicate_gaps
    from synthetic.worlds import first_completions
    from theory import asymptotic_gap

    kmax = int(world.train.features.shape[1])
    _check_pool_size(k, kmax)
    for s in (*scales, mc_scale):
        _check_real_positive("scales", s)
    if replicates:
        check_argument("allocation_draws", allocation_draws, f"int in [1, {replicates}]")  # each draw has a replicate
    if cut is None:
        wk = world if k == kmax else first_completions(world, k)
        cut = (wk, design_problem(wk))
    wk, problem = cut
    k_design, k_rep = jax.random.split(key)
    out = run_design(design, k_design, problem, budget) if replicates else None
    w = design_weights(design, k_design, problem, budget) if out is None or out.weights is None else np.asarray(out.weights)
    ev = wk.eval
    row = {}
    for s in scales:
        ws = scaled_world(world, s)
        approx = approximation_part(ws, k)
        est = float(asymptotic_gap(jnp.asarray(w), ws.theta_star, ev.features, ev.log_ref, problem.edges.diffs, ws.beta, budget,
                                   ev.prompt_weights))
        row.update({f"approximation@{s:g}": approx, f"estimation_asymptotic@{s:g}": est, f"total_asymptotic@{s:g}": approx + est})
    if replicates:
        ids = full.edge_ids(problem.edges.prompt, problem.edges.first, problem.edges.second)
        if np.any(ids < 0):
            raise ValueError("full: an edge of the pool of the first k completions is not in it; give design_problem(world)")
        e_max, diffs_max = full.num_edges, full.edges.diffs

        def lift(a):
            full = np.zeros(e_max)
            full[ids] = np.asarray(a, np.float64)
            return full

        wm = scaled_world(world, mc_scale)
        rep_keys = jax.random.split(k_rep, replicates)
        groups = np.array_split(np.arange(replicates), allocation_draws)
        outs = [out] if allocation_draws == 1 else [run_design(design, kd, problem, budget)
                                                    for kd in jax.random.split(k_design, allocation_draws)]
        gap, exists, alloc = np.zeros(replicates), np.zeros(replicates, bool), np.zeros(replicates, np.int64)

        def digest(o):  # an allocation's fingerprint: its labelled edges in order and their counts (no dense copy)
            ids, n = np.asarray(o.allocation.edges, np.int64), np.asarray(o.allocation.counts, np.int64)
            order = np.argsort(ids[n > 0], kind="stable")
            return hashlib.blake2b(np.stack([ids[n > 0][order], n[n > 0][order]])).digest()

        # draws that gave one allocation (no pilot) label their replicates in one batch, each
        # replicate with its own key as before: a fixed design costs one batch, not one a draw
        batches: dict = {}
        for a, o in enumerate(outs):
            batches.setdefault(("pilot", a) if o.pilot is not None else digest(o), []).append(a)
        for members in batches.values():
            o, group = outs[members[0]], np.concatenate([groups[a] for a in members])
            pilot = None if o.pilot is None else tuple(lift(x) for x in o.pilot)
            res = replicate_gaps(rep_keys[group], wm.theta_star, diffs_max, lift(o.dense_counts(problem.num_edges)),
                                 wm.beta, nested_pool(wm.eval, k), pilot=pilot, chunk_size=min(50, group.size))
            gap[group], exists[group] = np.asarray(res.gap, np.float64), np.asarray(res.mle_exists, bool)
        for a, group in enumerate(groups):
            alloc[group] = a
        random = len(batches) > 1 or out.pilot is not None
        if allocation_draws == 1 and not random:  # is the one allocation a draw? (as a cell asks)
            random = allocation_is_random(design, k_design, problem, budget, out)
        row.update(mc_gap=gap, mc_allocation=alloc, mc_allocation_random=bool(random), mc_approximation=approximation_part(wm, k),
                   mle_fraction=float(np.mean(exists)))
    return row


def _mc_summary(got: dict, level: float = 0.95) -> dict:
    """The Monte-Carlo columns of a Figure 5 row from its item (:func:`pool_size_item`):
    ``estimation_mc`` and its interval over the replicates, clustered by draw where the
    allocation is random (:func:`experiments.records.draws_mean_and_ci`: CR1 error, Student t
    over the draws; with one draw, or draws that all gave one allocation, the plain
    interval, given that allocation; each replicate its own draw: the plain interval over
    independent replicates), ``mc_allocations`` (the allocations the interval is over: 1 for
    one allocation), ``total_mc`` (with the approximation part) and ``mle_fraction``."""
    from experiments.records import draws_mean_and_ci

    if "mc_gap" not in got:
        return dict.fromkeys(("estimation_mc", "estimation_mc_se", "estimation_mc_ci_low", "estimation_mc_ci_high", "mc_allocations",
                              "total_mc", "mle_fraction"), math.nan)
    gap = np.asarray(got["mc_gap"], np.float64)
    alloc = np.asarray(got["mc_allocation"]) if bool(got["mc_allocation_random"]) else None
    mean, se, lo, hi, draws = draws_mean_and_ci(gap, np.ones(gap.size, bool), alloc, level)
    return {"estimation_mc": mean, "estimation_mc_se": se, "estimation_mc_ci_low": lo, "estimation_mc_ci_high": hi,
            "mc_allocations": draws, "total_mc": float(got["mc_approximation"]) + mean, "mle_fraction": float(got["mle_fraction"])}


#: Figure 5's CSV columns. Pool-size rows (panels ``check`` and ``seed003``) have one row per
#: ``theta_scale``, with the Monte Carlo (``*_mc``) at the panel's ``mc_scale`` only;
#: ``coincidence`` rows have the coincidence columns; a row leaves the others blank.
_FIG5_COLUMNS = ("panel", "world", "order", "theta_scale", "num_completions", "design", "budget", "replicates", "approximation",
                 "estimation_asymptotic", "total_asymptotic", "estimation_mc", "estimation_mc_se", "estimation_mc_ci_low",
                 "estimation_mc_ci_high", "mc_allocations", "total_mc", "mle_fraction",
                 "coincidence_gaussian", "coincidence_gaussian_se", "coincidence_world", "mc_scale")


def _fig5_world(params: dict, order: str = "index"):
    from synthetic.worlds import contextual_world

    world = contextual_world(jax.random.key(0), **params)
    return reference_sampled_order(world, jax.random.key(1)) if order == "reference_sampled" else world


def _fig5_plan(spec: dict) -> list[tuple[dict, FigureItem]]:
    """Figure 5's items in the order the figure computes them, each with what its rows need.

    Worlds and pool cuts are built when an item is computed and kept for the next items
    of the same panel and pool (one at a time: the largest pools hold millions of edges).
    """
    from synthetic.designs import design_problem
    from synthetic.worlds import first_completions

    plan = []

    def key_for(*parts):
        salt = int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:7], 16)
        return jax.random.fold_in(jax.random.key(5), salt)

    def add(meta, ident, fn):
        plan.append((meta, FigureItem("figure5_pool_size", "fig5_", ident, in_float64(fn))))

    # how often sweet_spot's rejected completion is the minimum, in Gaussian pools
    co = spec["coincidence"]
    for k in co["pool_sizes"]:
        add({"kind": "coincidence", "k": k}, {"item": "coincidence", "k": k, "draws": co["draws"]},
            lambda k=k: dict(zip(("fraction", "se"), sweet_spot_coincidence(k, co["draws"], key_for("coincidence", k)))))
    worlds, cuts = {}, {}

    def world_of(panel, order):
        if panel not in worlds:
            worlds.clear()  # one world at a time (the largest pools hold millions of edges)
            world = _fig5_world(spec[panel]["world"], order)
            pm = design_problem(world)
            worlds[panel] = (world, pm)
        return worlds[panel]

    def cut_of(panel, order, k):
        """``(first_completions(world, k), its design problem)``, kept for one ``(panel, k)`` at a time."""
        if (panel, k) not in cuts:
            cuts.clear()
            world, pm = world_of(panel, order)
            kmax = spec[panel]["world"]["num_completions"]
            wk = world if k == kmax else first_completions(world, k)
            cuts[(panel, k)] = (wk, pm if k == kmax else design_problem(wk))
        return cuts[(panel, k)]

    # the two pool-size panels; the second at every reward scale (theta* times the scale)
    for panel, order in (("check", "index"), ("seed003", "reference_sampled")):
        p = spec[panel]
        scales = (1.0,) if panel == "check" else tuple(sorted({p["scale"], *p["scales"]}))
        mc_scale = p.get("scale", 1.0)
        for k in p["pool_sizes"]:
            for d in p["designs"]:
                reps = p["replicates"] if d in p["mc"] else 0
                draws = p["allocation_draws"] if reps else 1
                ident = {"item": "pool_size", "world": p["world"], "order": order, "scales": scales, "k": k, "design": d,
                         "budget": p["budget"], "replicates": reps, "mc_scale": mc_scale, "allocation_draws": draws}

                def compute(panel=panel, order=order, scales=scales, k=k, d=d, reps=reps, mc_scale=mc_scale, draws=draws):
                    world, full = world_of(panel, order)
                    return pool_size_item(world, k, d, spec[panel]["budget"], key_for(panel, d, k), reps, full, scales,
                                          mc_scale, cut_of(panel, order, k), draws)

                add({"kind": "pool_size", "panel": panel, "order": order, "scales": scales, "k": k, "design": d, "reps": reps,
                     "mc_scale": mc_scale}, ident, compute)
            if panel == "seed003":
                # on how many prompts of the seed-003 world sweet_spot labels best_vs_worst's pair (while this pool's problem is built)
                def compute_world(k=k, p=p):
                    problem = cut_of("seed003", "reference_sampled", k)[1]
                    ws = [design_weights(d, key_for("seed003", d, k), problem, p["budget"]) for d in ("sweet_spot", "best_vs_worst")]
                    return {"fraction": selection_coincidence(*ws)}

                add({"kind": "world_coincidence", "k": k}, {"item": "world_coincidence", "world": p["world"], "k": k,
                                                             "budget": p["budget"]}, compute_world)
    return plan


def _fig5_items(spec: dict) -> list[FigureItem]:
    return [item for _, item in _fig5_plan(spec)]


def _fig5_rows(spec: dict, results: Path, progress: bool) -> list[dict]:
    """Figure 5's rows from its items (:func:`_fig5_plan`), each cached under ``results``."""
    from tqdm.auto import tqdm

    rows, world_coincidence = [], {}
    blank = dict.fromkeys(_FIG5_COLUMNS, "")
    for meta, item in tqdm(_fig5_plan(spec), desc="fig5", unit="item", disable=not progress):
        got = run_item(item, results)
        if meta["kind"] == "coincidence":
            rows.append({**blank, "panel": "coincidence", "world": "gaussian rewards", "num_completions": meta["k"],
                         "coincidence_gaussian": got["fraction"], "coincidence_gaussian_se": got["se"]})
        elif meta["kind"] == "world_coincidence":
            world_coincidence[meta["k"]] = got["fraction"]
        else:
            p, mc_scale = spec[meta["panel"]], meta["mc_scale"]
            for s in meta["scales"]:
                mc = s == mc_scale
                rows.append({**blank, "panel": meta["panel"], "world": "contextual", "order": meta["order"], "theta_scale": s,
                             "num_completions": meta["k"], "design": meta["design"], "budget": p["budget"],
                             "replicates": meta["reps"] if mc else 0,
                             "approximation": got[f"approximation@{s:g}"], "estimation_asymptotic": got[f"estimation_asymptotic@{s:g}"],
                             "total_asymptotic": got[f"total_asymptotic@{s:g}"],
                             **{c: (v if mc else math.nan) for c, v in _mc_summary(got).items()},
                             "mc_scale": mc_scale})
    for k, frac in world_coincidence.items():
        hit = [r for r in rows if r["panel"] == "coincidence" and r["num_completions"] == k]
        if hit:
            hit[0]["coincidence_world"] = frac
        else:
            rows.append({**blank, "panel": "coincidence", "world": "contextual (panel b)", "num_completions": k, "coincidence_world": frac})
    return rows


def fig5_records(results: Path, small: bool, progress: bool = True) -> list[dict]:
    """Figure 5's rows (:func:`_fig5_rows` of the run's spec, items cached under ``results``)."""
    return _fig5_rows((SMALL if small else FULL)["fig5"], results, progress)


# ------------------------------------------------------------------ records on disk

#: Each figure's CSVs (stems in ``--out``): one file, or a table name -> file for a
#: figure of several tables (its records are then a dict of those tables).
CSV_FILES = {
    "fig1": {"gap": "fig1_gap_vs_budget", "band": "fig1_bounds_band", "panels": "fig1_panels"},
    "fig2": "fig2_theory_vs_simulation",
    "fig3": "fig3_sample_efficiency",
    "fig4": "fig4_plug_in_robustness",
    "fig5": "fig5_pool_size",
    "fig6": "fig6_practical_regimes",
}
#: Each figure's PNG and PDF (stem in ``--out``).
FIGURE_FILES = {"fig1": "fig1_gap_vs_budget", "fig2": "fig2_theory_vs_simulation", "fig3": "fig3_sample_efficiency",
                "fig4": "fig4_plug_in_robustness", "fig5": "fig5_pool_size", "fig6": "fig6_practical_regimes"}
#: Header of tables that may have no rows.
_COLUMNS = {
    ("fig1", "band"): ["world", "design", "budget", "lower", "upper", "prediction", "n0"],
    ("fig1", "panels"): ["world", "title", "estimator", "reference_gap", "upper_bound_from", "upper_bound_from_design", "num_edges"],
}
#: The columns each plot reads (checked when a CSV is read back: CSVs written before a
#: column was added are refused with the command that rewrites them).
PLOT_COLUMNS = {
    ("fig1", "gap"): ("world", "design", "budget", "mean_gap", "ci_low", "ci_high", "valid_fraction"),
    ("fig1", "band"): ("world", "design", "budget", "lower", "upper"),
    ("fig1", "panels"): tuple(_COLUMNS[("fig1", "panels")]),
    ("fig2", None): ("world", "design", "n", "mc_mean", "mc_se", "asymptotic"),
    ("fig3", None): ("world", "design", "ratio", "ratio_low", "ratio_high", "uniform_budget"),
    ("fig4", None): ("kind", "direction", "radius", "gap_ratio", "gap_ratio_se", "criterion_ratio", "bound_factor", "budget", "dim",
                     "directions"),
    ("fig5", None): ("panel", "design", "num_completions", "theta_scale", "mc_scale", "budget", "approximation", "estimation_asymptotic",
                     "total_asymptotic", "estimation_mc", "estimation_mc_ci_low", "estimation_mc_ci_high", "coincidence_world"),
    ("fig6", None): ("panel", "design", "registered_design", "budget", "budget_fraction", "num_edges", "num_prompts", "dim", "seeds",
                     "replicates", "allocations", "mean_gap", "ci_low", "ci_high", "mle_mean_gap", "mle_ci_low", "mle_ci_high", "reference_gap"),
}
PLOTS = {"fig1": plot_fig1, "fig2": plot_fig2, "fig3": plot_fig3, "fig4": plot_fig4, "fig5": plot_fig5, "fig6": plot_fig6}


def _check_name(name) -> None:
    if name not in CSV_FILES:
        raise ValueError(f"name must be one of {', '.join(FIGURES)}, got {name!r}")


def write_records(records, out: Path, name: str) -> list[Path]:
    """Write figure ``name``'s records as its CSV(s) in ``out`` (:data:`CSV_FILES`); returns the paths."""
    _check_name(name)
    files = CSV_FILES[name]
    if isinstance(files, str):
        return [write_csv(records, Path(out) / f"{files}.csv")]
    missing = sorted(set(files) - set(records))
    if missing:
        raise ValueError(f"records of {name} lack the tables {missing}; allowed tables: {sorted(files)}")
    return [write_csv(records[t], Path(out) / f"{stem}.csv", _COLUMNS.get((name, t))) for t, stem in files.items()]


def parse_cell(value: str):
    """One CSV cell back to its value: ``True``/``False`` are booleans, integers (``"200"``)
    ints and other numbers (``"0.5"``, ``"1e-05"``, ``"nan"``, ``"inf"``) floats, where the
    number writes back as the same text; anything else (``""``, names, code versions such
    as ``"0e0f53b8a988"`` or ``"0123"``) stays a string. :func:`write_csv` writes floats
    as Python's ``repr``, so a figure's records come back bit for bit and written again
    give the same CSV."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            got = kind(value)
        except ValueError:
            continue
        return got if repr(got) == value else value
    return value


def _read_csv(path: Path, name: str, required=()) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: --replot draws from the CSVs a run without --replot wrote there "
                                f"(python -m experiments.figures --only {name} --out {path.parent})")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing} that plot_{name} draws (written by older code): rewrite it with "
                             f"python -m experiments.figures --only {name} --out {path.parent} (seconds where its records are cached)")
        return [{k: parse_cell(v) for k, v in r.items()} for r in reader]


def read_records(out: Path, name: str):
    """Figure ``name``'s records read back from its CSV(s) in ``out``, cells parsed by
    :func:`parse_cell`: what ``plot_<name>`` draws (``--replot``). Raises
    ``FileNotFoundError`` for a missing CSV and ``ValueError`` for one without a column
    the plot draws (:data:`PLOT_COLUMNS`)."""
    _check_name(name)
    files = CSV_FILES[name]
    if isinstance(files, str):
        return _read_csv(Path(out) / f"{files}.csv", name, PLOT_COLUMNS[(name, None)])
    return {t: _read_csv(Path(out) / f"{stem}.csv", name, PLOT_COLUMNS[(name, t)]) for t, stem in files.items()}


# ------------------------------------------------------------------ command


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Draw the paper's synthetic figures (records are reused; reruns resume).")
    ap.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="figures to draw (default: all)")
    ap.add_argument("--out", default="figures", help="where the figures and their CSV go")
    ap.add_argument("--results", default="results/figures", help="where the records go, sweep cells and items (reused by reruns)")
    ap.add_argument("--small", action="store_true", help="small worlds and few replicates (a smoke run)")
    ap.add_argument("--replot", action="store_true",
                    help="redraw the figures from their CSVs in --out, computing nothing (--results and --small are unused)")
    ap.add_argument("--jobs", type=_positive_int, default=1,
                    help="worker processes that compute the records first, largest first (experiments.fill); the numbers do not depend on it")
    ap.add_argument("--task-times", metavar="FILE", default=None,
                    help="with --jobs > 1: write each record task's label and seconds (JSON, in the order they finished) to FILE")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only; set here, not on import, so notebooks keep their backend
    use_classic_emitters()  # before the first computation (the workers inherit it): records are computed so by every app
    jax.config.update("jax_enable_x64", True)  # this script computes in float64 (importing the module does not switch)
    out, results = Path(args.out), Path(args.results)
    if args.small:
        results = results / "small"
    progress = not args.no_progress
    timings, t_all = {}, time.time()
    with contextlib.ExitStack() as stack:
        if args.jobs > 1 and not args.replot:
            from experiments import fill

            cache = stack.enter_context(fill.compile_cache())
            done = fill.fill(args.only, results, args.small, args.jobs, progress, cache)
            timings["records"] = time.time() - t_all
            print(f"records: {timings['records']:.0f} s ({len(done)} tasks in {args.jobs} workers)", flush=True)
            if args.task_times:
                Path(args.task_times).write_text(json.dumps([[label, round(sec, 2)] for label, sec in done], indent=0))
        stack.enter_context(one_blas_thread())  # what is computed here too (Figure 1's band, G_sup), as the records are
        timings.update(_draw(args, out, results, progress))
    timings["total"] = time.time() - t_all
    print(f"all figures: {timings['total']:.0f} s; written to {out}/")
    return timings


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (worker processes), got {text!r}")
    return value


def _draw(args, out: Path, results: Path, progress: bool) -> dict:
    """Each chosen figure's records (computed or found), CSVs and plot; returns seconds per figure."""
    timings, fig1 = {}, None
    for name in FIGURES:
        # Figure 3 is made from Figure 1's records, which are then drawn too (not on --replot: fig3's CSV suffices)
        if name not in args.only and not (name == "fig1" and "fig3" in args.only and not args.replot):
            continue
        t0 = time.time()
        if args.replot:
            records = read_records(out, name)
        else:
            if name == "fig1":
                records = fig1 = fig1_records(results, args.small, progress)
            elif name == "fig2":
                records = fig2_records(results, args.small, progress, out)
            elif name == "fig3":
                records = fig3_records(results, args.small, progress, fig1)
            elif name == "fig4":
                records = fig4_records(results, args.small, progress)
            elif name == "fig5":
                records = fig5_records(results, args.small, progress)
            else:
                from experiments import practical

                records = practical.compute(results / "practical", args.small, progress)
            write_records(records, out, name)
        save_figure(PLOTS[name](records), out / FIGURE_FILES[name])
        timings[name] = time.time() - t0
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        release_compiled()  # the figures in one process stay under the kernel's memory-map limit
    return timings


if __name__ == "__main__":
    main()
