"""The figure pipeline: the sample-efficiency arithmetic against closed forms, and a
small end-to-end run of Figures 1, 3, 4 and 5 (records, CSV, PNG and PDF); Figure 5's
parts of the gap to the largest pool's objective against dense computations, and seed
003's coincidence with best-vs-worst against a closed form and numpy. Records and plots
are two steps: every figure is drawn from its CSVs alone (``--replot``) with everything
that computes patched to raise, and the CSV round trip gives back the same text."""

import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import figures


def test_labels_to_match_inverts_a_power_law_inside_and_outside_the_budgets():
    c = 3.0
    n = [1e3, 1e4]
    g = [c / x for x in n]
    assert math.isclose(figures.labels_to_match(n, g, c / 5e3), 5e3, rel_tol=1e-12)  # interpolation
    assert math.isclose(figures.labels_to_match(n, g, c / 1e5), 1e5, rel_tol=1e-12)  # extrapolation, slope -1
    assert math.isclose(figures.labels_to_match(n, g, c / 1e2), 1e2, rel_tol=1e-12)
    flat = [0.02, 0.019]  # slope -0.02: a plateau never reaches a lower target
    assert figures.labels_to_match(n, flat, 1e-3) == math.inf
    # a plateau below the target from the first budget on reached it there at the latest (it was
    # inf, drawn as 'not reached', for designs that beat the target at every budget)
    assert figures.labels_to_match([100, 1000], [0.009, 0.0045], 0.01) == 100.0
    assert figures.labels_to_match([100, 1000, 3000], [0.009, 0.0095, 0.002], 0.01) == 100.0  # rising first: the same
    with pytest.raises(ValueError, match="two budgets"):
        figures.labels_to_match([1e3], [1.0], 0.5)
    # an interval's lower end that reaches 0 at n = 1,000 (t over four pilots): the curve crosses
    # the target between 300 and 1,000, earliest at 300 (a log-log segment to 0 is undefined)
    assert figures.labels_to_match([100, 300, 1000, 3000], [6.0, 6.4, -0.7, 0.02], 3e-3) == 300.0
    assert figures.labels_to_match([100, 300], [0.0, 1.0], 3e-3) == 100.0
    # an end segment steeper than the 1/n rate is extended at 1/n: sequential plug-in measured at 300 and
    # 1,000 falling like n^-1.66 was extended to reach uniform's gap at 30,000 with 0.13 of its labels
    g2 = [1.0, 1.0 * (1000 / 300) ** -1.66]
    assert math.isclose(figures.labels_to_match([300, 1000], g2, g2[1] / 10), 1e4, rel_tol=1e-12)
    assert math.isclose(figures.labels_to_match([300, 1000], g2, g2[1] / 10, rate_slope=-2.0), 1000 * 10 ** (1 / 1.66), rel_tol=1e-12)


def test_sample_efficiency_of_a_design_with_half_the_gap_is_one_half():
    rows = []
    for n in (1e3, 1e4, 1e5):
        for design, c in (("uniform", 10.0), ("oracle", 5.0)):
            g = c / n
            rows.append({"world": "w", "design": design, "budget": n, "mean_gap": g, "ci_low": 0.9 * g, "ci_high": 1.1 * g,
                         "valid_fraction": 1.0})
    eff = {r["design"]: r for r in figures.sample_efficiency(rows)}
    assert math.isclose(eff["oracle"]["ratio"], 0.5, rel_tol=1e-12)
    assert math.isclose(eff["uniform"]["ratio"], 1.0, rel_tol=1e-12)
    assert eff["oracle"]["ratio_low"] < 0.5 < eff["oracle"]["ratio_high"]
    assert not eff["oracle"]["extrapolated"] and eff["oracle"]["last_budget"] == 1e5
    # a design measured only to 1e4 reaches the target past it: flagged as an extrapolation
    short = [r for r in rows if not (r["design"] == "oracle" and r["budget"] == 1e5)]
    eff = {r["design"]: r for r in figures.sample_efficiency(short)}
    assert eff["oracle"]["extrapolated"] and eff["oracle"]["last_budget"] == 1e4 and not eff["uniform"]["extrapolated"]
    assert eff["uniform"]["band_extrapolated"]  # its upper curve reaches its own target past 1e5 only
    assert math.isclose(eff["oracle"]["ratio"], 0.5, rel_tol=1e-12)
    # rows of one design that are not one curve (another estimator's at the same budgets) are refused, not merged
    rows += [{**r, "estimator": "map"} for r in rows if r["design"] == "oracle"]
    with pytest.raises(ValueError, match="the rows of design 'oracle' in world 'w' are not one curve"):
        figures.sample_efficiency(rows)


