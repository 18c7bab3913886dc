r"""Adaptive designs: buy labels in rounds, refit DPO, select the next round.

A loop (:func:`adaptive_loop`) buys ``first_round`` labels (default
``min(round_size, budget)``) on uniformly chosen edges
from the annotator (:meth:`~synthetic.designs.DesignProblem.label`), then, until the
budget is spent, refits DPO on every label it holds and lets a *rule* choose the next
round of ``round_size`` labels (the last round takes what is left). Every label bought
is returned as ``DesignOutput.pilot = (counts, wins)`` and the allocation is exactly
those counts, so the evaluation trains on all of them and on nothing else.

Refit (``refit``): ``"map"`` is the finite-budget estimator, the posterior mode under
``N(0, prior_precision^-1 Id)`` (:func:`synthetic.estimators.fit_map`, ridge
``prior_precision / n`` per label); ``"ridge"`` is the two-stage design's pilot fit,
:func:`~synthetic.estimators.fit_newton` with the fixed per-label ridge
``pilot_ridge``. Both are compiled once per shape ``[R, E]`` (every round and every
replicate reuses them: the arrays are dense over the ``E`` candidate edges, zeros where
no label is held).

Rules (registered as designs flagged ``adaptive``):

* ``adpo_adaptive`` -- ADPO+ (Kveton et al. 2025, Active Learning for DPO): greedy
  D-optimal selection with the logistic information weights at the current estimate:
  ``v_e = beta sqrt(mu_e (1 - mu_e)) z_e``, ``mu_e = sigmoid(beta theta_hat . z_e)``,
  ``H = gamma Id + sum_{held labels} v v^T``; each label of the round takes the edge
  maximising ``v^T H^-1 v`` and adds it to ``H`` (Sherman-Morrison). An edge may be
  labelled again (``with_replacement=True``, default: a comparison can be asked of the
  annotator again); ``False`` is the paper's offline subset selection, each logged
  comparison at most once, which at ``n`` near ``E`` leaves the rule little to choose
  (on the design table's world at n = 1,000 it gives adpo_greedy's Phi, 14.53).
* ``uncertainty_adaptive`` / ``most_certain_adaptive`` -- Muldrew et al. (2024),
  willmuldrew/active-preference-learning, ``direct/experiments/experiment5.py``: each
  round draws ``over_generate_factor x round`` fresh candidate pairs (a uniformly
  chosen prompt, two completions from the current policy, ``candidates="policy"``, or
  uniformly, ``"uniform"``), scores them ``1 - 2 |sigmoid(r_a - r_b) - 1/2|`` with the
  implicit reward ``r = beta log(pi_theta / pi0)`` of the current fit (``r_a - r_b =
  beta theta_hat . z``), and keeps the round's most (UNCERTAINTY) or least
  (CERTAINTY) uncertain ones; the model is retrained from the reference on all labels
  between rounds (the authors' ``m_schedule`` with ``reset_model``). Authors'
  settings: 64 pairs a round, ``over_generate_factor = 16``.
* ``sequential_plug_in`` -- the paper's L-optimal design ``D*(theta_hat)`` re-solved
  at the current estimate each round (the limit of two-stage; no source has it). The
  round's ``B`` labels go to the *deficit* ``max((n_held + B) w - held, 0)`` between
  the design and the labels held (``allocation="deficit"``, default: the cumulative
  allocation tracks the latest design), or are the design itself rounded to ``B``
  labels (``allocation="design"``: with one pilot round and one designed round this
  is exactly :func:`synthetic.designs.two_stage`).

Keys. A replicate's key ``k`` splits into ``(k_first, s_1)``; the first round rounds
with ``split(k_first)[0]`` and labels with ``split(k_first)[1]`` (as the two-stage
pilot does); round ``t >= 1`` selects with ``s_t``, labels with ``fold_in(s_t, 1)`` and
hands ``s_{t+1} = fold_in(s_t, 2)`` on.

Cost. The loop runs all replicates of a cell in lock-step (:func:`run_adaptive`):
each round is one compiled, ``vmap``-ed fit and, for ADPO+ and uncertainty, one
compiled, ``vmap``-ed selection over ``[R, E]``; the sequential plug-in solves its
design on the host for each replicate (warm-started from the previous round's
design).

Judge them by their Monte-Carlo gap, not by the criterion ``Phi`` of the allocation
they end with: their selections depend on the labels' noise, and on the design
table's contextual world the same allocations labelled afresh gave ADPO+ gaps near
``(beta / 2n) Phi``, while its own labels gave gaps about three times larger (an
estimate that is wrong early steers the rounds away from the edges that would correct
it). ``python -m experiments.adaptive_table`` measures the gap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.baselines import uniform_weights
from synthetic.designs.checks import _bool_check, choice_check, integer_check, interval_check
from synthetic.designs.greedy import GreedyState
from synthetic.designs.optimal import _solve
from synthetic.designs.outputs import weighted_output
from synthetic.designs.pilot import PILOT
from synthetic.designs.problem import DesignOutput
from synthetic.designs.registry import get_design, preflight, register_design
from synthetic.estimators import fit_map, fit_newton
from synthetic.labels import INVERSE_CDF_MAX_COUNT, allocation_from_counts, simulate_wins
from synthetic.rounding import ROUNDINGS, check_max_labels_per_edge, round_design
from theory.design import optimal_design

__all__ = ["REFITS", "RULES", "adaptive_loop", "run_adaptive", "refit_thetas", "adpo_round", "uncertainty_scores",
           "uncertainty_pick", "candidate_log_weights"]

REFITS = ("map", "ridge")
RULES = ("adpo", "uncertainty", "most_certain", "plug_in")
ALLOCATIONS = ("deficit", "design")
CANDIDATES = ("policy", "uniform")


# ----------------------------------------------------------------------- refits


@functools.lru_cache(maxsize=None)
def _batched_fit(refit: str):
    if refit == "map":
        one = lambda z, c, w, beta, s: fit_map(z, c, w, beta, prior_precision=s).theta  # noqa: E731
    else:
        one = lambda z, c, w, beta, s: fit_newton(z, c, w, beta, ridge=s).theta  # noqa: E731
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None, None)))


def refit_thetas(problem, counts, wins, refit="map", prior_precision=1.0, pilot_ridge=PILOT.ridge) -> jax.Array:
    """``[R, d]`` DPO fits on ``[R, E]`` held labels (one compiled call for all replicates)."""
    z = problem.edges.diffs
    strength = prior_precision if refit == "map" else pilot_ridge
    return _batched_fit(refit)(z, jnp.asarray(counts, z.dtype), jnp.asarray(wins, z.dtype), float(problem.beta),
                               jnp.asarray(strength, z.dtype))


@functools.lru_cache(maxsize=None)
def _batched_label(method: str):
    def one(key, theta_star, z, c, beta):
        return simulate_wins(key, theta_star, z, c, beta, method=method)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, 0, None)))


def _label(problem, keys, counts):
    """The annotator (:meth:`DesignProblem.label`) for ``[R]`` keys and ``[R, E]`` counts, in one call.

    The sampler is each replicate's own (inversion up to ``INVERSE_CDF_MAX_COUNT`` labels an edge,
    as :func:`synthetic.labels.simulate_wins` chooses for it alone): chosen for the batch, a
    replicate's wins changed with the other replicates of its chunk. Both run where the rows differ."""
    z = problem.edges.diffs
    small = np.max(np.asarray(counts), axis=1) <= INVERSE_CDF_MAX_COUNT
    c = jnp.asarray(counts, z.dtype)
    args = (keys, problem.theta_star, z, c, float(problem.beta))
    if small.all() or not small.any():
        w = np.asarray(_batched_label("inverse" if small.all() else "btrs")(*args))
    else:
        w = np.where(small[:, None], np.asarray(_batched_label("inverse")(*args)), np.asarray(_batched_label("btrs")(*args)))
    return np.rint(w).astype(np.int64)


