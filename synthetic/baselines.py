"""Baseline design weights used by the quick-start experiment.

These are the simple rules of theory brief section 6 that need no solver. Each maps
the candidate :class:`theory.Edges` (and the pool) to a probability vector ``[E]``.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from theory.edges import Edges

__all__ = ["uniform_weights", "reference_weights", "first_two_weights"]


def uniform_weights(edges: Edges) -> np.ndarray:
    """Uniform over all candidate edges."""
    e = edges.num_edges
    return np.full(e, 1.0 / e)


def reference_weights(edges: Edges, log_ref) -> np.ndarray:
    """Reference-weighted: ``w_e proportional to pi0(y|x) pi0(y'|x)`` (the heuristic the paper finds poor).

    ``log_ref`` is normalised within each prompt first (over its present completions), as every
    other use of ``pi0`` is: a pool of raw sequence log-probabilities (a constant per prompt
    away from ``log pi0``) otherwise moved the labels between prompts (99.8% on one prompt of
    three, against 38%)."""
    lr = np.asarray(log_ref, dtype=np.float64)
    lr = lr - scipy.special.logsumexp(lr, axis=1, keepdims=True)
    logw = lr[edges.prompt, edges.first] + lr[edges.prompt, edges.second]
    w = np.exp(logw - logw.max())
    return w / w.sum()


def first_two_weights(edges: Edges) -> np.ndarray:
    """"First two completions of each prompt": uniform over the edges ``(x, 0, 1)``.

    Completions are indexed in generation order, so this is the common practice of
    sampling two completions per prompt and labelling that single pair.
    """
    mask = (edges.first == 0) & (edges.second == 1)
    if not mask.any():
        raise ValueError("edges: no prompt has completions 0 and 1 present, so first_two has no edge")
    return mask / mask.sum()