@pytest.mark.slow
def test_small_figure_run_writes_every_figure_with_its_data(tmp_path, monkeypatch):
    out, res = tmp_path / "fig", tmp_path / "res"
    # the records in two worker processes (experiments.fill), then pooled and drawn here
    figures.main(["--small", "--only", "fig1", "fig3", "fig4", "fig5", "--out", str(out), "--results", str(res), "--no-progress",
                  "--jobs", "2"])
    for name in ("fig1_gap_vs_budget", "fig3_sample_efficiency", "fig4_plug_in_robustness", "fig5_pool_size"):
        for ext in (".png", ".pdf", ".csv"):
            assert (out / f"{name}{ext}").stat().st_size > 0, name + ext
    with open(out / "fig4_plug_in_robustness.csv") as fh:
        rows = list(csv.DictReader(fh))
    oracle = [r for r in rows if r["kind"] == "random" and float(r["radius"]) == 0.0]
    assert len(oracle) == 1 and float(oracle[0]["gap_ratio"]) == 1.0 and float(oracle[0]["gap_ratio_se"]) == 0.0  # itself: exact
    # Theorem 3 holds for the exact criterion of every solved design (it bounds the weights' criterion)
    for r in rows:
        assert float(r["weights_criterion"]) / float(oracle[0]["weights_criterion"]) <= float(r["bound_factor"])
    with open(out / "fig5_pool_size.csv") as fh:
        rows5 = list(csv.DictReader(fh))
    spec5 = figures.SMALL["fig5"]
    for panel in ("check", "seed003"):
        got = [r for r in rows5 if r["panel"] == panel]
        assert sorted({int(r["num_completions"]) for r in got}) == spec5[panel]["pool_sizes"]
        for r in got:  # the total is the sum of its parts, and the largest pool misses nothing
            assert math.isclose(float(r["total_asymptotic"]), float(r["approximation"]) + float(r["estimation_asymptotic"]), rel_tol=1e-12)
            if int(r["num_completions"]) == max(spec5[panel]["pool_sizes"]):
                assert float(r["approximation"]) == 0.0
        assert any(np.isfinite(float(r["estimation_mc"])) for r in got)
    co = {int(r["num_completions"]): r for r in rows5 if r["panel"] == "coincidence"}
    assert float(co[6]["coincidence_gaussian"]) == 1.0  # K <= 10: always the minimum
    # the workers made every record: a rerun in this process writes none (writing raises) and gives the same CSVs
    import experiments.records
    from experiments.figure_items import item_code, item_file, read_item, run_item

    before = {p.name: p.read_text() for p in out.glob("*.csv")}

    def no_writing(*args, **kwargs):
        raise AssertionError("a record was computed again")

    with monkeypatch.context() as m:
        m.setattr(experiments.records, "write_atomic", no_writing)
        figures.main(["--small", "--only", "fig1", "fig3", "fig4", "fig5", "--out", str(out), "--results", str(res), "--no-progress"])
    assert {p.name: p.read_text() for p in out.glob("*.csv")} == before
    # a record from a worker (one BLAS thread pinned, as here) equals the one this process computes, bit for bit:
    # Figure 4's items at radius > 0 solve a design (numpy's BLAS in the polish and the certificate)
    items = [it for it in figures.figure_items("fig4", True) if it.ident["radius"] > 0][:2]
    assert items
    for item in items:
        mine = run_item(item, tmp_path / "here")
        theirs = read_item(item_file(res / "small" / item.cache, item.prefix, item.ident), item_code())
        assert theirs is not None and mine.keys() == theirs.keys()
        for k in mine:
            assert np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k])), (item.ident, k)
    assert np.isfinite([float(r["mean_gap"]) for r in csv.DictReader(open(out / "fig1_gap_vs_budget.csv"))]).any()
    # the records functions reuse every cached cell and item, and their plot is the plot of the CSVs read back
    import matplotlib.pyplot as plt

    fig1 = figures.fig1_records(res / "small", True, False)
    computed = {"fig1": fig1, "fig3": figures.fig3_records(res / "small", True, False, fig1),
                "fig4": figures.fig4_records(res / "small", True, False), "fig5": figures.fig5_records(res / "small", True, False)}
    for name, records in computed.items():
        assert _same_artists(_artists(figures.PLOTS[name](records)), _artists(figures.PLOTS[name](figures.read_records(out, name)))), name
        plt.close("all")
    # --replot redraws them from the CSVs alone
    png = {name: (out / f"{figures.FIGURE_FILES[name]}.png").stat().st_mtime_ns for name in computed}
    figures.main(["--replot", "--only", "fig1", "fig3", "fig4", "fig5", "--out", str(out), "--results", str(tmp_path / "none")])
    assert all((out / f"{figures.FIGURE_FILES[name]}.png").stat().st_mtime_ns >= png[name] for name in computed)
    assert not (tmp_path / "none").exists()


# ------------------------------------------------------------------ figure 5


def _small_world(**kw):
    from synthetic import contextual_world

    params = dict(prompt_dim=2, action_dim=2, num_train_prompts=6, num_eval_prompts=9, num_completions=7)
    return contextual_world(jax.random.key(3), **{**params, **kw})


def _dense_log_optimum(world):
    """log pi*(y|x) on the evaluation pool, prompt by prompt, in plain numpy."""
    f = np.asarray(world.eval.features)
    lr = np.asarray(world.eval.log_ref)
    th = np.asarray(world.theta_star)
    out = np.empty(lr.shape)
    for x in range(lr.shape[0]):
        logits = lr[x] + f[x] @ th
        out[x] = logits - (logits.max() + np.log(np.sum(np.exp(logits - logits.max()))))
    return out