# ------------------------------------------------------------------------ rules


def _adpo_round_one(theta, held, b, z, beta, gamma, caps):
    mu = jax.nn.sigmoid(beta * (z @ theta))
    v = beta * jnp.sqrt(mu * (1.0 - mu))[:, None] * z
    d = z.shape[1]
    h = gamma * jnp.eye(d, dtype=z.dtype) + (v.T * held) @ v
    hinv = jnp.linalg.inv(h)
    hinv = 0.5 * (hinv + hinv.T)
    scores = jnp.sum((v @ hinv) * v, axis=1)

    def body(_, carry: GreedyState) -> GreedyState:
        hinv, scores, taken, order = carry
        j = jnp.argmax(jnp.where(held + taken >= caps, -jnp.inf, scores))
        u = hinv @ v[j]
        denom = 1.0 + v[j] @ u
        # Sherman-Morrison: v^T (H + u u^T)^-1 v = v^T H^-1 v - (v^T H^-1 v_j)^2 / (1 + v_j^T H^-1 v_j).
        scores = scores - (v @ u) ** 2 / denom
        hinv = hinv - jnp.outer(u, u) / denom
        return GreedyState(hinv, scores, taken.at[j].add(1.0), order)

    init = GreedyState(hinv, scores, jnp.zeros_like(held), jnp.zeros((0,), jnp.int32))
    return jax.lax.fori_loop(0, b, body, init).taken


