"""Baselines as their authors run them (seed 003's pair rules, seed 004's premise and
protocol), each against a direct re-implementation of its source rule."""

import jax
import numpy as np
import pytest

from synthetic import contextual_world, gaussian_world, tabular_world
from synthetic.designs import design_problem, run_design


@pytest.mark.parametrize("make, conc", [
    (lambda r: tabular_world(jax.random.key(3), num_prompts=40, num_completions=8, ref_reward_correlation=r), 2.0),
    (lambda r: contextual_world(jax.random.key(3), num_train_prompts=40, num_eval_prompts=5, ref_reward_correlation=r), 2.0),
    (lambda r: gaussian_world(jax.random.key(3), num_prompts=40, min_completions=3, ref_reward_correlation=r), 1.0),
])
def test_reference_tracks_the_reward_to_the_requested_correlation(make, conc):
    """r = 0 is the paper's world number for number (noise alone). The reference logits
    are g = r s + sqrt(1 - r^2) eps with s the reward standardised within its prompt and
    eps ~ N(0, 1): E[g s] = r exactly. With log pi0 = conc g - logsumexp, the centred
    log pi0 / conc times s estimates r with variance (1 - r^2) / N: a z-test at level 1e-3."""
    base = make(0.0)
    np.testing.assert_array_equal(np.asarray(base.train.log_ref), np.asarray(make(0.0).train.log_ref))
    for r in (0.5, 0.9, -0.3):
        w = make(r)
        np.testing.assert_array_equal(np.asarray(w.theta_star), np.asarray(base.theta_star))
        lr = np.asarray(w.train.log_ref)
        rew = np.asarray(w.train.features @ w.theta_star)
        ok = np.isfinite(lr)
        terms = []
        for i in range(lr.shape[0]):
            g, b = lr[i, ok[i]] / conc, rew[i, ok[i]]
            if b.std() > 0:
                terms.append((g - g.mean()) * (b - b.mean()) / b.std())
        t = np.concatenate(terms)
        z = (t.mean() - r) / np.sqrt((1 - r**2) / t.size)
        assert abs(z) < 3.29, (r, t.mean())
    with pytest.raises(ValueError, match=r"ref_reward_correlation must be a number in \[-1, 1\]"):
        make(1.5)


def test_labelled_filter_keeps_exactly_the_labels_its_source_rule_keeps():
    """Seed 004's protocol recomputed from the spent labels: per label, the reading
    log pi0(chosen) - log pi0(rejected) (signed) or its absolute value; keep the
    `budget` largest; train on them. Labels spent = ceil(budget / fraction)."""
    world = contextual_world(jax.random.key(0), num_train_prompts=30, num_eval_prompts=5, ref_reward_correlation=0.6)
    prob = design_problem(world)
    e = prob.edges
    lr = np.asarray(prob.pool.log_ref)
    delta = lr[e.prompt, e.first] - lr[e.prompt, e.second]
    for reading in ("signed", "absolute"):
        out = run_design("reference_filter_labelled", jax.random.key(1), prob, 120, fraction=0.4, reading=reading)
        counts, wins = out.info["spent"]
        assert out.info["labels_spent"] == counts.sum() == 300 and out.allocation.counts.sum() == 120
        labels = []  # (reading, edge, first completion won)
        for j in np.flatnonzero(counts):
            for t in range(counts[j]):
                won = t < wins[j]
                v = delta[j] if won else -delta[j]
                labels.append((v if reading == "signed" else abs(v), j, won))
        labels.sort(key=lambda t: -t[0])
        kept = labels[:120]
        assert labels[119][0] > labels[120][0]  # continuous readings: no tie at the cut
        kc = np.zeros(e.num_edges, int)
        kw = np.zeros(e.num_edges, int)
        for _, j, won in kept:
            kc[j] += 1
            kw[j] += won
        np.testing.assert_array_equal(out.dense_counts(e.num_edges), kc)
        np.testing.assert_array_equal(out.pilot[0], kc)
        np.testing.assert_array_equal(out.pilot[1], kw)
    # signed keeps labels the reference agrees with: its kept readings are all positive here
    out = run_design("reference_filter_labelled", jax.random.key(1), prob, 120, fraction=0.4, reading="signed")
    kept_edges = out.allocation.edges
    agree = np.where(out.pilot[1][kept_edges] > 0, delta[kept_edges], -delta[kept_edges])
    assert np.all(agree > 0)