def test_approximation_part_is_the_largest_pools_missing_mass_computed_densely():
    world = _small_world(beta=0.7, theta_scale=2.0)
    lstar = _dense_log_optimum(world)
    rho = np.asarray(world.eval.prompt_weights)
    for k in (1, 2, 4, 7):
        dense = 0.7 * sum(rho[x] * -np.log(np.sum(np.exp(lstar[x, :k]))) for x in range(lstar.shape[0]))
        assert math.isclose(figures.approximation_part(world, k), dense, rel_tol=1e-11, abs_tol=1e-14), k
    assert figures.approximation_part(world, 7) == 0.0
    with pytest.raises(ValueError, match="k must be an integer in"):
        figures.approximation_part(world, 8)


def test_gap_to_the_largest_pools_optimum_is_approximation_plus_estimation():
    from synthetic import first_completions
    from theory import optimality_gap

    world = _small_world(beta=1.3)
    lstar = _dense_log_optimum(world)
    f, lr = np.asarray(world.eval.features), np.asarray(world.eval.log_ref)
    rho = np.asarray(world.eval.prompt_weights)
    theta = np.asarray(world.theta_star) + 0.4 * np.asarray(jax.random.normal(jax.random.key(9), world.theta_star.shape))
    for k in (2, 3, 5, 7):
        # the policy on the first k completions (pi0 renormalised over them), against pi*_Kmax, by hand
        total = 0.0
        for x in range(lr.shape[0]):
            logits = lr[x, :k] + f[x, :k] @ theta
            lp = logits - (logits.max() + np.log(np.sum(np.exp(logits - logits.max()))))
            total += rho[x] * np.sum(np.exp(lp) * (lp - lstar[x, :k]))
        total *= 1.3
        wk = first_completions(world, k) if k < 7 else world
        estimation = float(optimality_gap(jnp.asarray(theta), world.theta_star, wk.eval.features, wk.eval.log_ref, world.beta,
                                          wk.eval.prompt_weights))
        assert math.isclose(figures.approximation_part(world, k) + estimation, total, rel_tol=1e-10), k
        assert math.isclose(figures.fixed_objective_gap(theta, world, k), total, rel_tol=1e-10), k


def test_pool_size_monte_carlo_is_over_draws_of_the_allocation_with_a_clustered_interval():
    """Figure 5's Monte-Carlo part below one label a comparison (uniform labels 60 of 126
    comparisons, a random subset): the replicates are split among ``allocation_draws``
    allocations, each draw's replicates labelled on its own allocation with their own keys
    (recomputed directly), and the interval is statsmodels' OLS on a constant clustered by
    draw, with t; one draw is the item's design key itself (the former computation) and is
    still known to be random; a design whose allocation is fixed (best-vs-worst, 10 labels on
    each prompt's pair) gets the plain interval whatever its draws; a bad number of draws is
    refused before any work."""
    import statsmodels.api as sm

    from synthetic.designs import design_problem, run_design
    from synthetic.monte_carlo import replicate_gaps

    world = _small_world()
    problem = design_problem(world)
    diffs = problem.edges.diffs
    assert problem.num_edges == 126
    got = figures.pool_size_item(world, 7, "uniform", 60, jax.random.key(0), 12, problem, allocation_draws=4)
    alloc = np.asarray(got["mc_allocation"])
    assert np.array_equal(alloc, np.repeat(np.arange(4), 3)) and bool(got["mc_allocation_random"])
    gap = np.asarray(got["mc_gap"])
    k_design, k_rep = jax.random.split(jax.random.key(0))
    rep_keys = jax.random.split(k_rep, 12)
    pool = figures.nested_pool(world.eval, 7)
    drawn = []
    for a, kd in enumerate(jax.random.split(k_design, 4)):
        drawn.append(run_design("uniform", kd, problem, 60).dense_counts(126))
        res = replicate_gaps(rep_keys[3 * a : 3 * a + 3], world.theta_star, diffs, drawn[-1], world.beta, pool)
        np.testing.assert_allclose(gap[alloc == a], np.asarray(res.gap), rtol=1e-9)
    assert len({c.tobytes() for c in drawn}) == 4  # four different allocations
    row = figures._mc_summary(got, level=0.9)
    fit = sm.OLS(gap, np.ones(gap.size)).fit(cov_type="cluster", cov_kwds={"groups": alloc}, use_t=True)
    assert row["mc_allocations"] == 4
    np.testing.assert_allclose([row["estimation_mc"], row["estimation_mc_se"]], [fit.params[0], fit.bse[0]], rtol=1e-10)
    np.testing.assert_allclose([row["estimation_mc_ci_low"], row["estimation_mc_ci_high"]], fit.conf_int(alpha=0.1)[0], rtol=1e-10)
    assert math.isclose(row["total_mc"], figures.approximation_part(world, 7) + row["estimation_mc"], rel_tol=1e-12)
    one = figures.pool_size_item(world, 7, "uniform", 60, jax.random.key(0), 12, problem)
    res = replicate_gaps(rep_keys, world.theta_star, diffs, run_design("uniform", k_design, problem, 60).dense_counts(126), world.beta, pool)
    np.testing.assert_allclose(np.asarray(one["mc_gap"]), np.asarray(res.gap), rtol=1e-9)
    assert np.all(np.asarray(one["mc_allocation"]) == 0) and bool(one["mc_allocation_random"])
    assert figures._mc_summary(one)["mc_allocations"] == 1  # its interval: given that one allocation
    # each replicate its own allocation: independent replicates, the plain interval over them
    own = figures.pool_size_item(world, 7, "uniform", 60, jax.random.key(0), 12, problem, allocation_draws=12)
    row, g = figures._mc_summary(own), np.asarray(own["mc_gap"])
    assert row["mc_allocations"] == 12 and np.array_equal(np.asarray(own["mc_allocation"]), np.arange(12))
    np.testing.assert_allclose([row["estimation_mc"], row["estimation_mc_se"]], [g.mean(), g.std(ddof=1) / np.sqrt(12)], rtol=1e-12)
    fixed = figures.pool_size_item(world, 7, "best_vs_worst", 60, jax.random.key(0), 12, problem, allocation_draws=4)
    assert not bool(fixed["mc_allocation_random"])
    row = figures._mc_summary(fixed)
    g = np.asarray(fixed["mc_gap"])
    assert row["mc_allocations"] == 1
    np.testing.assert_allclose([row["estimation_mc"], row["estimation_mc_se"]], [g.mean(), g.std(ddof=1) / np.sqrt(12)], rtol=1e-12)
    # its four draws, one allocation, are labelled in one batch, each replicate with its own key
    bvw = run_design("best_vs_worst", k_design, problem, 60).dense_counts(126)
    np.testing.assert_allclose(g, np.asarray(replicate_gaps(rep_keys, world.theta_star, diffs, bvw, world.beta, pool).gap), rtol=1e-9)
    assert not bool(figures.pool_size_item(world, 7, "best_vs_worst", 60, jax.random.key(0), 12, problem)["mc_allocation_random"])
    # a pilot's draws are never batched: each draw trains on its own pilot's labels
    staged = figures.pool_size_item(world, 7, "two_stage", 60, jax.random.key(0), 12, problem, allocation_draws=3)
    assert bool(staged["mc_allocation_random"])
    for a, kd in enumerate(jax.random.split(k_design, 3)):
        out = run_design("two_stage", kd, problem, 60)
        res = replicate_gaps(rep_keys[4 * a : 4 * a + 4], world.theta_star, diffs, out.dense_counts(126), world.beta, pool, pilot=out.pilot)
        np.testing.assert_allclose(np.asarray(staged["mc_gap"])[4 * a : 4 * a + 4], np.asarray(res.gap), rtol=1e-9)
    with pytest.raises(ValueError, match=r"allocation_draws must be an integer in \[1, 12\], got 13"):
        figures.pool_size_item(world, 7, "uniform", 60, jax.random.key(0), 12, problem, allocation_draws=13)


