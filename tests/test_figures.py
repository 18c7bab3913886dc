"""The figure pipeline: the sample-efficiency arithmetic against closed forms, and a
small end-to-end run of Figures 1, 3, 4 and 5 (records, CSV, PNG and PDF); Figure 5's
parts of the gap to the largest pool's objective against dense computations, and seed
003's coincidence with best-vs-worst against a closed form and numpy."""

import csv
import math

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
    with pytest.raises(ValueError, match="two budgets"):
        figures.labels_to_match([1e3], [1.0], 0.5)


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


@pytest.mark.slow
def test_small_figure_run_writes_every_figure_with_its_data(tmp_path):
    out, res = tmp_path / "fig", tmp_path / "res"
    figures.main(["--small", "--only", "fig1", "fig3", "fig4", "fig5", "--out", str(out), "--results", str(res), "--no-progress"])
    for name in ("fig1_gap_vs_budget", "fig3_sample_efficiency", "fig4_plug_in_robustness", "fig5_pool_size"):
        for ext in (".png", ".pdf", ".csv"):
            assert (out / f"{name}{ext}").stat().st_size > 0, name + ext
    with open(out / "fig4_plug_in_robustness.csv") as fh:
        rows = list(csv.DictReader(fh))
    oracle = [r for r in rows if r["kind"] == "random" and float(r["radius"]) == 0.0]
    assert len(oracle) == 1 and float(oracle[0]["gap_ratio"]) == 1.0
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
    # a rerun reuses every record: same CSV
    before = (out / "fig1_gap_vs_budget.csv").read_text()
    figures.main(["--small", "--only", "fig1", "--out", str(out), "--results", str(res), "--no-progress"])
    assert (out / "fig1_gap_vs_budget.csv").read_text() == before
    assert np.isfinite([float(r["mean_gap"]) for r in csv.DictReader(open(out / "fig1_gap_vs_budget.csv"))]).any()


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
