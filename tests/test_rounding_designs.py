"""Rounding rules and the design registry.

Oracles: brute-force enumeration of every allocation (efficient rounding), exact
successive-sampling inclusion probabilities by enumerating draw orders (sampling
without replacement, z-tested at level 1e-3), and the contract of every registered
design (exact budget, constraints, reproducibility, clear errors).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from synthetic import contextual_world, tabular_world
from synthetic.designs import (
    DESIGNS,
    check_design_budget,
    allocation_criterion,
    design_problem,
    get_design,
    register_design,
    run_design,
    weighted_output,
)
from synthetic.rounding import efficient_rounding, round_design, sample_with_replacement, sample_without_replacement

Z = norm.ppf(1 - 1e-3 / 2)  # two-sided z-tests at level 1e-3


def _compositions(n, k):
    for cuts in itertools.combinations(range(n + k - 1), k - 1):
        parts, prev = [], -1
        for c in cuts + (n + k - 1,):
            parts.append(c - prev - 1)
            prev = c
        yield np.array(parts)


@pytest.mark.parametrize("n", [3, 5, 8, 13])
def test_efficient_rounding_maximises_the_efficiency_bound(n):
    rng = np.random.default_rng(n)
    w = rng.dirichlet(np.ones(4))
    counts = efficient_rounding(w, n).dense_counts(4)
    assert counts.sum() == n
    best = max(np.min(c / (n * w)) for c in _compositions(n, 4))
    np.testing.assert_allclose(np.min(counts / (n * w)), best, rtol=1e-12)


def test_efficient_rounding_of_exact_multiples_is_exact():
    w = np.array([0.5, 0.25, 0.25, 0.0])
    np.testing.assert_array_equal(efficient_rounding(w, 8).dense_counts(4), [4, 2, 2, 0])


def _inclusion_probabilities(w, n):
    """Exact P(edge in sample) for successive sampling, by enumerating draw orders."""
    p = np.zeros(w.size)
    for order in itertools.permutations(range(w.size), n):
        prob, left = 1.0, 1.0
        for i in order:
            prob *= w[i] / left
            left -= w[i]
        p[list(order)] += prob
    return p


def test_without_replacement_matches_successive_sampling():
    w = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    n, reps = 2, 4000
    keys = jax.random.split(jax.random.PRNGKey(0), reps)
    hits = np.stack([sample_without_replacement(k, w, n).dense_counts(5) for k in keys])
    assert np.all(hits.sum(axis=1) == n) and hits.max() == 1
    p = _inclusion_probabilities(w, n)
    se = np.sqrt(p * (1 - p) / reps)
    assert np.all(np.abs(hits.mean(axis=0) - p) <= Z * se), (hits.mean(axis=0), p)


def test_with_replacement_is_multinomial_in_mean():
    w = np.array([0.5, 0.3, 0.2])
    n, reps = 10, 3000
    keys = jax.random.split(jax.random.PRNGKey(1), reps)
    c = np.stack([sample_with_replacement(k, w, n).dense_counts(3) for k in keys])
    assert np.all(c.sum(axis=1) == n)
    se = np.sqrt(n * w * (1 - w) / reps)
    assert np.all(np.abs(c.mean(axis=0) - n * w) <= Z * se)


def test_rounding_errors():
    with pytest.raises(ValueError, match="larger than the 2 edges with positive weight"):
        sample_without_replacement(jax.random.PRNGKey(0), [0.5, 0.5, 0.0], 3)
    with pytest.raises(ValueError, match=r"rounding must be one of \['auto', 'covering', 'pivotal', 'efficient'"):
        round_design(jax.random.PRNGKey(0), [1.0], 1, "stochastic")
    with pytest.raises(ValueError, match="budget must be an integer"):
        efficient_rounding([1.0], 0)
    # auto: covering pivotal sampling (one label an edge) up to the support, efficient beyond.
    z = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, -1.0]])
    a = round_design(jax.random.PRNGKey(0), [0.5, 0.5, 0.0], 2, diffs=z)
    np.testing.assert_array_equal(a.dense_counts(3), [1, 1, 0])
    b = round_design(jax.random.PRNGKey(0), [0.5, 0.5, 0.0], 5, diffs=z)
    assert sorted(b.dense_counts(3).tolist()) == [0, 2, 3]


# --------------------------------------------------------------------- designs


@pytest.fixture(scope="module")
def problems():
    key = jax.random.PRNGKey(0)
    tab = design_problem(tabular_world(key, num_prompts=4, num_completions=6))
    ctx = design_problem(contextual_world(key, num_train_prompts=30, num_eval_prompts=40, num_completions=5))
    return {"tabular": tab, "contextual": ctx}


BUDGET = 25


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_every_design_returns_the_budget_and_is_reproducible(problems, name):
    for world, prob in problems.items():
        if name == "prompt_selection" and world == "tabular":
            continue  # one fixed pair per prompt cannot span a tabular world's curvature (tested below)
        out = run_design(name, jax.random.PRNGKey(3), prob, BUDGET)
        again = run_design(name, jax.random.PRNGKey(3), prob, BUDGET)
        counts = out.dense_counts(prob.num_edges)
        assert counts.sum() == BUDGET and np.all(counts >= 0)
        np.testing.assert_array_equal(counts, again.dense_counts(prob.num_edges))
        if out.weights is not None:
            assert np.all(out.weights >= 0) and abs(out.weights.sum() - 1) < 1e-9
        if out.pilot is not None:
            pc, pw = out.pilot
            assert np.all(counts >= pc) and np.all((0 <= pw) & (pw <= pc))
        crit = allocation_criterion(prob, counts)
        assert crit > 0


def test_random_designs_depend_on_the_key(problems):
    prob = problems["contextual"]
    for name in ["uniform", "reference_weighted", "two_stage", "sweet_spot_scalable", "uncertainty"]:
        a = run_design(name, jax.random.PRNGKey(0), prob, BUDGET).dense_counts(prob.num_edges)
        b = run_design(name, jax.random.PRNGKey(1), prob, BUDGET).dense_counts(prob.num_edges)
        assert not np.array_equal(a, b), name


def test_per_prompt_constraints(problems):
    prob = problems["contextual"]
    e = prob.edges
    for name in ["best_vs_worst", "sweet_spot", "sweet_spot_scalable", "first_two", "response_selection"]:
        out = run_design(name, jax.random.PRNGKey(2), prob, 60)
        labelled = out.allocation.edges
        # At most one labelled pair per prompt.
        assert np.bincount(e.prompt[labelled]).max() == 1, name
    out = run_design("prompt_selection", jax.random.PRNGKey(2), prob, 10)
    assert out.allocation.counts.max() == 1
    assert np.all(e.first[out.allocation.edges] == 0) and np.all(e.second[out.allocation.edges] == 1)
    # first_two: only (0, 1) pairs.
    out = run_design("first_two", jax.random.PRNGKey(2), prob, 60)
    assert np.all(e.first[out.allocation.edges] == 0) and np.all(e.second[out.allocation.edges] == 1)


def test_reward_heuristics_pick_the_stated_completions(problems):
    prob = problems["contextual"]
    e = prob.edges
    reward = np.asarray(prob.pool.features @ prob.theta_star)  # correlation 1: the true ranking
    out = run_design("best_vs_worst", jax.random.PRNGKey(0), prob, 30, correlation=1.0)
    for edge in out.allocation.edges:
        x, i, j = e.prompt[edge], e.first[edge], e.second[edge]
        assert {i, j} == {int(np.argmax(reward[x])), int(np.argmin(reward[x]))}
    out = run_design("sweet_spot", jax.random.PRNGKey(0), prob, 30, correlation=1.0)
    for edge in out.allocation.edges:
        x, i, j = e.prompt[edge], e.first[edge], e.second[edge]
        r = reward[x]
        best = int(np.argmax(r))
        target = r.mean() - 2 * r.std()
        others = [k for k in range(r.size) if k != best]
        near = others[int(np.argmin(np.abs(r[others] - target)))]
        assert {i, j} == {best, near}
    # correlation -1 reverses the ranking: best and worst swap, so the unordered pairs
    # of best-vs-worst are the same.
    bvw = run_design("best_vs_worst", jax.random.PRNGKey(0), prob, 30, correlation=1.0)
    rev = run_design("best_vs_worst", jax.random.PRNGKey(0), prob, 30, correlation=-1.0)
    np.testing.assert_array_equal(np.sort(rev.allocation.edges), np.sort(bvw.allocation.edges))


def test_greedy_designs_match_a_dense_recomputation(problems):
    prob = problems["tabular"]
    out = run_design("apo_sequential", jax.random.PRNGKey(0), prob, 12, gamma=0.5)
    z = np.asarray(prob.edges.diffs)
    h = 0.5 * np.eye(z.shape[1])
    chosen = []
    for _ in range(12):
        s = np.einsum("ei,ij,ej->e", z, np.linalg.inv(h), z)
        s[chosen] = -np.inf
        j = int(np.argmax(s))
        chosen.append(j)
        h += np.outer(z[j], z[j])
    np.testing.assert_array_equal(np.sort(out.allocation.edges), np.sort(chosen))


def test_oracle_allocation_beats_plug_in_and_uniform(problems):
    prob = problems["contextual"]
    crit = {}
    for name in ["oracle", "plug_in", "uniform"]:
        out = run_design(name, jax.random.PRNGKey(0), prob, 2000)
        crit[name] = allocation_criterion(prob, out.dense_counts(prob.num_edges))
    # The oracle solves the realised criterion's problem; rounding costs little at n = 2000.
    assert crit["oracle"] <= crit["plug_in"] * (1 + 1e-3)
    assert crit["oracle"] < crit["uniform"]


def test_registry_errors(problems):
    prob = problems["tabular"]
    with pytest.raises(ValueError, match=r"design must be one of \[.*'uniform'"):
        get_design("best_design_ever")
    with pytest.raises(ValueError, match="has no parameter"):
        run_design("uniform", jax.random.PRNGKey(0), prob, 10, temperature=2.0)
    with pytest.raises(ValueError, match=r"correlation must be in \[-1, 1\]"):
        run_design("best_vs_worst", jax.random.PRNGKey(0), prob, 10, correlation=1.5)
    with pytest.raises(ValueError, match="larger than the .* candidate edges"):
        run_design("adpo_greedy", jax.random.PRNGKey(0), prob, prob.num_edges + 1)
    with pytest.raises(ValueError, match="with positive weight"):
        run_design("uniform", jax.random.PRNGKey(0), prob, prob.num_edges + 1, rounding="without_replacement")
    with pytest.raises(ValueError, match="no edges"):
        from theory.edges import Edges

        empty = prob._replace(edges=Edges(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int32), jnp.zeros((0, prob.dim))))
        run_design("plug_in", jax.random.PRNGKey(0), empty, 10)
    with pytest.raises(ValueError, match="budget must be an integer"):
        run_design("uniform", jax.random.PRNGKey(0), prob, 0)
    with pytest.raises(ValueError, match="rejected must be one of"):
        run_design("sweet_spot", jax.random.PRNGKey(0), prob, 10, rejected="median")
    with pytest.raises(ValueError, match="prompt selection labels each prompt at most once"):
        run_design("prompt_selection", jax.random.PRNGKey(0), problems["contextual"], 31)
    with pytest.raises(ValueError, match="not spanned by any candidate edge"):
        run_design("prompt_selection", jax.random.PRNGKey(0), prob, 3)


def test_a_new_design_registers_in_a_few_lines(problems):
    @register_design("test_every_other", summary="every other edge", source="this test", replace=True)
    def every_other(key, problem, budget, rounding="auto"):
        w = np.zeros(problem.num_edges)
        w[::2] = 1.0
        return weighted_output(key, problem, budget, w, rounding)

    try:
        out = run_design("test_every_other", jax.random.PRNGKey(0), problems["tabular"], 7)
        assert out.allocation.budget == 7 and np.all(out.allocation.edges % 2 == 0)
        with pytest.raises(ValueError, match="already registered"):
            register_design("test_every_other", summary="", source="")(every_other)
    finally:
        DESIGNS.pop("test_every_other", None)


# ------------------------------------------------------ finite budgets and checks


CAP_BUDGETS = {1: 25, 2: 50}


@pytest.mark.parametrize("cap", sorted(CAP_BUDGETS))
@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_every_design_respects_max_labels_per_edge(problems, name, cap):
    prob = problems["contextual"]  # 30 prompts, 300 edges: every design can spend the budget under the cap
    n = CAP_BUDGETS[cap] if name != "prompt_selection" else 25  # it labels each of the 30 prompts at most once
    out = run_design(name, jax.random.PRNGKey(4), prob, n, max_labels_per_edge=cap)
    counts = out.dense_counts(prob.num_edges)
    assert counts.sum() == n and counts.max() <= cap
    if out.pilot is not None:
        assert np.all(counts >= out.pilot[0])
    if cap == 1:  # "auto" is the cap 1 wherever the budget is at most the number of edges
        auto = run_design(name, jax.random.PRNGKey(4), prob, n, max_labels_per_edge="auto")
        np.testing.assert_array_equal(auto.dense_counts(prob.num_edges), counts)
    with pytest.raises(ValueError, match=r"exceeds design.params.max_labels_per_edge = 1 times the 300 candidate edges"):
        run_design(name, jax.random.PRNGKey(4), prob, 301, max_labels_per_edge=1)


@pytest.mark.parametrize("name", ["uniform", "plug_in", "apo_greedy", "sequential_plug_in"])
def test_auto_cap_is_unlimited_above_the_number_of_edges(problems, name):
    prob = problems["contextual"]  # 300 edges
    n = 400
    auto = run_design(name, jax.random.PRNGKey(5), prob, n, max_labels_per_edge="auto")
    free = run_design(name, jax.random.PRNGKey(5), prob, n, max_labels_per_edge=None)
    np.testing.assert_array_equal(auto.dense_counts(prob.num_edges), free.dense_counts(prob.num_edges))
    assert auto.dense_counts(prob.num_edges).max() > 1  # 400 labels on 300 edges repeat one


@pytest.mark.parametrize("world", ["tabular", "contextual"])
@pytest.mark.parametrize("name", sorted(n for n, spec in DESIGNS.items() if spec.support is not None))
def test_a_registered_support_is_exactly_what_the_design_can_label_once(problems, world, name):
    prob = problems[world]
    params = {"num_pairs": 5} if name == "first_n" else {}  # its default support is every edge
    size = get_design(name).support_size(prob, params)
    assert size < prob.num_edges
    out = run_design(name, jax.random.PRNGKey(6), prob, size, max_labels_per_edge=1, **params)  # the support is not understated
    assert out.allocation.edges.size == size and out.allocation.counts.max() == 1
    with pytest.raises(ValueError, match=f"budget {size + 1} exceeds design.params.max_labels_per_edge = 1 times the {size} comparisons"):
        check_design_budget(name, prob, size + 1, max_labels_per_edge=1, **params)
    free = run_design(name, jax.random.PRNGKey(6), prob, 3 * size + 1, max_labels_per_edge=None, **params)
    assert free.allocation.edges.size <= size  # not overstated: it never labels more comparisons


def test_a_cap_the_design_cannot_meet_is_a_clear_error(problems):
    prob = problems["tabular"]  # 4 prompts: one pair a prompt gives 4 edges
    with pytest.raises(ValueError, match="budget 5 exceeds design.params.max_labels_per_edge = 1 times the 4 comparisons design 'first_two' can label"):
        check_design_budget("first_two", prob, 5, max_labels_per_edge=1)  # before any label
    auto = run_design("first_two", jax.random.PRNGKey(0), prob, 5, max_labels_per_edge="auto")  # beyond its support: unlimited
    assert auto.allocation.counts.sum() == 5 and auto.allocation.counts.max() == 2
    with pytest.raises(ValueError, match="cannot honour max_labels_per_edge"):
        run_design("uniform", jax.random.PRNGKey(0), prob, 30, max_labels_per_edge=1, rounding="efficient")
    out = run_design("first_two", jax.random.PRNGKey(0), prob, 12, max_labels_per_edge=3)
    np.testing.assert_array_equal(np.sort(out.allocation.counts), [3, 3, 3, 3])


def test_capped_optimal_designs_are_sampled_with_inclusion_probabilities_n_w(problems):
    prob = problems["contextual"]
    n = 40
    out = run_design("plug_in", jax.random.PRNGKey(0), prob, n, max_labels_per_edge=1)
    w = out.weights
    assert w.max() <= 1 / n * (1 + 1e-9) and out.info["rounding"] == "covering"
    from synthetic.rounding import capped_expected_counts

    np.testing.assert_allclose(capped_expected_counts(w, n, 1), n * w, rtol=0, atol=1e-9)  # no cap binds: pi = n w
    assert np.isfinite(allocation_criterion(prob, out.dense_counts(prob.num_edges), theta=jnp.zeros(prob.dim)))


def test_prior_precision_is_the_bayes_ridge(problems):
    from theory.design import optimal_design

    prob = problems["contextual"]
    n, lam = 40, 2.0
    out = run_design("plug_in", jax.random.PRNGKey(0), prob, n, prior_precision=lam, tol=1e-6)
    theta = jnp.zeros(prob.dim)
    ref = optimal_design(prob.edges.diffs, theta, prob.curvature(theta), prob.beta, ridge=lam / n, tol=1e-6)
    np.testing.assert_allclose(out.weights, np.asarray(ref.weights), atol=1e-6)
    with pytest.raises(ValueError, match=r"design.params.ridge = 0.1 and design.params.prior_precision = 2.0: give one"):
        run_design("plug_in", jax.random.PRNGKey(0), prob, n, prior_precision=lam, ridge=0.1)


def test_auto_rounding_covers_where_the_papers_rule_does_not():
    """Plug-in design on a one-prompt tabular pool (K = 20, peaked pi0) at n = 60 < E = 190."""
    from synthetic.rounding import round_design

    prob = design_problem(tabular_world(jax.random.PRNGKey(0), num_prompts=1, num_completions=20, theta_scale=0.2))
    n = 60
    out = run_design("plug_in", jax.random.PRNGKey(0), prob, n)
    assert out.info["rounding"] == "covering"
    theta0 = jnp.zeros(prob.dim)
    uncovered = {"covering": 0, "without_replacement": 0}
    for s in range(20):  # the paper's rule leaves a completion uncompared about 40% of the time here
        for rule in uncovered:
            c = round_design(jax.random.PRNGKey(s), out.weights, n, rule, diffs=prob.edges.diffs).dense_counts(prob.num_edges)
            uncovered[rule] += not np.isfinite(allocation_criterion(prob, c, theta=theta0))
    assert uncovered["covering"] == 0 and uncovered["without_replacement"] > 0, uncovered


def test_run_design_warns_before_any_label_when_the_budget_is_below_the_rank(problems):
    from synthetic.rounding import CoverageWarning

    prob = problems["tabular"]  # 4 prompts x 6 completions: I has rank 4 * 5 = 20
    with pytest.warns(CoverageWarning, match="budget 19 is below 20, the rank of the curvature I"):
        run_design("uniform", jax.random.PRNGKey(0), prob, 19)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        out = run_design("uniform", jax.random.PRNGKey(0), prob, 20)  # exactly the rank: a spanning set, covered
    assert np.isfinite(allocation_criterion(prob, out.dense_counts(prob.num_edges)))
    with pytest.warns(CoverageWarning, match="budget 19 is below 20, the rank of the curvature I"):
        run_design("two_stage", jax.random.PRNGKey(0), prob, 19)  # a pilot design warns too
    # a pilot too small for its budget is refused in the pre-flight, before the warning and any label
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        with pytest.raises(ValueError, match="pilot_fraction"):
            run_design("two_stage", jax.random.PRNGKey(0), prob, 3, pilot_fraction=0.1)


BAD_VALUES = {
    "batch_size": 0,
    "reading": "loud",
    "rounding": "stochastic",
    "max_labels_per_edge": 0,
    "prior_precision": -1.0,
    "ridge": -1.0,
    "tol": 0.0,
    "pilot_fraction": 1.0,
    "pilot_ridge": float("nan"),
    "gamma": 0.0,
    "with_replacement": "yes",
    "num_pairs": 0,
    "reward": "oracle",
    "correlation": 1.5,
    "num_samples": 0,
    "fraction": 0.0,
    "at": "elsewhere",
    "chosen": "median",
    "rejected": "median",
    "round_size": 0,
    "first_round": 0,
    "refit": "adam",
    "over_generate_factor": 0,
    "candidates": "random",
    "allocation": "greedy",
}


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_every_design_checks_each_parameter_before_running(name):
    from synthetic.designs import check_design_params

    spec = DESIGNS[name]
    check_design_params(name, dict(spec.params))  # the defaults pass
    for p in spec.params:
        assert p in spec.checks, f"{name}.{p} has no check"
        with pytest.raises(ValueError, match=rf"design.params.{p} must be .*, got"):
            check_design_params(name, {p: BAD_VALUES[p]})


def test_parameter_checks_state_the_allowed_values():
    from synthetic.designs import check_design_params

    check_design_params("d_optimal", {"at": "truth", "max_labels_per_edge": 1, "prior_precision": 0.0})
    with pytest.raises(ValueError, match=r"design.params.at must be one of \['reference', 'pilot'\], got 'truth'"):
        check_design_params("uncertainty", {"at": "truth"})
    with pytest.raises(ValueError, match=r"design.params.max_labels_per_edge must be null \(unlimited\), 'auto' \(1 when budget <= number of "
                       r"edges, else unlimited\) or an integer >= 1, got 1.5"):
        check_design_params("uniform", {"max_labels_per_edge": 1.5})
    with pytest.raises(ValueError, match=r"design.params.max_labels_per_edge must be null .* got 'once'"):
        check_design_params("uniform", {"max_labels_per_edge": "once"})
    check_design_params("uniform", {"max_labels_per_edge": "auto"})
    with pytest.raises(ValueError, match=r"design.params.pilot_fraction must be in \(0, 1\), got 0"):
        check_design_params("two_stage", {"pilot_fraction": 0})
    with pytest.raises(ValueError, match=r"checks for parameter\(s\) \['nope'\] it does not take"):
        register_design("test_bad_checks", summary="", source="", checks={"nope": lambda n, v: None})(lambda key, problem, budget: None)
    assert "test_bad_checks" not in DESIGNS


@pytest.mark.parametrize("world, batch, budget", [("tabular", 20, 90), ("contextual", 1, 30), ("contextual", 7, 50), ("contextual", 20, 400)])
def test_apo_batches_match_the_authors_rule_recomputed_from_scratch(problems, world, batch, budget):
    """nirjhar-das/active-preference-optimization, scripts/reward_learning.py: each round
    ranks every pair by diag(Z V^-1 Z^T) with V frozen, takes the top K (repeats across
    rounds allowed), then V += sum z z^T over them; V starts at gamma Id.

    Replayed round by round from scratch (dense inverse): each round's picks are a top-K
    set of the recomputed scores to rounding (1e-6 of the largest score; scores that tie
    exactly, as one-hot pairs do, may be broken differently by two float computations)."""
    from synthetic.designs import _batch_greedy

    prob = problems[world]
    out = run_design("apo_greedy", jax.random.PRNGKey(0), prob, budget, gamma=1e-5, batch_size=batch, with_replacement=True)
    z = np.asarray(prob.edges.diffs)
    rounds = []
    counts = _batch_greedy(z, budget, 1e-5, batch, True, rounds=rounds)
    np.testing.assert_array_equal(out.dense_counts(z.shape[0]), counts)
    v = 1e-5 * np.eye(z.shape[1])
    for pick in rounds:
        norm = np.einsum("ei,ij,ej->e", z, np.linalg.pinv(v, hermitian=True), z)
        rest = np.setdiff1d(np.arange(z.shape[0]), pick)
        assert pick.size == min(batch, budget) or pick is rounds[-1]
        assert norm[pick].min() >= norm[rest].max() - 1e-6 * norm.max()
        v = v + z[pick].T @ z[pick]
    assert sum(p.size for p in rounds) == budget
    if budget == 400:
        assert counts.max() > 1  # a later round took an edge again


def test_apo_without_replacement_and_with_caps_never_repeats_an_edge(problems):
    prob = problems["contextual"]
    for kw in ({"with_replacement": False}, {"max_labels_per_edge": 1}):
        out = run_design("apo_greedy", jax.random.PRNGKey(0), prob, 300, **kw)
        assert out.allocation.counts.max() == 1 and out.allocation.counts.sum() == 300


# ------------------------------------------------------------- truth out of reach


def _variants(spec):
    """The design's defaults, plus each value of ``at`` it allows."""
    out = [{}]
    if "at" in spec.params:
        for at in ("reference", "truth", "pilot"):
            try:
                spec.checks["at"]("at", at)
            except ValueError:
                continue
            out.append({"at": at})
    return out


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_designs_not_registered_as_needing_the_truth_never_see_it(problems, name):
    """Perturbing theta* leaves every truth-free design's allocation unchanged; designs
    registered as needing it do read it (run without the annotator, they fail clearly)."""
    from synthetic.designs import TruthHiddenError

    prob = problems["contextual"]
    other = prob._replace(annotator=prob.annotator._replace(theta_star=-3.0 * prob.annotator.theta_star + 0.5))
    spec = DESIGNS[name]
    for params in _variants(spec):
        if spec.reads_truth(params):
            with pytest.raises(TruthHiddenError, match="needs_truth"):
                spec.fn(jax.random.PRNGKey(4), prob.without_truth(), BUDGET, **params)
            continue
        a = run_design(name, jax.random.PRNGKey(4), prob, BUDGET, **params)
        b = run_design(name, jax.random.PRNGKey(4), other, BUDGET, **params)
        np.testing.assert_array_equal(a.dense_counts(prob.num_edges), b.dense_counts(prob.num_edges))
        if a.weights is not None:
            np.testing.assert_array_equal(a.weights, b.weights)
        assert a.pilot is None and b.pilot is None  # a truth-free design buys no labels


