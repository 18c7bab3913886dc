"""The adaptive-design loop (synthetic.adaptive): each rule against a direct
re-implementation of its source rule, the loop against the two-stage design as its
one-round special case, every bought label used, parameter errors, and a sweep cell."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthetic import adaptive as A
from synthetic.designs import DESIGNS, _greedy_order, check_design_params, design_problem, run_design
from synthetic.worlds import contextual_world

ADAPTIVE = ("adpo_adaptive", "uncertainty_adaptive", "most_certain_adaptive", "sequential_plug_in")


@pytest.fixture(scope="module")
def prob():
    # 8 prompts of 5 completions: 80 edges, d = 15
    return design_problem(contextual_world(jax.random.PRNGKey(7), num_train_prompts=8, num_eval_prompts=20, num_completions=5))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _state(prob, seed, r=3, max_count=2):
    rng = np.random.default_rng(seed)
    thetas = rng.normal(size=(r, prob.dim))
    held = rng.integers(0, max_count + 1, size=(r, prob.num_edges)) * (rng.random((r, prob.num_edges)) < 0.2)
    return thetas, held


# ---------------------------------------------------------------------- ADPO+


def _adpo_direct(z, beta, theta, held, b, gamma, caps):
    """Kveton et al.'s greedy D-optimal rule, written out: each pick maximises
    v^T H^-1 v over the edges with room, H = gamma Id + sum over all labels of v v^T
    (H re-formed and solved from scratch at every pick)."""
    mu = _sigmoid(beta * z @ theta)
    v = beta * np.sqrt(mu * (1 - mu))[:, None] * z
    taken = np.zeros(len(z))
    for _ in range(b):
        h = gamma * np.eye(z.shape[1]) + (v.T * (held + taken)) @ v
        score = np.einsum("ed,ed->e", v, np.linalg.solve(h, v.T).T)
        score[held + taken >= caps] = -np.inf
        taken[int(np.argmax(score))] += 1
    return taken


@pytest.mark.parametrize("with_replacement", [False, True])
def test_adpo_round_is_the_greedy_d_optimal_rule(prob, with_replacement):
    z = np.asarray(prob.edges.diffs)
    thetas, held = _state(prob, 1)
    caps = A._edge_caps(prob, None, with_replacement)
    got = A.adpo_round(prob, thetas, held, 12, 0.5, caps)
    for r in range(len(thetas)):
        want = _adpo_direct(z, prob.beta, thetas[r], held[r], 12, 0.5, caps)
        np.testing.assert_array_equal(got[r], want)
    assert np.all(got.sum(axis=1) == 12)
    if not with_replacement:
        assert np.all(got + held <= np.maximum(held, 1))  # held edges are not taken again


def test_adpo_round_without_labels_is_the_offline_greedy(prob):
    """With nothing held it is the registered offline greedy (designs._greedy_order, an
    independent implementation) on the same weighted vectors."""
    theta = np.random.default_rng(2).normal(size=prob.dim)
    z = prob.edges.diffs
    mu = jax.nn.sigmoid(prob.beta * z @ theta)
    v = prob.beta * jnp.sqrt(mu * (1 - mu))[:, None] * z
    order = _greedy_order(v, jnp.asarray(1.0), 20, jnp.ones(prob.num_edges, jnp.int32))
    want = np.bincount(np.asarray(order), minlength=prob.num_edges)
    got = A.adpo_round(prob, theta[None], np.zeros((1, prob.num_edges)), 20, 1.0, np.ones(prob.num_edges))
    np.testing.assert_array_equal(got[0], want)


# ----------------------------------------------------------- Muldrew et al.


def _muldrew_direct(z, beta, theta, cand, b, which):
    """experiment5.py's acquire_completion_pairs_uncertainty: score each candidate
    u = 1 - 2 |sigmoid(r_a - r_b) - 0.5|, sort ascending, keep the last b ('most') or the
    first b ('least')."""
    u = 1.0 - 2.0 * np.abs(_sigmoid(beta * z[cand] @ theta) - 0.5)
    order = np.argsort(u, kind="stable")
    keep = order[-b:] if which == "most" else order[:b]
    return np.bincount(cand[keep], minlength=len(z))


@pytest.mark.parametrize("most_certain", [False, True])
def test_uncertainty_pick_is_muldrews_rule(prob, most_certain):
    z = np.asarray(prob.edges.diffs)
    rng = np.random.default_rng(3)
    for _ in range(3):
        theta = rng.normal(size=prob.dim)
        cand = rng.integers(0, prob.num_edges, size=40)
        want = _muldrew_direct(z, prob.beta, theta, cand, 10, "least" if most_certain else "most")
        for capped in (True, False):  # the sequential scan and its uncapped shortcut
            got = A.uncertainty_pick(jnp.asarray(theta), jnp.zeros(prob.num_edges), 10, jnp.asarray(cand), prob.edges.diffs,
                                     prob.beta, jnp.full(prob.num_edges, jnp.inf), most_certain, capped)
            np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_allclose(np.asarray(A.uncertainty_scores(jnp.asarray(theta), prob.edges.diffs, prob.beta)),
                                   1 - 2 * np.abs(_sigmoid(prob.beta * z @ theta) - 0.5), rtol=0, atol=1e-14)


def test_uncertainty_pick_skips_edges_at_their_cap(prob):
    rng = np.random.default_rng(4)
    theta = rng.normal(size=prob.dim)
    cand = np.repeat(rng.integers(0, prob.num_edges, size=5), 4)  # each candidate edge drawn 4 times
    held = np.zeros(prob.num_edges)
    held[cand[0]] = 1
    got = np.asarray(A.uncertainty_pick(jnp.asarray(theta), jnp.asarray(held), 8, jnp.asarray(cand), prob.edges.diffs, prob.beta,
                                        jnp.ones(prob.num_edges), False))
    assert got.sum() == 8 and got.max() <= 1 and got[cand[0]] == 0
    # the candidates fit at most 4 labels (5 edges, one full): the other 4 come from all edges, most uncertain first
    u = 1 - 2 * np.abs(_sigmoid(prob.beta * np.asarray(prob.edges.diffs) @ theta) - 0.5)
    free = np.setdiff1d(np.arange(prob.num_edges), np.unique(cand))
    rest = free[np.argsort(-u[free], kind="stable")][:8 - (np.unique(cand).size - 1)]
    assert set(np.flatnonzero(got)) == set(np.unique(cand[cand != cand[0]])) | set(rest)


@pytest.mark.parametrize("policy", [True, False])
def test_candidate_pairs_are_drawn_as_the_authors_generator_draws_them(prob, policy):
    """A uniformly chosen prompt, then two distinct completions from pi_theta (or uniform):
    P(edge {a, b} of prompt x) = (1/m) pi(a) pi(b) / sum_{pairs of x} pi pi."""
    theta = np.random.default_rng(5).normal(size=prob.dim)
    e = prob.edges
    lw = A.candidate_log_weights(jnp.asarray(theta), jnp.asarray(e.prompt), jnp.asarray(e.first), jnp.asarray(e.second),
                                 prob.pool.features, prob.pool.log_ref, float(A._num_prompts(prob)), policy)
    feats, lr = np.asarray(prob.pool.features), np.asarray(prob.pool.log_ref)
    logits = lr + feats @ theta if policy else np.zeros_like(lr)
    pi = np.exp(logits - logits.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    m = np.unique(e.prompt).size
    want = np.zeros(e.num_edges)
    for x in np.unique(e.prompt):
        idx = np.flatnonzero(e.prompt == x)
        pp = pi[x, e.first[idx]] * pi[x, e.second[idx]]
        want[idx] = pp / pp.sum() / m
    np.testing.assert_allclose(np.exp(np.asarray(lw)), want, rtol=1e-12, atol=0)


# ------------------------------------------------------------ sequential plug-in


@pytest.mark.parametrize("budget,fraction", [(60, 0.25), (45, 0.4)])
def test_one_pilot_round_and_one_plug_in_round_is_two_stage(prob, budget, fraction):
    n0 = int(math.floor(fraction * budget))
    for seed in range(2):
        key = jax.random.PRNGKey(10 + seed)
        two = run_design("two_stage", key, prob, budget, pilot_fraction=fraction, pilot_ridge=1e-3)
        seq = run_design("sequential_plug_in", key, prob, budget, round_size=budget - n0, first_round=n0, refit="ridge",
                         pilot_ridge=1e-3, allocation="design")
        assert seq.info["rounds"] == [n0, budget - n0]
        # the same pilot labels (the fit on them agrees) and the same designed round
        np.testing.assert_allclose(seq.info["theta"], two.info["theta"], rtol=0, atol=1e-10)
        np.testing.assert_array_equal(seq.dense_counts(prob.num_edges), two.dense_counts(prob.num_edges))


def test_deficit_rounds_fill_what_the_design_lacks(prob):
    """allocation='deficit': a round's labels are rounded from max((n_held + B) w - held, 0)."""
    rng = np.random.default_rng(6)
    theta = rng.normal(size=prob.dim) * 0.3
    held = np.zeros(prob.num_edges, np.int64)
    held[rng.choice(prob.num_edges, 20, replace=False)] = 1
    wins = np.zeros_like(held)
    new, w = A._plug_in_round(jax.random.PRNGKey(0), prob, theta, held, wins, 30, None, "deficit", "efficient", 0.0, 1e-6, None)
    deficit = np.maximum(50 * w - held, 0)
    # the round is the efficient rounding of the deficit to B = 30 labels
    from synthetic.rounding import efficient_rounding

    want = efficient_rounding(deficit / deficit.sum(), 30, jax.random.PRNGKey(0)).dense_counts(prob.num_edges)
    np.testing.assert_array_equal(new, want)
    assert new.sum() == 30 and np.all(new[deficit == 0] == 0) and abs(w.sum() - 1) < 1e-9


