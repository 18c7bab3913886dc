"""Turning a design's weights or selection into labels (:func:`weighted_output`,
:func:`selection_output`), and the pieces every family shares."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from synthetic.designs.checks import _check_choice
from synthetic.designs.problem import DesignOutput, DesignProblem
from synthetic.labels import allocation_from_counts
from synthetic.rounding import ROUNDINGS, check_max_labels_per_edge, resolve_rounding, round_design
from theory.information import design_criterion

__all__ = ["allocation_criterion", "weighted_output", "selection_output"]


def allocation_criterion(problem: DesignProblem, counts, theta=None, ridge: float = 0.0) -> float:
    """``Phi(counts / n; theta)`` of a realised allocation (``theta*`` by default)."""
    c = np.asarray(counts, dtype=np.float64)
    theta = problem.theta_star if theta is None else jnp.asarray(theta)
    w = jnp.asarray(c / c.sum(), dtype=problem.edges.diffs.dtype)
    return float(design_criterion(w, theta, problem.edges.diffs, problem.curvature(theta), problem.beta, ridge))


def _rest_caps(cap, pilot):
    """Labels each edge may still take after the pilot: ``None`` (no cap), ``cap`` or ``cap - pilot counts``."""
    cap = check_max_labels_per_edge(cap)
    if cap is None or pilot is None:
        return cap
    return cap - np.asarray(pilot[0], dtype=np.int64)


def _labels_left(budget, pilot) -> int:
    """The labels of ``budget`` left after the pilot's (all of them without a pilot)."""
    return int(budget) - (0 if pilot is None else int(np.asarray(pilot[0]).sum()))


def _has_room(num_edges, cap, pilot) -> np.ndarray:
    """``[E]`` which edges may still take a label after the pilot (:func:`_rest_caps` above 0)."""
    caps = _rest_caps(cap, pilot)
    return np.ones(num_edges, bool) if caps is None else np.broadcast_to(np.asarray(caps) > 0, (num_edges,)).copy()


def weighted_output(key, problem, budget, weights, rounding="auto", pilot=None, info=None, max_labels_per_edge=None) -> DesignOutput:
    """Round ``weights`` to ``budget`` labels (plus pilot counts, if any) by ``rounding``.

    At most ``max_labels_per_edge`` labels an edge, pilot labels included; the pilot
    edges' directions count as covered (:func:`synthetic.rounding.round_design`).
    """
    _check_choice("rounding", rounding, ROUNDINGS)
    w = np.asarray(weights, dtype=np.float64)
    info = dict(info or {})
    caps = _rest_caps(max_labels_per_edge, pilot)
    diffs = problem.edges.diffs
    if pilot is None:
        info["rounding"] = resolve_rounding(w, budget, rounding, caps)
        alloc = round_design(key, w, budget, info["rounding"], diffs=diffs, caps=caps)
    else:
        rest = _labels_left(budget, pilot)
        counts = np.asarray(pilot[0], dtype=np.int64).copy()
        if rest > 0:
            info["rounding"] = resolve_rounding(w, rest, rounding, caps)
            counts += round_design(key, w, rest, info["rounding"], diffs=diffs, caps=caps, covered=pilot[0]).dense_counts(problem.num_edges)
        alloc = allocation_from_counts(counts)
    return DesignOutput(alloc, w / w.sum(), pilot, info)


def selection_output(key, problem, budget, selected, rounding="auto", pilot=None, info=None, max_labels_per_edge=None) -> DesignOutput:
    """Uniform weights over the ``selected`` edge ids (integers in ``[0, E)``), rounded.

    Ids are checked: ``-1`` (``problem.edge_ids``' "no such edge", a pair with an absent
    completion) had labelled the last edge, a boolean mask edges 0 and 1, a float id its
    truncation, all silently."""
    a = np.asarray(selected)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or (a.size == 0 or np.all(a == np.round(a)))):
        raise ValueError(f"selected must be integer edge ids, got dtype {a.dtype} (for a boolean mask pass np.flatnonzero(mask))")
    sel = np.unique(a.astype(np.int64).ravel())
    if sel.size == 0:
        raise ValueError("the design selected no edge")
    if sel[0] < 0 or sel[-1] >= problem.num_edges:
        raise ValueError(f"selected must be edge ids in [0, {problem.num_edges}), got ids from {sel[0]} to {sel[-1]} "
                         "(-1 is problem.edge_ids' answer for a pair with an absent completion)")
    w = np.zeros(problem.num_edges)
    w[sel] = 1.0
    return weighted_output(key, problem, budget, w, rounding, pilot, info, max_labels_per_edge)

def _present(problem):
    return np.isfinite(np.asarray(problem.pool.log_ref))

def _prompts_with_pairs(problem) -> int:
    """Prompts a one-pair-per-prompt rule labels: two present completions and positive weight."""
    rho = np.asarray(problem.pool.prompt_weights, np.float64)
    return int(np.sum((_present(problem).sum(axis=1) >= 2) & (rho > 0)))

def _prompt_masses(problem, prompts):
    rho = np.asarray(problem.pool.prompt_weights, dtype=np.float64)[prompts]
    return rho / rho.sum()

