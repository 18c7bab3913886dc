"""Greedy designs: ADPO+'s offline greedy D-optimal picks (``adpo_greedy``) and APO's
rounds (``apo_greedy``, ``apo_sequential``)."""

from __future__ import annotations

from typing import NamedTuple

import functools

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.designs.checks import integer_check
from synthetic.designs.outputs import _rest_caps
from synthetic.designs.pilot import PILOT, PilotConfig, _at_truth_or_pilot, _theta_at
from synthetic.designs.problem import DesignOutput
from synthetic.designs.registry import register_design
from synthetic.labels import allocation_from_counts
from theory.checked import check_argument

__all__ = ["adpo_greedy", "apo_greedy", "apo_sequential"]


def _each_edge_once_budget(name, problem, budget, params):
    """``with_replacement=False`` labels each edge at most once: ``budget <= E``."""
    if params.get("with_replacement") is False and budget > problem.num_edges:
        raise ValueError(
            f"budget = {budget} is larger than the {problem.num_edges} candidate edges of this world, and design {name!r} "
            "with design.params.with_replacement = false labels each edge at most once; allowed: budget <= number of "
            "edges, or design.params.with_replacement = true"
        )


class GreedyState(NamedTuple):
    """Loop state of a greedy D-optimal selection (Sherman-Morrison updates of ``H^-1``)."""

    hinv: jax.Array  # [d, d] H^-1
    scores: jax.Array  # [E] v_e^T H^-1 v_e
    taken: jax.Array  # [E] picks so far
    order: jax.Array  # [budget] the edge picked at each step (unused by batched rounds: size 0)