# ------------------------------------------------------------- the loop itself


@pytest.mark.parametrize("name", ADAPTIVE)
def test_every_label_bought_is_the_training_set(prob, name):
    budget = 70
    out = run_design(name, jax.random.PRNGKey(1), prob, budget, round_size=16)
    counts = out.dense_counts(prob.num_edges)
    pc, pw = out.pilot
    assert counts.sum() == budget and pc.sum() == budget
    np.testing.assert_array_equal(counts, pc)  # nothing left for an evaluation to draw
    assert np.all((0 <= pw) & (pw <= pc))
    assert out.info["rounds"] == [16, 16, 16, 16, 6]
    assert DESIGNS[name].adaptive


@pytest.mark.parametrize("name", ["adpo_adaptive", "uncertainty_adaptive"])
def test_lock_step_replicates_equal_single_runs(prob, name):
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    outs = A.run_adaptive(name, keys, prob, 50, round_size=10)
    for i, out in enumerate(outs):
        one = run_design(name, keys[i], prob, 50, round_size=10)
        np.testing.assert_array_equal(out.pilot[0], one.pilot[0])
        np.testing.assert_array_equal(out.pilot[1], one.pilot[1])


def test_wins_are_the_annotators(prob):
    """The first round's wins are DesignProblem.label's for the same key and counts."""
    key = jax.random.PRNGKey(3)
    out = run_design("adpo_adaptive", key, prob, 30, round_size=30)
    k_first, _ = jax.random.split(key)
    _, k_lab = jax.random.split(k_first)
    np.testing.assert_array_equal(out.pilot[1], prob.label(k_lab, out.pilot[0]))


