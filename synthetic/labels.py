"""Allocations of a label budget to edges, and Bradley-Terry labels for them.

An :class:`Allocation` lists the *distinct* labelled edges with their label counts.
Labels are simulated per edge as binomial win counts, so a replicate costs
``O(distinct edges)`` and never ``O(labels)``.

A "win" on edge ``e = (x, y_i, y_j)`` means ``y_i`` (the ``first`` completion) is
preferred: ``P(win) = sigmoid(r*(x, y_i) - r*(x, y_j)) = sigmoid(beta theta* . z_e)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory import _validation as V

__all__ = [
    "Allocation",
    "allocation_from_counts",
    "sample_allocation",
    "simulate_wins",
]


class Allocation(NamedTuple):
    """Edge indices with label counts.

    Attributes:
      edges: ``[A]`` distinct indices into the candidate edge list.
      counts: ``[A]`` positive label counts; ``budget = counts.sum()``.
    """

    edges: np.ndarray
    counts: np.ndarray

    @property
    def budget(self) -> int:
        return int(np.sum(self.counts))

    def dense_counts(self, num_edges: int) -> np.ndarray:
        """Counts ``[num_edges]`` over all candidate edges (zeros where unlabelled)."""
        out = np.zeros(num_edges, dtype=np.int64)
        out[self.edges] = self.counts
        return out


def allocation_from_counts(counts) -> Allocation:
    """Compact an ``[E]`` vector of non-negative integer counts into an :class:`Allocation`."""
    c = np.asarray(counts)
    if c.ndim != 1:
        raise ValueError(f"counts must have shape [E], got shape {list(c.shape)}")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or np.any(c != np.round(c)):
            raise ValueError("counts must be whole numbers of labels")
        c = c.astype(np.int64)
    if np.any(c < 0):
        raise ValueError(f"counts must be >= 0, min is {c.min()}")
    if c.sum() == 0:
        raise ValueError("counts must allocate at least one label (they sum to 0)")
    idx = np.flatnonzero(c)
    return Allocation(idx.astype(np.int32), c[idx].astype(np.int64))


def sample_allocation(key, weights, budget: int) -> Allocation:
    """Draw ``budget`` labelled edges i.i.d. from the design ``weights`` (with replacement).

    This is the multinomial rule ``counts ~ Multinomial(budget, weights)``; the other
    rounding rules (without replacement, efficient rounding) belong to the design
    module.

    Args:
      key: JAX PRNG key.
      weights: ``[E]`` probability vector.
      budget: number of labels ``n >= 1``.
    """
    w = np.asarray(weights, dtype=np.float64)
    V.check_design_weights(w, w.shape[0] if w.ndim == 1 else -1)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    logits = jnp.log(jnp.asarray(w))
    draws = jax.random.categorical(key, logits, shape=(int(budget),))
    counts = np.bincount(np.asarray(draws), minlength=w.shape[0])
    return allocation_from_counts(counts)


def simulate_wins(key, theta_star, diffs, counts, beta):
    """Bradley-Terry win counts ``wins_e ~ Binomial(counts_e, sigmoid(beta theta*.z_e))``.

    Pure and ``vmap``-able over ``key``.

    Args:
      key: JAX PRNG key.
      theta_star: ``[d]``.
      diffs: ``[A, d]`` differences of the labelled edges.
      counts: ``[A]`` labels per edge.
      beta: ``> 0``.

    Returns:
      ``[A]`` wins of the first completion, same float dtype as ``diffs``.
    """
    p = jax.nn.sigmoid(beta * (diffs @ theta_star))
    counts = jnp.asarray(counts, dtype=p.dtype)
    return jax.random.binomial(key, counts, p).astype(p.dtype)
