"""Fixed-size unequal-probability sampling and coverage-protecting rounding.

Oracles: the exact distribution of pivotal sampling, enumerated by recursion over
both outcomes of every duel of the sampler's own step function and over every order;
capped expected counts against a root found by scipy's brentq; a spanning-tree check
by union-find and ranks by numpy's SVD. Monte-Carlo checks are two-sided z-tests at
family level 1e-3 (Bonferroni over the quantities tested), scaled by the binomial
standard error.
"""

import itertools

import jax
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from synthetic.rounding import (
    CoverageWarning,
    _pivot_step,
    capped_expected_counts,
    covering_rounding,
    pivotal_rounding,
    pivotal_sample,
    round_design,
    sample_without_replacement,
    spanning_edges,
)


def _z(m):
    """Two-sided critical value for ``m`` z-tests at family level 1e-3."""
    return norm.ppf(1 - 1e-3 / (2 * m))


def _exact_pivotal(p):
    """Exact distribution {sample (tuple of 0/1): probability} of pivotal sampling of ``p`` in the given order."""
    n = len(p)
    dist = {}

    def rec(t, carried, a, settled, prob):
        if prob == 0:
            return
        if t == n:
            assert abs(a - round(a)) < 1e-12  # sum(p) whole: the last unit ends at 0 or 1
            out = list(settled)
            out[carried] = int(round(a))
            dist[tuple(out)] = dist.get(tuple(out), 0.0) + prob
            return
        pc, value, residual = (float(v) for v in _pivot_step(a, p[t]))
        s1 = list(settled)
        s1[carried] = int(value)
        rec(t + 1, t, residual, s1, prob * pc)  # the carried unit settles, unit t carries
        s2 = list(settled)
        s2[t] = int(value)
        rec(t + 1, carried, residual, s2, prob * (1 - pc))  # unit t settles

    rec(1, 0, p[0], [0] * n, 1.0)
    return dist


PROBS = [
    [0.5, 0.5],
    [0.3, 0.9, 0.8],
    [0.2, 0.7, 0.4, 0.6, 0.1],
    [0.9, 0.95, 0.15, 0.5, 0.3, 0.2],
    [0.05, 0.1, 0.15, 0.2, 0.25, 0.25],
    [0.99, 0.01, 0.6, 0.4, 0.7, 0.27, 0.03],
]


@pytest.mark.parametrize("p", PROBS, ids=lambda p: f"N{len(p)}")
def test_pivotal_is_exact_in_every_order(p):
    """Every order gives inclusion probabilities exactly p and samples of exactly sum(p) units."""
    p = np.asarray(p)
    size = int(round(p.sum()))
    assert abs(p.sum() - size) < 1e-12
    orders = list(itertools.permutations(range(p.size))) if p.size <= 5 else [tuple(range(p.size)), tuple(range(p.size))[::-1]]
    for order in orders:
        dist = _exact_pivotal(p[list(order)])
        assert abs(sum(dist.values()) - 1) < 1e-12
        assert all(sum(s) == size for s in dist)
        incl = sum(np.array(s, float) * q for s, q in dist.items())
        np.testing.assert_allclose(incl, p[list(order)], rtol=0, atol=1e-12)


def test_pivotal_sample_matches_its_exact_joint_distribution():
    """The sampler (random order, scan) draws whole samples with the enumerated probabilities."""
    p = np.array([0.2, 0.7, 0.4, 0.6, 0.1])
    joint = {}
    orders = list(itertools.permutations(range(p.size)))
    for order in orders:  # the sampler's order is a uniform random permutation
        for s, q in _exact_pivotal(p[list(order)]).items():
            full = [0] * p.size
            for pos, unit in enumerate(order):
                full[unit] = s[pos]
            joint[tuple(full)] = joint.get(tuple(full), 0.0) + q / len(orders)
    reps = 3000
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(0), reps))
    draws = [tuple(pivotal_sample(k, p).tolist()) for k in keys]
    assert set(draws) <= set(joint)
    z = _z(len(joint))
    for s, q in joint.items():
        freq = sum(d == s for d in draws) / reps
        assert abs(freq - q) <= z * np.sqrt(q * (1 - q) / reps), (s, freq, q)


