"""From design weights to a labelled allocation of exactly ``budget`` comparisons.

Three rules (and ``"auto"``, which picks between the first two), all returning an :class:`~synthetic.labels.Allocation` whose ``budget``
is exactly the requested one:

* ``"without_replacement"``: the paper's rule. ``budget`` distinct edges drawn one at a
  time with probability proportional to the weights among those not yet drawn
  (successive sampling, done in one pass as a Gumbel top-k). Each edge gets one label,
  so the budget may not exceed the number of edges with positive weight.
* ``"with_replacement"``: ``counts ~ Multinomial(budget, w)``.
* ``"efficient"``: Pukelsheim and Rieder's efficient apportionment (Biometrika 1992;
  Pukelsheim, *Optimal Design of Experiments*, ch. 12): ``n_e = ceil((n - s/2) w_e)``
  on the ``s`` support edges, then single-label corrections, each adding to an edge
  of smallest ``n_e / w_e`` or removing from one of largest ``(n_e - 1) / w_e``. It
  maximises ``min_e n_e / (n w_e)`` (the efficiency bound) over all allocations of
  ``n`` labels; ties are broken by a random priority drawn from the key, so uniform
  weights with ``n < E`` give ``n`` distinct edges chosen at random. When ``n`` is
  below the support size every edge gets at most one label and the weights only
  decide ties, so for ``n < s`` it carries no information from the design.
* ``"auto"`` (the designs' default): the paper's ``"without_replacement"`` when the
  budget is at most the number of edges with positive weight, ``"efficient"``
  otherwise (where sampling without replacement is impossible).
"""

from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.labels import Allocation, allocation_from_counts

__all__ = ["ROUNDINGS", "round_design", "resolve_rounding", "efficient_rounding", "sample_without_replacement", "sample_with_replacement"]

ROUNDINGS = ("auto", "efficient", "without_replacement", "with_replacement")


def check_budget(budget) -> int:
    """A label budget is an integer ``>= 1``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be an integer number of labels >= 1, got {budget!r}")
    return int(budget)


def _check(weights, budget):
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must have shape [E] with E >= 1, got shape {list(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero")
    return w / w.sum(), check_budget(budget)


def sample_without_replacement(key, weights, budget) -> Allocation:
    """``budget`` distinct edges by successive sampling proportional to ``weights``."""
    w, n = _check(weights, budget)
    support = int(np.sum(w > 0))
    if n > support:
        raise ValueError(
            f"budget {n} is larger than the {support} edges with positive weight: sampling without "
            "replacement labels each edge at most once; use rounding='efficient' or 'with_replacement'"
        )
    gumbel = np.asarray(jax.random.gumbel(key, (w.size,), dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
    with np.errstate(divide="ignore"):
        score = np.where(w > 0, np.log(w) + gumbel, -np.inf)
    top = np.argpartition(-score, n - 1)[:n]
    counts = np.zeros(w.size, dtype=np.int64)
    counts[top] = 1
    return allocation_from_counts(counts)


def sample_with_replacement(key, weights, budget) -> Allocation:
    """``counts ~ Multinomial(budget, weights)``."""
    w, n = _check(weights, budget)
    idx = np.asarray(jax.random.choice(key, w.size, shape=(n,), replace=True, p=jnp.asarray(w)))
    return allocation_from_counts(np.bincount(idx, minlength=w.size))


def efficient_rounding(weights, budget, key=None) -> Allocation:
    """Pukelsheim-Rieder efficient apportionment of ``budget`` labels to ``weights``.

    Args:
      weights: ``[E]`` non-negative design weights.
      budget: ``n >= 1``.
      key: JAX key for random tie-breaking; ``None`` breaks ties by edge index.
    """
    w, n = _check(weights, budget)
    sup = np.flatnonzero(w > 0)
    s = sup.size
    ws = w[sup]
    if key is None:
        prio = np.arange(s)
    else:
        prio = np.asarray(jax.random.permutation(key, s))
    counts = np.ceil(np.maximum(n - 0.5 * s, 0.0) * ws).astype(np.int64)
    total = int(counts.sum())
    if total < n:
        heap = [(counts[i] / ws[i], prio[i], i) for i in range(s)]
        heapq.heapify(heap)
        for _ in range(n - total):
            _, p, i = heapq.heappop(heap)
            counts[i] += 1
            heapq.heappush(heap, (counts[i] / ws[i], p, i))
    elif total > n:
        heap = [(-(counts[i] - 1) / ws[i], prio[i], i) for i in range(s) if counts[i] > 0]
        heapq.heapify(heap)
        for _ in range(total - n):
            _, p, i = heapq.heappop(heap)
            counts[i] -= 1
            if counts[i] > 0:
                heapq.heappush(heap, (-(counts[i] - 1) / ws[i], p, i))
    full = np.zeros(w.size, dtype=np.int64)
    full[sup] = counts
    return allocation_from_counts(full)


def resolve_rounding(weights, budget, rule: str) -> str:
    """The concrete rule ``"auto"`` stands for (other rules are returned unchanged)."""
    if rule not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rule!r}")
    if rule != "auto":
        return rule
    w, n = _check(weights, budget)
    return "without_replacement" if n <= int(np.sum(w > 0)) else "efficient"


def round_design(key, weights, budget, rule: str = "auto") -> Allocation:
    """Turn design ``weights`` into exactly ``budget`` labels by ``rule`` (see module doc)."""
    rule = resolve_rounding(weights, budget, rule)
    if rule == "efficient":
        return efficient_rounding(weights, budget, key)
    if rule == "without_replacement":
        return sample_without_replacement(key, weights, budget)
    return sample_with_replacement(key, weights, budget)