def test_nested_pool_keeps_the_shape_and_gives_the_cut_worlds_gap_and_curvature():
    from synthetic import first_completions
    from theory import optimality_gap, policy_curvature

    world = _small_world()
    theta = 0.5 * np.asarray(jax.random.normal(jax.random.key(4), world.theta_star.shape))
    for k in (2, 5):
        cut, ref = figures.nested_pool(world.eval, k), first_completions(world, k).eval
        assert cut.features.shape == world.eval.features.shape
        args = (world.theta_star, world.beta)
        assert math.isclose(float(optimality_gap(theta, args[0], cut.features, cut.log_ref, args[1])),
                            float(optimality_gap(theta, args[0], ref.features, ref.log_ref, args[1])), rel_tol=1e-12)
        np.testing.assert_allclose(policy_curvature(theta, cut.features, cut.log_ref), policy_curvature(theta, ref.features, ref.log_ref),
                                   rtol=1e-12, atol=1e-15)


def _numpy_coincidence(r):
    mu, sd = r.mean(axis=1), r.std(axis=1)
    hits = 0
    for row, m, s in zip(r, mu, sd):
        target = m - 2 * s
        hits += int(np.argmin(np.abs(row - target)) == np.argmin(row))
    return hits / r.shape[0]


def test_sweet_spot_coincidence_is_one_up_to_ten_completions_and_matches_numpy():
    # closed form: for K <= 10 the completion nearest mu - 2 sigma is always the minimum (Cauchy-Schwarz)
    for k in (2, 3, 5, 8, 10):
        f, se = figures.sweet_spot_coincidence(k, 4000, jax.random.key(k))
        assert f == 1.0 and se == 0.0, k
    for k in (20, 100):
        key = jax.random.key(100 + k)
        f, se = figures.sweet_spot_coincidence(k, 3000, key)
        # same draws, computed again row by row in numpy: exactly the same count
        assert f == _numpy_coincidence(np.asarray(jax.random.normal(key, (3000, k)))), k
        # independent draws: a two-sample z-test at level 1e-3
        g = _numpy_coincidence(np.asarray(jax.random.normal(jax.random.key(7 + k), (3000, k))))
        se_g = math.sqrt(g * (1 - g) / 3000)
        assert abs(f - g) <= 3.29 * math.hypot(se, se_g), (k, f, g)
        assert 0.0 < f < 1.0
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        figures.sweet_spot_coincidence(1, 10, jax.random.key(0))
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        figures.sweet_spot_coincidence(5, 1, jax.random.key(0))


