"""The feasible set: a product of (capped) simplices, one per group of edges.

Projections and scalings onto ``{w : sum_{e in g} w_e = m_g, 0 <= w_e <= c_e}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _project_capped_np(y, caps, groups, masses, num_groups, iters=200):
    """Euclidean projection of ``y`` on ``{w : sum_{e in g} w_e = m_g, 0 <= w <= caps}``:
    ``w = clip(y - tau_g, 0, caps)`` with ``tau_g`` by bisection (float64), then the
    rounding left in each group's mass is spread over its edges strictly inside their
    bounds."""
    y = np.asarray(y, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.float64)
    live = caps > 0
    lo = np.full(num_groups, np.inf)
    np.minimum.at(lo, groups[live], (y - caps)[live])
    hi = np.full(num_groups, -np.inf)
    np.maximum.at(hi, groups[live], y[live])
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 0.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = np.bincount(groups, weights=np.clip(y - mid[groups], 0.0, caps), minlength=num_groups)
        big = f > masses
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
        if np.all(hi - lo <= 4 * np.finfo(np.float64).eps * np.maximum(np.abs(hi), np.abs(lo))):
            break
    w = np.clip(y - hi[groups], 0.0, caps)
    inside = (w > 0) & (w < caps)
    short = masses - np.bincount(groups, weights=w, minlength=num_groups)
    cnt = np.bincount(groups, weights=inside.astype(np.float64), minlength=num_groups)
    w = np.where(inside, np.clip(w + (short / np.maximum(cnt, 1.0))[groups], 0.0, caps), w)
    return w


def _scale_to_caps(u, caps, groups, masses, num_groups, iters=100):
    """``w = min(caps, tau_g u)`` with ``tau_g`` such that each group has mass ``m_g``
    (geometric bisection; the rounding left is spread over the uncapped edges).
    Returns ``(w, feasible)``; infeasible when a group's caps on ``u > 0`` sum below
    its mass."""
    pos = u > 0
    room = jax.ops.segment_sum(jnp.where(pos, caps, 0.0), groups, num_segments=num_groups)
    feasible = jnp.all(room >= masses * (1 - 1e-12))
    tot = jax.ops.segment_sum(u, groups, num_segments=num_groups)
    lo = jnp.where((masses > 0) & (tot > 0), masses / jnp.where(tot > 0, tot, 1.0), 1.0)
    ratio = jnp.where(pos & (caps > 0), caps / jnp.where(pos, u, 1.0), 0.0)
    hi = jnp.maximum(jax.ops.segment_max(ratio, groups, num_segments=num_groups), lo)

    def body(_, lohi):
        lo, hi = lohi
        mid = jnp.sqrt(lo * hi)
        f = jax.ops.segment_sum(jnp.minimum(caps, mid[groups] * u), groups, num_segments=num_groups)
        big = f >= masses
        return jnp.where(big, lo, mid), jnp.where(big, mid, hi)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    w = jnp.minimum(caps, lo[groups] * u)  # mass <= m_g
    free = (w < caps) & (w > 0)
    short = masses - jax.ops.segment_sum(w, groups, num_segments=num_groups)
    part = jax.ops.segment_sum(jnp.where(free, w, 0.0), groups, num_segments=num_groups)
    fac = 1.0 + short / jnp.where(part > 0, part, 1.0)
    w = jnp.where(free, jnp.minimum(w * fac[groups], caps), w)
    return w, feasible
