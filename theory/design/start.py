"""The starting design: uniform (problems solved on every edge), a small spanning support
chosen by pivoted Gram-Schmidt (problems solved on working sets), or the caller's ``init``, checked."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.design.certificate import _capped_lmo_np
from theory.design.problem import ReducedProblem
from theory.design.simplex import _project_capped_np
from theory.design.state import _price, _refresh_subset


class _GramSchmidt(NamedTuple):
    """Loop state of :func:`_pivoted_support`."""

    residual: jax.Array  # [E] squared norm of each edge outside the chosen span
    basis: jax.Array  # [r, d] orthonormal basis of the chosen edges (rows beyond k are 0)
    chosen: jax.Array  # [r] chosen edge ids (E where not yet chosen)


@functools.partial(jax.jit, static_argnames=("r",))
def _pivoted_support(x, r):
    """Indices of ``r`` edges chosen by pivoted Gram-Schmidt (greedy volume)."""
    e = x.shape[0]
    res0 = jnp.sum(x * x, axis=1)

    def taken(chosen, k):
        # Edges already chosen (the first k entries of chosen) are not candidates.
        mask = jnp.zeros((e,), bool)
        return mask.at[chosen].set(jnp.arange(r) < k, mode="drop")

    def body(k, carry: _GramSchmidt) -> _GramSchmidt:
        res, basis, chosen = carry.residual, carry.basis, carry.chosen
        j = jnp.argmax(jnp.where(taken(chosen, k), -jnp.inf, res))
        xj = x[j]
        coef = basis @ xj
        qk = xj - basis.T @ coef
        qk = qk / jnp.linalg.norm(qk)
        proj = x @ qk
        res = jnp.maximum(res - proj**2, 0.0)
        return _GramSchmidt(res, basis.at[k].set(qk), chosen.at[k].set(j.astype(jnp.int32)))

    init = _GramSchmidt(res0, jnp.zeros((r, x.shape[1]), x.dtype), jnp.full((r,), e, jnp.int32))
    return jax.lax.fori_loop(0, r, body, init).chosen


def _initial_weights(x, groups, masses, num_groups, rank):
    """Uniform (within groups) on a spanning support, plus one edge per group without one."""
    e = x.shape[0]
    chosen = np.unique(np.asarray(_pivoted_support(x, rank)))
    support = np.zeros(e, dtype=bool)
    support[chosen] = True
    g = np.asarray(groups)
    norms = np.asarray(jnp.sum(x * x, axis=1))
    for grp in range(num_groups):
        members = np.flatnonzero(g == grp)
        if not support[members].any():
            support[members[np.argmax(norms[members])]] = True
    counts = np.bincount(g[support], minlength=num_groups)
    w = np.where(support, np.asarray(masses)[g] / np.maximum(counts[g], 1), 0.0)
    return jnp.asarray(w, dtype=x.dtype)


def check_init(p: ReducedProblem, init):
    """``init`` as an array of the problem's dtype, checked against the group masses and caps."""
    e = p.num_edges
    w0 = np.asarray(init, dtype=np.float64)
    if w0.shape != (e,) or np.any(~np.isfinite(w0)) or np.any(w0 < 0):
        raise ValueError(f"init must be a non-negative finite array of shape [E] = [{e}]")
    got = np.bincount(p.groups, weights=w0, minlength=p.num_groups)
    if not np.allclose(got, p.masses, atol=1e-9):
        raise ValueError("init must put each group's mass on the group (sum to 1 without groups)")
    if p.caps is not None:
        if np.any(w0 > p.caps * (1 + 1e-9)):
            raise ValueError("init must satisfy the caps (init_e <= caps_e)")
        w0 = np.minimum(w0, p.caps)
    return jnp.asarray(w0, dtype=p.dtype)


def start_weights(p: ReducedProblem, on_working_sets: bool, init=None):
    """The starting design (in the problem's dtype): ``init`` checked, or the default start
    (``on_working_sets``: the solve's path, :func:`~theory.design.working_set.uses_working_sets`)."""
    if init is not None:
        return check_init(p, init)
    if not on_working_sets:
        # Problems solved on every edge: start from the uniform design (within groups); the
        # multiplicative and drop steps remove what the optimum does not use.
        counts = np.bincount(p.groups, minlength=p.num_groups)
        w0 = jnp.asarray(p.masses[p.groups] / counts[p.groups], dtype=p.dtype)
        if p.caps is not None:
            # The most uniform feasible design (water-filling: min(caps_e, tau_g)).
            w0 = jnp.asarray(_project_capped_np(w0, p.caps, p.groups, p.masses, p.num_groups), dtype=p.dtype)
        return w0
    w0 = _initial_weights(p.x, p.groups, p.masses, p.num_groups, p.rank)
    return w0 if p.caps is None else _fill_caps(p, w0)


def _fill_caps(p: ReducedProblem, w0):
    """The spanning support up to its caps; the mass it cannot hold goes to the edges of
    largest ``d_e`` at that support (the capped linear maximisation on the room left),
    which keeps the start's support, and working set, small."""
    base = np.minimum(np.asarray(w0, dtype=np.float64), p.caps)
    left = p.masses - np.bincount(p.groups, weights=base, minlength=p.num_groups)
    if np.any(left > 0):
        st0 = _refresh_subset(np.flatnonzero(base > 0), base, p.x, p.offset, p.b, p.kind)
        d0 = np.asarray(_price(p.x, st0.tinv, p.b, p.kind), dtype=np.float64)
        # A support that lost edges to their caps (a pilot's labels) may not span: its
        # scores are NaN; such edges are filled last (where NaN sorts), without a warning.
        bad = np.isnan(d0)
        if bad.any():
            d0 = np.where(bad, d0[~bad].min() - 1.0 if (~bad).any() else 0.0, d0)
        _, _, extra = _capped_lmo_np(d0, p.caps - base, p.groups, np.maximum(left, 0.0), p.num_groups, True)
        base = np.minimum(base + extra, p.caps)
    return jnp.asarray(base, dtype=p.dtype)