_adpo_batched = jax.jit(jax.vmap(_adpo_round_one, in_axes=(0, 0, None, None, None, None, None)))


def adpo_round(problem, thetas, held, b, gamma, caps) -> np.ndarray:
    """ADPO+'s round: ``[R, E]`` counts of ``b`` greedy D-optimal picks at each ``thetas[r]``.

    ``held`` ``[R, E]`` labels already bought (they enter ``H`` with the weights at the
    current estimate); ``caps`` ``[E]`` the most labels an edge may hold in all.
    """
    z = problem.edges.diffs
    out = _adpo_batched(jnp.asarray(thetas, z.dtype), jnp.asarray(held, z.dtype), int(b), z, float(problem.beta),
                        jnp.asarray(gamma, z.dtype), jnp.asarray(caps, z.dtype))
    return np.rint(np.asarray(out)).astype(np.int64)


def candidate_log_weights(theta, z_prompt, z_first, z_second, features, log_ref, num_prompts, policy):
    """``[E]`` log-probability that one fresh candidate pair is edge ``e``.

    A prompt uniformly among those with an edge, then two distinct completions: from
    the policy ``pi_theta`` restricted to the pool (``policy=True``; the pair ``{a, b}``
    with probability proportional to ``pi(a) pi(b)``), or uniformly (``policy=False``).
    """
    present = jnp.isfinite(log_ref)
    logits = jnp.where(present, jnp.where(present, log_ref, 0.0) + features @ theta, -jnp.inf) if policy else jnp.where(present, 0.0, -jnp.inf)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    lw = logp[z_prompt, z_first] + logp[z_prompt, z_second]
    m = log_ref.shape[0]
    top = jax.ops.segment_max(lw, z_prompt, num_segments=m)
    tot = jax.ops.segment_sum(jnp.exp(lw - top[z_prompt]), z_prompt, num_segments=m)
    return lw - top[z_prompt] - jnp.log(tot[z_prompt]) - jnp.log(num_prompts)


def uncertainty_scores(theta, z, beta):
    """Muldrew et al.'s certainty score ``1 - 2 |sigmoid(r_a - r_b) - 1/2|``, ``r_a - r_b = beta theta . z``."""
    return 1.0 - 2.0 * jnp.abs(jax.nn.sigmoid(beta * (z @ theta)) - 0.5)


def uncertainty_pick(theta, held, b, cand, z, beta, caps, most_certain, capped=True):
    """``[E]`` counts of the round: the ``b`` best-ranked candidates (edge ids ``cand``).

    Candidates are ranked by score, most uncertain first (``most_certain``: least
    uncertain first), ties in draw order; one is kept while its edge has room under
    ``caps`` (held labels and this round's counted). If fewer than ``b`` candidates
    fit, the rest come from all edges in the same ranking (a fallback that the
    authors' unbounded generator never needs). ``capped=False`` promises that no cap
    binds (all ``inf``; at least ``b`` candidates): the first ``b`` are kept without the
    sequential scan.
    """
    s = uncertainty_scores(theta, z, beta)
    key = s if most_certain else -s
    order_c = cand[jnp.argsort(key[cand], stable=True)]
    if not capped:
        keep = (jnp.arange(order_c.shape[0]) < b).astype(held.dtype)
        return jnp.zeros_like(held).at[order_c].add(keep)
    order_all = jnp.argsort(key, stable=True)
    seq = jnp.concatenate([order_c, order_all])

    def body(i, carry):
        taken, n = carry
        e = seq[i]
        ok = (n < b) & (held[e] + taken[e] < caps[e])
        return taken.at[e].add(jnp.where(ok, 1.0, 0.0)), n + ok.astype(n.dtype)

    return jax.lax.fori_loop(0, seq.shape[0], body, (jnp.zeros_like(held), jnp.asarray(0, jnp.int32)))[0]


