"""Uncertainty sampling and its opposite: the pairs whose predicted preference is
nearest 1/2 (``uncertainty``) or farthest from it (``most_certain``)."""

from __future__ import annotations

import jax
import numpy as np

from synthetic.designs.checks import _check_choice, choice_check
from synthetic.designs.outputs import _has_room, _labels_left, selection_output
from synthetic.designs.pilot import PILOT, PilotConfig, _at_truth_or_pilot, _theta_at
from synthetic.designs.registry import register_design

__all__ = ["uncertainty", "most_certain"]


def _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, most_certain, max_labels_per_edge):
    _check_choice("at", at, ("reference", "pilot"))
    k_theta, k_tie, k_round = jax.random.split(key, 3)
    theta, pilot = _theta_at(at, k_theta, problem, budget, PilotConfig(pilot_fraction, pilot_ridge))
    e = problem.num_edges
    # the labels left after the pilot go to the edges with room left: by default one edge each (the paper's
    # HH setting); num_pairs = budget spread the budget - pilot labels over a random part of budget edges
    room = _has_room(e, max_labels_per_edge, pilot)
    rest = _labels_left(budget, pilot)
    n = min(max(rest, 1), int(room.sum())) if num_pairs is None else num_pairs
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= int(room.sum()):
        raise ValueError(f"num_pairs must be an integer in [1, {int(room.sum())}] (the candidate edges with room for a label "
                         f"after the pilot), got {num_pairs!r}")
    p = np.asarray(jax.nn.sigmoid(problem.beta * (problem.edges.diffs @ theta)), dtype=np.float64)
    score = np.abs(p - 0.5)
    tie = np.asarray(jax.random.uniform(k_tie, (e,)))
    order = np.lexsort((tie, -score if most_certain else score))
    order = order[room[order]]
    return selection_output(k_round, problem, budget, order[:n], rounding, pilot, {"theta": np.asarray(theta)}, max_labels_per_edge)


@register_design(
    "uncertainty",
    needs_truth=_at_truth_or_pilot,
    summary="The num_pairs edges whose predicted preference is nearest 1/2 (ties at random; at theta0 = 0 all tie).",
    source="uncertainty sampling (Lewis and Gale 1994); common in active preference learning",
    checks={"at": choice_check("reference", "pilot")},
)
def uncertainty(key, problem, budget, at="reference", num_pairs=None, rounding="auto", pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, max_labels_per_edge=None):
    return _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, False, max_labels_per_edge)


@register_design(
    "most_certain",
    needs_truth=_at_truth_or_pilot,
    summary="The opposite of uncertainty sampling: the edges whose predicted preference is farthest from 1/2.",
    source="'clear preference' heuristics; the opposite of uncertainty sampling",
    checks={"at": choice_check("reference", "pilot")},
)
def most_certain(key, problem, budget, at="reference", num_pairs=None, rounding="auto", pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, max_labels_per_edge=None):
    return _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, True, max_labels_per_edge)


