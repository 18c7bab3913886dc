"""A cell's interval covers the design's own randomness (``allocation_draws``).

Below one label per comparison (``budget <= E``) every design's allocation is a random
draw (rounding at the caps), and a pilot's labels are random at every budget. A cell of one
allocation gives an interval over label sets given that draw: across seeds its mean moves by
more than its standard error says (measured on Figure 1's tabular world: up to 2.2 times).
With ``allocation_draws = S`` the cell draws ``S`` allocations and the summary's interval is
cluster-robust over them.
"""

import numpy as np
import pytest
from scipy import stats

from experiments import records, sweep
from experiments.cell import run_cell

# d = 8 completions, E = 28 comparisons, 10 labels: uniform's allocation is a pivotal draw
# of 10 of the 28 edges, and the gap depends strongly on which.
CAPPED = ["world=tabular", "world.params.num_completions=8", "world.params.theta_scale=1.0", "design=uniform",
          "design.params.max_labels_per_edge=auto", "budget=10", "estimator=map"]


def test_the_cluster_robust_interval_matches_statsmodels_and_the_draws_spread():
    """The summary's mean, CR1 standard error and t interval over draws equal statsmodels' OLS of
    the gaps on a constant with errors clustered by draw (unbalanced draws, invalid replicates
    left out); with balanced draws the error is the standard deviation of the draws' means
    over sqrt(S)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    alloc = np.repeat(np.arange(6), [5, 9, 4, 7, 6, 9])
    gap = rng.normal(size=alloc.size) + rng.normal(size=6)[alloc]
    valid = rng.uniform(size=alloc.size) > 0.15
    mean, se, lo, hi, draws = records.draws_mean_and_ci(gap, valid, alloc, level=0.9)
    fit = sm.OLS(gap[valid], np.ones(valid.sum())).fit(cov_type="cluster", cov_kwds={"groups": alloc[valid]}, use_t=True)
    assert draws == 6
    np.testing.assert_allclose([mean, se], [fit.params[0], fit.bse[0]], rtol=1e-12)
    np.testing.assert_allclose([lo, hi], fit.conf_int(alpha=0.1)[0], rtol=1e-12)
    g = rng.normal(size=(5, 8)) + rng.normal(size=(5, 1))
    m = records.draws_mean_and_ci(g.ravel(), np.ones(40, bool), np.repeat(np.arange(5), 8))
    np.testing.assert_allclose([m[0], m[1]], [g.mean(), g.mean(axis=1).std(ddof=1) / np.sqrt(5)], rtol=1e-12)
    # every replicate its own draw (adaptive designs), or one draw: the plain interval, Student's t over the replicates
    for a in (np.arange(40), np.zeros(40, int)):
        np.testing.assert_allclose(records.draws_mean_and_ci(g.ravel(), np.ones(40, bool), a)[:4],
                                   [g.mean(), g.std(ddof=1) / np.sqrt(40), *stats.t.interval(0.95, 39, g.mean(), g.std(ddof=1) / np.sqrt(40))])
    # valid replicates in one of several draws: no interval, and the row says why
    one = records.draws_mean_and_ci(gap, alloc == 2, alloc)
    assert np.all(np.isnan(one[:4])) and one[4] == 1
    meta = {"world": {"name": "w"}, "design": {"name": "d"}, "estimator": {"name": "map"}, "budget": 5, "code_version": "x"}
    row = records.summarise_cell({"gap": gap, "valid": alloc == 2, "predicted_gap": np.ones(gap.size), "allocation": alloc}, meta)
    assert np.isnan(row["se"]) and "no interval: valid replicates in 1 of 6 allocation draws" in row["note"]
    # the test against the prediction over clustered draws: Student's t with S - 1 = 5 df (the normal's
    # 3.29 at 1e-3 is a 0.02 test there)
    full = records.summarise_cell({"gap": gap, "valid": valid, "predicted_gap": np.full(gap.size, 0.1), "allocation": alloc}, meta)
    assert full["z_to_prediction"] == pytest.approx((full["mean_gap"] - 0.1) / full["se"], rel=1e-12)
    assert full["p_to_prediction"] == pytest.approx(2 * stats.t.sf(abs(full["z_to_prediction"]), 5), rel=1e-9)


def test_a_capped_cells_interval_over_draws_matches_the_spread_across_seeds():
    """Across K = 24 seeds of a capped cell, the variance of the cell means is what the cells'
    standard errors say with S = 6 draws (ratio within its chi-square range at level 1e-3),
    and several times larger with one draw (the interval over labels given one allocation):
    the test fails on a summary that ignores the draws, or a cell that draws one allocation
    S times."""
    k = 24
    ratio = {}
    for draws in (1, 6):
        means, ses = [], []
        for seed in range(k):
            cfg = sweep.compose_job([*CAPPED, f"seed={seed}", "num_replicates=24", f"allocation_draws={draws}", "design_cache=null",
                                     "progress=false"])
            cols = run_cell(cfg)
            assert np.unique(cols["allocation"]).size == draws
            mean, se, *_ = records.draws_mean_and_ci(cols["gap"], cols["valid"], cols["allocation"])
            means.append(mean)
            ses.append(se)
        ratio[draws] = np.var(means, ddof=1) / np.mean(np.square(ses))
    # (K - 1) var / sigma^2 ~ chi^2_{K-1} where the standard errors are right (their mean square
    # estimates sigma^2 from K x S draws, far better than the K means do)
    lo, hi = stats.chi2.ppf([5e-4, 1 - 5e-4], k - 1) / (k - 1)
    assert lo < ratio[6] < hi, ratio
    assert ratio[1] > hi, ratio  # the world has allocation noise to find


@pytest.mark.parametrize("value, message", [(0, "allocation_draws"), (11, "allocation_draws = 11 exceeds num_replicates = 10")])
def test_allocation_draws_are_checked_before_any_job(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        sweep.run_jobs([[*CAPPED, "num_replicates=10", f"allocation_draws={value}"]], tmp_path, progress=False)
    assert not list(tmp_path.glob("*.npz"))


def test_a_one_draw_cell_of_a_random_allocation_says_its_interval_leaves_that_out(tmp_path):
    """Capped uniform (10 of 28 edges, drawn) with one draw: the row says its interval is given one
    draw of a random allocation; uncapped uniform at n = 56 (two labels on every edge, no draw) and
    the same capped cell with 5 draws do not say it."""
    base = [c for c in CAPPED if not c.startswith("budget")]
    jobs = [[*base, "budget=10", "num_replicates=10"], [*base, "budget=56", "num_replicates=10", "design.params.max_labels_per_edge=null"],
            [*base, "budget=10", "num_replicates=10", "allocation_draws=5"]]
    sweep.run_jobs(jobs, tmp_path, progress=False)
    rows = {(r["budget"], r["allocations"]): r for r in sweep.aggregate(tmp_path)}
    assert "random here" in rows[10, 1]["note"] and "random here" not in rows[56, 1]["note"]
    assert "random here" not in rows[10, 5]["note"] and "interval over 5 draws" in rows[10, 5]["note"]
    # a record made before allocations were recorded (no allocation columns): unknown, and said so
    for path in tmp_path.glob("*.npz"):
        cols, meta = sweep.read_cell(path)
        old = {k: v for k, v in cols.items() if k not in ("allocation", "allocation_random")}
        row = records.summarise_cell(old, meta)
        assert "predates allocation draws" in row["note"] and "random here" not in row["note"]
    assert "predates" not in rows[10, 1]["note"] and "predates" not in rows[56, 1]["note"]
    # ...but not for designs whose records never label one draw of a random allocation
    meta = {"world": {"name": "w"}, "estimator": {"name": "map"}, "budget": 5, "code_version": "x"}
    bare = {"gap": np.arange(4.0), "valid": np.ones(4, bool), "predicted_gap": np.ones(4)}
    for name, says in (("uniform", True), ("adpo_adaptive", False), ("apo_greedy", False)):
        assert ("predates" in records.summarise_cell(bare, {**meta, "design": {"name": name}})["note"]) == says, name


@pytest.mark.parametrize("budget, cap", [(10, "auto"), (20, "null")])
def test_designs_declared_keyless_give_one_allocation_whatever_the_key(budget, cap):
    """``keyless=True`` lets a cell run a design once for all its draws, so the declaration must
    hold: two keys give the same allocation, capped and uncapped (below E: apo_sequential labels
    each edge at most once). Uniform, which
    draws (the control), gives another."""
    import jax

    from experiments.cell import float64
    from experiments.worlds import make_world
    from synthetic.designs import DESIGNS, design_problem, run_design

    keyless = sorted(n for n, spec in DESIGNS.items() if spec.keyless)
    assert {"apo_greedy", "apo_sequential"} <= set(keyless)
    cfg = sweep.compose_job([*CAPPED, f"budget={budget}"])
    with float64():
        problem = design_problem(make_world(cfg.world, jax.random.key(0)))
        cap = None if cap == "null" else cap

        def counts(name, k):
            return run_design(name, jax.random.key(k), problem, budget, max_labels_per_edge=cap).dense_counts(problem.num_edges)

        for name in keyless:
            np.testing.assert_array_equal(counts(name, 1), counts(name, 2), err_msg=name)
        if cap == "auto":
            assert not np.array_equal(counts("uniform", 1), counts("uniform", 2))


def test_a_keyless_design_runs_once_for_all_draws(tmp_path):
    """apo_greedy with 5 draws: one allocation, the plain interval, no note of a random allocation,
    and the one-draw cell's id (asking 5 draws or 1 is one cell); uniform's ids differ."""
    from experiments.cell import cell_id

    sweep.run_jobs([[*CAPPED, "design=apo_greedy", "num_replicates=10", "allocation_draws=5"]], tmp_path, progress=False)
    (row,) = sweep.aggregate(tmp_path)
    assert row["allocations"] == 1 and "random here" not in row["note"] and "draws" not in row["note"]
    for design, same in (("apo_greedy", True), ("adpo_adaptive", True), ("uniform", False)):
        ids = [cell_id(sweep.compose_job([*CAPPED, f"design={design}", "num_replicates=10", f"allocation_draws={s}"]))[0] for s in (1, 5)]
        assert (ids[0] == ids[1]) == same, design


def test_rows_with_other_draws_keep_their_ratio_to_uniform_and_one_draw_ids_are_unchanged(tmp_path):
    """Figure 1 draws tabular two-stage 4 times and uniform 10 times: the ratio to uniform must
    still be made (the draws change the interval, not the mean's target); two uniform cells that
    differ in their draws each match themselves. A cell of one draw has the id it had before
    ``allocation_draws`` existed (no such key in its identity), so old records stay its records."""
    jobs = [[*CAPPED, "num_replicates=10", "allocation_draws=5"], [*CAPPED, "num_replicates=10", "allocation_draws=2", "design=plug_in"]]
    sweep.run_jobs(jobs, tmp_path / "a", progress=False)
    rows = {r["design"]: r for r in sweep.aggregate(tmp_path / "a")}
    assert rows["plug_in"]["ratio_to_uniform"] == pytest.approx(rows["plug_in"]["mean_gap"] / rows["uniform"]["mean_gap"], rel=1e-12)
    sweep.run_jobs([*jobs, [*CAPPED, "num_replicates=10"]], tmp_path / "b", progress=False)
    for r in sweep.aggregate(tmp_path / "b"):
        if r["design"] == "uniform":
            assert r["ratio_to_uniform"] == 1.0
    from experiments.cell import cell_identity

    one = cell_identity(sweep.compose_job([*CAPPED, "num_replicates=10"]))
    assert "allocation_draws" not in one
    assert cell_identity(sweep.compose_job([*CAPPED, "num_replicates=10", "allocation_draws=2"]))["allocation_draws"] == 2


def test_an_interval_reaching_zero_does_not_stretch_the_log_axis():
    """A t interval over four draws of a skewed gap can reach below 0 (Figure 1's tabular two-stage at
    n = 1,000: 1.06 +- 3.18 x 0.57). Its band is drawn down to a third of the panel's smallest positive
    value, the axis' bottom, not to 1e-300, which squeezed every curve of the panel into one line."""
    from experiments.plotting import plot_gap_vs_budget

    rows = [{"design": "uniform", "budget": n, "mean_gap": m, "ci_low": lo, "ci_high": hi, "predicted_gap": m}
            for n, m, lo, hi in ((100, 6.0, 5.5, 6.5), (1000, 1.06, -0.75, 2.87), (10000, 0.006, 0.005, 0.007))]
    fig = plot_gap_vs_budget(rows, prediction=False)
    bottom = fig.axes[0].get_ylim()[0]
    assert bottom == pytest.approx(0.005 / 3)
    # a row without an interval (valid replicates in one draw: nan) gets no band, not one to the floor
    rows[1] = {**rows[1], "ci_low": float("nan"), "ci_high": float("nan")}
    fig = plot_gap_vs_budget(rows, prediction=False)
    assert fig.axes[0].get_ylim()[0] > 1.5 * 0.005 / 3


def test_the_summary_labels_a_one_draw_cell_allocation_draws_1(tmp_path):
    """Rows that differ in their draws say so with the number, 1 included (not None)."""
    sweep.run_jobs([[*CAPPED, "num_replicates=10"], [*CAPPED, "num_replicates=10", "allocation_draws=5"]], tmp_path, progress=False)
    rows = sweep.aggregate(tmp_path)
    assert sorted(r["config"] for r in rows) == ["allocation_draws=1", "allocation_draws=5"]
    table = sweep.format_summary(rows).splitlines()
    at = table[0].index("draws") + len("draws")
    assert sorted(line[:at].split()[-1] for line in table[2:]) == ["1", "5"]  # the printed table's draws column


def test_a_design_that_observes_every_label_runs_once_per_replicate():
    """Seed 004's filter (reference_filter_labelled) returns its whole training set as observed
    labels, so nothing is redrawn: with one allocation draw the cell's replicates were copies of
    one gap and the summary gave an interval of width 0 (40 identical gaps on a Gaussian world).
    Each replicate now runs the design with its own key: independent gaps, each its own draw."""
    cfg = sweep.compose_job(["world=gaussian", "design=reference_filter_labelled", "budget=60", "num_replicates=12",
                             "allocation_draws=1", "design_cache=null", "progress=false"])
    cols = run_cell(cfg)
    assert np.unique(cols["gap"]).size == 12 and np.array_equal(cols["allocation"], np.arange(12))
    mean, se, lo, hi, draws = records.draws_mean_and_ci(cols["gap"], cols["valid"], cols["allocation"])
    assert se > 0 and hi > lo and draws == 12
    assert cols["allocation_random"].all()
    # each gap is that of DPO fitted on the labels its own design run observed (the cell's key
    # scheme: the design key split once per replicate), refitted here by the ridge-path limit
    # (the MLE where it exists) and scored by the policy gap on the evaluation pool
    import hashlib

    import jax

    from experiments.worlds import make_world
    from synthetic.designs import design_problem, run_design
    from synthetic.estimators import ridge_limit_gap, ridge_path_limit

    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    prob = design_problem(world)
    salt = int(hashlib.sha256(f"reference_filter_labelled|{cfg.budget}".encode()).hexdigest()[:7], 16)
    k_design = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), salt))[0]
    ev = world.eval
    for i, k in enumerate(jax.random.split(k_design, 12)):
        counts, wins = run_design("reference_filter_labelled", k, prob, 60, **cfg.design.params).pilot
        lim = ridge_path_limit(np.asarray(prob.edges.diffs), counts, wins, world.beta)
        want = ridge_limit_gap(lim, np.asarray(world.theta_star), np.asarray(ev.features), np.asarray(ev.log_ref), world.beta,
                               np.asarray(ev.prompt_weights) / np.sum(ev.prompt_weights))
        np.testing.assert_allclose(cols["gap"][i], want, rtol=1e-6, atol=1e-12)