def _uncertainty_round_one(theta, held, b, key, z, beta, caps, prompt, first, second, features, log_ref, num_prompts,
                           num_candidates, most_certain, policy, capped):
    lw = candidate_log_weights(theta, prompt, first, second, features, log_ref, num_prompts, policy)
    lw = jnp.where(held < caps, lw, -jnp.inf)  # fresh pairs are drawn among edges that may still be labelled
    # inverse-CDF draws (num_candidates uniforms; categorical's Gumbel trick would draw num_candidates x E)
    cand = jax.random.choice(key, lw.shape[0], shape=(num_candidates,), replace=True, p=jnp.exp(lw))
    return uncertainty_pick(theta, held, b, cand, z, beta, caps, most_certain, capped)


@functools.partial(jax.jit, static_argnames=("num_candidates", "most_certain", "policy", "capped"))
def _uncertainty_batched(thetas, held, b, keys, z, beta, caps, prompt, first, second, features, log_ref, num_prompts, *,
                         num_candidates, most_certain, policy, capped):
    def one(theta, h, key):
        return _uncertainty_round_one(theta, h, b, key, z, beta, caps, prompt, first, second, features, log_ref, num_prompts,
                                      num_candidates, most_certain, policy, capped)

    return jax.vmap(one)(thetas, held, keys)


def _num_prompts(problem):
    return int(np.unique(np.asarray(problem.edges.prompt)).size)


def uncertainty_round(problem, thetas, held, b, keys, caps, num_candidates, most_certain, policy) -> np.ndarray:
    """Muldrew et al.'s round for ``[R]`` replicates: ``[R, E]`` counts."""
    z = problem.edges.diffs
    e = problem.edges
    out = _uncertainty_batched(
        jnp.asarray(thetas, z.dtype), jnp.asarray(held, z.dtype), int(b), keys, z, float(problem.beta), jnp.asarray(caps, z.dtype),
        jnp.asarray(e.prompt), jnp.asarray(e.first), jnp.asarray(e.second), problem.pool.features, problem.pool.log_ref,
        float(_num_prompts(problem)), num_candidates=int(num_candidates), most_certain=bool(most_certain), policy=bool(policy),
        capped=bool(np.isfinite(caps).any()),
    )
    return np.rint(np.asarray(out)).astype(np.int64)


def _plug_in_round(key, problem, theta, held, held_wins, b, cap, allocation, rounding, ridge, tol, init):
    """Sequential plug-in's round for one replicate: ``([E] counts, design)``."""
    n_after = int(held.sum()) + b
    left = None if cap is None else cap - held
    if allocation == "design":
        # the two-stage rule with the held labels as its pilot: the L-optimal design of the
        # round's b labels (caps (cap - held) / b), rounded with the held edges covered
        caps = None if left is None else left / float(b)
        if init is None:
            sol = _solve(problem, jnp.asarray(theta), "L", ridge, tol, caps=caps)
        else:
            sol = _solve_warm(problem, theta, ridge, tol, caps, init)
        w = np.asarray(sol.weights, np.float64)
        out = weighted_output(key, problem, n_after, w, rounding, (held, held_wins), max_labels_per_edge=cap)
        return out.dense_counts(problem.num_edges) - held, w
    caps = None if cap is None else cap / float(n_after)
    sol = _solve(problem, jnp.asarray(theta), "L", ridge, tol, caps=caps) if init is None else _solve_warm(problem, theta, ridge, tol, caps, init)
    w = np.asarray(sol.weights, np.float64)
    deficit = np.maximum(n_after * w - held, 0.0)  # sums to >= b > 0
    out = weighted_output(key, problem, n_after, deficit, rounding, (held, held_wins), max_labels_per_edge=cap)
    return out.dense_counts(problem.num_edges) - held, w