def test_reference_sampled_order_samples_completions_without_replacement_in_proportion_to_pi0():
    from synthetic.worlds import Pool, World

    m, p = 6000, np.array([0.5, 0.3, 0.2])
    feats = jnp.broadcast_to(jnp.eye(3), (m, 3, 3))
    pool = Pool(feats, jnp.broadcast_to(jnp.log(jnp.asarray(p)), (m, 3)), jnp.full((m,), 1.0 / m))
    got = figures.reference_sampled_order(World(pool, pool, jnp.zeros(3), 1.0), jax.random.key(11)).train
    order = np.argmax(np.asarray(got.features), axis=2)  # which completion sits at each position
    np.testing.assert_allclose(np.asarray(got.log_ref), np.log(p)[order], rtol=1e-15)  # features and pi0 move together
    assert np.all(np.sort(order, axis=1) == np.arange(3))
    checks = [(order[:, 0] == i, p[i]) for i in range(3)]
    checks.append((np.all(order == [0, 1, 2], axis=1), 0.5 * 0.3 / 0.5))  # P(0 then 1) = p0 p1 / (1 - p0)
    checks.append((np.all(order == [2, 1, 0], axis=1), 0.2 * 0.3 / 0.8))
    for hit, prob in checks:
        assert abs(hit.mean() - prob) <= 3.29 * math.sqrt(prob * (1 - prob) / m), (hit.mean(), prob)


def test_scaled_world_is_the_contextual_world_of_that_scale_and_rank_designs_ignore_the_scale():
    from synthetic.designs import design_problem

    base = _small_world()
    for s in (0.2, 3.0):
        direct = _small_world(theta_scale=s)
        scaled = figures.scaled_world(base, s)
        np.testing.assert_array_equal(np.asarray(scaled.train.features), np.asarray(direct.train.features))
        np.testing.assert_array_equal(np.asarray(scaled.eval.log_ref), np.asarray(direct.eval.log_ref))
        np.testing.assert_allclose(np.asarray(scaled.theta_star), np.asarray(direct.theta_star), rtol=1e-14)
        for name in ("best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable", "plug_in"):
            w0 = figures.design_weights(name, jax.random.key(2), design_problem(base), 100)
            w1 = figures.design_weights(name, jax.random.key(2), design_problem(direct), 100)
            np.testing.assert_allclose(w0, w1, rtol=1e-9, atol=1e-12, err_msg=name)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        figures.scaled_world(base, 0.0)


def test_design_weights_are_the_registrys_designs_and_coincidence_counts_shared_pairs():
    from synthetic.designs import design_problem, run_design

    problem = design_problem(_small_world())
    budget = 10 * problem.num_edges  # above E: no capped rounding
    for name in ("uniform", "oracle", "plug_in", "best_vs_worst"):
        np.testing.assert_allclose(figures.design_weights(name, jax.random.key(1), problem, budget),
                                   run_design(name, jax.random.key(1), problem, budget).weights, rtol=1e-10, atol=1e-13, err_msg=name)
    a = np.array([0.5, 0, 0.25, 0.25, 0])
    assert figures.selection_coincidence(a, np.array([0.2, 0.3, 0, 0.5, 0])) == 2 / 3
    assert figures.selection_coincidence(a, a) == 1.0
    with pytest.raises(ValueError, match="labels no edge"):
        figures.selection_coincidence(np.zeros(3), np.ones(3))


# ------------------------------------------------------------------ records and plots

#: CSVs of a small run (``--small --only fig1 fig2 fig3 fig4 fig5``) and the committed Figure 6's.
FIXTURE = Path(__file__).parent / "data" / "figures_small"
#: Axes of each figure drawn from the fixture: two panels of Figure 1 and 3, three worlds
#: by six designs in Figure 2, one axes in Figure 4, four panels in Figure 5, two in Figure 6.
AXES = {"fig1": 2, "fig2": 18, "fig3": 2, "fig4": 1, "fig5": 4, "fig6": 2}


@pytest.fixture
def no_computing(monkeypatch):
    """Everything that computes a figure's numbers raises: the sweep, world construction,
    ``jax.jit``, the records functions and their helpers, the bounds table, Figure 6's compute."""
    import experiments.bounds_table
    import experiments.practical
    import experiments.sweep
    import experiments.worlds
    import synthetic.worlds

    def boom(*args, **kwargs):
        raise AssertionError("a plot computed something")

    for mod, names in ((experiments.sweep, ("run_jobs", "grid", "compose_job", "aggregate_files", "code_version")),
                       (experiments.worlds, ("make_world",)), (synthetic.worlds, ("contextual_world", "tabular_world")),
                       (jax, ("jit",)), (experiments.bounds_table, ("main", "compute_table", "table_items")), (experiments.practical, ("compute",)),
                       (figures, ("fig1_records", "fig2_records", "fig3_records", "fig4_records", "fig5_records", "bound_band",
                                  "reference_gap", "sample_efficiency", "plug_in_item", "pool_size_item", "_fig5_rows", "_fig5_plan",
                                  "_fig4_items", "figure_items", "run_item"))):
        for name in names:
            monkeypatch.setattr(mod, name, boom)