def test_the_labelled_filter_reports_labels_spent_in_the_summary(tmp_path):
    from experiments import sweep

    sweep.run_jobs([["world=contextual", "design=reference_filter_labelled", "budget=200", "num_replicates=5"]], tmp_path, progress=False)
    (row,) = sweep.aggregate(tmp_path)
    assert row["labels_spent"] == 500 and row["budget"] == 200 and "trained on 200 of 500 labels spent" in row["note"]


def test_pm2sigma_is_the_sweet_spot_rule_at_those_positions():
    prob = design_problem(gaussian_world(jax.random.key(0), num_prompts=30, num_completions=12))
    a = run_design("sweet_spot_pm2sigma", jax.random.key(2), prob, 30)
    b = run_design("sweet_spot", jax.random.key(2), prob, 30, chosen="mu+2sigma", rejected="mu-2sigma")
    np.testing.assert_array_equal(a.dense_counts(prob.num_edges), b.dense_counts(prob.num_edges))


def test_scalable_sweet_spot_rejects_the_minimum_of_its_random_draws():
    """Chosen: the highest proxy reward. Rejected: the lowest of 5 completions drawn at
    random from the pool. With K = 6 it differs from best-vs-worst exactly when the
    minimum is not among the 5 draws (and the chosen one is then often drawn)."""
    world = gaussian_world(jax.random.key(0), num_prompts=400, num_completions=6)
    prob = design_problem(world)
    reward = np.asarray(world.train.features @ world.theta_star)
    out = run_design("sweet_spot_scalable", jax.random.key(4), prob, 400)
    e = prob.edges
    sel = out.allocation.edges
    best = np.argmax(reward, axis=1)
    worst = np.argmin(reward, axis=1)
    p, i, j = e.prompt[sel], e.first[sel], e.second[sel]
    chosen = np.where(reward[p, i] > reward[p, j], i, j)
    rejected = np.where(reward[p, i] > reward[p, j], j, i)
    assert np.all(chosen == best[p])
    differs = np.mean(rejected != worst[p])
    # P(min not among 5 random of 6) = 1/6 (the minimum is the one left out)
    se = np.sqrt((1 / 6) * (5 / 6) / p.size)
    assert abs(differs - 1 / 6) < 3.29 * se, differs


def test_edge_id_finds_every_pair_of_a_ragged_pool_and_nothing_else():
    """The per-prompt rules and Figure 5 look edges up by binary search (``DesignProblem.edge_id``,
    ``edge_ids``), not in a dense ``[m, K, K]`` map: on a pool with completions missing anywhere (prompts with one, two or
    all of them), every ``(prompt, i, j)`` in either order gives the id a dictionary of the edge list
    gives, and ``-1`` for a pair with an absent end, ``i = j`` or an index outside the pool."""
    import jax.numpy as jnp

    from synthetic.designs import DesignProblem
    from synthetic.worlds import Pool
    from theory import enumerate_edges

    rng = np.random.default_rng(7)
    m, k, d = 9, 7, 2
    present = rng.random((m, k)) < 0.6
    present[0], present[1], present[2] = True, np.arange(k) == 3, np.arange(k) >= 5  # all, one, the last two
    log_ref = np.where(present, -1.0, -np.inf)
    pool = Pool(jnp.asarray(rng.normal(size=(m, k, d))), jnp.asarray(log_ref), jnp.ones(m) / m)
    problem = DesignProblem(enumerate_edges(pool.features, pool.log_ref), pool, pool, 1.0)
    e = problem.edges
    # the search's premise: enumerate_edges orders the edges by prompt, then first, then second
    assert np.array_equal(np.lexsort((np.asarray(e.second), np.asarray(e.first), np.asarray(e.prompt))), np.arange(problem.num_edges))
    assert np.all(np.asarray(e.first) < np.asarray(e.second))
    ids = {}
    for n, (x, i, j) in enumerate(zip(np.asarray(e.prompt), np.asarray(e.first), np.asarray(e.second))):
        ids[(x, i, j)] = ids[(x, j, i)] = n
    assert len(ids) == 2 * problem.num_edges > 0
    for x in range(m):
        for i in range(k):
            for j in range(k):
                assert problem.edge_id(x, i, j) == ids.get((x, i, j), -1), (x, i, j)
    # all at once (edge_ids, as Figure 5 lifts a cut pool's edges), with queries outside the pool too
    x, i, j = (a.ravel() for a in np.meshgrid(np.arange(-1, m + 1), np.arange(-1, k + 1), np.arange(-1, k + 1), indexing="ij"))
    want = [ids.get((a, b, c), -1) for a, b, c in zip(x, i, j)]
    assert np.array_equal(problem.edge_ids(x, i, j), want)
    assert np.array_equal(problem.edge_ids(x.reshape(-1, 3), i.reshape(-1, 3), j.reshape(-1, 3)), np.reshape(want, (-1, 3)))
    # a per-prompt rule that picks one completion twice (ties) is refused by name, also under python -O
    from synthetic.designs.heuristics import _per_prompt_pairs

    with pytest.raises(ValueError, match="prompt 0: the rule picked completions \\(2, 2\\), which are no edge"):
        _per_prompt_pairs(problem, lambda x: (2, 2))