def _solve_warm(problem, theta, ridge, tol, caps, init):
    th = jnp.asarray(theta)
    try:
        return optimal_design(problem.edges.diffs, th, problem.curvature(th), problem.beta, criterion="L", ridge=ridge, tol=tol,
                              init=jnp.asarray(init), **({} if caps is None else {"caps": caps}))
    except (ValueError, np.linalg.LinAlgError):  # a start the solver refuses (e.g. singular on the span): cold start
        return _solve(problem, th, "L", ridge, tol, caps=caps)


# ------------------------------------------------------------------------- loop


def _edge_caps(problem, cap, with_replacement):
    e = problem.num_edges
    caps = np.full(e, np.inf)
    if not with_replacement:
        caps[:] = 1.0
    if cap is not None:
        caps = np.minimum(caps, float(cap))
    return caps


def _check_room(problem, budget, cap, with_replacement, max_labels_per_edge):
    """Each edge's cap on labels; ``budget`` must fit under their sum."""
    caps = _edge_caps(problem, cap, with_replacement)
    if budget > caps.sum():
        raise ValueError(
            f"budget {budget} exceeds the {int(caps.sum())} labels this design may put on the {problem.num_edges} candidate edges "
            f"(with_replacement={with_replacement}, max_labels_per_edge={max_labels_per_edge}); allowed: budget <= {int(caps.sum())}"
        )
    return caps


def _adpo_budget(name, problem, budget, params):
    """ADPO's own budget check (``with_replacement=False`` labels each edge at most once), before any label."""
    cap = check_max_labels_per_edge(params.get("max_labels_per_edge"))
    _check_room(problem, budget, cap, params.get("with_replacement", True), params.get("max_labels_per_edge"))


