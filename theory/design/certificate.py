r"""The Frank-Wolfe duality-gap certificate ``cert(w) >= Phi(w) - Phi*``.

Two forms, for two jobs:

* :func:`exact_certificate` (float64 numpy): ``<d, s - w>`` with ``s`` the exact
  (capped) linear-maximisation vertex. Every certificate the solver *decides* on or
  *reports* is this one, recomputed from the scores.
* :func:`_certificate` (JAX, inside the jitted step loop): the same gap without caps;
  with caps the LP-dual bound at fixed thresholds, an upper bound of the exact one
  that needs no sort (equal to it at the thresholds of the last exact LMO).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _certificate(state, groups, masses, num_groups, caps=None, thr=None):
    """Per-group Frank-Wolfe gaps and their sum.

    Without caps: ``m_g max_{e in g} d_e - sum_{e in g} w_e d_e``. With caps (capped
    simplex) the linear maximisation ``max {d.s : sum_g s = m_g, 0 <= s <= c}`` has the
    LP dual ``min_t m_g t + sum_e c_e (d_e - t)_+``, so for *every* threshold ``thr_g``

        gap_g(thr) = m_g thr_g + sum_{e in g} c_e (d_e - thr_g)_+ - sum_{e in g} w_e d_e

    bounds the exact capped gap from above (equality at the capped LMO's threshold,
    see :func:`_capped_lmo_np`): a valid certificate at any iterate, and O(E), where the
    exact one needs a sort.
    """
    spent = jax.ops.segment_sum(state.w * state.dd, groups, num_segments=num_groups)
    if caps is None:
        best = jax.ops.segment_max(state.dd, groups, num_segments=num_groups)
        gaps = masses * best - spent
    else:
        over = jax.ops.segment_sum(caps * jnp.maximum(state.dd - thr[groups], 0.0), groups, num_segments=num_groups)
        gaps = jnp.where(masses > 0, masses * thr, 0.0) + over - spent
    return gaps, jnp.sum(gaps)


def exact_certificate(dd, w, groups, masses, num_groups, caps=None):
    """``(<d, s - w>, thr)`` with ``s`` the (capped) linear-maximisation vertex, in float64.

    ``thr`` is each group's threshold (the ``d`` of its marginal edge) with caps, ``None``
    without. Bounds ``Phi(w) - Phi*``; ``0`` iff ``w`` is optimal."""
    dd = np.asarray(dd, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if caps is not None:
        lmo, thr = _capped_lmo_np(dd, caps, groups, masses, num_groups)
        return float(np.sum(lmo) - np.sum(w * dd)), thr
    best = np.full(num_groups, -np.inf)
    np.maximum.at(best, groups, dd)
    best = np.where(masses > 0, best, 0.0)
    return float(np.sum(masses * best) - np.sum(w * dd)), None


def _capped_lmo_np(dd, caps, groups, masses, num_groups, return_vertex=False):
    """Linear maximisation over the capped simplex, in float64 numpy (exact).

    ``s`` fills each group's edges in decreasing ``d_e`` up to their caps until the
    group's mass is placed; returns ``(lmo_g, thr_g)`` with ``lmo_g = sum_{e in g} s_e d_e``
    and ``thr_g`` the ``d`` of the marginal (last filled) edge: the threshold ``t`` of the
    equivalence theorem for bounded designs at the optimum.
    """
    dd = np.asarray(dd, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.float64)
    order = np.lexsort((-dd, groups))
    g_s, c_s, d_s = groups[order], caps[order], dd[order]
    tot = np.bincount(groups, weights=caps, minlength=num_groups)
    start = np.concatenate([[0.0], np.cumsum(tot)[:-1]])
    before = np.cumsum(c_s) - c_s - start[g_s]
    s_s = np.clip(masses[g_s] - before, 0.0, c_s)
    # The running sums carry O(E eps) rounding (1e-12 of the mass at E = 1.6e5): the
    # marginal edge of each group takes what is left, so the vertex has the exact mass.
    placed = s_s.sum(keepdims=True) if num_groups == 1 else np.bincount(g_s, weights=s_s, minlength=num_groups)
    last = np.full(num_groups, -1)
    np.maximum.at(last, g_s[s_s > 0], np.flatnonzero(s_s > 0))
    ok = last >= 0
    s_s[last[ok]] = np.clip(s_s[last[ok]] + (masses - placed)[ok], 0.0, c_s[last[ok]])
    lmo = np.bincount(g_s, weights=s_s * d_s, minlength=num_groups)
    thr = np.full(num_groups, np.inf)
    np.minimum.at(thr, g_s[s_s > 0], d_s[s_s > 0])
    thr = np.where(np.isfinite(thr), thr, 0.0)  # groups of mass 0 (their caps are 0)
    if return_vertex:
        s = np.empty_like(s_s)
        s[order] = s_s
        return lmo, thr, s
    return lmo, thr


def _reference_level(dd, w, caps, groups, masses, num_groups):
    """Estimate of each group's threshold ``t`` (the multiplier of its mass constraint)
    with caps: the ``w``-weighted mean of ``d`` over the free edges (``0 < w_e < c_e``),
    which is ``t`` at the optimum; the capped LMO's threshold where a group has none.
    (Without caps the solver uses the weighted mean over the group, the same rule.)"""
    _, thr = _capped_lmo_np(dd, caps, groups, masses, num_groups)
    free = (w > 0) & (w < caps)
    mass = np.bincount(groups, weights=np.where(free, w, 0.0), minlength=num_groups)
    spent = np.bincount(groups, weights=np.where(free, w * dd, 0.0), minlength=num_groups)
    return np.where(mass > 0, spent / np.where(mass > 0, mass, 1.0), thr)
