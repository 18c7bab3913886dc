"""Edge enumeration, synthetic worlds, allocations and Bradley-Terry label simulation."""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_pool
from synthetic import (
    allocation_from_counts,
    contextual_world,
    gaussian_world,
    sample_allocation,
    simulate_wins,
    tabular_world,
)
from theory import enumerate_edges

# ---------------------------------------------------------------- edges


def test_edges_match_brute_force_on_padded_pool(rng):
    feats, log_ref, _ = random_pool(rng, m=5, k=6)
    edges = enumerate_edges(feats, log_ref)
    expected = [
        (x, i, j)
        for x in range(5)
        for i in range(6)
        for j in range(i + 1, 6)
        if np.isfinite(log_ref[x, i]) and np.isfinite(log_ref[x, j])
    ]
    got = list(zip(edges.prompt.tolist(), edges.first.tolist(), edges.second.tolist()))
    assert got == expected
    sizes = np.isfinite(log_ref).sum(axis=1)
    assert edges.num_edges == int(np.sum(sizes * (sizes - 1) // 2))
    for e, (x, i, j) in enumerate(expected):
        np.testing.assert_array_equal(edges.diffs[e], feats[x, i] - feats[x, j])


def test_prompts_with_one_completion_contribute_no_edges():
    feats = np.zeros((2, 3, 2))
    log_ref = np.array([[0.0, -np.inf, -np.inf], [np.log(0.5), np.log(0.5), -np.inf]])
    edges = enumerate_edges(feats, log_ref)
    assert edges.num_edges == 1 and edges.prompt.tolist() == [1]


# ---------------------------------------------------------------- worlds


def _assert_normalised(log_ref):
    present = np.isfinite(log_ref)
    np.testing.assert_allclose(np.where(present, np.exp(log_ref), 0).sum(axis=1), 1.0, rtol=1e-12)


def test_tabular_world_structure():
    w = tabular_world(jax.random.PRNGKey(0), num_prompts=3, num_completions=4, beta=0.5, theta_scale=0.2)
    assert w.train.features.shape == (3, 4, 12) and w.dim == 12
    np.testing.assert_array_equal(np.asarray(w.train.features).reshape(12, 12), np.eye(12))
    _assert_normalised(np.asarray(w.train.log_ref))
    assert w.eval is w.train and w.beta == 0.5


def test_tabular_reference_is_strongly_non_uniform_and_rewards_small():
    w = tabular_world(jax.random.PRNGKey(1), num_completions=100, ref_concentration=3.0, theta_scale=0.3)
    p = np.exp(np.asarray(w.train.log_ref[0]))
    assert p.max() / p.min() > 100  # strongly non-uniform
    # theta* ~ 0.3 N(0,1): its sample std over 100 items is within 25% of 0.3 (chi^2_99 at p < 1e-4)
    assert abs(np.std(np.asarray(w.theta_star)) / 0.3 - 1) < 0.25
    flat = tabular_world(jax.random.PRNGKey(1), num_completions=10, ref_concentration=0.0)
    np.testing.assert_allclose(np.exp(flat.train.log_ref), 0.1, rtol=1e-12)


def test_contextual_world_feature_map():
    p, q, k = 2, 3, 5
    w = contextual_world(jax.random.PRNGKey(2), prompt_dim=p, action_dim=q, num_train_prompts=4, num_eval_prompts=6, num_completions=k)
    assert w.dim == p + q + p * q
    for pool, m in ((w.train, 4), (w.eval, 6)):
        f = np.asarray(pool.features)
        assert f.shape == (m, k, w.dim)
        x, a, xa = f[..., :p], f[..., p : p + q], f[..., p + q :]
        np.testing.assert_array_equal(x, np.broadcast_to(x[:, :1], x.shape))  # constant within a prompt
        np.testing.assert_allclose(xa, np.einsum("mki,mkj->mkij", x, a).reshape(m, k, p * q), rtol=1e-14)
        _assert_normalised(np.asarray(pool.log_ref))
    assert not np.allclose(w.train.features[0, 0, :p], w.eval.features[0, 0, :p])  # held-out prompts differ


def test_gaussian_world_padding():
    w = gaussian_world(jax.random.PRNGKey(3), num_prompts=30, num_completions=6, dim=3, min_completions=2)
    lr, f = np.asarray(w.train.log_ref), np.asarray(w.train.features)
    present = np.isfinite(lr)
    sizes = present.sum(axis=1)
    assert sizes.min() >= 2 and sizes.max() <= 6 and len(set(sizes.tolist())) > 1
    assert np.all(f[~present] == 0)
    _assert_normalised(lr)


@pytest.mark.parametrize("make", [tabular_world, contextual_world, gaussian_world])
def test_worlds_reproducible_from_key(make):
    a, b, c = make(jax.random.PRNGKey(5)), make(jax.random.PRNGKey(5)), make(jax.random.PRNGKey(6))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.theta_star, c.theta_star)


@pytest.mark.parametrize(
    "make, kwargs, field",
    [
        (tabular_world, {"num_completions": 1}, "num_completions"),
        (contextual_world, {"num_completions": 1}, "num_completions"),
        (gaussian_world, {"num_completions": 1}, "num_completions"),
        (tabular_world, {"beta": 0.0}, "beta"),
        (gaussian_world, {"beta": -1.0}, "beta"),
        (tabular_world, {"num_prompts": 0}, "num_prompts"),
        (tabular_world, {"theta_scale": -0.1}, "theta_scale"),
        (contextual_world, {"ref_concentration": float("nan")}, "ref_concentration"),
        (contextual_world, {"prompt_dim": 0}, "prompt_dim"),
        (gaussian_world, {"min_completions": 9, "num_completions": 6}, "min_completions"),
        (gaussian_world, {"dtype": np.int32}, "dtype"),
    ],
)
def test_world_parameters_are_validated(make, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make(jax.random.PRNGKey(0), **kwargs)


# ---------------------------------------------------------------- labels

# Family-wise level of the statistical tests below, split by Bonferroni over the edges.
_ALPHA = 1e-3


def test_simulated_win_rates_match_bradley_terry():
    rng = np.random.default_rng(0)
    e, reps, c = 12, 400, 50
    diffs, ts, beta = rng.normal(size=(e, 3)), rng.normal(size=3), 0.8
    counts = np.full(e, c)
    keys = jax.random.split(jax.random.PRNGKey(0), reps)
    wins = np.asarray(jax.vmap(lambda k: simulate_wins(k, ts, diffs, counts, beta))(keys))
    assert np.all(wins == np.round(wins)) and wins.min() >= 0 and wins.max() <= c
    p = 1 / (1 + np.exp(-beta * diffs @ ts))
    z = (wins.sum(axis=0) / (c * reps) - p) / np.sqrt(p * (1 - p) / (c * reps))
    assert np.max(np.abs(z)) < NormalDist().inv_cdf(1 - _ALPHA / (2 * e))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_simulated_wins_follow_the_binomial_pmf(dtype):
    """Chi-square goodness of fit against scipy's binomial pmf, per (count, p), covering the
    inverse-CDF draws (count <= 100: small and large counts, p near 0, 1/2 and 1, the
    p > 1/2 reflection) and jax.random.binomial above. Bonferroni over the settings at _ALPHA."""
    import scipy.stats

    settings = [(1, 0.3), (2, 0.5), (3, 0.97), (7, 0.02), (12, 0.8), (40, 0.55), (100, 0.995), (100, 0.1), (150, 0.3)]
    draws = 20_000
    for group in ([s for s in settings if s[0] <= 100], [s for s in settings if s[0] > 100]):
        counts = np.repeat([c for c, _ in group], draws)
        logits = np.repeat([np.log(p / (1 - p)) for _, p in group], draws)
        diffs = jnp.asarray(np.c_[logits, np.zeros_like(logits)], dtype)
        wins = np.asarray(simulate_wins(jax.random.PRNGKey(7), jnp.array([1.0, 0.0], dtype), diffs, counts, 1.0))
        assert wins.dtype == dtype and np.all(wins == np.round(wins))
        for i, (c, p) in enumerate(group):
            x = wins[i * draws : (i + 1) * draws].astype(int)
            assert x.min() >= 0 and x.max() <= c
            pmf = scipy.stats.binom.pmf(np.arange(c + 1), c, p)
            # merge the tails until every cell expects at least 5 draws
            keep = np.flatnonzero(pmf * draws >= 5)
            lo, hi = keep.min(), keep.max()
            obs = np.bincount(np.clip(x, lo, hi) - lo, minlength=hi - lo + 1)
            exp = pmf[lo : hi + 1].copy()
            exp[0] += pmf[:lo].sum()
            exp[-1] += pmf[hi + 1 :].sum()
            if len(obs) == 1:  # a degenerate cell: all draws at one value
                assert obs[0] == draws
                continue
            pval = scipy.stats.chisquare(obs, exp * draws).pvalue
            assert pval > _ALPHA / len(settings), (c, p, pval)


def test_simulate_wins_reproducible_and_key_dependent():
    diffs, ts = np.ones((4, 2)), np.array([0.1, -0.2])
    counts = np.array([10, 20, 30, 40])
    a = simulate_wins(jax.random.PRNGKey(1), ts, diffs, counts, 1.0)
    b = simulate_wins(jax.random.PRNGKey(1), ts, diffs, counts, 1.0)
    np.testing.assert_array_equal(a, b)
    draws = [np.asarray(simulate_wins(jax.random.PRNGKey(i), ts, diffs, counts, 1.0)) for i in range(2, 6)]
    assert any(not np.array_equal(a, d) for d in draws)
    # the automatic choice is the inverse CDF at these counts, whether counts are concrete or traced
    traced = jax.jit(lambda c: simulate_wins(jax.random.PRNGKey(1), ts, diffs, c, 1.0))(jnp.asarray(counts, float))
    explicit = simulate_wins(jax.random.PRNGKey(1), ts, diffs, counts, 1.0, method="inverse")
    np.testing.assert_array_equal(a, traced)
    np.testing.assert_array_equal(a, explicit)
    with pytest.raises(ValueError, match="method must be one of"):
        simulate_wins(jax.random.PRNGKey(1), ts, diffs, counts, 1.0, method="normal")


def test_sample_allocation_budget_and_multinomial_proportions():
    w = np.array([0.5, 0.3, 0.15, 0.05, 0.0])
    n = 200_000
    alloc = sample_allocation(jax.random.PRNGKey(0), w, n)
    assert alloc.budget == n and 4 not in alloc.edges.tolist()
    dense = alloc.dense_counts(5)
    z = (dense[:4] / n - w[:4]) / np.sqrt(w[:4] * (1 - w[:4]) / n)
    assert np.max(np.abs(z)) < NormalDist().inv_cdf(1 - _ALPHA / 8)


def test_allocation_from_counts_and_its_errors():
    a = allocation_from_counts(np.array([0, 3, 0, 2]))
    assert a.edges.tolist() == [1, 3] and a.counts.tolist() == [3, 2] and a.budget == 5
    with pytest.raises(ValueError, match="counts"):
        allocation_from_counts(np.array([1, -1]))
    with pytest.raises(ValueError, match="counts"):
        allocation_from_counts(np.array([0, 0]))
    with pytest.raises(ValueError, match="counts"):
        allocation_from_counts(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="budget"):
        sample_allocation(jax.random.PRNGKey(0), np.array([0.5, 0.5]), 0)
    with pytest.raises(ValueError, match="weights"):
        sample_allocation(jax.random.PRNGKey(0), np.array([0.7, 0.7]), 10)


def test_an_allocation_with_a_repeated_or_foreign_edge_is_refused_not_half_counted():
    """dense_counts assigned each entry, so an edge given twice kept one count: 10 of 15 labels simulated."""
    from synthetic.labels import Allocation

    assert Allocation(np.array([2, 0]), np.array([5, 1])).dense_counts(3).tolist() == [1, 0, 5]
    with pytest.raises(ValueError, match="Allocation.edges must be distinct: edge 0 appears 2 times"):
        Allocation(np.array([0, 0, 1]), np.array([5, 5, 5])).dense_counts(3)
    with pytest.raises(ValueError, match=r"Allocation.edges must be edge ids in \[0, 3\)"):
        Allocation(np.array([0, 3]), np.array([5, 5])).dense_counts(3)


def test_first_completions_cuts_pools_and_renormalises_pi0():
    from synthetic import contextual_world, first_completions

    world = contextual_world(jax.random.PRNGKey(3), num_completions=6, num_train_prompts=4, num_eval_prompts=5)
    cut = first_completions(world, 3)
    for full, part in ((world.train, cut.train), (world.eval, cut.eval)):
        np.testing.assert_array_equal(part.features, full.features[:, :3])
        p = np.exp(np.asarray(full.log_ref[:, :3], np.float64))
        np.testing.assert_allclose(np.exp(part.log_ref), p / p.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(cut.theta_star, world.theta_star)
    with pytest.raises(ValueError, match="k must be <= the pool size 6"):
        first_completions(world, 7)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        first_completions(world, 1)