BAD = {"round_size": 0, "first_round": 0, "refit": "adam", "over_generate_factor": 0, "candidates": "random", "allocation": "greedy",
       "prior_precision": 0.0, "pilot_ridge": -1.0}


@pytest.mark.parametrize("name", ADAPTIVE)
def test_parameter_errors_name_the_field(prob, name):
    spec = DESIGNS[name]
    check_design_params(name, dict(spec.params))
    for p, bad in BAD.items():
        if p in spec.params:
            with pytest.raises(ValueError, match=rf"design.params.{p} must be .*, got"):
                run_design(name, jax.random.PRNGKey(0), prob, 30, **{p: bad})
    with pytest.raises(ValueError, match=r"design.params.first_round must be in \[1, budget = 30\], got 31"):
        run_design(name, jax.random.PRNGKey(0), prob, 30, first_round=31)
    with pytest.raises(ValueError, match="is not adaptive"):
        A.run_adaptive("uniform", jax.random.PRNGKey(0)[None], prob, 30)


def test_adpo_without_replacement_refuses_a_budget_above_the_edges(prob):
    with pytest.raises(ValueError, match=r"budget 81 exceeds the 80 labels .* allowed: budget <= 80"):
        run_design("adpo_adaptive", jax.random.PRNGKey(0), prob, 81, with_replacement=False)