@functools.partial(jax.jit, static_argnames=("budget",))
def _greedy_order(vecs, gamma, budget, caps):
    e, d = vecs.shape
    hinv0 = jnp.eye(d, dtype=vecs.dtype) / gamma
    scores0 = jnp.sum(vecs * vecs, axis=1) / gamma

    def body(t, carry: GreedyState) -> GreedyState:
        hinv, scores, taken, order = carry
        j = jnp.argmax(jnp.where(taken >= caps, -jnp.inf, scores))
        u = hinv @ vecs[j]
        denom = 1.0 + vecs[j] @ u
        proj = vecs @ u
        # Sherman-Morrison: v^T (H + u u^T)^-1 v = v^T H^-1 v - (v^T H^-1 u)^2 / (1 + u^T H^-1 u).
        scores = scores - proj**2 / denom
        hinv = hinv - jnp.outer(u, u) / denom
        taken = taken.at[j].add(1)
        return GreedyState(hinv, scores, taken, order.at[t].set(j.astype(order.dtype)))

    init = GreedyState(hinv0, scores0, jnp.zeros(e, jnp.int32), jnp.zeros(budget, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init).order


def _greedy(vecs, budget, gamma, with_replacement, max_labels_per_edge=None, pilot=None):
    """Repeatedly take the edge maximising ``v^T H^-1 v``; ``H = gamma Id + sum v v^T``.

    With ``with_replacement=False`` every edge gets at most one label, the pilot's included
    (the greedy part skips an edge the pilot labelled), and with ``max_labels_per_edge`` no
    edge more than that, the pilot's included.
    """
    e = vecs.shape[0]
    if not with_replacement and budget > e:
        raise ValueError(
            f"budget {budget} is larger than the {e} candidate edges, and this greedy design labels each "
            "edge at most once (pass with_replacement=True to allow repeats)"
        )
    caps = np.full(e, budget if with_replacement else 1, dtype=np.int64)  # labels the greedy part may add
    if not with_replacement and pilot is not None:
        caps = caps - np.asarray(pilot[0], np.int64)  # each edge once in all: a pilot edge is taken
    left = _rest_caps(max_labels_per_edge, pilot)  # what the cap leaves after the pilot
    if left is not None:
        caps = np.minimum(caps, left)
    if budget > np.maximum(caps, 0).sum():
        raise ValueError(
            f"budget {budget} exceeds the {int(np.maximum(caps, 0).sum())} labels this greedy design may still put on the "
            f"{e} candidate edges (with_replacement={with_replacement}, max_labels_per_edge={max_labels_per_edge})"
        )
    order = _greedy_order(vecs, jnp.asarray(gamma, vecs.dtype), int(budget), jnp.asarray(caps, jnp.int32))
    return np.bincount(np.asarray(order), minlength=e)


def _check_positive(name, value):
    check_argument(name, value, "number > 0")


@register_design(
    "adpo_greedy",
    check_budget=_each_edge_once_budget,
    needs_truth=_at_truth_or_pilot,
    summary="Greedy offline D-optimal: take the edge maximising v^T H^-1 v, v = beta sqrt(mu(1-mu)) z; each once.",
    source="Kveton et al. (2025), Active Learning for DPO (ADPO+)",
)
def adpo_greedy(key, problem, budget, gamma=1.0, at="reference", with_replacement=False, pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    theta, pilot = _theta_at(at, key, problem, budget, PilotConfig(pilot_fraction, pilot_ridge))
    z = problem.edges.diffs
    mu = jax.nn.sigmoid(problem.beta * (z @ theta))
    vecs = problem.beta * jnp.sqrt(mu * (1 - mu))[:, None] * z
    n = budget - (0 if pilot is None else int(pilot[0].sum()))
    counts = _greedy(vecs, n, float(gamma), bool(with_replacement), max_labels_per_edge, pilot)
    if pilot is not None:
        counts = counts + pilot[0]
    return DesignOutput(allocation_from_counts(counts), None, pilot, {"theta": np.asarray(theta)})


def _batch_greedy(vecs, budget, gamma, batch_size, with_replacement, max_labels_per_edge=None, rounds=None):
    """APO's rounds: take the ``batch_size`` edges of largest ``z^T V^-1 z`` with ``V``
    frozen, then add them all to ``V = gamma Id + sum z z^T``; repeat until ``budget``.

    Within a round the edges are distinct; with ``with_replacement`` a later round may
    take an edge again. The scores are recomputed from a Cholesky factor of ``V`` each
    round (``O(E d^2)`` a round: sweep-sized pools, not HH scale).
    Edges at their cap (1 without replacement, ``max_labels_per_edge``) are skipped; a
    round takes fewer edges when fewer are left. ``rounds``: a list that receives each
    round's edge ids (for tests).
    """
    z = np.asarray(vecs, dtype=np.float64)
    e, d = z.shape
    caps = np.full(e, budget if with_replacement else 1, dtype=np.int64)
    if max_labels_per_edge is not None:
        caps = np.minimum(caps, int(max_labels_per_edge))
    if budget > caps.sum():
        raise ValueError(f"budget {budget} exceeds the {int(caps.sum())} labels this design may put on the {e} candidate edges "
                         f"(with_replacement={with_replacement}, max_labels_per_edge={max_labels_per_edge})")
    v = gamma * np.eye(d)
    counts = np.zeros(e, dtype=np.int64)
    left = budget
    while left > 0:
        # Scores from a Cholesky factor of V each round: a rank-k Woodbury update of V^-1
        # loses the small scores of later rounds to cancellation (V starts at 1e-5 Id).
        w = np.linalg.solve(np.linalg.cholesky(v), z.T)
        scores = np.einsum("de,de->e", w, w)
        free = np.flatnonzero(counts < caps)
        k = min(batch_size, left, free.size)
        cand = np.where(counts < caps, scores, -np.inf)
        # the k largest scores (ties broken by the lower edge id, as a stable argsort would)
        pick = np.lexsort((np.arange(e), -cand))[:k]
        counts[pick] += 1
        left -= k
        if rounds is not None:
            rounds.append(pick)
        v = v + z[pick].T @ z[pick]
    return counts


@register_design(
    "apo_greedy",
    check_budget=_each_edge_once_budget,
    summary="APO as its code runs it: rounds of batch_size edges of largest ||z||_{V^-1} (V frozen in a round), V = gamma Id + sum z z^T, repeats allowed.",
    source="Das et al. (2024), Active Preference Optimization; nirjhar-das/active-preference-optimization, scripts/reward_learning.py (V = 1e-5 Id, top-K a round)",
    checks={"batch_size": integer_check(1)},
    keyless=True,
)
def apo_greedy(key, problem, budget, gamma=1e-5, batch_size=20, with_replacement=True, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    counts = _batch_greedy(problem.edges.diffs, int(budget), float(gamma), int(batch_size), bool(with_replacement), max_labels_per_edge)
    return DesignOutput(allocation_from_counts(counts), None, None, {})


@register_design(
    "apo_sequential",
    check_budget=_each_edge_once_budget,
    summary="Sequential variant of APO: one edge at a time, largest ||z||_{H^-1}, each edge at most once.",
    source="Das et al. (2024), APO's selection rule with batch size 1 and no repeats (this project's earlier apo_greedy)",
    keyless=True,
)
def apo_sequential(key, problem, budget, gamma=1.0, with_replacement=False, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    counts = _greedy(problem.edges.diffs, budget, float(gamma), bool(with_replacement), max_labels_per_edge)
    return DesignOutput(allocation_from_counts(counts), None, None, {})


