"""First-order steps: pairwise (vertex-exchange) steps with an exact line search, the
multiplicative re-weighting, and the Frank-Wolfe step to the capped LMO vertex.

:func:`_pairwise_step` is one iteration; :func:`_run_steps` is the loop around it
with its convergence test (the relative certificate at most ``tol``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from theory.design.certificate import _certificate
from theory.design.simplex import _scale_to_caps
from theory.design.state import _State, _gram, _refresh, _scores


def _two_by_two_inv(a):
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    adj = jnp.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]], dtype=a.dtype)
    return adj / det


def _bisect_increasing(fprime, lo, hi, iters, past=None):
    """Bisection for the root of an increasing ``fprime`` on ``[lo, hi]``; returns the
    lower end. NaN (past a singularity) and points where ``past(mid)`` holds count as
    positive."""

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        up = ~(fprime(mid) <= 0)
        if past is not None:
            up = up | past(mid)
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    return jax.lax.fori_loop(0, iters, body, (lo, hi))[0]


def _line_search(kind, gm, hm, alpha_max, iters=60):
    """Exact minimiser of ``Phi(alpha)`` on ``[0, alpha_max]`` by bisection on ``Phi'``.

    ``Phi(alpha) = Phi - tr(alpha (D + alpha G)^-1 H)`` for A/L and
    ``Phi - log det(Id + alpha D G)`` for D, with ``D = diag(1, -1)``; ``Phi`` is convex
    in ``alpha``, so ``Phi'`` is increasing.
    """
    dmat = jnp.diag(jnp.array([1.0, -1.0], dtype=gm.dtype))
    eye = jnp.eye(2, dtype=gm.dtype)

    def fprime(alpha):
        if kind == "D":
            return -jnp.trace(_two_by_two_inv(eye + alpha * dmat @ gm) @ dmat @ gm)
        ninv = _two_by_two_inv(dmat + alpha * gm)
        return -jnp.trace(ninv @ dmat @ ninv @ hm)

    def phi_drop(alpha):
        if kind == "D":
            return -jnp.log(jnp.linalg.det(eye + alpha * dmat @ gm))
        return -jnp.trace(alpha * _two_by_two_inv(dmat + alpha * gm) @ hm)

    end = fprime(alpha_max)
    full = jnp.isfinite(end) & (end <= 0)
    lo = _bisect_increasing(fprime, jnp.zeros_like(alpha_max), alpha_max, iters)
    alpha = jnp.where(full, alpha_max, lo)
    return alpha, full, phi_drop(alpha)


def _choose_pair(st, gaps, groups, num_groups, caps):
    """The group of largest gap (with an improving pair when capped), its best edge ``j``
    (below its cap) and its worst weighted edge ``a``."""
    if caps is None:
        g = jnp.argmax(gaps)
        in_g = groups == g
        j = jnp.argmax(jnp.where(in_g, st.dd, -jnp.inf))
    else:
        below = st.w < caps
        up = jax.ops.segment_max(jnp.where(below, st.dd, -jnp.inf), groups, num_segments=num_groups)
        down = jax.ops.segment_min(jnp.where(st.w > 0, st.dd, jnp.inf), groups, num_segments=num_groups)
        g = jnp.argmax(jnp.where(up > down, gaps, -jnp.inf))
        in_g = groups == g
        j = jnp.argmax(jnp.where(in_g & below, st.dd, -jnp.inf))
    a = jnp.argmin(jnp.where(in_g & (st.w > 0), st.dd, jnp.inf))
    return j, a


def _move_mass(w, j, a, alpha, full, caps):
    """The weights after moving ``alpha`` from ``a`` to ``j`` (an edge that reaches its
    bound is set to it exactly)."""
    if caps is None:
        w2 = w.at[j].add(alpha)
        return w2.at[a].set(jnp.where(full, 0.0, w[a] - alpha))
    a_binds = w[a] <= caps[j] - w[j]
    w2 = w.at[j].set(jnp.where(full & ~a_binds, caps[j], jnp.minimum(w[j] + alpha, caps[j])))
    return w2.at[a].set(jnp.where(full & a_binds, 0.0, jnp.maximum(w[a] - alpha, 0.0)))


def _pairwise_step(st, x, b, groups, masses, kind, num_groups, caps, thr):
    """One pairwise step: mass from ``a`` to ``j`` by the exact line search, ``T^-1`` and
    ``M`` by a rank-two update. Returns ``(state, ok)``; a step that the 2x2 algebra
    cannot certify (``ok`` false) moves nothing."""
    dtype = x.dtype
    gaps, _ = _certificate(st, groups, masses, num_groups, caps, thr)
    j, a = _choose_pair(st, gaps, groups, num_groups, caps)
    p, qv = st.m[j], st.m[a]
    xj, xa = x[j], x[a]
    gm = jnp.array([[xj @ p, xj @ qv], [xa @ p, xa @ qv]], dtype=dtype)
    gm = 0.5 * (gm + gm.T)
    hj, ha = (st.q[j], st.q[a]) if kind == "L" else (p, qv)
    hm = jnp.array([[hj @ hj, hj @ ha], [ha @ hj, ha @ ha]], dtype=dtype)
    alpha_max = st.w[a] if caps is None else jnp.minimum(st.w[a], caps[j] - st.w[j])
    alpha, full, dphi = _line_search(kind, gm, hm, alpha_max)
    # At rounding level (nearly collinear j and a, or a certificate of order eps)
    # the 2x2 algebra can lose its sign; such a step is rejected and the loop stops.
    ok = jnp.isfinite(dphi) & (dphi <= 0) & jnp.isfinite(alpha) & (alpha > 0)
    if caps is not None:
        ok = ok & (j != a) & (st.dd[j] > st.dd[a])
    alpha = jnp.where(ok, alpha, 0.0)
    dphi = jnp.where(ok, dphi, 0.0)
    full = full & ok
    dmat = jnp.diag(jnp.array([1.0, -1.0], dtype=dtype))
    kmat = alpha * _two_by_two_inv(dmat + alpha * gm)
    rows = jnp.stack([p, qv])  # [2, r] = W^T T^-1
    pk = (x @ rows.T) @ kmat  # [E, 2] = X T^-1 W K
    m = st.m - pk @ rows
    q = st.q - pk @ (rows @ b) if kind == "L" else st.q
    tinv = st.tinv - rows.T @ kmat @ rows
    w = _move_mass(st.w, j, a, alpha, full, caps)
    return _State(w, tinv, m, q, _scores(kind, x, m, q), st.value + dphi), ok


class _StepLoop(NamedTuple):
    """Loop state of :func:`_run_steps`."""

    state: "_State"
    it: jax.Array  # accepted steps
    cert: jax.Array  # certificate at ``state`` (0 after a rejected step, to stop)
    hist_value: jax.Array  # [num_steps] reduced value after each step (NaN beyond ``it``)
    hist_cert: jax.Array  # [num_steps] certificate after each step


@functools.partial(jax.jit, static_argnames=("kind", "num_groups", "num_steps"))
def _run_steps(state, x, b, groups, masses, tol, const, kind, num_groups, num_steps, caps=None, thr=None):
    """Up to ``num_steps`` pairwise steps; stops early when the relative certificate is ``<= tol``.

    The scale is ``value + const`` for A and L and ``const`` (= the rank) for D.

    With ``caps`` (capped simplex) a step moves mass from the worst weighted edge ``a``
    to the best edge ``j`` below its cap, at most ``min(w_a, c_j - w_j)`` (an edge that
    reaches its bound is set to it exactly); the group is the one of largest gap among
    those with an improving pair (``d_j > d_a``). The certificate is the threshold bound
    of :func:`_certificate` at the fixed thresholds ``thr`` (valid at every iterate, and
    exact at the start of the block when ``thr`` comes from :func:`_capped_lmo_np`).
    """

    def scale(value):
        return const if kind == "D" else value + const

    def cond(carry: _StepLoop):
        return (carry.it < num_steps) & (carry.cert > tol * scale(carry.state.value))

    def body(carry: _StepLoop) -> _StepLoop:
        it = carry.it
        new, ok = _pairwise_step(carry.state, x, b, groups, masses, kind, num_groups, caps, thr)
        _, cert = _certificate(new, groups, masses, num_groups, caps, thr)
        # A rejected step ends the loop (the certificate is reported as 0 to stop it;
        # the caller recomputes the true one from scratch).
        cert = jnp.where(ok, cert, 0.0)
        return _StepLoop(new, it + ok.astype(it.dtype), cert, carry.hist_value.at[it].set(new.value),
                         carry.hist_cert.at[it].set(cert))

    _, cert0 = _certificate(state, groups, masses, num_groups, caps, thr)
    nan = jnp.full((num_steps,), jnp.nan, x.dtype)
    out = jax.lax.while_loop(cond, body, _StepLoop(state, jnp.asarray(0), cert0, nan, nan))
    return out.state, out.it, out.hist_value, out.hist_cert


@functools.partial(jax.jit, static_argnames=("kind", "num_groups", "num_steps"))
def _multiplicative(state, x, offset, b, groups, masses, kind, num_groups, num_steps, caps=None):
    """Multiplicative reweighting ``w_e <- w_e d_e^p`` (renormalised per group).

    ``p = 1`` for D (Titterington 1976) and ``p = 1/2`` for A and L (Fellman 1974;
    Yu 2010). Zeros stay zero, so it re-balances the current support at once, which
    pairwise steps do slowly. Each step is kept only if it lowers the criterion.
    With caps the renormalisation is ``w_e <- min(c_e, tau_g w_e d_e^p)`` (a heuristic
    there; the acceptance test keeps it safe).
    """
    power = 1.0 if kind == "D" else 0.5

    def body(_, st):
        w = st.w * jnp.power(jnp.maximum(st.dd, 0.0), power)
        tot = jax.ops.segment_sum(w, groups, num_segments=num_groups)
        # A group whose every weighted edge scores d_e = 0 (no edge of it sees what I weighs) keeps its
        # weights: rescaled by 1 / 1 they had become 0 and its mass vanished from the design; with caps
        # the group was infeasible and every step was refused.
        scored = (tot > 0)[groups]
        if caps is None:
            w = jnp.where(st.w > 0, jnp.where(scored, w * (masses / jnp.where(tot > 0, tot, 1.0))[groups], st.w), 0.0)
            ok = True
        else:
            w, ok = _scale_to_caps(jnp.where(st.w > 0, jnp.where(scored, w, st.w), 0.0), caps, groups, masses, num_groups)
        new = _refresh(w, x, offset, b, kind)
        better = ok & jnp.isfinite(new.value) & (new.value < st.value)
        return jax.tree_util.tree_map(lambda a, c: jnp.where(better, a, c), new, st)

    return jax.lax.fori_loop(0, num_steps, body, state)


def _vertex_line_search(lam, h, kind, dtype, iters):
    """``(gamma, end_ok)``: the minimiser on ``[0, 1]`` of ``sum_i h_i / (1 + gamma lam_i)``
    (A, L) or ``-sum_i log(1 + gamma lam_i)`` (D), and whether it is the end ``gamma = 1``."""

    def fprime(g):
        den = 1.0 + g * lam
        if kind == "D":
            return -jnp.sum(lam / den)
        return -jnp.sum(h * lam / den**2)

    one = jnp.ones((), dtype)
    end_ok = (fprime(one) <= 0) & jnp.all(1.0 + lam > 0)
    lo = _bisect_increasing(fprime, jnp.zeros((), dtype), one, iters, past=lambda mid: jnp.any(1.0 + mid * lam <= 0))
    return jnp.where(end_ok, one, lo), end_ok


@functools.partial(jax.jit, static_argnames=("kind",))
def _vertex_step(state, x, offset, b, caps, vertex, kind, iters=60):
    """Frank-Wolfe step ``w + gamma (s - w)`` towards the (capped) LMO vertex ``s``, with an
    exact line search on ``[0, 1]``.

    Along the direction, ``T(gamma) = T + gamma Delta`` with ``Delta = X^T diag(s - w) X``.
    With ``T = L L^T`` and ``L^-1 Delta L^-T = Q diag(lam) Q^T``: ``Phi(gamma) =
    sum_i h_i / (1 + gamma lam_i)`` (A, L; ``h_i`` the squared rows of ``Q^T L^-1 B``) or
    ``Phi(0) - sum_i log(1 + gamma lam_i)`` (D), so ``Phi'`` is increasing and bisection
    finds the minimiser. One step moves every edge that the linear maximisation fills
    or empties at once, which the pairwise steps would do an edge at a time.
    """
    delta = vertex - state.w
    chol = jnp.linalg.cholesky(_gram(state.w, x, offset))
    dmat = (x.T * delta) @ x
    linv_d = jax.scipy.linalg.solve_triangular(chol, dmat, lower=True)
    mmat = jax.scipy.linalg.solve_triangular(chol, linv_d.T, lower=True)
    lam, q = jnp.linalg.eigh(0.5 * (mmat + mmat.T))
    if kind == "D":
        h = jnp.ones_like(lam)
    else:
        bb = b if kind == "L" else jnp.eye(chol.shape[0], dtype=chol.dtype)
        h = jnp.sum((q.T @ jax.scipy.linalg.solve_triangular(chol, bb, lower=True)) ** 2, axis=1)
    gamma, end_ok = _vertex_line_search(lam, h, kind, chol.dtype, iters)
    w = jnp.clip(state.w + gamma * delta, 0.0, caps)
    w = jnp.where(end_ok, vertex, w)
    return _refresh(w, x, offset, b, kind), gamma