def test_an_adaptive_cell_runs_per_replicate_with_the_usual_columns():
    from hydra import compose, initialize_config_module

    from experiments.cell import run_cell

    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=[
            "design=adpo_adaptive", "budget=60", "num_replicates=3", "estimator=map", "design.params.round_size=20",
            "world.params.num_train_prompts=6", "world.params.num_eval_prompts=10", "world.params.num_completions=5",
        ])
        rec = run_cell(cfg)
    assert set(rec) == {"replicate", "gap", "valid", "mle_exists", "predicted_gap", "labels_spent", "allocation", "allocation_random"}
    assert all(len(v) == 3 for v in rec.values())
    assert list(rec["allocation"]) == [0, 1, 2]  # each replicate its own draw of the design: the summary's plain interval
    assert np.all(np.isfinite(rec["gap"])) and np.all(rec["gap"] >= 0) and np.all(rec["valid"])
    assert np.all(rec["labels_spent"] == 60) and np.all(rec["predicted_gap"] == rec["predicted_gap"][0])
    assert len(set(np.round(rec["gap"], 12))) == 3  # each replicate bought its own labels


def test_an_adaptive_cells_runs_serve_the_next_estimator_and_equal_a_fresh_run(monkeypatch):
    """The figures fit one adaptive run with MAP and with the plain MLE: the second cell takes the
    first one's runs (the design runs once), and its records equal those it gets with no runs kept."""
    from hydra import compose, initialize_config_module

    import experiments.cell as cell

    calls = []
    real = cell.run_adaptive

    def counted(name, keys, *args, **kwargs):
        calls.append((name, tuple(np.asarray(jax.random.key_data(keys)).ravel().tolist())))
        return real(name, keys, *args, **kwargs)

    monkeypatch.setattr(cell, "run_adaptive", counted)
    monkeypatch.setattr(cell, "_ADAPTIVE_RUNS", type(cell._ADAPTIVE_RUNS)())
    base = ["design=adpo_adaptive", "budget=60", "num_replicates=3", "design.params.round_size=20",
            "world.params.num_train_prompts=6", "world.params.num_eval_prompts=10", "world.params.num_completions=5"]
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg_map = compose(config_name="sweep", overrides=[*base, "estimator=map"])
        cfg_mle = compose(config_name="sweep", overrides=[*base, "estimator=newton"])
        cfg_other = compose(config_name="sweep", overrides=[*base, "estimator=newton", "seed=1"])
        rec_map = cell.run_cell(cfg_map)
        rec_mle = cell.run_cell(cfg_mle)
        assert len(calls) == 1  # the design ran once for both estimators
        cell.run_cell(cfg_other)
        assert len(calls) == 2 and calls[1] != calls[0]  # another seed: other keys, run again
        cell._ADAPTIVE_RUNS.clear()
        fresh = cell.run_cell(cfg_mle)
        assert len(calls) == 3
        # the design registered again (another spec, as register_design(..., replace=True) makes): run afresh
        monkeypatch.setitem(cell.DESIGNS, "adpo_adaptive", dataclasses.replace(cell.DESIGNS["adpo_adaptive"]))
        again = cell.run_cell(cfg_mle)
        assert len(calls) == 4
        cell.run_cell(cfg_mle)
        assert len(calls) == 4
    for k in rec_mle:
        assert np.array_equal(rec_mle[k], fresh[k]), k
        assert np.array_equal(rec_mle[k], again[k]), k
    assert not np.array_equal(rec_map["gap"], rec_mle["gap"])  # another estimator on the same labels