def test_an_unregistered_read_of_the_truth_is_an_error(problems):
    from synthetic.designs import TruthHiddenError, register_design

    @register_design("peeks_at_truth", summary="test", source="test", replace=True)
    def peeks(key, problem, budget, rounding="auto", max_labels_per_edge=None):
        w = np.abs(np.asarray(problem.edges.diffs @ problem.theta_star))
        return weighted_output(key, problem, budget, w / w.sum(), rounding)

    try:
        with pytest.raises(TruthHiddenError, match=r"register_design\(\.\.\., needs_truth=True\)"):
            run_design("peeks_at_truth", jax.random.PRNGKey(0), problems["contextual"], BUDGET)
        register_design("peeks_at_truth", summary="test", source="test", replace=True, needs_truth=True)(peeks)
        out = run_design("peeks_at_truth", jax.random.PRNGKey(0), problems["contextual"], BUDGET)
        assert out.allocation.budget == BUDGET
    finally:
        DESIGNS.pop("peeks_at_truth", None)


def test_each_family_module_registers_its_designs():
    """The registry split by family: each family module registers exactly the designs
    ``FAMILIES`` lists for it (read from where each registered function is defined),
    and together they are every design the package registers."""
    import importlib

    from synthetic.designs import FAMILIES

    by_module = {}
    for name, spec in DESIGNS.items():
        module = spec.fn.__module__
        if module.startswith("synthetic.designs."):
            by_module.setdefault(module.rsplit(".", 1)[1], set()).add(name)
    assert by_module == {family: set(names) for family, names in FAMILIES.items()}
    for family, names in FAMILIES.items():
        mod = importlib.import_module(f"synthetic.designs.{family}")
        for name in names:
            assert DESIGNS[name].fn is getattr(mod, name)
    # the listing order of the one-module registry is kept (the design table's rows)
    listed = [n for n in DESIGNS if DESIGNS[n].fn.__module__.startswith("synthetic.designs.")]
    assert listed == [
        "oracle", "plug_in", "two_stage", "d_optimal", "a_optimal", "adpo_greedy", "apo_greedy", "apo_sequential",
        "uniform", "first_two", "first_n", "reference_weighted", "best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma",
        "sweet_spot_scalable", "reference_filter", "reference_filter_labelled", "uncertainty", "most_certain",
        "response_selection", "prompt_selection", "adpo_adaptive", "uncertainty_adaptive", "most_certain_adaptive",
        "sequential_plug_in",
    ]


