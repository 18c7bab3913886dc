"""Figure 6: the paper's two practical regimes as synthetic analogues (issue 19, section 4).

    python -m experiments.practical            # figures/fig6_practical_regimes.{png,pdf,csv}, about 200 s from empty records
    python -m experiments.practical --small    # a smoke run on small pools (about 35 s)

(a) **HH-like** (``experiment=hh_like``): 40 prompts with 16 completions, so
``E = 40 * 120 = 4,800`` distinct within-prompt comparisons; ``n = E/8`` and ``E/2``
labels (add 4 to ``FULL["hh_fractions"]`` for ``E/4``, about 35 s of CPU more),
**each comparison at most once** (``max_labels_per_edge = 1``), for the
designs oracle (reference), plug_in, two_stage, greedy D-optimal (``adpo_greedy`` at a
uniform pilot's estimate, ``at = "pilot"``), uniform, first_n and best_vs_worst. The
last has one comparison a prompt (40 in all): it cannot spend ``n >= 600`` labels
each once, so it labels its 40 pairs repeatedly (``max_labels_per_edge = null``), at
the same label budget as the others.

(b) **IMDb-like** (``experiment=imdb_like``): 1,000 prompts with 8 completions
(``E = 28,000``), ``n = 175`` labels, each comparison at most once:
``prompt_selection`` (175 L-optimal prompts, each with its fixed pair, completions 0
and 1; also solved at ``theta*``, its oracle), ``response_selection`` (175 prompts, one
L-optimal pair on each), against ``first_two`` (175 uniformly chosen prompts with
their fixed pair; the completions of a prompt are exchangeable, so this is a uniform
random pair) and ``uniform`` (175 distinct comparisons drawn uniformly from all ``E``).

Every cell is a cell of the sweep app (:mod:`experiments.sweep`: same ids, records and
resumability; the experiment configs name the commands that fill them through any
Hydra launcher). A cell draws the design's allocation ``allocation_draws = D`` times
(which comparisons its rounding, pilot or uniform draw picks; once for adaptive designs,
whose replicates each run the design) and splits its ``num_replicates`` label sets among
the draws; the cells are ``seed = 0..S-1``. Rows pool the ``S`` cells of a (design,
budget, estimator): the mean over all ``S R`` replicates and a cluster-robust standard
error over the ``S D`` draws with a Student t interval, which covers the design draw and
the label noise (:func:`pool_draws`; ``draw_p`` tests whether the draws differ beyond the
label noise). The estimator of the figure is
MAP DPO (``estimator=map``, prior precision 1); the plain MLE (``estimator=newton``,
the ridge-path limit where the MLE does not exist) is the ``mle_*`` columns, at the
largest budget of (a) and in (b), on the same allocations and labels (a cell's keys do
not depend on its estimator); ``mle_fraction`` (replicates whose MLE exists, decided
exactly) is reported at every budget. The gap of
``pi0`` itself (``theta = 0``) is drawn as a reference line.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

__all__ = ["HH_DESIGNS", "IMDB_DESIGNS", "FULL", "SMALL", "pool_draws", "jobs", "compute", "plot_practical", "main"]

#: label -> (registered design, its overrides beyond the experiment config)
HH_DESIGNS = {
    "oracle": ("oracle", []),
    "plug_in": ("plug_in", []),
    "two_stage": ("two_stage", []),
    "adpo_greedy": ("adpo_greedy", ["design.params.at=pilot"]),
    # ADPO+ as its authors run it: rounds of 20, refit (MAP) between rounds, each comparison once
    "adpo_adaptive": ("adpo_adaptive", []),
    "uniform": ("uniform", []),
    "first_n": ("first_n", []),
    "best_vs_worst": ("best_vs_worst", ["design.params.max_labels_per_edge=null"]),
}
IMDB_DESIGNS = {
    "prompt_selection (oracle)": ("prompt_selection", ["design.params.at=truth"]),
    "prompt_selection": ("prompt_selection", []),
    "response_selection": ("response_selection", []),
    "first_two": ("first_two", []),
    "uniform": ("uniform", []),
}

#: hh_fractions: budgets E / f; imdb_budget: labels (and prompts) of panel (b); allocation_draws:
#: draws of each design's allocation a cell (seeds x draws a point). From empty records the full
#: figure takes about 200 s of task time (2-core Intel Xeon, 2026-11-29; E/8 and E/2).
FULL = {"hh_world": [], "hh_fractions": (8, 2), "imdb_world": [], "imdb_budget": 175, "seeds": 2, "replicates": 50, "allocation_draws": 10}
SMALL = {
    "hh_world": ["world.params.num_train_prompts=5", "world.params.num_eval_prompts=20"],
    "hh_fractions": (2,),
    "imdb_world": ["world.params.num_train_prompts=60", "world.params.num_eval_prompts=20"],
    "imdb_budget": 24,
    "seeds": 2,
    "replicates": 6,
    "allocation_draws": 3,
}


# ------------------------------------------------------------------ pooling


def pool_draws(cells, level: float = 0.95) -> dict:
    """Pool the records of the ``S`` cells (seeds) of one (design, budget, estimator).

    Each cell holds ``R`` replicates on ``D = allocation_draws`` draws of the design's
    allocation (its ``allocation`` column; a cell of old records without it is one draw).
    The draws of all cells are the clusters, ``(seed, draw)`` pairs, ``S D`` in all, and the
    interval is :func:`experiments.records.draws_mean_and_ci`'s: cluster-robust (CR1) over
    the draws with Student's t at ``S D - 1`` degrees of freedom, so it covers the design's
    own randomness (its rounding, pilot or uniform draw) as well as the label noise. Where
    no cell's allocation is random (``allocation_random`` false: every draw gave one
    allocation), all replicates share it and are independent: the plain interval. Where every
    replicate has its own draw (adaptive designs), the same. A random allocation drawn once in
    all (one cell of one draw) is refused: no interval from it covers the design's draw; so is
    one cell of old records (whether its allocation is a draw is unknown).

    Args:
      cells: the cells' record columns (``gap``, ``valid``, and ``allocation``,
        ``allocation_random`` where recorded).
      level: confidence level.

    Returns:
      ``mean``, ``se``, ``ci_low``, ``ci_high`` (over valid replicates); ``allocations``: the
      allocations with a valid replicate the interval is over (1: one allocation; the
      replicates: adaptive);
      ``se_within = sqrt(MSW / N)``, the error from label noise alone with the draws held
      fixed (``MSW`` the pooled within-draw variance; ``nan`` for adaptive designs) and
      ``draw_p``, the p-value of the one-way F test that the draws do not differ (small:
      the design's own randomness matters beyond the label noise; ``nan`` without draws).
    """
    from scipy import stats

    from experiments.records import draws_mean_and_ci

    if len(cells) < 1:
        raise ValueError("cells must hold at least one cell's records")
    gap = np.concatenate([np.asarray(c["gap"], np.float64) for c in cells])
    valid = np.concatenate([np.asarray(c["valid"], bool) for c in cells])
    if not np.all(np.isfinite(gap[valid])):
        raise ValueError("gap must be finite on valid replicates (MAP, or the MLE's ridge-path limit)")
    random = any(np.any(c.get("allocation_random", True)) for c in cells)
    # cluster ids: (cell, draw) pairs, distinct across cells
    width = max(len(c["gap"]) for c in cells)
    alloc = np.concatenate([i * width + np.asarray(c.get("allocation", np.zeros(len(c["gap"]), np.int64)), np.int64)
                            for i, c in enumerate(cells)]) if random else None
    if alloc is not None and np.unique(alloc).size == 1:
        if any("allocation_random" not in c for c in cells):
            raise ValueError("one cell of records made before allocation draws were recorded: whether its allocation is a "
                             "draw of the design is unknown; rerun it with allocation_draws >= 2")
        raise ValueError("one draw of a random allocation: its interval would leave the design's draw out; "
                         "pool two or more cells or draws (allocation_draws >= 2)")
    mean, se, lo, hi, draws = draws_mean_and_ci(gap, valid, alloc, level)
    ok = gap[valid]
    se_within, draw_p = np.nan, np.nan
    if alloc is None:
        se_within = se  # one allocation: label noise alone
    elif 1 < draws < ok.size:
        groups = [ok[alloc[valid] == a] for a in np.unique(alloc[valid])]
        k = len(groups)
        msw = sum(float(np.sum((g - g.mean()) ** 2)) for g in groups) / (ok.size - k)
        msb = sum(g.size * (float(g.mean()) - float(ok.mean())) ** 2 for g in groups) / (k - 1)
        se_within = math.sqrt(msw / ok.size)
        draw_p = float(stats.f.sf(msb / msw, k - 1, ok.size - k)) if msw > 0 else (0.0 if msb > 0 else 1.0)
    return {"mean": mean, "se": se, "ci_low": lo, "ci_high": hi, "allocations": draws, "se_within": se_within, "draw_p": draw_p}


# ------------------------------------------------------------------ cells


def _world_size(experiment: str, world_overrides) -> tuple[int, int, int]:
    """``(E, prompts, d)`` of an experiment's training pool, from the world it builds."""
    import jax

    from experiments import sweep
    from experiments.cell import float64
    from experiments.worlds import make_world
    from synthetic.designs import design_problem

    cfg = sweep.compose_job([f"experiment={experiment}", *world_overrides])
    with float64():
        problem = design_problem(make_world(cfg.world, jax.random.key(cfg.world_seed)))
    return problem.num_edges, int(problem.pool.log_ref.shape[0]), problem.dim


def jobs(small: bool = False, panels=("hh_like", "imdb_like")) -> dict:
    """Every cell of the figure, per panel: its budgets, pool sizes and ``jobs``, a list of
    ``(design label, sweep overrides)``."""
    spec = SMALL if small else FULL
    seeds = ",".join(str(s) for s in range(spec["seeds"]))
    common = [f"seed={seeds}", f"num_replicates={spec['replicates']}"]
    from experiments import sweep

    out = {}
    for panel, exp, designs in (("hh_like", "hh_like", HH_DESIGNS), ("imdb_like", "imdb_like", IMDB_DESIGNS)):
        if panel not in panels:
            continue
        world = spec[f"{'hh' if panel == 'hh_like' else 'imdb'}_world"]
        e, prompts, d = _world_size(exp, world)
        budgets = [e // f for f in spec["hh_fractions"]] if panel == "hh_like" else [spec["imdb_budget"]]
        todo = []
        for label, (design, extra) in designs.items():
            # MAP at every budget; the plain MLE (newton) at the largest one
            # each cell draws the design's allocation `allocation_draws` times (the cell runs a
            # keyless or adaptive design once whatever this asks: experiments.cell.allocation_draws)
            draws = [f"allocation_draws={spec['allocation_draws']}"]
            for est, ns in (("map", budgets), ("newton", budgets[-1:])):
                for job in sweep.grid(exp, [f"design={design}", *extra, *world, f"budget={','.join(map(str, ns))}", f"estimator={est}", *common, *draws]):
                    todo.append((label, job))
        out[panel] = {"experiment": exp, "budgets": budgets, "num_edges": e, "num_prompts": prompts, "dim": d,
                      "world_overrides": world, "jobs": todo}
    return out


def compute(results_dir, small: bool = False, progress: bool = True, reuse_stale_records: bool = False) -> list[dict]:
    """Run (or reuse) every cell and pool them: one row per (panel, design, budget).

    ``reuse_stale_records``: keep records made by other code than the current one
    (the sweep's ``reuse_stale_records=true``) instead of recomputing them; the
    ``code_versions`` column names the code versions of the pooled records.

    Columns: the pooled MAP gap (``mean_gap``, ``se``, ``ci_*``, ``se_within``,
    ``allocations`` and ``draw_p``: :func:`pool_draws`), the plain
    MLE's (``mle_mean_gap``, ``mle_se``, over its replicates whose gap is defined, ``mle_valid_fraction``;
    ``mle_fraction``: replicates whose MLE exists; ``map_valid_fraction``: the MAP's defined gaps),
    ``ratio_to_uniform`` (MAP), the gap of ``pi0`` (``reference_gap``), the pool sizes.
    """
    from experiments import sweep
    from experiments.figures import reference_gap

    rows = []
    for panel, p in jobs(small).items():
        stale = ["reuse_stale_records=true"] if reuse_stale_records else []
        paths = sweep.run_jobs([[*j, *stale] for _, j in p["jobs"]], Path(results_dir) / panel, progress, desc=panel)
        cells: dict = {}
        versions: dict = {}
        for (label, _), path in zip(p["jobs"], paths):
            cols, meta = sweep.read_cell(path)
            cells.setdefault((label, meta["budget"], meta["estimator"]["name"]), []).append((meta["seed"], cols))
            versions.setdefault((label, meta["budget"]), set()).add(meta["code_version"])
        g0 = reference_gap(sweep.compose_job([f"experiment={p['experiment']}", *p["world_overrides"]]))
        nan = {"mean": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan}
        for label in (HH_DESIGNS if panel == "hh_like" else IMDB_DESIGNS):
            for n in p["budgets"]:
                cs = sorted(cells[(label, n, "map")], key=lambda c: c[0])
                m = pool_draws([c for _, c in cs])
                mle_cs = sorted(cells.get((label, n, "newton"), []), key=lambda c: c[0])
                mle = pool_draws([c for _, c in mle_cs]) if mle_cs else nan
                rows.append({
                    "panel": panel, "design": label, "registered_design": (HH_DESIGNS if panel == "hh_like" else IMDB_DESIGNS)[label][0],
                    "budget": n, "num_edges": p["num_edges"], "num_prompts": p["num_prompts"], "dim": p["dim"],
                    "budget_fraction": n / p["num_edges"], "seeds": len(cs), "replicates": sum(len(c["gap"]) for _, c in cs),
                    "labels_spent": int(cs[0][1]["labels_spent"][0]),
                    "estimator": "map", "mean_gap": m["mean"], "se": m["se"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                    "allocations": m["allocations"], "se_within": m["se_within"], "draw_p": m["draw_p"],
                    "mle_mean_gap": mle["mean"], "mle_se": mle["se"], "mle_ci_low": mle["ci_low"], "mle_ci_high": mle["ci_high"],
                    # the plain DPO cells' replicates whose gap is defined (the MLE, else its ridge-path limit): the
                    # mle_* columns are over these only
                    "mle_valid_fraction": float(np.mean(np.concatenate([c["valid"] for _, c in mle_cs]))) if mle_cs else np.nan,
                    # the MLE exists (exact, by linear programming), from the MAP cells: the newton
                    # cells of a budget have the same allocations and labels
                    "mle_fraction": float(np.mean(np.concatenate([c["mle_exists"] for _, c in cs]))),
                    "map_valid_fraction": float(np.mean(np.concatenate([c["valid"] for _, c in cs]))),
                    "reference_gap": g0, "ratio_to_uniform": np.nan,
                    "code_versions": " ".join(sorted(versions[(label, n)])),
                })
    for r in rows:
        base = next(b for b in rows if b["panel"] == r["panel"] and b["design"] == "uniform" and b["budget"] == r["budget"])
        r["ratio_to_uniform"] = r["mean_gap"] / base["mean_gap"]
    return rows


# ------------------------------------------------------------------ plot


def plot_practical(rows):
    """The figure from :func:`compute`'s rows (pure: no I/O). Returns the matplotlib Figure.

    (a) HH-like: MAP gap against the budget fraction ``n / E`` per design (95% bars),
    the plain MLE's at the largest budget as open markers, ``pi0``'s gap as a dotted line.
    (b) IMDb-like: MAP gap per design (filled, 95% bars) and the plain MLE's (open).
    """
    import matplotlib.pyplot as plt

    from experiments.plotting import design_style, log_ticks, paper_style

    paper_style()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(7.4, 3.6), constrained_layout=True, gridspec_kw={"width_ratios": [1.25, 1]})
    hh = [r for r in rows if r["panel"] == "hh_like"]
    im = [r for r in rows if r["panel"] == "imdb_like"]
    if hh:
        designs = list(dict.fromkeys(r["design"] for r in hh))
        fracs = sorted({r["budget_fraction"] for r in hh})
        width = 0.035 * (len(designs) > 1)
        for i, name in enumerate(designs):
            rs = sorted((r for r in hh if r["design"] == name), key=lambda r: r["budget"])
            color, marker = design_style(rs[0]["registered_design"])
            shift = 2 ** (width * (i - (len(designs) - 1) / 2))
            x = np.array([r["budget_fraction"] for r in rs]) * shift
            y = np.array([r["mean_gap"] for r in rs])
            err = np.array([[r["mean_gap"] - r["ci_low"] for r in rs], [r["ci_high"] - r["mean_gap"] for r in rs]])
            ls = ":" if name == "oracle" else "-"
            label = f"{name} (one pair a prompt, repeated)" if rs[0]["registered_design"] == "best_vs_worst" else name
            ax.errorbar(x, y, yerr=err, marker=marker, color=color, ls=ls, ms=3.5, lw=1.1, capsize=1.5, label=label)
            top = rs[-1]
            ax.errorbar([x[-1] * 1.08], [top["mle_mean_gap"]], yerr=[[top["mle_mean_gap"] - top["mle_ci_low"]], [top["mle_ci_high"] - top["mle_mean_gap"]]],
                        marker=marker, color=color, mfc="none", ls="none", ms=3.5, lw=0.6, capsize=1)
        ax.errorbar([], [], marker="o", color="0.3", mfc="none", ls="none", ms=3.5, label=f"plain MLE, $n = E/{round(1 / fracs[-1])}$")
        g0 = hh[0]["reference_gap"]
        ax.axhline(g0, color="0.4", lw=0.8, ls=":")
        ax.annotate(rf"$\pi_0$ itself ($\theta = 0$): {g0:.3g}", (0.02, g0), xycoords=("axes fraction", "data"), va="bottom", fontsize=5.5, color="0.3")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(fracs, [f"E/{round(1 / f)}\n{round(f * hh[0]['num_edges']):,}" for f in fracs])
        ax.minorticks_off()
        ax.set_xlabel(f"labels $n$ (each comparison at most once), E = {hh[0]['num_edges']:,}")
        ax.set_ylabel("gap (nats), MAP DPO")
        ax.set_title(f"(a) HH-like: {hh[0]['num_prompts']} prompts x 16 completions, d = {hh[0]['dim']}", fontsize=7.5)
        ax.grid(True, which="major", alpha=0.3, lw=0.4)
        ax.legend(frameon=False, fontsize=5.5, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    if im:
        rs = sorted(im, key=lambda r: r["mean_gap"])
        y = np.arange(len(rs))[::-1]
        for yi, r in zip(y, rs):
            color, marker = design_style(r["registered_design"])
            bx.errorbar([r["mean_gap"]], [yi + 0.12], xerr=[[r["mean_gap"] - r["ci_low"]], [r["ci_high"] - r["mean_gap"]]], marker=marker,
                        color=color, ms=4, capsize=1.5, lw=1.0)
            bx.errorbar([r["mle_mean_gap"]], [yi - 0.12], xerr=[[r["mle_mean_gap"] - r["mle_ci_low"]], [r["mle_ci_high"] - r["mle_mean_gap"]]],
                        marker=marker, color=color, mfc="none", ms=4, capsize=1.5, lw=0.6)
        g0 = im[0]["reference_gap"]
        bx.axvline(g0, color="0.4", lw=0.8, ls=":")
        bx.annotate(rf"$\pi_0$: {g0:.3g}", (g0, 1.0), xycoords=("data", "axes fraction"), ha="right", va="top", fontsize=5.5, color="0.3", rotation=90)
        bx.set_yticks(y, [r["design"] for r in rs])
        bx.set_xscale("log")
        log_ticks(bx.xaxis)
        bx.set_xlabel(f"gap (nats): MAP filled, plain MLE open; n = {rs[0]['budget']}")
        bx.set_title(f"(b) IMDb-like: {im[0]['num_prompts']:,} prompts x 8 completions, E = {im[0]['num_edges']:,}", fontsize=7.5)
        bx.grid(True, axis="x", which="major", alpha=0.3, lw=0.4)
    draws = sorted({r["allocations"] for r in rows if 1 < r["allocations"] < r["replicates"]})
    over = f"{draws[0]}" if len(draws) == 1 else f"{draws[0]}-{draws[-1]}" if draws else "no"
    fig.suptitle(f"the paper's practical regimes, synthetic analogues; means over {rows[0]['replicates']} label sets on {over} draws of each "
                 "design's allocation; 95% intervals, t over the draws (over the label sets where every draw gave one allocation)", fontsize=7)
    return fig


# ------------------------------------------------------------------ command


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description="Figure 6: the paper's HH and IMDb regimes as synthetic analogues (records reused).")
    ap.add_argument("--out", default="figures", help="where fig6_practical_regimes.{png,pdf,csv} go")
    ap.add_argument("--results", default="results/practical", help="where the cell records go (reused by reruns)")
    ap.add_argument("--small", action="store_true", help="small pools, few replicates (a smoke run)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--reuse-stale-records", action="store_true",
                    help="keep records made by other code versions (named in the CSV's code_versions) instead of recomputing them")
    args = ap.parse_args(argv)
    from experiments.compiled import use_classic_emitters

    # before the first computation (jobs() builds the worlds): records are computed with the
    # classic emitters by every app, so this one's are the figures command's, reused both ways
    use_classic_emitters()
    import matplotlib

    matplotlib.use("Agg")
    from experiments.plotting import save_figure, write_csv

    results = Path(args.results) / ("small" if args.small else "")
    t0 = time.time()
    rows = compute(results, args.small, progress=not args.no_progress, reuse_stale_records=args.reuse_stale_records)
    out = Path(args.out) / "fig6_practical_regimes"
    write_csv(rows, out.with_suffix(".csv"))
    save_figure(plot_practical(rows), out)
    print(f"fig6: {time.time() - t0:.0f} s; written to {out}.png/.pdf/.csv")
    return rows


if __name__ == "__main__":
    main()