def _artists(fig) -> list:
    """What a figure draws, comparable with ``==``-like checks: per axes its scales,
    limits, labels, title, every line's data, every collection's paths and offsets,
    every patch's extent and every text."""
    out = []
    for ax in fig.axes:
        out.append((ax.get_xscale(), ax.get_yscale(), ax.get_xlim(), ax.get_ylim(), ax.get_xlabel(), ax.get_ylabel(), ax.get_title()))
        out += [np.asarray(line.get_xydata(), float) for line in ax.get_lines()]
        for c in ax.collections:
            out += [np.asarray(p.vertices, float) for p in c.get_paths()]
            out.append(np.asarray(c.get_offsets(), float))
        out += [tuple(p.get_extents().bounds) for p in ax.patches]
        out += [(t.get_text(), tuple(np.asarray(t.get_position(), float))) for t in ax.texts]
    out += [t.get_text() for t in fig.texts]
    return out


def _same_artists(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y, equal_nan=True)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("name", list(AXES))
def test_every_figure_is_drawn_from_its_csvs_alone(name, no_computing):
    import matplotlib.pyplot as plt

    records = figures.read_records(FIXTURE, name)
    fig = figures.PLOTS[name](records)
    try:
        assert len(fig.axes) == AXES[name]
        assert any(ax.get_lines() or ax.collections or ax.patches for ax in fig.axes)
        # pure: drawing the same records twice draws the same thing
        assert _same_artists(_artists(fig), _artists(figures.PLOTS[name](records)))
    finally:
        plt.close("all")


@pytest.mark.parametrize("name", list(AXES))
def test_csv_round_trip_gives_back_the_same_text_and_typed_values(name, tmp_path):
    records = figures.read_records(FIXTURE, name)
    paths = figures.write_records(records, tmp_path, name)
    assert paths
    for p in paths:  # written again, the same bytes (every value came back exactly, with its type)
        assert p.read_bytes() == (FIXTURE / p.name).read_bytes(), p.name
    tables = records.values() if isinstance(records, dict) else [records]
    rows = [r for t in tables for r in t]
    assert rows
    for r in rows:  # numbers are numbers again; only names, ids and blanks stay strings
        for k in ("budget", "mean_gap", "radius", "gap_ratio", "n", "mc_mean", "num_completions", "ratio", "reference_gap"):
            if k in r and r[k] != "":
                assert isinstance(r[k], (int, float)) and not isinstance(r[k], bool), (name, k, r[k])


def test_fig2_draws_theorem_4_at_a_2_and_at_the_best_tail_from_the_table(no_computing):
    """Each panel of Figure 2 draws n x upper_new and n x upper_tuned where finite, from the table's rows."""
    import matplotlib.pyplot as plt

    rows = figures.read_records(FIXTURE, "fig2")
    fig = figures.PLOTS["fig2"](rows)
    try:
        worlds = list(dict.fromkeys(r["world"] for r in rows))
        designs = list(dict.fromkeys(r["design"] for r in rows))
        drawn = 0
        for ax, (world, design) in zip(fig.axes, [(w, d) for w in worlds for d in designs]):
            rs = sorted((r for r in rows if r["world"] == world and r["design"] == design), key=lambda r: r["n"])
            lines = {line.get_label(): line.get_xydata() for line in ax.get_lines()}
            for key, label in (("upper_new", "upper bound (Thm 4, $a = 2$)"), ("upper_tuned", "upper bound (Thm 4, best $a$)")):
                want = np.array([(r["n"], r["n"] * r[key]) for r in rs if np.isfinite(r[key]) and r[key] > 0]).reshape(-1, 2)
                np.testing.assert_array_equal(lines[label], want)
                drawn += len(want)
            assert all(r["upper_tuned"] <= r["upper_new"] for r in rs)
        assert drawn > 0
    finally:
        plt.close("all")


def test_parse_cell_makes_numbers_only_where_they_write_back_as_the_same_text():
    p = figures.parse_cell
    assert p("200") == 200 and isinstance(p("200"), int)
    assert p("0.5") == 0.5 and p("1e-05") == 1e-05 and p("1.0") == 1.0 and isinstance(p("1.0"), float)
    assert math.isnan(p("nan")) and p("inf") == math.inf and p("-inf") == -math.inf
    assert p("True") is True and p("False") is False
    for text in ("", "uniform", "0e0f53b8a988", "123e45678901", "0123", "1e3", " 5"):  # ids, code versions, blanks
        assert p(text) == text