def adaptive_loop(keys, problem, budget, rule, *, round_size=20, first_round=None, refit="map", prior_precision=1.0,
                  pilot_ridge=PILOT.ridge, max_labels_per_edge=None, gamma=1.0, with_replacement=True, over_generate_factor=16,
                  candidates="policy", allocation="deficit", rounding="auto", ridge=0.0, tol=1e-4):
    """Run one adaptive design for each of ``[R]`` keys in lock-step.

    Returns ``(counts [R, E], wins [R, E], info)``: every label bought (``counts`` sum to
    ``budget`` in each row) and the annotator's wins of the first completion. Arguments
    as the registered designs (checked there); ``rule`` one of :data:`RULES`.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    keys = jnp.asarray(keys)
    r, e = keys.shape[0], problem.num_edges
    cap = check_max_labels_per_edge(max_labels_per_edge)
    n0 = min(int(round_size), budget) if first_round is None else int(first_round)
    if not 1 <= n0 <= budget:
        raise ValueError(f"design.params.first_round must be in [1, budget = {budget}], got {first_round!r}")
    caps = _check_room(problem, budget, cap, with_replacement if rule == "adpo" else True, max_labels_per_edge)
    # first round: uniform over edges, rounded as the two-stage pilot is
    first, s = jax.vmap(lambda k: jax.random.split(k))(keys).swapaxes(0, 1)
    k_alloc, k_lab = jax.vmap(lambda k: jax.random.split(k))(first).swapaxes(0, 1)
    u = uniform_weights(problem.edges)
    counts = np.zeros((r, e), np.int64)
    for i in range(r):
        if cap is None or n0 <= e:
            counts[i] = round_design(k_alloc[i], u, n0, "efficient").dense_counts(e)
        else:
            counts[i] = round_design(k_alloc[i], u, n0, "pivotal", caps=cap).dense_counts(e)
    wins = _label(problem, k_lab, counts)
    designs = [None] * r
    rounds = [n0]
    thetas = None
    while int(counts[0].sum()) < budget:
        b = min(int(round_size), budget - int(counts[0].sum()))
        thetas = np.asarray(refit_thetas(problem, counts, wins, refit, prior_precision, pilot_ridge))
        if rule == "adpo":
            new = adpo_round(problem, thetas, counts, b, gamma, caps)
        elif rule in ("uncertainty", "most_certain"):
            m = int(over_generate_factor) * b
            new = uncertainty_round(problem, thetas, counts, b, s, caps, m, rule == "most_certain", candidates == "policy")
        else:
            new = np.zeros((r, e), np.int64)
            for i in range(r):
                new[i], designs[i] = _plug_in_round(s[i], problem, thetas[i], counts[i], wins[i], b, cap, allocation, rounding,
                                                    ridge, tol, designs[i])
        if np.any(new.sum(axis=1) != b) or np.any(new < 0):
            raise RuntimeError(f"adaptive rule {rule!r} returned a round of {new.sum(axis=1).tolist()} labels, expected {b}")
        lab_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(s)
        wins = wins + _label(problem, lab_keys, new)
        counts = counts + new
        s = jax.vmap(lambda k: jax.random.fold_in(k, 2))(s)
        rounds.append(b)
    info = {"rounds": rounds, "theta": thetas, "design": designs if rule == "plug_in" else None}
    return counts, wins, info


# --------------------------------------------------------------------- registry

#: name -> rule of each registered adaptive design (the batched entry :func:`run_adaptive` reads it).
ADAPTIVE_RULES: dict[str, str] = {}

_COMMON_CHECKS = {
    "round_size": integer_check(1),
    "first_round": integer_check(1, optional=True, null_means="round_size"),
    "refit": choice_check(*REFITS),
    "prior_precision": interval_check(0.0, np.inf),
    "pilot_ridge": interval_check(0.0, np.inf),  # > 0: a small pilot's unpenalised MLE often does not exist
}


def _output(counts, wins, info, i, budget):
    c, w = counts[i], wins[i]
    extra = {"rounds": info["rounds"], "theta": None if info["theta"] is None else info["theta"][i]}
    design = (info.get("design") or [None] * counts.shape[0])[i]
    return DesignOutput(allocation_from_counts(c), None if design is None else design, (c, w), extra)


def _register(name, rule, summary, source, checks, check_budget=None):
    def deco(fn):
        ADAPTIVE_RULES[name] = rule
        return register_design(name, summary=summary, source=source, checks={**_COMMON_CHECKS, **checks}, adaptive=True,
                               needs_truth=True, check_budget=check_budget)(fn)

    return deco


@_register(
    "adpo_adaptive", "adpo",
    summary="ADPO+ in rounds: greedy D-optimal picks (v = beta sqrt(mu(1-mu)) z, mu at the current DPO fit), refit after each round.",
    source="Kveton et al. (2025), Active Learning for DPO (ADPO+): D-optimal design on the logistic information at the current estimate",
    checks={"gamma": interval_check(0.0, np.inf), "with_replacement": _bool_check},
    check_budget=_adpo_budget,
)
def adpo_adaptive(key, problem, budget, round_size=20, first_round=None, refit="map", prior_precision=1.0, pilot_ridge=PILOT.ridge,
                  gamma=1.0, with_replacement=True, max_labels_per_edge=None):
    c, w, info = adaptive_loop(jnp.asarray(key)[None], problem, budget, "adpo", round_size=round_size, first_round=first_round,
                               refit=refit, prior_precision=prior_precision, pilot_ridge=pilot_ridge, gamma=gamma,
                               with_replacement=with_replacement, max_labels_per_edge=max_labels_per_edge)
    return _output(c, w, info, 0, budget)


def _one_run(key, problem, budget, rule, **params) -> DesignOutput:
    """One replicate's run of the loop with ``rule`` (the registry's single-key entry)."""
    c, w, info = adaptive_loop(jnp.asarray(key)[None], problem, budget, rule, **params)
    return _output(c, w, info, 0, budget)


_UNC_CHECKS = {"over_generate_factor": integer_check(1), "candidates": choice_check(*CANDIDATES)}


@_register(
    "uncertainty_adaptive", "uncertainty",
    summary="Muldrew et al.'s UNCERTAINTY: each round, over_generate_factor x round fresh candidate pairs, keep the most uncertain under the current DPO fit, retrain.",
    source="Muldrew et al. (2024), Active Preference Learning for LLMs; willmuldrew/active-preference-learning, direct/experiments/experiment5.py",
    checks=_UNC_CHECKS,
)
def uncertainty_adaptive(key, problem, budget, round_size=64, first_round=None, refit="map", prior_precision=1.0, pilot_ridge=PILOT.ridge,
                         over_generate_factor=16, candidates="policy", max_labels_per_edge=None):
    return _one_run(key, problem, budget, "uncertainty", round_size=round_size, first_round=first_round, refit=refit,
                    prior_precision=prior_precision, pilot_ridge=pilot_ridge, over_generate_factor=over_generate_factor,
                    candidates=candidates, max_labels_per_edge=max_labels_per_edge)


@_register(
    "most_certain_adaptive", "most_certain",
    summary="Muldrew et al.'s CERTAINTY: as uncertainty_adaptive, keeping the least uncertain candidates each round.",
    source="Muldrew et al. (2024); willmuldrew/active-preference-learning, direct/experiments/experiment5.py (CERTAINTY)",
    checks=_UNC_CHECKS,
)
def most_certain_adaptive(key, problem, budget, round_size=64, first_round=None, refit="map", prior_precision=1.0, pilot_ridge=PILOT.ridge,
                          over_generate_factor=16, candidates="policy", max_labels_per_edge=None):
    return _one_run(key, problem, budget, "most_certain", round_size=round_size, first_round=first_round, refit=refit,
                    prior_precision=prior_precision, pilot_ridge=pilot_ridge, over_generate_factor=over_generate_factor,
                    candidates=candidates, max_labels_per_edge=max_labels_per_edge)


@_register(
    "sequential_plug_in", "plug_in",
    summary="The L-optimal design re-solved at the current DPO fit each round; the round's labels fill the deficit n w - held (or the design itself).",
    source="this project: the sequential limit of Which Pairs to Compare's two-stage design (no source has it)",
    checks={"allocation": choice_check(*ALLOCATIONS), "rounding": choice_check(*ROUNDINGS),
            "ridge": interval_check(0.0, np.inf, lo_open=False), "tol": interval_check(0.0, np.inf)},
)
def sequential_plug_in(key, problem, budget, round_size=100, first_round=None, refit="map", prior_precision=1.0, pilot_ridge=PILOT.ridge,
                       allocation="deficit", rounding="auto", ridge=0.0, tol=1e-4, max_labels_per_edge=None):
    c, w, info = adaptive_loop(jnp.asarray(key)[None], problem, budget, "plug_in", round_size=round_size, first_round=first_round,
                               refit=refit, prior_precision=prior_precision, pilot_ridge=pilot_ridge, allocation=allocation,
                               rounding=rounding, ridge=ridge, tol=tol, max_labels_per_edge=max_labels_per_edge)
    return _output(c, w, info, 0, budget)


def run_adaptive(name, keys, problem, budget, **params) -> list[DesignOutput]:
    """Run the adaptive design ``name`` once per key ``[R]``, all replicates in lock-step.

    The same checks as :func:`synthetic.designs.run_design` before any label (parameters,
    budget, coverage warning) and after (each replicate's counts sum to ``budget``, at
    most ``max_labels_per_edge`` an edge). Replicate ``i`` equals
    ``run_design(name, keys[i], ...)`` up to the rounding of batched fits.
    """
    spec = get_design(name)
    if not spec.adaptive or name not in ADAPTIVE_RULES:
        raise ValueError(f"design {name!r} is not adaptive; adaptive designs: {sorted(ADAPTIVE_RULES)}")
    budget, params = preflight(name, problem, budget, params)
    full = {**spec.params, **params}
    rule = ADAPTIVE_RULES[name]
    c, w, info = adaptive_loop(keys, problem, budget, rule, **full)
    cap = full.get("max_labels_per_edge")
    if np.any(c.sum(axis=1) != budget) or (cap is not None and c.max() > cap):
        raise RuntimeError(f"adaptive design {name!r} broke its contract (labels {c.sum(axis=1).tolist()}, budget {budget})")
    return [_output(c, w, info, i, budget) for i in range(c.shape[0])]
