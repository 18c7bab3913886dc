"""Working sets (column generation): the solver steps on a subset of the edges, prices
every edge with one ``O(E r^2)`` pass, and adds the most violating ones.

:class:`_Restricted` is the problem restricted to a working set, padded with zero rows
to a power-of-two size (so that the jitted steps compile once per size bucket).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from theory.design.certificate import _capped_lmo_np, _reference_level, exact_certificate
from theory.design.problem import ReducedProblem
from theory.design.state import _pad_rows, _power_of_two, _price, _refresh, _refresh_subset


def _violation(dd, w, groups, masses, num_groups, caps=None):
    """``d_e`` minus the weighted mean of ``d`` in its group: > 0 where mass should go.

    With caps the reference is :func:`_reference_level` (the working set also keeps the
    support of the capped LMO vertex, see :func:`_keep`, so its certificate is the full one)."""
    if caps is not None:
        ref = _reference_level(dd, w, caps, groups, masses, num_groups)
        return np.where(caps > 0, dd - ref[groups], -np.inf)
    spent = np.bincount(groups, weights=w * dd, minlength=num_groups)
    mean = np.where(masses > 0, spent / np.where(masses > 0, masses, 1.0), np.inf)
    return dd - mean[groups]


def _grow(ws, score, chunk):
    """``ws`` plus up to ``chunk`` edges of largest positive ``score`` (sorted indices)."""
    score = np.asarray(score, dtype=np.float64).copy()
    score[ws] = -np.inf
    k = min(chunk, int(np.sum(score > 0)))
    if k > 0:
        top = np.argpartition(-score, k - 1)[:k]
        ws = np.union1d(ws, top)
    return np.asarray(ws, dtype=np.int64)


def _keep(w, dd, caps, groups, masses, num_groups):
    """Edges a new working set keeps: the support of ``w``, and with caps also the support
    of the capped LMO vertex (a capped optimum has at least ``1 / cap`` edges, so adding
    its violators ``chunk`` at a time would take many pricing rounds)."""
    keep = w > 0
    if caps is not None:
        _, _, vertex = _capped_lmo_np(dd, caps, groups, masses, num_groups, True)
        keep |= vertex > 0
    return np.flatnonzero(keep)


def _capacity(n, total):
    """Padded size of a working set of ``n`` of ``total`` edges."""
    return min(_power_of_two(n, 256), total) if n <= total else n


def support_bound(p: ReducedProblem) -> int:
    """A size for the support an optimal design may need: ``r (r + 1) / 2`` plus the fewest
    edges whose caps can hold the design's mass (each group's, with groups; one edge a
    group without caps).

    Without groups and caps, the information matrices of designs form the convex hull of
    the ``E`` matrices ``x_e x_e^T`` in the ``r (r + 1) / 2``-dimensional space of symmetric
    ``r x r`` matrices, so the criterion has an optimum on at most ``r (r + 1) / 2 + 1``
    edges (Caratheodory's theorem); every design that satisfies the caps has at least the
    second term in its support. With both the sum bounds the optimum's support neither way:
    it only chooses the solver's path (:func:`uses_working_sets`), and no result depends on it.
    """
    r = int(p.rank)
    masses, groups = np.asarray(p.masses, dtype=np.float64), np.asarray(p.groups)
    caps = np.full(p.num_edges, np.inf) if p.caps is None else np.asarray(p.caps, dtype=np.float64)
    order = np.lexsort((-caps, groups))  # by group, the largest cap first
    g = groups[order]
    m = np.where(masses > 0, masses, 1.0)[g]
    # each cap as a share of its group's mass (at most 1): every group's target is 1, so the
    # running sum over all groups stays within G of it and rounding cannot miss a target
    held = np.cumsum(np.minimum(caps[order] / m, 1.0))
    start = np.searchsorted(g, np.arange(p.num_groups))  # each group's first position
    held -= np.concatenate([[0.0], held])[start][g]  # what the group's largest caps hold, cumulatively
    pos = np.arange(g.size) - start[g]
    full = held >= 1.0 - 1e-9
    need = np.bincount(groups, minlength=p.num_groups).astype(np.int64)  # at most the group's edges
    np.minimum.at(need, g[full], pos[full] + 1)
    need[masses <= 0] = 0
    return r * (r + 1) // 2 + int(need.sum())


def uses_working_sets(p: ReducedProblem, chunk: int) -> bool:
    """Whether a solve runs on working sets (column generation): only when ``E`` is more than
    twice both ``chunk`` and :func:`support_bound`. Where an optimum may need half the edges or
    more (a tabular pool: ``r (r + 1) / 2 >= E``; caps that spread the mass over half the edges),
    working sets grow to most of ``E`` over several pricing rounds, each from a poorer start than
    the capped uniform design on all edges (tabular world, ``K = 100``: 3.2x slower, BENCHMARKS.md)."""
    e = p.num_edges
    return e > 2 * int(chunk) and e > 2 * support_bound(p)


def first_working_set(p: ReducedProblem, w_full, chunk, on_working_sets: bool):
    """Every edge unless ``on_working_sets`` (the solve's path, :func:`uses_working_sets`); else
    the start's support (and capped LMO vertex) plus the ``chunk`` most violating edges."""
    if not on_working_sets:
        return np.arange(p.num_edges)
    st0 = _refresh_subset(np.flatnonzero(w_full > 0), w_full, p.x, p.offset, p.b, p.kind)
    d0 = np.asarray(_price(p.x, st0.tinv, p.b, p.kind))
    keep = _keep(w_full, d0, p.caps, p.groups, p.masses, p.num_groups)
    return _grow(keep, _violation(d0, w_full, p.groups, p.masses, p.num_groups, p.caps), chunk)


def next_working_set(p: ReducedProblem, ws, w_full, d_full, chunk) -> Optional[np.ndarray]:
    """The support (and capped LMO vertex) plus the ``chunk`` most violating edges, or
    ``None`` when no edge outside ``ws`` violates (the working set is already enough)."""
    viol = _violation(d_full, w_full, p.groups, p.masses, p.num_groups, p.caps)
    outside = np.ones(p.num_edges, dtype=bool)
    outside[ws] = False
    if ws.size < p.num_edges and np.any(viol[outside] > 0):
        # Keep the support, drop the rest of the old working set, add the most
        # violating edges: the working set stays near support + chunk.
        return _grow(_keep(w_full, d_full, p.caps, p.groups, p.masses, p.num_groups), viol, chunk)
    return None


def price_round(p: ReducedProblem, ws, st):
    """The full weights and scores after a solve on ``ws``: ``(w_full, d_full)``, float64 ``[E]``."""
    e = p.num_edges
    w_full = np.zeros(e)
    w_full[ws] = np.asarray(st.w, dtype=np.float64)[: ws.size]
    if ws.size == e:
        return w_full, np.asarray(st.dd, dtype=np.float64)[:e]
    return w_full, np.asarray(_price(p.x, st.tinv, p.b, p.kind), dtype=np.float64)


class _Restricted(NamedTuple):
    """The problem on a working set, padded with zero rows (cap 0, never weighted)."""

    problem: ReducedProblem
    x: jnp.ndarray  # [s, r]
    groups: np.ndarray  # [s] int32
    groups_j: jnp.ndarray
    masses_j: jnp.ndarray  # [G] in the problem's dtype
    w0: jnp.ndarray  # [s] the starting weights
    caps: Optional[np.ndarray]  # [s] float64
    caps_j: Optional[jnp.ndarray]

    @classmethod
    def build(cls, p: ReducedProblem, ws, w_full) -> "_Restricted":
        idx, real = _pad_rows(ws, _capacity(ws.size, p.num_edges))
        xw = p.x[jnp.asarray(idx)] * jnp.asarray(real, dtype=p.x.dtype)[:, None]
        g_np = np.where(real, p.groups[idx], 0).astype(np.int32)
        ww = jnp.asarray(np.where(real, w_full[idx], 0.0), dtype=p.x.dtype)
        cw64 = None if p.caps is None else np.where(real, p.caps[idx], 0.0)
        cw = None if cw64 is None else jnp.asarray(cw64, dtype=p.x.dtype)
        return cls(p, xw, g_np, jnp.asarray(g_np), jnp.asarray(p.masses, dtype=p.x.dtype), ww, cw64, cw)

    def refresh(self, w):
        return _refresh(w, self.x, self.problem.offset, self.problem.b, self.problem.kind)

    def exact(self, st):
        """The exact certificate of ``st`` on the working set, and the capped LMO's thresholds."""
        p = self.problem
        return exact_certificate(st.dd, st.w, self.groups, p.masses, p.num_groups, self.caps)

    def level(self, st):
        """The exact certificate of ``st`` and, with caps, the reference levels of the
        Newton steps' held sets (``None`` without caps)."""
        cert, _ = self.exact(st)
        if self.caps is None:
            return cert, None
        dd, w = np.asarray(st.dd, dtype=np.float64), np.asarray(st.w, dtype=np.float64)
        p = self.problem
        return cert, _reference_level(dd, w, self.caps, self.groups, p.masses, p.num_groups)

    def relative(self, cert, st):
        """``cert`` relative to the problem's scale at ``st``."""
        return cert / self.problem.scale(float(st.value))