def test_read_and_write_records_refuse_unknown_figures_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="name must be one of fig1, fig2"):
        figures.read_records(FIXTURE, "fig7")
    with pytest.raises(ValueError, match="name must be one of"):
        figures.write_records([], tmp_path, "figure1")
    with pytest.raises(FileNotFoundError, match="fig4_plug_in_robustness.csv is missing"):
        figures.read_records(tmp_path, "fig4")
    with pytest.raises(ValueError, match=r"lack the tables \['panels'\]"):
        figures.write_records({"gap": [], "band": []}, tmp_path, "fig1")
    # a CSV written before a column the plot draws was added: refused, naming the columns and the command
    with open(FIXTURE / "fig4_plug_in_robustness.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k not in ("dim", "directions")} for r in csv.DictReader(fh)]
    figures.write_csv(rows, tmp_path / "fig4_plug_in_robustness.csv")
    with pytest.raises(ValueError, match=r"lacks the columns \['dim', 'directions'\] that plot_fig4 draws.*--only fig4"):
        figures.read_records(tmp_path, "fig4")


def test_replot_redraws_every_figure_from_the_csvs_in_out_without_computing(tmp_path, no_computing, monkeypatch):
    import matplotlib.pyplot as plt

    out = tmp_path / "fig"
    shutil.copytree(FIXTURE, out)
    save_figure, saved = figures.save_figure, {}

    def record(fig, path):  # saving Figure 2's 18 panels takes tens of seconds: count the axes instead
        saved[Path(path).name] = len(fig.axes)
        plt.close(fig)

    monkeypatch.setattr(figures, "save_figure", record)
    figures.main(["--replot", "--out", str(out), "--results", str(tmp_path / "none"), "--no-progress"])
    assert saved == {figures.FIGURE_FILES[name]: n for name, n in AXES.items()}
    monkeypatch.setattr(figures, "save_figure", save_figure)
    figures.main(["--replot", "--only", "fig3", "--out", str(out), "--results", str(tmp_path / "none")])
    for ext in (".png", ".pdf"):
        assert (out / f"fig3_sample_efficiency{ext}").stat().st_size > 0
    assert not (tmp_path / "none").exists()  # no records were made
    assert {p.name for p in out.glob("*.csv")} == {p.name for p in FIXTURE.glob("*.csv")}  # and no CSV rewritten or added
    for p in FIXTURE.glob("*.csv"):
        assert (out / p.name).read_bytes() == p.read_bytes()


def test_plotting_module_imports_no_jax():
    code = "import sys, experiments.figure_plots; assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def _fig1_records(band, first, first_design):
    gap = [{"world": "w", "design": d, "config": "", "budget": n, "mean_gap": c / n, "ci_low": 0.9 * c / n, "ci_high": 1.1 * c / n,
            "valid_fraction": 1.0, "mle_fraction": 1.0} for d, c in (("oracle", 1.0), ("uniform", 2.0)) for n in (100, 1000)]
    panel = {"world": "w", "title": "a panel", "estimator": "some estimator", "reference_gap": 0.5, "upper_bound_from": first,
             "upper_bound_from_design": first_design, "num_edges": 300}
    return {"gap": gap, "band": band, "panels": [panel]}


def test_figure1_draws_each_band_design_as_a_bar_beside_the_others_and_notes_a_band_beyond_the_panel():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from experiments.plotting import design_style

    band = [{"world": "w", "design": d, "budget": 1000, "lower": lo, "upper": up, "prediction": 0.0, "n0": 500.0}
            for d, lo, up in (("oracle", 1e-3, 2e-3), ("uniform", 3e-3, 5e-3))]
    fig = figures.plot_fig1(_fig1_records(band, 500.0, "oracle"))
    (ax,) = fig.axes
    lines = {tuple(map(tuple, np.asarray(line.get_xydata()))): to_hex(line.get_color()) for line in ax.get_lines()}
    # two designs at one budget: offsets 1.07^(-1/2) and 1.07^(+1/2), in the band's order, each in its design's colour
    for d, (lo, up), shift in (("oracle", (1e-3, 2e-3), -0.5), ("uniform", (3e-3, 5e-3), 0.5)):
        x = 1000 * 1.07**shift
        assert lines[((x, lo), (x, up))] == to_hex(design_style(d)[0]), d
    assert lines[((0.0, 0.5), (1.0, 0.5))] == to_hex("0.4")  # pi0's gap, across the panel
    assert not any("beyond this panel" in t.get_text() for t in ax.texts)
    assert [t.get_text() for t in fig.texts] == ["estimator: some estimator"] and ax.get_title() == "a panel"
    plt.close(fig)
    # no design's upper bound holds inside the panel: no bar, a note naming where it starts
    fig = figures.plot_fig1(_fig1_records([], 1.0e5, "reference_weighted"))
    assert [t.get_text() for t in fig.axes[0].texts if "beyond" in t.get_text()] == [
        "upper bound finite from n = 1e+05\n(reference weighted), beyond this panel"]
    # the capped budgets n <= E = 300 shaded, from below the smallest budget to E
    (span,) = [p for p in fig.axes[0].patches if p.get_facecolor()[:3] == (0.92, 0.92, 0.92)]
    x0, x1 = span.get_x(), span.get_x() + span.get_width()  # a Rectangle from axvspan
    assert math.isclose(x0, 100 / 1.3) and math.isclose(x1, 300)
    assert r"$n \leq E$: each pair labelled once at most" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    fig = figures.plot_fig1(_fig1_records([], math.nan, ""))  # no band design at all: no note
    assert not any("beyond" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_bound_band_gives_theorems_4_5_only_where_the_upper_bound_holds_and_brackets_the_prediction():
    """Figure 1's band on its contextual world: rows only for fixed-weight designs, at budgets >= their
    n0 (that of the tuned Theorem 4's smallest tail: 411 for the oracle) where the tuned upper bound is
    below the gap of pi0 (at n = 1,000 it holds but exceeds it: no row), each equal to Theorems 4 (best
    tail) and 5 recomputed from the design's own allocation, lower <= (beta/2n) Phi <= upper."""
    from experiments import sweep
    from experiments.worlds import make_world
    from synthetic import design_problem
    from synthetic.designs import run_design
    from synthetic.rounding import efficient_rounding
    from theory import bounds as TB

    jobs = [["experiment=figure1_contextual", f"design={d}", "budget=1000"] for d in ("oracle", "best_vs_worst")]
    cfg = sweep.compose_job(jobs[0])
    budgets = [300, 1000, 3000, 10000]
    rows, n0 = figures.bound_band(cfg, ["oracle", "best_vs_worst"], budgets, [sweep.compose_job(j) for j in jobs])
    assert set(n0) == {"oracle"}  # best-vs-worst reads a reward model: not a fixed-weight design
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    prob, ev = design_problem(world), world.eval
    g0 = figures.reference_gap(cfg)

    def constants(n):  # Theorems 4-5's constants for the oracle's own allocation at budget n
        out = run_design("oracle", jax.random.key(cfg.seed), prob, n, **dict(cfg.design.params))
        w_hat = efficient_rounding(np.asarray(out.weights, np.float64), n).dense_counts(prob.num_edges) / n
        return TB.instance_constants(w_hat, world.theta_star, ev.features, ev.log_ref, prob.edges.diffs, world.beta,
                                     prompt_weights=ev.prompt_weights)

    assert n0["oracle"] == TB.upper_bound_bernstein_valid_from(constants(10000), 0.05) and 300 < n0["oracle"] <= 1000
    expected, held_above = [], 0
    for n in budgets:
        c = constants(n)
        up = TB.upper_bound_bernstein_tuned(c, n)
        if n >= n0["oracle"] and up.valid and up.value < g0:
            expected.append(("oracle", n, up.value, TB.lower_bound_jensen(c, n).value, TB.asymptotic_prediction(c, n)))
        held_above += n >= n0["oracle"] and up.valid and up.value >= g0
    assert held_above == 1  # n = 1,000: valid, above pi0's gap, so left out
    assert [(r["design"], r["budget"]) for r in rows] == [e[:2] for e in expected] == [("oracle", 3000), ("oracle", 10000)]
    for r, (_, n, up, lo, pred) in zip(rows, expected):
        assert math.isclose(r["upper"], up, rel_tol=1e-12) and math.isclose(r["lower"], lo, rel_tol=1e-12)
        assert r["lower"] < r["prediction"] == pytest.approx(pred, rel=1e-12) and r["prediction"] < r["upper"]


def test_bounds_table_csv_reads_back_with_each_fields_type(tmp_path):
    # Figure 2 reads the bounds table's CSV: every BoundRow field comes back as its type
    # (a string column, lower_new_shape, once made the reader fail on the committed table)
    import typing

    from synthetic.bounds_check import BoundRow

    hints = typing.get_type_hints(BoundRow)
    sample = {"str": "ball", "bool": False, "int": 1000, "float": 2.5e-7}
    row = BoundRow(**{k: sample[t.__name__] for k, t in hints.items() if k in BoundRow._fields and k not in BoundRow._field_defaults},
                   lower_new_shape="ball", floor_ok=False, separation_floor=1.5e-5)
    path = tmp_path / "bounds_table.csv"
    with path.open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["world", *BoundRow._fields])
        wr.writeheader()
        wr.writerow({"world": "tabular (K = 20, d = 20)", **row._asdict()})
    (back,) = figures._bounds_table_rows(path)
    assert back["world"] == "tabular (K = 20, d = 20)" and back["design"] == "ball"
    for k, v in row._asdict().items():
        same = back[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(back[k]))
        assert same and type(back[k]) is (float if type(v) is int else type(v)), k
    # the computed rows (Figure 2's records) have the types the CSV reads back to
    computed = figures._bounds_row_types({"world": "tabular (K = 20, d = 20)", **row._asdict()})
    assert all(type(computed[k]) is type(back[k]) and (computed[k] == back[k] or computed[k] != computed[k]) for k in back)
    # an item's columns (numpy arrays, as its record file holds them) come back as the same BoundRow
    from experiments import bounds_table

    (again,) = bounds_table._rows_back({f: np.asarray([v]) for f, v in row._asdict().items()})
    assert all(type(getattr(again, f)) is type(v) for f, v in row._asdict().items())
    assert all(getattr(again, f) == v or (isinstance(v, float) and math.isnan(v)) for f, v in row._asdict().items())
    committed = figures._bounds_table_rows(Path(__file__).resolve().parents[1] / "figures" / "bounds_table.csv")
    assert {r["lower_new_shape"] for r in committed} <= {"box", "ball"} and all(isinstance(r["n"], float) for r in committed)