def test_adaptive_tables_standard_error_holds_the_designs_own_randomness():
    """experiments.adaptive_table labels each replicate of a design with a random allocation (here
    two-stage's pilot) on its own draw by default, so its standard error is the plain one over
    independent replicates (recomputed here from the cell's own gaps); with one draw for all,
    the table marks the error as given that draw (it was reported unmarked, and the README's
    z-test between two-stage and the sequential plug-in used it)."""
    from hydra import compose, initialize_config_module

    from experiments import adaptive_table
    from experiments.cell import run_cell

    res = adaptive_table.measure(["two_stage"], [60], 3, world="conf")[("two_stage", 60)]
    assert res["draws"] == 3 and not res["given_one_draw"]
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=["design=two_stage", "budget=60", "num_replicates=3", "estimator=map", "seed=0",
                                                      "allocation_draws=3", *adaptive_table.WORLD_OVERRIDES["conf"]])
    rec = run_cell(cfg)
    g = 1000 * np.asarray(rec["gap"])[np.asarray(rec["valid"])]
    assert g.size == 3 and np.unique(rec["allocation"]).size == 3
    assert res["gap"] == pytest.approx(g.mean(), rel=1e-12) and res["se"] == pytest.approx(g.std(ddof=1) / np.sqrt(3), rel=1e-12)
    one = adaptive_table.measure(["two_stage"], [60], 3, world="conf", allocation_draws=1)
    assert one[("two_stage", 60)]["given_one_draw"] and one[("two_stage", 60)]["draws"] == 1
    table = adaptive_table.markdown(one, ["two_stage"], [60], 3, "map", "conf")
    assert ")*" in table and "the design's own randomness is not in it" in table


def test_adpo_greedy_without_replacement_labels_each_edge_once_pilot_included():
    """at='pilot', with_replacement=False, no cap (the shipped config): the greedy part took pilot edges
    again (3 edges with 2 labels at seed 1); now every edge has at most one label, and the budget is spent."""
    from synthetic import tabular_world

    prob = design_problem(tabular_world(jax.random.key(0), num_completions=8))
    for seed in range(3):
        out = run_design("adpo_greedy", jax.random.key(seed), prob, 20, at="pilot", with_replacement=False)
        c, pc = out.dense_counts(prob.num_edges), np.asarray(out.pilot[0])
        assert pc.sum() == 4 and c.sum() == 20 and c.max() == 1 and np.all(c >= pc)


def test_lock_step_replicates_equal_single_runs_when_their_counts_straddle_the_samplers_switch():
    """One round of 6,400 uniform candidates on 80 comparisons: some replicates put more than
    INVERSE_CDF_MAX_COUNT = 100 labels on a comparison, some do not. The annotator's sampler was
    chosen for the whole chunk, so a replicate under 100 got BTRS's wins in lock-step and
    inversion's alone (2,731 against 2,753 wins): its numbers depended on its chunk's company."""
    from synthetic import contextual_world
    from synthetic.labels import INVERSE_CDF_MAX_COUNT

    prob = design_problem(contextual_world(jax.random.PRNGKey(7), num_train_prompts=8, num_eval_prompts=20, num_completions=5))
    keys = jax.random.split(jax.random.PRNGKey(5), 6)
    kw = dict(round_size=6400, first_round=1, over_generate_factor=1, candidates="uniform")
    outs = A.run_adaptive("uncertainty_adaptive", keys, prob, 6401, **kw)
    tops = [int(o.pilot[0].max()) for o in outs]
    assert min(tops) <= INVERSE_CDF_MAX_COUNT < max(tops), tops
    for i, out in enumerate(outs):
        one = run_design("uncertainty_adaptive", keys[i], prob, 6401, **kw)
        np.testing.assert_array_equal(out.pilot[0], one.pilot[0])
        np.testing.assert_array_equal(out.pilot[1], one.pilot[1])
