"""Theory against simulation: n E G(theta_hat) / ((beta/2) tr(I Sigma^+)) -> 1.

Each check is a two-sided z-test of the Monte-Carlo mean gap against the asymptotic
prediction at level 1e-3 (|z| < 3.29); with six checks the family-wise false-alarm
rate is below 0.6%. The prediction uses the realised allocation (counts / n), so the
only randomness is that of the labels. At n = 20,000 the O(1/n) bias of the
asymptotic formula is far below the ~2% standard error of 2,000 replicates.
"""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthetic import (
    contextual_world,
    gaussian_world,
    mean_and_ci,
    reference_weights,
    sample_allocation,
    simulate_gaps,
    tabular_world,
    uniform_weights,
)
from theory import asymptotic_gap, enumerate_edges

Z_CRIT = NormalDist().inv_cdf(1 - 1e-3 / 2)

WORLDS = {
    "tabular": lambda: tabular_world(jax.random.PRNGKey(0), num_completions=6, ref_concentration=1.5),
    "contextual": lambda: contextual_world(
        jax.random.PRNGKey(1), prompt_dim=2, action_dim=2, num_train_prompts=20, num_eval_prompts=100, num_completions=4
    ),
}
DESIGNS = {"uniform": lambda e, w: uniform_weights(e), "reference": lambda e, w: reference_weights(e, w.train.log_ref)}


@pytest.mark.slow
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@pytest.mark.parametrize("design_name", sorted(DESIGNS))
def test_monte_carlo_gap_matches_asymptotic_prediction(world_name, design_name):
    world = WORLDS[world_name]()
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    n, reps = 20_000, 2_000
    alloc = sample_allocation(jax.random.PRNGKey(2), DESIGNS[design_name](edges, world), n)
    res = simulate_gaps(jax.random.PRNGKey(3), world, edges.diffs, alloc, reps)
    assert bool(jnp.all(res.valid))
    realised = jnp.asarray(alloc.dense_counts(edges.num_edges) / n)
    ev = world.eval
    pred = float(asymptotic_gap(realised, world.theta_star, ev.features, ev.log_ref, edges.diffs, world.beta, n, ev.prompt_weights))
    mean, se, _, _ = mean_and_ci(np.asarray(res.gap))
    z = (mean - pred) / se
    assert abs(z) < Z_CRIT, f"ratio {mean / pred:.4f} +- {se / pred:.4f}, z = {z:.2f}"