def test_pivotal_sample_on_a_larger_pool():
    """Inclusion frequencies on 60 units (ones, zeros and fractions) against p, z-tested."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 60)
    p[:3] = 1.0
    p[3:6] = 0.0
    p[-1] += np.ceil(p.sum()) - p.sum() if np.ceil(p.sum()) - p.sum() + p[-1] <= 1 else np.floor(p.sum()) - p.sum()
    size = int(round(p.sum()))
    reps = 2000
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(1), reps))
    hits = np.stack([pivotal_sample(k, p) for k in keys])
    assert np.all(hits.sum(axis=1) == size) and set(np.unique(hits)) <= {0, 1}
    assert np.all(hits[:, :3] == 1) and np.all(hits[:, 3:6] == 0)
    se = np.sqrt(p * (1 - p) / reps)
    frac = (p > 0) & (p < 1)
    assert np.all(np.abs(hits.mean(axis=0) - p)[frac] <= _z(frac.sum()) * se[frac])


def test_pivotal_sample_is_reproducible_and_checks_its_input():
    p = np.array([0.5, 0.25, 0.75, 0.5])
    a = pivotal_sample(jax.random.PRNGKey(3), p)
    np.testing.assert_array_equal(a, pivotal_sample(jax.random.PRNGKey(3), p))
    assert any(not np.array_equal(a, pivotal_sample(jax.random.PRNGKey(k), p)) for k in range(4, 10))
    with pytest.raises(ValueError, match=r"probs must be inclusion probabilities in \[0, 1\]"):
        pivotal_sample(jax.random.PRNGKey(0), [1.5, 0.5])
    with pytest.raises(ValueError, match="probs must sum to a whole number"):
        pivotal_sample(jax.random.PRNGKey(0), [0.5, 0.2])


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_capped_expected_counts_match_a_root_finder(cap):
    rng = np.random.default_rng(cap)
    w = rng.dirichlet(0.3 * np.ones(40))
    w[::7] = 0.0
    live = w > 0
    for n in [1, 5, 17, int(cap * live.sum()) - 1, int(cap * live.sum())]:
        m = capped_expected_counts(w, n, cap)
        ws = w / w.sum()
        if n == cap * live.sum():
            expected = np.where(live, cap, 0.0)
        else:
            lam = brentq(lambda t: np.minimum(cap, t * ws).sum() - n, 0.0, 1e12, xtol=1e-14, rtol=1e-15)
            expected = np.minimum(cap, lam * ws)
        np.testing.assert_allclose(m, expected, rtol=1e-9, atol=1e-12)
        assert abs(m.sum() - n) < 1e-9 and np.all(m <= cap) and np.all(m[~live] == 0)
    np.testing.assert_allclose(capped_expected_counts(w, 7), 7 * w / w.sum())  # no cap: n w
    with pytest.raises(ValueError, match=r"budget 1000 exceeds the .* labels that max_labels_per_edge allows"):
        capped_expected_counts(w, 1000, cap)


def test_pivotal_rounding_with_caps_gives_floor_or_ceil_of_the_expected_counts():
    w = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    n, cap, reps = 9, 3, 1500
    m = capped_expected_counts(w, n, cap)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(2), reps))
    c = np.stack([pivotal_rounding(k, w, n, cap).dense_counts(w.size) for k in keys])
    assert np.all(c.sum(axis=1) == n) and c.max() <= cap
    assert np.all((c == np.floor(m)) | (c == np.ceil(m)))
    frac = m - np.floor(m)
    t = frac > 0
    se = np.sqrt(frac * (1 - frac) / reps)
    assert np.all(np.abs(c.mean(axis=0) - m)[t] <= _z(t.sum()) * se[t])


# ------------------------------------------------------------------- coverage


def _one_hot_diffs(k):
    pairs = list(itertools.combinations(range(k), 2))
    z = np.zeros((len(pairs), k))
    for e, (i, j) in enumerate(pairs):
        z[e, i], z[e, j] = 1.0, -1.0
    return np.array(pairs), z


def _connected(pairs, k):
    parent = list(range(k))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        parent[find(i)] = find(j)
    return len({find(a) for a in range(k)}) == 1


def test_spanning_edges_are_a_spanning_tree_of_a_tabular_prompt():
    k = 8
    pairs, z = _one_hot_diffs(k)
    w = np.random.default_rng(0).dirichlet(np.ones(len(pairs)))
    for s in range(5):
        edges, need = spanning_edges(jax.random.PRNGKey(s), w, z)
        assert need == k - 1 and edges.size == k - 1 and np.unique(edges).size == k - 1
        assert _connected(pairs[edges], k)
    covered = np.zeros(len(pairs), int)
    covered[[0, 1]] = 1  # (0, 1) and (0, 2) already labelled
    edges, need = spanning_edges(jax.random.PRNGKey(0), w, z, covered)
    assert need == k - 3 and edges.size == k - 3
    assert _connected(np.concatenate([pairs[edges], pairs[:2]]), k)


def test_spanning_edges_in_general_position():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 4)) @ rng.normal(size=(4, 7))  # rank 4 in R^7
    w = rng.dirichlet(np.ones(30))
    w[:10] = 0.0
    edges, need = spanning_edges(jax.random.PRNGKey(0), w, z)
    assert need == 4 and edges.size == 4 and np.all(w[edges] > 0)
    assert np.linalg.matrix_rank(z[edges]) == np.linalg.matrix_rank(z[w > 0]) == 4


def _skewed_tabular(k, seed):
    """One-hot comparisons whose weights starve a few completions (as an L-optimal design with peaked pi0)."""
    pairs, z = _one_hot_diffs(k)
    rng = np.random.default_rng(seed)
    node = np.exp(2.0 * rng.normal(size=k))
    w = node[pairs[:, 0]] * node[pairs[:, 1]]
    return pairs, z, w / w.sum()


def test_covering_rounding_always_covers_where_the_old_rule_does_not():
    k, n, reps = 12, 20, 300
    pairs, z, w = _skewed_tabular(k, 0)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(5), reps))
    old_uncovered = 0
    for key in keys:
        c = covering_rounding(key, w, n, z).dense_counts(w.size)
        assert c.sum() == n and c.max() == 1
        assert _connected(pairs[c > 0], k)
        old = sample_without_replacement(key, w, n).dense_counts(w.size)
        old_uncovered += not _connected(pairs[old > 0], k)
    assert old_uncovered > 0  # the instance is one where coverage needs protecting


def test_covering_rounding_keeps_caps_pilot_coverage_and_budget():
    k, n = 10, 40
    pairs, z, w = _skewed_tabular(k, 1)
    pilot = np.zeros(w.size, int)
    pilot[[0, 3, 7]] = [2, 1, 1]
    cap = 3
    for s in range(20):
        c = covering_rounding(jax.random.PRNGKey(s), w, n, z, caps=cap - pilot, covered=pilot).dense_counts(w.size)
        assert c.sum() == n and np.all(c + pilot <= cap)
        assert _connected(pairs[(c + pilot) > 0], k)
    a = covering_rounding(jax.random.PRNGKey(0), w, n, z, caps=cap).dense_counts(w.size)
    np.testing.assert_array_equal(a, covering_rounding(jax.random.PRNGKey(0), w, n, z, caps=cap).dense_counts(w.size))


def test_covering_rounding_warns_below_the_rank():
    k = 10
    pairs, z, w = _skewed_tabular(k, 2)
    with pytest.warns(CoverageWarning, match="budget 5 is below 9, the number of directions"):
        c = covering_rounding(jax.random.PRNGKey(0), w, 5, z).dense_counts(w.size)
    assert c.sum() == 5 and np.linalg.matrix_rank(z[c > 0]) == 5  # as many directions as 5 labels can cover


@pytest.mark.parametrize("cap,n", [(1, 20), (3, 40)])
def test_covering_samples_the_rest_in_proportion_to_what_the_design_still_owes(cap, n):
    """Given the spanning set B (the documented first step, one label each), the other
    n - |B| labels have expected counts min(cap - [e in B], lam max(n w_e - [e in B], 0)),
    lam by brentq; z-tested on the residuals pooled over draws."""
    k, reps = 8, 300
    pairs, z, w = _skewed_tabular(k, 3)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(6), reps))
    resid, var = np.zeros(w.size), np.zeros(w.size)
    for key in keys:
        basis, _ = spanning_edges(jax.random.split(key)[0], w, z)
        c = covering_rounding(key, w, n, z, caps=cap).dense_counts(w.size)
        assert c.sum() == n and c.max() <= cap and np.all(c[basis] >= 1)
        first = np.zeros(w.size)
        first[basis] = 1.0
        owed = np.maximum(n * w - first, 0.0)
        left = cap - first
        rest = n - basis.size
        assert left[owed > 0].sum() >= rest  # the instance does not need the fallback
        lam = brentq(lambda t: np.minimum(left, t * owed).sum() - rest, 0.0, 1e9, xtol=1e-14)
        m = np.minimum(left, lam * owed)
        frac = m - np.floor(m)
        resid += c - first - m
        var += frac * (1 - frac)
    t = var > 0
    assert np.all(np.abs(resid[~t]) < 1e-9)
    assert np.all(np.abs(resid[t]) <= _z(t.sum()) * np.sqrt(var[t])), resid / np.sqrt(np.maximum(var, 1e-300))


def test_auto_is_covering_up_to_the_support_and_efficient_beyond():
    pairs, z, w = _skewed_tabular(6, 4)
    key = jax.random.PRNGKey(0)
    a = round_design(key, w, 10, diffs=z).dense_counts(w.size)
    np.testing.assert_array_equal(a, covering_rounding(key, w, 10, z).dense_counts(w.size))
    b = round_design(key, w, 40, diffs=z).dense_counts(w.size)
    assert b.sum() == 40 and np.all(b >= 1)  # efficient: every support edge labelled once n >= s
    with pytest.raises(ValueError, match="needs the edge differences"):
        round_design(key, w, 10)
    with pytest.raises(ValueError, match="cannot honour max_labels_per_edge"):
        round_design(key, w, 40, "efficient", caps=2)
    c = round_design(key, w, 40, caps=3, diffs=z).dense_counts(w.size)
    assert c.sum() == 40 and c.max() <= 3
