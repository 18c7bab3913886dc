"""Second-order polish: projected Newton steps on the weights.

:func:`_polish` factors the support Hessian (supports up to ``polish_max`` edges);
:func:`_polish_cg` takes the same steps matrix-free by projected conjugate gradients.
Both keep the group masses exactly and accept a step through :func:`_backtrack`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from theory.design.simplex import _project_capped_np
from theory.design.state import _gram, _pad_rows, _power_of_two, _reduced_value, _refresh


def _backtrack(trial_at, evaluate, value, alpha=1.0, tries=30):
    """The first of ``alpha, alpha / 2, ...`` (at most ``tries``) whose trial lowers the
    criterion below ``value``.

    ``trial_at(alpha)`` gives the trial weights, or ``None`` where there is none (the
    step is halved without evaluating); ``evaluate(trial)`` gives ``(result, value)``.
    Returns ``(trial, result, value)`` or ``None`` when no trial lowers the criterion."""
    for _ in range(tries):
        trial = trial_at(alpha)
        if trial is not None:
            result, tv = evaluate(trial)
            if np.isfinite(tv) and tv < value:
                return trial, result, tv
        alpha *= 0.5
    return None


def _support_hessian(xs, tinv, b, kind):
    """Gradient ``-d`` and Hessian of the (reduced) criterion in the support weights.

    D: ``H_ij = (v_i^T T^-1 v_j)^2``; A: ``2 (v_i^T T^-1 v_j)(v_i^T T^-2 v_j)``;
    L: ``2 (v_i^T T^-1 v_j)(v_i^T T^-1 B B^T T^-1 v_j)`` (tested against autodiff).
    """
    m = xs @ tinv
    k = m @ xs.T
    if kind == "D":
        return -jnp.sum(m * xs, axis=1), k * k
    mq = m @ b if kind == "L" else m
    k2 = mq @ mq.T
    return -jnp.sum(mq * mq, axis=1), 2.0 * k * k2


@functools.partial(jax.jit, static_argnames=("kind",))
def _newton_direction(w, xs, tinv, offset, b, kind, groups_onehot, real):
    """Newton step on the support with the group-mass constraints (a KKT solve)."""
    g, h = _support_hessian(xs, tinv, b, kind)
    s = w.shape[0]
    dtype = w.dtype
    scale = jnp.maximum(jnp.max(jnp.abs(jnp.diagonal(h))), jnp.finfo(dtype).tiny)
    # Padded slots are pinned: unit Hessian, zero gradient, so their step is zero.
    h = jnp.where(real[:, None] & real[None, :], h, 0.0) + jnp.diag(jnp.where(real, 1e-12 * scale, scale))
    g = jnp.where(real, g, 0.0)
    a = groups_onehot.T  # [G, s]
    ng = a.shape[0]
    kkt = jnp.block([[h, a.T], [a, jnp.zeros((ng, ng), dtype)]])
    rhs = jnp.concatenate([-g, jnp.zeros((ng,), dtype)])
    sol = jnp.linalg.lstsq(kkt, rhs)[0]
    return jnp.where(real, sol[:s], 0.0)


class _Support(NamedTuple):
    """The weighted edges of :func:`_polish`, padded to a power of two."""

    sup: np.ndarray  # indices of the weighted edges
    real: np.ndarray  # [s] bool, real slots
    xs: jax.Array  # [s, r]
    groups: np.ndarray  # [s]
    onehot: jax.Array  # [s, G] group of each movable slot
    movable: jax.Array  # [s] bool, slots a Newton step may move
    members: list  # per group, its real slots (renormalised)
    members_step: list  # per group, its movable slots (directions centred)
    masses: list  # per group, its mass (float64)
    caps: np.ndarray  # [s] float64 caps, or None


def _support(w, xs, groups, num_groups, caps):
    """The padded support problem of :func:`_polish` and the starting support weights."""
    sup = np.flatnonzero(np.asarray(w) > 0)
    idx, real_np = _pad_rows(sup, _power_of_two(sup.size, 16))
    real = jnp.asarray(real_np)
    xs = xs[jnp.asarray(idx)] * real[:, None].astype(xs.dtype)
    gs = np.where(real_np, np.asarray(groups)[idx], 0)
    onehot = jnp.asarray((gs[:, None] == np.arange(num_groups)[None, :]) & real_np[:, None], dtype=xs.dtype)
    ws = jnp.where(real, jnp.asarray(w)[jnp.asarray(idx)], 0.0)
    # Group masses, kept exactly: in float32 the KKT solve's constraint rows are only
    # met to its conditioning, and a step that adds mass "lowers" the criterion by
    # scaling Sigma up (the weights once drifted to sum 3.4). Directions are projected
    # on the constraints and trials renormalised, in float64.
    members = [real_np & (gs == g) for g in range(num_groups)]
    ws64 = np.asarray(ws, dtype=np.float64)
    masses = [ws64[m].sum() for m in members]
    caps_s, movable, members_step = None, real, members
    if caps is not None:
        caps_s = np.where(real_np, np.asarray(caps, dtype=np.float64)[idx], 0.0)
        movable_np = real_np & (ws64 < caps_s)
        movable = jnp.asarray(movable_np)
        onehot = onehot * movable[:, None].astype(xs.dtype)
        members_step = [movable_np & (gs == g) for g in range(num_groups)]
    return _Support(sup, real_np, xs, gs, onehot, movable, members, members_step, masses, caps_s), ws


def _support_trial(s, wsn, delta, alpha, alpha_max, neg, num_groups):
    """The trial weights ``w + alpha delta`` on the support, back on the feasible set."""
    if s.caps is not None:
        return _project_capped_np(wsn + alpha * delta, s.caps, s.groups, np.asarray(s.masses), num_groups)
    trial = np.where(s.real, np.maximum(wsn + alpha * delta, 0.0), 0.0)
    if alpha == alpha_max:
        trial[np.argmin(np.where(neg, -wsn / np.where(neg, delta, -1.0), np.inf))] = 0.0
    for m, mass in zip(s.members, s.masses):
        tot = trial[m].sum()
        if tot > 0:
            trial[m] *= mass / tot
    return trial


def _polish(w, xs, offset, b, kind, groups, num_groups, steps=8, caps=None):
    """Projected Newton on the weighted edges (``w > 0``) of the working set.

    With ``caps`` (float64 numpy, one per edge of ``w``) the edges at their cap are held
    and trials are projected on the capped simplex."""
    s, ws = _support(w, xs, groups, num_groups, caps)
    value = float(_reduced_value(ws, s.xs, offset, b, kind))

    def evaluate(trial):
        return None, float(_reduced_value(jnp.asarray(trial, s.xs.dtype), s.xs, offset, b, kind))

    for _ in range(steps):
        tinv = jnp.linalg.inv(_gram(ws, s.xs, offset))
        delta = np.array(_newton_direction(ws, s.xs, 0.5 * (tinv + tinv.T), offset, b, kind, s.onehot, s.movable),
                         dtype=np.float64)
        for m in s.members_step:
            if m.any():
                delta[m] -= delta[m].mean()
        wsn = np.asarray(ws, dtype=np.float64)
        neg = delta < 0
        alpha_max = float(np.min(-wsn[neg] / delta[neg])) if neg.any() else np.inf
        alpha = min(1.0, alpha_max) if caps is None else 1.0
        found = _backtrack(lambda al: _support_trial(s, wsn, delta, al, alpha_max, neg, num_groups), evaluate, value,
                           alpha)
        if found is None:
            break
        ws, value = jnp.asarray(found[0], s.xs.dtype), found[2]
    out = np.asarray(w, dtype=np.float64).copy()
    out[s.sup] = np.asarray(ws, dtype=np.float64)[: s.sup.size]
    return out


def _hessian_vector(u, x, m, q, kind):
    """``H u`` for the Hessian of the reduced criterion in the weights, without forming ``H``.

    With ``H = c (K1 o K2)`` (see :func:`_support_hessian`) and both factors of rank
    ``r``, ``(H u)_i = c a_i^T (sum_j u_j x_j p_j^T) c_i``: ``O(E r k)`` instead of
    ``O(E^2 r)``. D: ``a = c = m``, ``p = x``, ``c = 1``; A: ``a = c = p = m``; L:
    ``a = m``, ``p = c = q``, both with ``c = 2``.
    """
    if kind == "D":
        s = (x.T * u) @ x
        return jnp.sum((m @ s) * m, axis=1)
    right = q if kind == "L" else m
    s = (x.T * u) @ right
    return 2.0 * jnp.sum((m @ s) * right, axis=1)


def _jacobi(state, x, kind, free):
    """``1 / H_ii`` on the free edges (0 elsewhere): the diagonal of :func:`_support_hessian`'s
    Hessian, ``(m_i . x_i)^2`` (D), ``2 (m_i . x_i)(m_i . m_i)`` (A), ``2 (m_i . x_i)(q_i . q_i)`` (L),
    floored at ``1e-12`` of its largest entry (all zero: 1, the unpreconditioned step)."""
    k = jnp.sum(state.m * x, axis=1)
    if kind == "D":
        diag = k * k
    else:
        right = state.q if kind == "L" else state.m
        diag = 2.0 * k * jnp.sum(right * right, axis=1)
    diag = jnp.where(free, diag, 0.0)
    largest = jnp.max(diag)
    # a floor relative to the largest entry; where every entry is 0 the floor is 1 (no scaling)
    # rather than an underflow to 0 and an infinite inverse
    floor = jnp.where(largest > 0, 1e-12 * largest, 1.0)
    return jnp.where(free, 1.0 / jnp.maximum(diag, floor), 0.0)


def _project_groups_scaled(v, inv_diag, free, groups, num_groups):
    """The Jacobi-preconditioned projection: ``D^-1 (v - lam_g)`` on the free weights, with each
    group's ``lam_g`` making the result's sum over the group's free weights zero (the projection
    on the constraints in the metric of ``D = diag(H)``; :func:`_project_groups` for ``D = I``)."""
    v = jnp.where(free, v, 0.0)
    num = jax.ops.segment_sum(v * inv_diag, groups, num_segments=num_groups)
    den = jax.ops.segment_sum(inv_diag, groups, num_segments=num_groups)
    lam = num / jnp.where(den > 0, den, 1.0)
    return jnp.where(free, (v - lam[groups]) * inv_diag, 0.0)


def _project_groups(v, free, groups, num_groups):
    """``v`` on the free weights, minus its mean over the free weights of each group."""
    v = jnp.where(free, v, 0.0)
    tot = jax.ops.segment_sum(v, groups, num_segments=num_groups)
    cnt = jax.ops.segment_sum(free.astype(v.dtype), groups, num_segments=num_groups)
    return jnp.where(free, v - (tot / jnp.maximum(cnt, 1.0))[groups], 0.0)


class _CGState(NamedTuple):
    """Loop state of the projected conjugate gradients in :func:`_newton_cg_direction`."""

    direction: jax.Array  # the Newton direction so far
    residual: jax.Array
    search: jax.Array  # conjugate search direction
    rr: jax.Array  # r . z, the residual's squared norm in the preconditioner's metric
    it: jax.Array
    stop: jax.Array  # a direction of no curvature was met


def _free_edges(state, x, groups, num_groups, caps, thr):
    """``(free, at_cap)`` of Bertsekas' projected Newton.

    An edge is held at zero only when its weight is within eps of zero *and* its
    ``d_e`` does not beat its group's reference level (the gradient pushes it to zero);
    every other edge is free, including unweighted edges that would gain mass. eps is
    1% of the group's uniform weight. The reference level is the group's weighted mean
    of ``d`` without caps, ``thr`` with caps, where an edge within eps of its cap whose
    ``d_e`` is at least the level is held at its cap (``at_cap``; ``None`` without caps)."""
    spent = jax.ops.segment_sum(state.w * state.dd, groups, num_segments=num_groups)
    mass = jax.ops.segment_sum(state.w, groups, num_segments=num_groups)
    mean = spent / jnp.where(mass > 0, mass, 1.0)
    real = jnp.any(x != 0, axis=1) | (state.w > 0)  # padded rows of a working set are zero
    cnt = jax.ops.segment_sum(real.astype(x.dtype), groups, num_segments=num_groups)
    eps = 0.01 * (mass / jnp.maximum(cnt, 1.0))[groups]
    if caps is None:
        return ~((state.w <= eps) & (state.dd <= mean[groups])) & (mass[groups] > 0) & real, None
    eps = jnp.minimum(eps, 0.01 * caps)
    ref = thr[groups]
    at_cap = (state.w >= caps - eps) & (state.dd >= ref)
    free = ~((state.w <= eps) & (state.dd <= ref)) & ~at_cap & (mass[groups] > 0) & real & (caps > 0)
    return free, at_cap


@functools.partial(jax.jit, static_argnames=("kind", "num_groups", "max_iter"))
def _newton_cg_direction(state, x, groups, kind, num_groups, max_iter=100, rtol=1e-3, caps=None, thr=None):
    """Projected Newton direction with the group masses fixed (Bertsekas 1982).

    Projected conjugate gradients on ``P H P delta = -P g``, ``g = -d`` the gradient and
    ``P`` the projection on the free edges (:func:`_free_edges`) with zero mass change
    per group, preconditioned by ``H``'s diagonal (:func:`_jacobi`, the projection taken in
    its metric: :func:`_project_groups_scaled`). ``H`` is positive semi-definite (the
    criterion is convex); CG stops at a residual of ``rtol`` relative in the preconditioner's
    norm (``sqrt(r . z)``), at ``max_iter`` steps, or at a direction of no curvature.
    Held edges take the projected gradient step, to zero (or to their cap): left in
    place, the tiny weights of a sparse optimum would never leave the support.
    """
    free, at_cap = _free_edges(state, x, groups, num_groups, caps, thr)
    rhs = _project_groups(state.dd, free, groups, num_groups)
    inv_diag = _jacobi(state, x, kind, free)

    def precondition(r):
        return _project_groups_scaled(r, inv_diag, free, groups, num_groups)

    z0 = precondition(rhs)
    rr0 = rhs @ z0

    def cond(c: _CGState):
        return (c.it < max_iter) & ~c.stop & (c.rr > (rtol * rtol) * rr0)

    def body(c: _CGState) -> _CGState:
        d, r, p, rr = c.direction, c.residual, c.search, c.rr
        hp = _project_groups(_hessian_vector(p, x, state.m, state.q, kind), free, groups, num_groups)
        php = p @ hp
        ok = php > 0
        alpha = jnp.where(ok, rr / jnp.where(ok, php, 1.0), 0.0)
        d = d + alpha * p
        r = r - alpha * hp
        z = precondition(r)
        rrn = r @ z
        p = z + (rrn / jnp.where(rr > 0, rr, 1.0)) * p
        return _CGState(d, r, p, rrn, c.it + 1, ~ok)

    init = _CGState(jnp.zeros_like(rhs), rhs, z0, rr0, jnp.asarray(0), rr0 <= 0)
    delta = jax.lax.while_loop(cond, body, init).direction
    held = ~free & (state.w > 0)
    if caps is None:
        return jnp.where(held, -state.w, delta)
    held_up = ~free & at_cap
    return jnp.where(held_up, caps - state.w, jnp.where(held, -state.w, delta))


def _group_trial(wn, delta, alpha, caps, g_np, masses, num_groups):
    """``w + alpha delta`` back on the feasible set (projected with caps, clipped at 0 and
    renormalised per group without); ``None`` when a group with mass would be emptied."""
    if caps is not None:
        return _project_capped_np(wn + alpha * delta, caps, g_np, masses, num_groups)
    trial = np.maximum(wn + alpha * delta, 0.0)  # projected on w >= 0
    tot = np.bincount(g_np, weights=trial, minlength=num_groups)
    if np.any((tot <= 0) & (masses > 0)):
        return None
    return trial * np.where(tot > 0, masses / np.where(tot > 0, tot, 1.0), 0.0)[g_np]


def _polish_cg(state, x, offset, b, kind, groups, num_groups, thr_fn, steps=8, caps=None):
    """Projected Newton with CG directions (for supports too large to factor): steps
    ``w + alpha delta`` back on the feasible set, ``alpha = 1, 1/2, ...`` until the
    criterion drops; returns the best state found. As in :func:`_polish`, group masses
    are kept exactly: directions have zero mass per group and trials are renormalised in
    float64. Stops at the first step that does not lower the criterion, or when the
    decrease is below ``1e-3`` of the current certificate (nothing left to gain on this
    support).

    ``thr_fn(state)`` gives the exact certificate of ``state`` and, with ``caps``
    (float64 numpy ``[E]``), the reference levels (:func:`_reference_level`)."""
    g_np = np.asarray(groups)
    masses = np.bincount(g_np, weights=np.asarray(state.w, dtype=np.float64), minlength=num_groups)
    caps_j = None if caps is None else jnp.asarray(caps, x.dtype)

    def evaluate(trial):
        cand = _refresh(jnp.asarray(trial, x.dtype), x, offset, b, kind)
        return cand, float(cand.value)

    for _ in range(steps):
        cert, ref = thr_fn(state)
        thr = None if ref is None else jnp.asarray(ref, x.dtype)
        delta = np.asarray(_newton_cg_direction(state, x, groups, kind, num_groups, caps=caps_j, thr=thr), np.float64)
        wn = np.asarray(state.w, dtype=np.float64)
        if not np.any(delta != 0):
            break
        found = _backtrack(lambda al: _group_trial(wn, delta, al, caps, g_np, masses, num_groups), evaluate,
                           float(state.value))
        if found is None:
            break
        gained = float(state.value) - found[2]
        state = found[1]
        if gained < 1e-3 * float(cert):
            break
    return state
