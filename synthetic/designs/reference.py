"""Reference-based designs: they read the reference model's log-probabilities
(``reference_weighted``, ``reference_filter``) or filter already labelled pairs by them
(``reference_filter_labelled``)."""

from __future__ import annotations

import math

import jax
import numpy as np

from synthetic.baselines import reference_weights, uniform_weights
from synthetic.designs.checks import _check_choice, _check_fraction, choice_check, interval_check
from synthetic.designs.outputs import selection_output, weighted_output
from synthetic.designs.problem import DesignOutput
from synthetic.designs.registry import register_design
from synthetic.labels import allocation_from_counts
from synthetic.rounding import check_max_labels_per_edge

__all__ = ["reference_weighted", "reference_filter", "reference_filter_labelled"]


@register_design(
    "reference_weighted",
    summary="Edge weight proportional to pi0(y|x) pi0(y'|x): pairs the reference model is likely to sample.",
    source="on-policy sampling heuristic; Which Pairs to Compare finds it poor and high-variance",
)
def reference_weighted(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, reference_weights(problem.edges, problem.pool.log_ref), rounding, max_labels_per_edge=max_labels_per_edge)


def _filter_support(params, problem):
    f = params.get("fraction")
    return max(1, int(np.ceil(f * problem.num_edges))) if isinstance(f, (int, float)) and 0 < f <= 1 else None


@register_design(
    "reference_filter",
    support=_filter_support,
    summary="Keep the fraction of pairs with the largest |log pi0(y|x) - log pi0(y'|x)|, uniform over them.",
    source="our reading of Clear Preferences Leave Traces (2025, seed 004); its exact rule is not in the abstract",
)
def reference_filter(key, problem, budget, fraction=0.4, rounding="auto", max_labels_per_edge=None):
    _check_fraction("fraction", fraction, hi_open=False)
    lr = np.asarray(problem.pool.log_ref, dtype=np.float64)
    e = problem.edges
    gap = np.abs(lr[e.prompt, e.first] - lr[e.prompt, e.second])
    keep = max(1, int(np.ceil(fraction * e.num_edges)))
    tie = np.asarray(jax.random.uniform(key, (e.num_edges,)))
    order = np.lexsort((tie, -gap))
    return selection_output(jax.random.fold_in(key, 1), problem, budget, order[:keep], rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "reference_filter_labelled",
    needs_truth=True,
    summary="Seed 004's protocol: label ceil(budget / fraction) uniformly drawn comparisons, train on the budget labels the reference agrees with most (signed) or separates most (absolute).",
    source="Clear Preferences Leave Traces (2025, seed 004): filter an already labelled set by the reference model's log-probabilities, train on 30-50% of it",
    checks={"reading": choice_check("signed", "absolute"), "fraction": interval_check(0.0, 1.0, hi_open=False)},
)
def reference_filter_labelled(key, problem, budget, fraction=0.4, reading="signed", max_labels_per_edge=None):
    """``budget`` is the labels *used* (the training set); ``ceil(budget / fraction)``
    labels are *spent* (``info["labels_spent"]``). Each spent label is a (chosen,
    rejected) pair; its reading is ``log pi0(chosen) - log pi0(rejected)`` (signed: the
    reference agrees with the label) or its absolute value; the ``budget`` labels of
    largest reading are kept (ties at random). The kept labels are returned as observed
    (pilot) labels, so the evaluation trains on exactly them."""
    _check_fraction("fraction", fraction, hi_open=False)
    _check_choice("reading", reading, ("signed", "absolute"))
    spent = int(math.ceil(budget / fraction))
    k_alloc, k_lab, k_tie = jax.random.split(key, 3)
    cap = check_max_labels_per_edge(max_labels_per_edge)
    if cap is not None and spent > cap * problem.num_edges:
        raise ValueError(f"budget / fraction = {spent} labels to spend exceed max_labels_per_edge = {cap} times the "
                         f"{problem.num_edges} candidate edges; allowed: budget <= {int(fraction * cap * problem.num_edges)}")
    bought = weighted_output(k_alloc, problem, spent, uniform_weights(problem.edges), max_labels_per_edge=cap)
    counts = bought.dense_counts(problem.num_edges)
    wins = problem.label(k_lab, counts)
    e = problem.edges
    lr = np.asarray(problem.pool.log_ref, dtype=np.float64)
    delta = lr[e.prompt, e.first] - lr[e.prompt, e.second]  # reference's margin for the first completion
    # one entry per spent label: edge, whether the first completion won, its reading
    edge = np.repeat(np.arange(e.num_edges), counts)
    first_won = np.concatenate([np.arange(c) < w for c, w in zip(counts, wins)]) if counts.sum() else np.zeros(0, bool)
    signed = np.where(first_won, delta[edge], -delta[edge])
    score = signed if reading == "signed" else np.abs(signed)
    tie = np.asarray(jax.random.uniform(k_tie, (edge.size,)))
    keep = np.lexsort((tie, -score))[:budget]
    kept_counts = np.bincount(edge[keep], minlength=e.num_edges)
    kept_wins = np.bincount(edge[keep], weights=first_won[keep], minlength=e.num_edges).astype(np.int64)
    info = {"labels_spent": spent, "labels_used": int(budget), "reading": reading, "spent": (counts, wins)}
    return DesignOutput(allocation_from_counts(kept_counts), None, (kept_counts, kept_wins), info)