def test_reference_weighted_reads_pi0_not_the_offsets_of_raw_log_probabilities():
    """``log_ref`` a constant per prompt away from ``log pi0`` (raw sequence log-probabilities)
    is the same reference for every other quantity (the policy normalises within the prompt);
    reference_weighted put 99.8% of its weight on one prompt of three with offsets 0, -3, -6
    (38% normalised). Oracle: ``pi0(y|x) pi0(y'|x)`` from a per-prompt loop, normalised."""
    from synthetic import reference_weights
    from theory import enumerate_edges

    world = gaussian_world(jax.random.key(1), num_prompts=3, num_completions=4, dim=2)
    lr = np.asarray(world.train.log_ref, np.float64)
    shifted = lr + np.array([[0.0], [-3.0], [-6.0]])
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    want = np.array([np.exp(lr[p, a] - np.log(np.exp(lr[p]).sum())) * np.exp(lr[p, b] - np.log(np.exp(lr[p]).sum()))
                     for p, a, b in zip(np.asarray(edges.prompt), np.asarray(edges.first), np.asarray(edges.second))])
    for raw in (lr, shifted):
        np.testing.assert_allclose(reference_weights(edges, raw), want / want.sum(), rtol=1e-12)
    prob = design_problem(world._replace(train=world.train._replace(log_ref=shifted)))
    out = run_design("reference_weighted", jax.random.key(2), prob, 300)
    per_prompt = np.bincount(np.asarray(edges.prompt)[out.allocation.edges], weights=out.allocation.counts, minlength=3)
    masses = np.bincount(np.asarray(edges.prompt), weights=want / want.sum(), minlength=3)
    assert per_prompt.min() >= 0.5 * 300 * masses.min()  # the old weights gave the third prompt 3 labels of 300


@pytest.mark.parametrize("name", ["uncertainty", "most_certain"])
def test_pilot_uncertainty_labels_the_edges_nearest_one_half_once_each(name):
    """At a pilot fit, the ``budget - n0`` labels left go to the edges with room (pilot edges at
    the cap of 1 have none) whose predicted preference is nearest 1/2 (farthest: most_certain),
    one each: a direct recomputation from the fit's theta. The default num_pairs was ``budget``:
    the 40 labels were spread over a random part of the 50 nearest edges (7 of 40 elsewhere)."""
    world = gaussian_world(jax.random.key(0), num_prompts=10, num_completions=6, dim=4, theta_scale=3.0)
    prob = design_problem(world)
    out = run_design(name, jax.random.key(3), prob, 50, at="pilot", max_labels_per_edge=1)
    pilot = np.asarray(out.pilot[0])
    designed = out.dense_counts(prob.num_edges) - pilot
    p = 1.0 / (1.0 + np.exp(-prob.beta * np.asarray(prob.edges.diffs, np.float64) @ np.asarray(out.info["theta"], np.float64)))
    score = np.abs(p - 0.5) * (-1 if name == "most_certain" else 1)
    free = np.flatnonzero(pilot == 0)
    want = free[np.argsort(score[free], kind="stable")[: 50 - int(pilot.sum())]]
    assert pilot.sum() == 10 and designed.max() == 1
    assert set(np.flatnonzero(designed)) == set(want.tolist())