@pytest.mark.slow
def test_optax_estimator_gives_the_same_gaps_as_newton():
    world = gaussian_world(jax.random.PRNGKey(4), num_prompts=10, num_completions=4, dim=3)
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    alloc = sample_allocation(jax.random.PRNGKey(5), uniform_weights(edges), 3000)
    newton = simulate_gaps(jax.random.PRNGKey(6), world, edges.diffs, alloc, 16)
    adam = simulate_gaps(jax.random.PRNGKey(6), world, edges.diffs, alloc, 16, estimator="optax", num_steps=3000)
    np.testing.assert_allclose(adam.theta_hat, newton.theta_hat, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(adam.gap, newton.gap, rtol=5e-3)


def test_same_key_same_numbers_and_estimator_name_checked():
    world = gaussian_world(jax.random.PRNGKey(7), num_prompts=5, num_completions=3, dim=2)
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    alloc = sample_allocation(jax.random.PRNGKey(8), uniform_weights(edges), 500)
    a = simulate_gaps(jax.random.PRNGKey(9), world, edges.diffs, alloc, 8)
    b = simulate_gaps(jax.random.PRNGKey(9), world, edges.diffs, alloc, 8)
    np.testing.assert_array_equal(a.gap, b.gap)
    with pytest.raises(ValueError, match="estimator"):
        simulate_gaps(jax.random.PRNGKey(9), world, edges.diffs, alloc, 8, estimator="sgd-magic")
    with pytest.raises(ValueError, match="num_replicates"):
        simulate_gaps(jax.random.PRNGKey(9), world, edges.diffs, alloc, 0)
    # design weights passed as counts (or any fractional count) are refused, not labelled as binomials of 0.07 trials
    from synthetic.monte_carlo import replicate_gaps

    for counts in (np.asarray(uniform_weights(edges)), alloc.dense_counts(edges.num_edges) + 0.5):
        with pytest.raises(ValueError, match="counts must be whole numbers of labels"):
            replicate_gaps(jax.random.split(jax.random.PRNGKey(9), 2), world.theta_star, edges.diffs, counts, world.beta, world.eval)


def _small():
    world = gaussian_world(jax.random.PRNGKey(11), num_prompts=7, num_completions=4, dim=3)  # shapes no other test uses
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    return world, edges


def test_one_compiled_replicate_function_serves_every_allocation_of_a_bucket():
    """The trace-count guard: designs and budgets change the counts, not the compiled function."""
    from synthetic.monte_carlo import TRACE_COUNT, replicate_gaps

    world, edges = _small()
    e = edges.num_edges  # 42 edges: buckets of 16, 32 and 42 (all)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    rng = np.random.default_rng(0)
    start = TRACE_COUNT["replicates"]
    for support in (20, 25, 30, 32, 17):  # all in the 32-bucket
        counts = np.zeros(e)
        counts[rng.choice(e, support, replace=False)] = rng.integers(1, 50, support)
        replicate_gaps(keys, world.theta_star, edges.diffs, counts, world.beta, world.eval)
    assert TRACE_COUNT["replicates"] - start == 1
    for support in (3, 10, 16, 33, 42):  # the 16-bucket, then all edges
        counts = np.zeros(e)
        counts[rng.choice(e, support, replace=False)] = 40
        replicate_gaps(keys, world.theta_star, edges.diffs, counts, world.beta, world.eval)
    assert TRACE_COUNT["replicates"] - start == 3
    for top in (150, 300, 5000):  # past INVERSE_CDF_MAX_COUNT labels on an edge: the other sampler, traced once
        counts = np.full(e, 40.0)
        counts[0] = top
        replicate_gaps(keys, world.theta_star, edges.diffs, counts, world.beta, world.eval)
    assert TRACE_COUNT["replicates"] - start == 4


def test_a_sweep_traces_the_replicate_function_once_per_bucket(tmp_path, monkeypatch):
    from experiments import sweep
    from synthetic.monte_carlo import TRACE_COUNT

    # a long-lived test worker can pass the memory-map threshold at which the sweep clears
    # JAX's compiled code after a cell (experiments.compiled.release_compiled), and a cleared
    # cache traces again by design: count the traces with the caches kept
    monkeypatch.setattr(sweep, "release_compiled", lambda *a, **k: False)

    jobs = [["world=tabular", "world.params.num_completions=6", f"design={d}", f"budget={n}", "num_replicates=10"]
            for d in ("uniform", "oracle", "d_optimal") for n in (200, 400, 800)]
    # traces this world's function (15 edges: one bucket) with each label sampler: at most
    # 100 labels an edge (inverse CDF), and more (uniform at 2,000 labels: 133 an edge)
    warm = [jobs[0], ["world=tabular", "world.params.num_completions=6", "design=uniform", "budget=2000", "num_replicates=10"]]
    sweep.run_jobs(warm, tmp_path / "warm", progress=False)
    start = TRACE_COUNT["replicates"]
    sweep.run_jobs(jobs, tmp_path / "r", progress=False)
    assert len(list((tmp_path / "r").glob("*.npz"))) == 9
    assert TRACE_COUNT["replicates"] == start  # nine cells, three designs, three budgets: no new trace


def test_replicate_options_chunking_pilot_and_safeguard():
    from synthetic.monte_carlo import replicate_gaps

    world, edges = _small()
    counts = np.full(edges.num_edges, 30.0)
    keys = jax.random.split(jax.random.PRNGKey(1), 7)
    args = (world.theta_star, edges.diffs, counts, world.beta, world.eval)
    whole = replicate_gaps(keys, *args)
    seen = []
    chunked = replicate_gaps(keys, *args, chunk_size=3, progress=seen.append)
    np.testing.assert_allclose(chunked.gap, whole.gap, rtol=1e-12)
    assert seen == [3, 3, 1]
    # every label already observed as pilot: all replicates see the same wins
    wins = np.floor(counts / 3)
    fixed = replicate_gaps(keys, *args, pilot=(counts, wins))
    np.testing.assert_allclose(fixed.theta_hat, np.broadcast_to(fixed.theta_hat[0], fixed.theta_hat.shape), rtol=1e-12)
    # a ball too small for any MLE: the safeguard returns the reference theta = 0
    guarded = replicate_gaps(keys, *args, safeguard_radius=1e-9)
    assert not bool(jnp.any(guarded.valid)) and float(jnp.abs(guarded.theta_hat).max()) == 0.0
    with pytest.raises(ValueError, match="counts must have shape"):
        replicate_gaps(keys, world.theta_star, edges.diffs, counts[:-1], world.beta, world.eval)
    with pytest.raises(ValueError, match="pilot counts must not exceed"):
        replicate_gaps(keys, *args, pilot=(counts + 1, wins))


def test_float32_fit_within_its_stated_accuracy():
    """fit_dtype="float32" keeps labels and gap in float64: per replicate the estimate is
    within twice the float32 step tolerance of the float64 MLE, and the gaps differ by far
    less than the Monte-Carlo standard error of their mean."""
    from synthetic.monte_carlo import replicate_gaps

    world, edges = _small()
    counts = np.full(edges.num_edges, 30.0)
    keys = jax.random.split(jax.random.PRNGKey(4), 64)
    args = (world.theta_star, edges.diffs, counts, world.beta, world.eval)
    f64 = replicate_gaps(keys, *args)
    f32 = replicate_gaps(keys, *args, fit_dtype="float32")
    assert f32.theta_hat.dtype == f64.theta_hat.dtype and bool(jnp.all(f32.valid == f64.valid))
    tol32 = float(np.finfo(np.float32).eps) ** 0.6
    err = np.linalg.norm(np.asarray(f32.theta_hat - f64.theta_hat), axis=1)
    assert np.all(err <= 2 * tol32 * (1 + np.linalg.norm(np.asarray(f64.theta_hat), axis=1)))
    se = float(np.std(np.asarray(f64.gap), ddof=1) / np.sqrt(64))
    assert abs(float(jnp.mean(f32.gap) - jnp.mean(f64.gap))) < 0.05 * se
    with pytest.raises(ValueError, match="fit_dtype must be one of"):
        replicate_gaps(keys, *args, fit_dtype="half")



def test_refits_stop_early_only_where_the_host_settles_every_flagged_replicate(monkeypatch):
    """Replicates the chord iteration leaves flagged are refitted by Newton for at most
    REFIT_ITER steps only where the host settles every flagged replicate (the plain MLE, no
    safeguard): the ridge-path limit is exact, and is the MLE where it exists. A curvature
    floor of 1e-4 makes the chord's certificate fail on every replicate here while Newton's
    exact test passes, so with no refit at all (cap 0) the host settles all 32: gaps,
    estimates and flags must equal those of full refits to rounding. With the safeguard the
    refit's flag is final, so the cap must not apply there: capping those refits (the
    premise, checked) would make every replicate invalid. Likewise with a ridge, whose fit the
    host's unpenalised limit is not: on separable labels the ridged fits must not change."""
    from synthetic import monte_carlo
    from synthetic.monte_carlo import replicate_gaps

    caps_traced = []
    shared = monte_carlo.fit_newton_shared

    def recording(*args, **kwargs):  # runs when a replicate function is traced
        caps_traced.append(kwargs.get("fallback_iter"))
        return shared(*args, **kwargs)

    monkeypatch.setattr(monte_carlo, "fit_newton_shared", recording)
    world = contextual_world(jax.random.PRNGKey(0), num_train_prompts=10, num_eval_prompts=20)
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    counts = np.asarray(sample_allocation(jax.random.PRNGKey(13), uniform_weights(edges), 100).dense_counts(edges.num_edges))
    keys = jax.random.split(jax.random.PRNGKey(5), 32)
    args = (world.theta_star, edges.diffs, counts, world.beta, world.eval)
    params = {"curvature_floor": 1e-4}
    runs = {}
    for cap in (100, 0):
        monkeypatch.setattr(monte_carlo, "REFIT_ITER", cap)
        caps_traced.clear()
        runs[cap] = [replicate_gaps(keys, *args, estimator_params=params, safeguard_radius=b) for b in (None, 1e3)]
        # a function per cap (the cap is part of its key), none under the safeguard (traced once, in the first pass)
        assert caps_traced == ([100, None] if cap == 100 else [0])
    (full, full_guarded), (capped, capped_guarded) = runs[100], runs[0]
    assert bool(jnp.all(full.mle_exists)) and bool(jnp.all(full_guarded.valid))
    refits_capped = replicate_gaps(keys, *args, estimator_params={**params, "fallback_iter": 0}, safeguard_radius=1e3)
    assert not bool(jnp.any(refits_capped.valid))  # every replicate needed its refit
    np.testing.assert_array_equal(capped.mle_exists, full.mle_exists)
    np.testing.assert_allclose(capped.gap, full.gap, rtol=1e-9, atol=0)
    np.testing.assert_allclose(capped.theta_hat, full.theta_hat, rtol=1e-9, atol=1e-9)
    for a, b in zip(capped_guarded, full_guarded):
        np.testing.assert_array_equal(a, b)
    # a ridge: 20 labels on a 6-completion tabular world, half the replicates separable
    tab = tabular_world(jax.random.PRNGKey(12), num_completions=6, theta_scale=0.5)
    e6 = enumerate_edges(tab.train.features, tab.train.log_ref)
    c6 = np.asarray(sample_allocation(jax.random.PRNGKey(13), uniform_weights(e6), 20).dense_counts(e6.num_edges))
    args6 = (tab.theta_star, e6.diffs, c6, tab.beta, tab.eval)
    k6 = jax.random.split(jax.random.PRNGKey(14), 40)
    ridged = {}
    for cap in (100, 0):
        monkeypatch.setattr(monte_carlo, "REFIT_ITER", cap)
        ridged[cap] = replicate_gaps(k6, *args6, estimator_params={"ridge": 1e-6})
    plain = replicate_gaps(k6, *args6)
    assert 0.2 < float(jnp.mean(plain.mle_exists)) < 0.8 and bool(jnp.all(ridged[0].valid))
    for a, b in zip(ridged[0], ridged[100]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ridged[0].mle_exists, plain.mle_exists)  # the unpenalised MLE's existence
    exists = np.asarray(plain.mle_exists)  # where the MLE exists, a ridge of 1e-6 a label barely moves it
    assert np.all(np.isfinite(np.asarray(ridged[0].theta_hat)))
    np.testing.assert_allclose(np.asarray(ridged[0].theta_hat)[exists], np.asarray(plain.theta_hat)[exists], rtol=0, atol=1e-3)


@pytest.mark.slow
def test_every_replicate_has_a_gap_at_a_budget_below_separation():
    """60 labels on a 6-completion tabular world: about half the replicates are separable.
    newton (ridge-path limit where no MLE), map and optax give a finite gap for every
    replicate, below G_sup; mle_exists is a property of the labels, so the three estimators
    (newton: its fit's flag, then an LP; map/optax: an LP on every replicate) agree on it."""
    from synthetic.monte_carlo import replicate_gaps
    from theory.bounds import gap_sup

    world = tabular_world(jax.random.PRNGKey(12), num_completions=6, theta_scale=0.5)
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    counts = np.asarray(sample_allocation(jax.random.PRNGKey(13), uniform_weights(edges), 20).dense_counts(edges.num_edges))
    keys = jax.random.split(jax.random.PRNGKey(14), 40)
    args = (world.theta_star, edges.diffs, counts, world.beta, world.eval)
    ev = world.eval
    g_sup = gap_sup(world.theta_star, ev.features, ev.log_ref, world.beta, ev.prompt_weights)
    out = {name: replicate_gaps(keys, *args, estimator=name, estimator_params=p)
           for name, p in [("newton", {}), ("map", {"prior_precision": 2.0}), ("optax", {"num_steps": 300})]}
    exists = np.asarray(out["newton"].mle_exists)
    assert 0.2 < exists.mean() < 0.8
    for name, res in out.items():
        assert bool(jnp.all(res.valid)), name
        assert np.all(np.isfinite(res.gap)) and float(jnp.max(res.gap)) <= g_sup, name
        np.testing.assert_array_equal(res.mle_exists, exists)
    newton = out["newton"]
    assert np.all(np.isnan(np.asarray(newton.theta_hat)[~exists])) and np.all(np.isfinite(np.asarray(newton.theta_hat)[exists]))
    # where the MLE exists, MAP shrinks it: the two differ but both are finite estimates
    assert float(jnp.max(jnp.abs(out["map"].theta_hat - newton.theta_hat)[exists])) > 0
    with pytest.raises(ValueError, match="prior_precision"):
        replicate_gaps(keys, *args, estimator="map", estimator_params={"prior_precision": -1.0})


def test_mean_and_ci_is_students_t_interval():
    """The interval of independent replicates is Student's t with n - 1 degrees of freedom
    (statsmodels' ``tconfint_mean``). It was the normal quantile's, whose nominal 95% covers
    81% at n = 3 and 92% at n = 10, while a cell of the same replicates split into clustered
    draws got t: one more allocation draw halved the interval."""
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 100):
        x = rng.normal(size=n)
        mean, se, lo, hi = mean_and_ci(x, level=0.95)
        want = sm.stats.DescrStatsW(x).tconfint_mean(alpha=0.05)
        np.testing.assert_allclose((lo, hi), want, rtol=1e-12)
        assert mean == pytest.approx(x.mean()) and se == pytest.approx(x.std(ddof=1) / np.sqrt(n))
