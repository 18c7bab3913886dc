"""Baselines a practitioner would use without a design: uniform over all candidate
comparisons, each prompt's first two completions, the first N comparisons."""

from __future__ import annotations

import numpy as np

from synthetic.baselines import first_two_weights, uniform_weights
from synthetic.designs.outputs import selection_output, weighted_output
from synthetic.designs.registry import register_design

__all__ = ["uniform", "first_two", "first_n"]


@register_design(
    "uniform",
    summary="Uniform over all candidate edges (random pairs).",
    source="common practice; the paper's baseline",
)
def uniform(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, uniform_weights(problem.edges), rounding, max_labels_per_edge=max_labels_per_edge)


def _first_two_support(params, problem):
    e = problem.edges
    return int(np.sum((np.asarray(e.first) == 0) & (np.asarray(e.second) == 1)))


def _first_n_support(params, problem):
    return params.get("num_pairs")


@register_design(
    "first_two",
    support=_first_two_support,
    summary="The first two completions of each prompt, one pair per prompt.",
    source="common practice (sample two completions, label them)",
)
def first_two(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, first_two_weights(problem.edges), rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "first_n",
    support=_first_n_support,
    summary="The first N comparisons in pool order (N = num_pairs, default min(budget, E)).",
    source="common practice (label what comes first)",
)
def first_n(key, problem, budget, num_pairs=None, rounding="auto", max_labels_per_edge=None):
    e = problem.num_edges
    n = min(budget, e) if num_pairs is None else num_pairs
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= e:
        raise ValueError(f"num_pairs must be an integer in [1, {e}] (the number of candidate edges), got {num_pairs!r}")
    return selection_output(key, problem, budget, np.arange(n), rounding, max_labels_per_edge=max_labels_per_edge)