def test_pilot_config_defaults_are_the_only_pilot_numbers(problems):
    """Every design's pilot defaults are PilotConfig's; no other module of the package
    writes a pilot number (no 0.2 or 1e-3 literal outside pilot.py); the pilot buys
    floor(fraction * budget) labels; bad pilot numbers name the design parameter."""
    import io
    import ast
    import pathlib
    import tokenize

    import synthetic.designs as D
    from synthetic.designs import PILOT, PilotConfig

    assert PILOT == PilotConfig() == PilotConfig(fraction=0.2, ridge=1e-3)
    takers = [n for n, s in DESIGNS.items() if "pilot_fraction" in s.params or "pilot_ridge" in s.params]
    assert {"two_stage", "d_optimal", "best_vs_worst", "uncertainty", "response_selection", "adpo_adaptive"} <= set(takers)
    for name in takers:
        params = DESIGNS[name].params
        assert params.get("pilot_fraction", PILOT.fraction) == PILOT.fraction, name
        assert params.get("pilot_ridge", PILOT.ridge) == PILOT.ridge, name
    package = pathlib.Path(D.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name == "pilot.py":
            continue
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            value = ast.literal_eval(tok.string) if tok.type == tokenize.NUMBER else None  # 0o666, 1_000, 2j too
            if isinstance(value, (int, float)) and float(value) in (PILOT.fraction, PILOT.ridge):
                pytest.fail(f"{path.name}:{tok.start[0]} writes the pilot number {tok.string}; use PILOT / PilotConfig")
    prob = problems["contextual"]
    for fraction, budget in [(None, 37), (0.3, 37), (0.5, 25)]:
        extra = {} if fraction is None else {"pilot_fraction": fraction}
        out = run_design("two_stage", jax.random.PRNGKey(5), prob, budget, **extra)
        num, den = {None: (1, 5), 0.3: (3, 10), 0.5: (1, 2)}[fraction]
        assert out.pilot[0].sum() == (num * budget) // den  # floor(fraction * budget) in integers
    with pytest.raises(ValueError, match=r"pilot_fraction must be in \(0.0, 1.0\), got 1.0"):
        PilotConfig(fraction=1.0).check()
    with pytest.raises(ValueError, match=r"design.params.pilot_ridge must be in \(0, inf\), got -1"):
        PilotConfig(ridge=-1).check()
    # 0 too: a small pilot's unpenalised MLE often does not exist, and the design was solved at its diverging estimate
    with pytest.raises(ValueError, match=r"design.params.pilot_ridge must be in \(0, inf\), got 0"):
        PilotConfig(ridge=0.0).check()
    with pytest.raises(ValueError, match="leave at least one pilot and one designed label"):
        PilotConfig(fraction=0.2).size(4)


class _NoLabels(tuple):
    """An annotator whose every use fails: a budget check must come before any label."""

    @property
    def theta_star(self):
        raise AssertionError("read the truth during a budget check")

    def label(self, key, counts):
        raise AssertionError("bought a label before the budget check")


@pytest.mark.parametrize(
    "name, world, params, limit, message",
    [
        ("adpo_greedy", "tabular", {}, 60, r"budget = 61 is larger than the 60 candidate edges .* design.params.with_replacement = false labels each edge at most once"),
        ("adpo_greedy", "tabular", {"at": "pilot"}, 60, r"design.params.with_replacement = false labels each edge at most once"),
        ("apo_sequential", "tabular", {}, 60, r"larger than the 60 candidate edges"),
        ("apo_greedy", "tabular", {"with_replacement": False}, 60, r"design.params.with_replacement = false"),
        ("uniform", "tabular", {"rounding": "without_replacement"}, 60, r"exceeds the 60 candidate edges .* with positive weight"),
        ("two_stage", "tabular", {"rounding": "without_replacement"}, 60, r"exceeds the 60 candidate edges"),
        ("prompt_selection", "contextual", {}, 30, r"budget 31 is larger than the 30 prompts with a fixed pair: prompt selection labels .* prompt_selection labels each prompt at most once"),
        ("adpo_adaptive", "tabular", {"with_replacement": False}, 60, r"budget 61 exceeds the 60 labels .* allowed: budget <= 60"),
    ],
)
def test_each_design_checks_its_own_budget_before_any_label(problems, name, world, params, limit, message):
    """The sweep's pre-flight pass (check_design_budget) and run_design raise the
    design's own budget error (one label over the limit, counted here from the world:
    E tabular edges, the contextual prompts with completions 0 and 1) before any
    label; the limit itself passes."""
    from synthetic.designs import check_design_budget

    prob = problems[world]
    lr = np.asarray(prob.pool.log_ref)
    assert limit == (prob.num_edges if world == "tabular" else int(np.sum(np.isfinite(lr[:, 0]) & np.isfinite(lr[:, 1]))))
    assert check_design_budget(name, prob, limit, **params) == limit
    with pytest.raises(ValueError, match=message):
        check_design_budget(name, prob, limit + 1, **params)
    blind = prob._replace(annotator=_NoLabels())
    with pytest.raises(ValueError, match=message):
        run_design(name, jax.random.PRNGKey(0), blind, limit + 1, **params)


def test_a_registered_budget_check_runs_before_the_design():
    from synthetic.designs import rounding_budget_check

    for name, spec in DESIGNS.items():
        assert (rounding_budget_check in spec.budget_checks) == ("rounding" in spec.params), name
    calls = []

    def at_most_ten(name, problem, budget, params):
        calls.append((name, budget, params["rounding"]))
        if budget > 10:
            raise ValueError(f"design {name!r}: budget {budget} > 10")

    try:
        @register_design("test_budget_hook", summary="t", source="t", check_budget=at_most_ten)
        def hooked(key, problem, budget, rounding="auto"):
            raise AssertionError("the design ran before its budget check")

        prob = design_problem(tabular_world(jax.random.PRNGKey(0), num_prompts=2, num_completions=3))
        with pytest.raises(ValueError, match="budget 11 > 10"):
            run_design("test_budget_hook", jax.random.PRNGKey(0), prob, 11)
        assert calls == [("test_budget_hook", 11, "auto")]  # with the defaults filled in
        with pytest.raises(ValueError, match="check_budget must be a function"):
            register_design("test_budget_hook", summary="t", source="t", replace=True, check_budget=3)(hooked)
    finally:
        DESIGNS.pop("test_budget_hook", None)


def test_run_design_refuses_fractional_counts_and_non_design_weights_and_edges_are_read_only():
    """A user design that returned counts budget * w passed the budget check (int of their sum) and was
    then truncated (1,400 of 2,100 labels simulated); weights of NaN or summing to 7,000 passed too; a
    design could rewrite the problem's edge ids in place and change every later design on it."""
    import jax

    from synthetic.designs import DESIGNS, DesignOutput, design_problem, register_design, run_design
    from synthetic.labels import Allocation
    from synthetic.worlds import contextual_world

    prob = design_problem(contextual_world(jax.random.key(0), num_train_prompts=5, num_eval_prompts=5, num_completions=4))
    e = prob.num_edges
    cases = {
        "_fractional": lambda key, problem, budget: DesignOutput(Allocation(np.arange(e), np.full(e, budget / e)), None, None, None),
        "_nan_weights": lambda key, problem, budget: DesignOutput(Allocation(np.array([0]), np.array([budget])), np.full(e, np.nan), None, None),
        "_big_weights": lambda key, problem, budget: DesignOutput(Allocation(np.array([0]), np.array([budget])), np.full(e, 100.0), None, None),
    }
    try:
        for name, fn in cases.items():
            register_design(name, summary="t", source="t", replace=True)(fn)
            with pytest.raises(RuntimeError, match="fractional label counts" if name == "_fractional" else "weights that are not a design"):
                run_design(name, jax.random.key(0), prob, 2 * e + 1)
    finally:
        for name in cases:
            DESIGNS.pop(name, None)
    with pytest.raises(ValueError, match="read-only"):
        prob.edges.prompt[:] = 0


def test_no_false_coverage_warning_on_a_float32_world_whose_budget_is_the_rank():
    """A float32 tabular world's curvature keeps 1e-9 of its top eigenvalue in the exact null
    direction (the softmax's constant shift); read at float64's rank threshold that counted as a
    direction, and a budget equal to the rank (K - 1, enough to cover I) was warned "every design's
    realised criterion is infinite". The rank is now read at the curvature's own precision."""
    import warnings

    from synthetic.designs import design_problem
    from synthetic.rounding import CoverageWarning
    from theory.information import numerical_rank

    w = tabular_world(jax.random.PRNGKey(1), num_completions=30, dtype=jnp.float32)
    prob = design_problem(w)
    curv = np.asarray(prob.curvature(jnp.zeros(prob.dim, jnp.float32)))
    assert curv.dtype == np.float32
    lam = np.linalg.eigvalsh(curv.astype(np.float64))
    # the world's trap: the null eigenvalue is above float64's threshold (10 d eps64 lam_max)
    assert lam[0] > 10 * 30 * np.finfo(np.float64).eps * lam[-1]
    assert numerical_rank(curv) == 29 and numerical_rank(np.asarray(w.train.features[0] @ w.train.features[0].T, np.float64)) == 30
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        run_design("uniform", jax.random.PRNGKey(0), prob, 29)
    with pytest.warns(CoverageWarning, match="budget 28 is below 29, the rank of the curvature I"):
        run_design("uniform", jax.random.PRNGKey(0), prob, 28)
    # Figure 1's tabular world in float32 (K = 100, theta_scale 0.2): its smallest genuine curvature
    # eigenvalue is 6e-6 of the top, below float32's threshold (10 d eps = 1.2e-4), and a rank read
    # from the curvature at float32's precision was 96: budgets 96-98 went unwarned. The rank is the
    # span of the pool's within-prompt feature differences: 99.
    big = design_problem(tabular_world(jax.random.PRNGKey(0), num_completions=100, theta_scale=0.2, dtype=jnp.float32))
    with pytest.warns(CoverageWarning, match="budget 98 is below 99, the rank of the curvature I"):
        run_design("uniform", jax.random.PRNGKey(0), big, 98)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        run_design("uniform", jax.random.PRNGKey(0), big, 99)


@pytest.mark.parametrize("name", ["best_vs_worst", "response_selection", "sweet_spot"])
def test_auto_cap_counts_only_the_prompts_a_pair_rule_weights(name):
    """Prompt weights (1/2, 1/2, 0, 0): a one-pair-per-prompt rule labels two pairs, so 4 labels are
    above its support and "auto" is unlimited (2 labels on each weighted prompt). Its support
    counted the zero-weight prompts (4), "auto" became a cap of 1, and the design failed for
    want of room."""
    from synthetic import gaussian_world
    from synthetic.worlds import Pool, World

    w = gaussian_world(jax.random.PRNGKey(1), num_prompts=4, num_completions=4, dim=3)
    pool = Pool(w.train.features, w.train.log_ref, jnp.array([0.5, 0.5, 0.0, 0.0]))
    prob = design_problem(World(pool, pool, w.theta_star, w.beta))
    assert get_design(name).support_size(prob, {}) == 2
    out = run_design(name, jax.random.PRNGKey(0), prob, 4, max_labels_per_edge="auto")
    per_prompt = np.bincount(np.asarray(prob.edges.prompt), weights=out.dense_counts(prob.num_edges), minlength=4)
    np.testing.assert_array_equal(per_prompt, [2, 2, 0, 0])


def test_response_selection_at_a_pilot_may_label_more_comparisons_than_prompts():
    """At a pilot, response selection's labels are the pilot's (on any edge) plus one pair a
    prompt: 12 labels on 12 distinct comparisons of 10 prompts with a cap of 1. Registering its
    support as the prompts' count alone refused that run before it started."""
    from synthetic import gaussian_world

    prob = design_problem(gaussian_world(jax.random.key(0), num_prompts=10, num_completions=6, dim=4))
    assert get_design("response_selection").support_size(prob, {"at": "pilot"}) == prob.num_edges
    out = run_design("response_selection", jax.random.key(3), prob, 12, at="pilot", max_labels_per_edge=1)
    c = out.dense_counts(prob.num_edges)
    assert c.sum() == 12 and c.max() == 1 and np.all(c >= out.pilot[0])


def test_run_design_refuses_mismatched_counts_bad_pilots_and_bad_selected_ids():
    """A user's design returning counts [budget] for E edges had broadcast to budget labels on each edge (1,000
    labels simulated for a budget of 100, the row's ratio to its prediction 1/10); a pilot with wins above its
    counts or negative counts fitted impossible labels (gap 1.97 for 0.007); selection_output took -1 (edge_ids'
    "no such edge") for the last edge and a boolean mask for edges 0 and 1. All silently."""
    import jax

    from synthetic.designs import DESIGNS, DesignOutput, design_problem, register_design, run_design, selection_output
    from synthetic.labels import Allocation, allocation_from_counts
    from synthetic.monte_carlo import replicate_gaps
    from synthetic.worlds import contextual_world

    world = contextual_world(jax.random.key(0), num_train_prompts=5, num_eval_prompts=5, num_completions=4)
    prob = design_problem(world)
    e = prob.num_edges

    def with_pilot(counts, wins):
        def fn(key, problem, budget):
            total = np.full(e, 2) + np.r_[budget - 2 * e, np.zeros(e - 1, int)]  # the pilot's edges hold its counts
            return DesignOutput(allocation_from_counts(total), None, (np.asarray(counts), np.asarray(wins)), None)
        return fn

    ones = np.ones(e, int)
    cases = {
        "_broadcast": (lambda key, problem, budget: DesignOutput(Allocation(np.arange(3), np.array([budget])), None, None, None),
                       "invalid allocation: Allocation.edges and Allocation.counts must be 1-D arrays of one length"),
        "_wins_above": (with_pilot(ones, 3 * ones), "invalid pilot: pilot wins must not exceed the pilot counts"),
        "_negative_pilot": (with_pilot(-ones, 0 * ones), "invalid pilot: pilot counts must be whole numbers >= 0"),
        "_minus_one": (lambda key, problem, budget: selection_output(key, problem, budget, np.array([0, 1, -1])),
                       r"selected must be edge ids in \[0, "),
        "_mask": (lambda key, problem, budget: selection_output(key, problem, budget, np.arange(e) >= e - 3),
                  "selected must be integer edge ids, got dtype bool"),
    }
    try:
        for name, (fn, message) in cases.items():
            register_design(name, summary="t", source="t", needs_truth=True, replace=True)(fn)
            with pytest.raises((RuntimeError, ValueError), match=message):
                run_design(name, jax.random.key(0), prob, 2 * e + 3)
    finally:
        for name in cases:
            DESIGNS.pop(name, None)
    # the Monte Carlo checks a pilot too
    counts = np.full(e, 4)
    with pytest.raises(ValueError, match="pilot wins must not exceed the pilot counts"):
        replicate_gaps(jax.random.split(jax.random.key(1), 2), world.theta_star, prob.edges.diffs, counts, world.beta,
                       world.eval, pilot=(np.full(e, 2), np.full(e, 3)))


def test_response_selection_gives_a_prompt_of_weight_zero_no_label_and_no_division_by_zero():
    """A prompt of weight 0 has group mass 0: its pick divided 0 by 0 (NaN probabilities handed to
    jax.random.choice; numpy's warning). It takes no label, and every other prompt its rho share."""
    import jax
    import jax.numpy as jnp
    import scipy.special

    from synthetic.designs import design_problem, run_design
    from synthetic.worlds import Pool, World, gaussian_world

    w = gaussian_world(jax.random.PRNGKey(0), num_prompts=5, num_completions=4, dim=3, min_completions=2)
    f, lr = np.array(w.train.features), np.array(w.train.log_ref)
    pres = np.isfinite(lr)
    lr = np.where(pres, lr - scipy.special.logsumexp(np.where(pres, lr, -np.inf), axis=1, keepdims=True), -np.inf)
    rho = np.array([0.0, 0.4, 0.1, 0.3, 0.2])
    pool = Pool(jnp.asarray(f), jnp.asarray(lr), jnp.asarray(rho))
    prob = design_problem(World(pool, pool, w.theta_star, w.beta))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value encountered in divide"
        out = run_design("response_selection", jax.random.PRNGKey(1), prob, 400)
    per_prompt = np.bincount(np.asarray(prob.edges.prompt), weights=out.dense_counts(prob.num_edges), minlength=5)
    assert per_prompt[0] == 0 and np.all(np.abs(per_prompt - 400 * rho) <= 1)
