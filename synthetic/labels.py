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
from theory.checked import check_argument

__all__ = [
    "Allocation",
    "allocation_from_counts",
    "check_pilot",
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
        """Counts ``[num_edges]`` over all candidate edges (zeros where unlabelled).

        Raises ``ValueError`` where ``edges`` repeats an edge (an assignment would keep one
        of its counts and drop the others' labels) or lies outside ``[0, num_edges)``."""
        edges, counts = np.asarray(self.edges), np.asarray(self.counts)
        if edges.ndim != 1 or counts.shape != edges.shape:
            # an assignment broadcasts: counts [budget] over E edges had put budget labels on each edge
            raise ValueError(f"Allocation.edges and Allocation.counts must be 1-D arrays of one length (one count per edge), "
                             f"got shapes {list(edges.shape)} and {list(counts.shape)}")
        if edges.size and not (np.issubdtype(edges.dtype, np.integer) or np.all(edges == np.round(edges))):
            raise ValueError("Allocation.edges must be integer edge ids")
        edges = edges.astype(np.int64)
        if edges.size and (edges.min() < 0 or edges.max() >= num_edges):
            raise ValueError(f"Allocation.edges must be edge ids in [0, {num_edges}), got ids from {edges.min()} to {edges.max()}")
        hits = np.bincount(edges.astype(np.int64), minlength=num_edges)
        if edges.size and hits.max() > 1:
            e = int(np.argmax(hits))
            raise ValueError(f"Allocation.edges must be distinct: edge {e} appears {int(hits[e])} times (give each edge once, "
                             "with its total count)")
        out = np.zeros(num_edges, dtype=np.int64)
        out[edges] = self.counts
        return out


def check_pilot(pilot, counts) -> tuple[np.ndarray, np.ndarray]:
    """``(counts [E], wins [E])`` of a pilot, as float64, checked against the allocation's ``counts [E]``:
    whole numbers, ``0 <= wins <= pilot counts <= counts``. Unchecked, wins above the counts or negative
    counts had fitted impossible labels (gaps 1.97 for 0.007) without a word."""
    e = np.shape(counts)[0]
    p_counts, p_wins = (np.asarray(a, np.float64) for a in pilot)
    if p_counts.shape != (e,) or p_wins.shape != (e,):
        raise ValueError(f"pilot must be (counts [{e}], wins [{e}])")
    for name, a in (("counts", p_counts), ("wins", p_wins)):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or np.any(a < 0):
            raise ValueError(f"pilot {name} must be whole numbers >= 0")
    if np.any(p_wins > p_counts):
        raise ValueError("pilot wins must not exceed the pilot counts on any edge")
    if np.any(p_counts > np.asarray(counts)):
        raise ValueError("pilot counts must not exceed counts on any edge")
    return p_counts, p_wins


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
    check_argument("budget", budget, "int >= 1")
    logits = jnp.log(jnp.asarray(w))
    draws = jax.random.categorical(key, logits, shape=(int(budget),))
    counts = np.bincount(np.asarray(draws), minlength=w.shape[0])
    return allocation_from_counts(counts)


#: Largest count per edge drawn by inverse-CDF; above it, ``jax.random.binomial``.
INVERSE_CDF_MAX_COUNT = 100


class _Inversion(NamedTuple):
    """Loop state of :func:`_binomial_inverse_cdf` at value ``k``."""

    cdf: jax.Array  # P(X <= k)
    pmf: jax.Array  # P(X = k)
    draw: jax.Array  # min(X, k) so far


def _binomial_inverse_cdf(key, counts, p):
    """Exact ``Binomial(counts, p)`` draws by inversion: one uniform a draw and one pass
    of the pmf recursion per possible value, up to ``max(counts)``.

    The pmf recursion starts at ``(1 - q)^c`` with ``q = min(p, 1 - p) <= 1/2`` (the
    losses are drawn when ``p > 1/2``), which is at least ``2^-100`` for ``c <= 100``: no
    underflow in float32 or float64.
    """
    flip = p > 0.5
    q = jnp.where(flip, 1.0 - p, p)
    u = jax.random.uniform(key, p.shape, dtype=p.dtype)
    ratio = q / (1.0 - q)
    pmf0 = jnp.exp(counts * jnp.log1p(-q))

    def body(k, carry: _Inversion) -> _Inversion:
        # X > k exactly when u > P(X <= k)
        x = carry.draw + ((u > carry.cdf) & (k < counts)).astype(p.dtype)
        pmf = carry.pmf * (counts - k) / (k + 1.0) * ratio
        return _Inversion(carry.cdf + pmf, pmf, x)

    kmax = jnp.max(counts).astype(jnp.int32)
    x = jax.lax.fori_loop(0, kmax, body, _Inversion(pmf0, pmf0, jnp.zeros_like(p))).draw
    return jnp.where(flip, counts - x, x)


def simulate_wins(key, theta_star, diffs, counts, beta, method: str | None = None):
    """Bradley-Terry win counts ``wins_e ~ Binomial(counts_e, sigmoid(beta theta*.z_e))``.

    Pure and ``vmap``-able over ``key``. Counts up to :data:`INVERSE_CDF_MAX_COUNT` are
    drawn by inversion (one uniform an edge; 5-25 times faster than
    ``jax.random.binomial`` at the few labels an edge that designs spread over many
    edges give), larger ones by ``jax.random.binomial``.

    Args:
      key: JAX PRNG key.
      theta_star: ``[d]``.
      diffs: ``[A, d]`` differences of the labelled edges.
      counts: ``[A]`` labels per edge.
      beta: ``> 0``.
      method: ``"inverse"`` (requires counts ``<= INVERSE_CDF_MAX_COUNT``), ``"btrs"``
        (``jax.random.binomial``), or ``None`` to choose by the counts. Under ``jit``
        with traced counts, ``None`` compiles both; callers that know their counts pass
        the method.

    Returns:
      ``[A]`` wins of the first completion, same float dtype as ``diffs``.
    """
    if method not in (None, "inverse", "btrs"):
        raise ValueError(f"method must be one of None, 'inverse', 'btrs', got {method!r}")
    p = jax.nn.sigmoid(beta * (diffs @ theta_star))
    if method is not None:
        counts = jnp.asarray(counts, dtype=p.dtype)
        if method == "inverse":
            return _binomial_inverse_cdf(key, counts, p)
        return jax.random.binomial(key, counts, p).astype(p.dtype)
    try:  # concrete counts (eager calls, or unbatched under vmap): choose the sampler here
        small = bool(np.max(np.asarray(counts), initial=0) <= INVERSE_CDF_MAX_COUNT)
    except jax.errors.TracerArrayConversionError:  # traced counts (under jit): choose at run time
        small = None
    counts = jnp.asarray(counts, dtype=p.dtype)
    inverse = lambda: _binomial_inverse_cdf(key, counts, p)  # noqa: E731
    btrs = lambda: jax.random.binomial(key, counts, p).astype(p.dtype)  # noqa: E731
    if small is None:
        return jax.lax.cond(jnp.max(counts) <= INVERSE_CDF_MAX_COUNT, inverse, btrs)
    return inverse() if small else btrs()
