r"""Certified optimal approximate designs over candidate comparison edges.

A design is a probability vector ``w`` over the ``E`` candidate edges. With
``v_e = beta sqrt(sigmoid'(beta theta.z_e)) z_e`` the information matrix is
``Sigma_w = sum_e w_e v_e v_e^T`` and, with ``T_w = ridge Id + Sigma_w``,

* ``"L"`` (the paper's criterion): ``Phi_L(w) = tr(I T_w^+)``, ``I`` the policy curvature;
* ``"A"``: ``Phi_A(w) = tr(T_w^+)`` (the L-criterion with ``I = Id``);
* ``"D"``: ``Phi_D(w) = -log det T_w`` (a pseudo-determinant when ``ridge = 0``).

When ``ridge = 0`` every inverse and determinant is taken on the identifiable
subspace ``U = span{z_e}`` (theory brief section 3): directions that no candidate edge
sees carry no information and, for ``"L"``, must carry no curvature, or every
design has ``Phi = +inf`` (an error here). With ``ridge > 0`` the criteria are the
full-space ones; the part outside ``U`` is a constant that does not depend on ``w``.

Optimality (theory brief F4, the equivalence theorem). Let
``d_e(w) = -dPhi/dw_e``: ``v_e^T T^+ I T^+ v_e`` for L, ``v_e^T T^{+2} v_e`` for A and
the leverage ``v_e^T T^+ v_e`` for D. ``Phi`` is convex, so for every feasible ``w'``

.. math::  \Phi(w) - \Phi(w') \le \max_e d_e(w) - \sum_e w_e d_e(w) =: \mathrm{cert}(w),

which is the Frank-Wolfe duality gap. It is a certificate at *every* iterate, and
``cert(w) = 0`` iff ``w`` is optimal (for L and A with ``ridge = 0`` the condition is
``max_e d_e = Phi``; for D it is Kiefer-Wolfowitz, ``max_e d_e = dim U``). With
groups (a product of simplices, each group ``g`` of mass ``m_g``) the maximum is
taken per group: ``cert = sum_g m_g max_{e in g} d_e - sum_e w_e d_e``.

Designs with caps (finite budgets). With budget ``n`` and at most ``c_e`` labels on
edge ``e`` the design satisfies ``0 <= w_e <= caps_e = c_e / n`` (HH: each comparison
at most once, ``caps = 1 / n``). Over this capped simplex the linear maximisation of
``<d, s>`` fills the edges of largest ``d_e`` up to their caps until the mass is placed
(per group with groups), and ``cert(w) = <d(w), s - w> >= Phi(w) - Phi*`` by convexity.
The equivalence theorem for bounded designs (Wynn 1982; Sahm and Schwabe 2001): ``w``
is optimal iff there is a threshold ``t`` (per group) with ``d_e >= t`` on edges at their
cap, ``d_e = t`` on free support edges (``0 < w_e < caps_e``) and ``d_e <= t`` off the
support. By LP duality ``max_s <d, s> = min_t m t + sum_e c_e (d_e - t)_+``, so every
threshold gives an upper bound of the certificate; the iterations use that O(E) bound
at the threshold of the last exact (sorted) LMO, and the reported certificate is the
exact one, recomputed from scratch.

Bayes criterion. A prior ``N(0, Id / lambda)`` on ``theta`` and ``n`` labels give a
posterior precision of about ``lambda Id + n Sigma_w``; the expected gap is then about
``(beta / 2n) tr(I (lambda / n Id + Sigma_w)^-1)``: the criterion above with
``ridge = lambda / n`` (``prior_precision`` and ``budget`` of :func:`optimal_design`).

Algorithm: pairwise Frank-Wolfe (the vertex-exchange method of optimal design),
interleaved with multiplicative re-weighting of the support (kept when it lowers the
criterion). Each
step moves mass ``alpha`` from the worst active edge ``a`` to the best edge ``j`` of
one group, with ``alpha`` chosen by an exact line search on the closed-form
rank-two update of ``T^{-1}``. The method keeps ``M = V T^{-1}`` (``[E, r]``) up to date
with rank-two (Woodbury) updates, so one step costs ``O(E r)``, not ``O(E r^2)``; the
ridge is untouched by a mass transfer, so the updates are exact for every ridge.
With caps each block starts with up to three Frank-Wolfe steps to the capped LMO
vertex (exact line search through one ``r x r`` generalised eigen-decomposition): a
capped optimum is nearly a vertex, and at HH scale these steps alone take the
certificate from 0.1 to 4e-4. A pairwise step is limited by ``min(w_a, c_j - w_j)``
(``j`` the best edge below its cap), the multiplicative step becomes ``w_e <- min(c_e, tau w_e d_e^p)`` and the Newton
steps hold edges at either bound and project their trials on the capped simplex.
Every ``refresh_every`` steps, and before convergence is declared, everything is
recomputed from the weights (``O(E r^2)``), so the reported value and certificate
never carry accumulated rounding. The start is a small spanning support chosen by
pivoted Gram-Schmidt (plus one edge per group without one), uniform within groups.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from theory import _validation as V
from theory.information import _sigmoid_prime, rank_threshold

__all__ = ["DesignSolution", "SolverHistory", "optimal_design", "CRITERIA"]

CRITERIA = ("L", "A", "D")


class DesignSolution(NamedTuple):
    """Result of :func:`optimal_design`.

    Attributes:
      weights: ``[E]`` the design (non-negative, sums to one; to each group's mass;
        at most ``caps`` when given).
      value: criterion at ``weights`` (full definition, ridge constant included).
      certificate: duality gap ``cert(w) >= value - optimum`` (absolute), computed
        from scratch at ``weights`` (with caps: the gap over the capped simplex).
      relative_certificate: ``certificate / value`` for L and A; ``certificate / r``
        for D (then the D-efficiency is at least ``exp(-relative_certificate)``).
      converged: ``relative_certificate <= tol``.
      num_iter: pairwise steps taken.
      rank: ``r``, the dimension of the identifiable subspace ``span{z_e}``.
      history: :class:`SolverHistory`.
    """

    weights: jnp.ndarray
    value: float
    certificate: float
    relative_certificate: float
    converged: bool
    num_iter: int
    rank: int
    history: "SolverHistory"


class SolverHistory(NamedTuple):
    """What :func:`optimal_design` tracked while it iterated.

    Attributes:
      value: ``[max(num_iter, 1)]`` criterion after each pairwise step (full
        definition, ridge constant included); the last entry is recomputed from
        scratch at the returned weights.
      certificate: ``[max(num_iter, 1)]`` the duality-gap certificate after each step
        (valid upper bounds on ``value - optimum``); the last entry is the returned
        certificate. Within a working set it is the working set's certificate.
      pricing: ``[rounds, 2]`` one row per pricing round of the working-set
        (column-generation) loop: pairwise steps taken so far, and the certificate
        over all ``E`` edges then.
    """

    value: np.ndarray
    certificate: np.ndarray
    pricing: np.ndarray


class _Problem(NamedTuple):
    """Reduced problem in ``r`` coordinates, after whitening where possible.

    ``kind`` is the form the reduction leaves, not the criterion asked for: an L
    problem whose ``I`` is well conditioned on the identifiable span is whitened by
    ``I^{1/2}`` and becomes an A problem (``tr T^-1``); only a rank-deficient or
    ill-conditioned ``I`` keeps the general L form.
    """

    x: jnp.ndarray  # [E, r] transformed v_e
    offset: jnp.ndarray  # [r, r] ridge term in these coordinates
    b: Optional[jnp.ndarray]  # [r, k] with I_r = b b^T (general L only)
    kind: str  # "A" (tr T^-1), "L" (tr b^T T^-1 b), "D" (-logdet T)
    constant: float  # criterion part outside span{z_e}
    rank: int


def _reduce(diffs, theta, curvature, beta, criterion, ridge) -> _Problem:
    e, d = diffs.shape
    dtype = diffs.dtype
    c = beta**2 * _sigmoid_prime(beta * (diffs @ theta))
    v = diffs * jnp.sqrt(c)[:, None]
    gram = v.T @ v
    lam, vec = np.linalg.eigh(np.asarray(0.5 * (gram + gram.T), dtype=np.float64))
    keep = lam > float(rank_threshold(max(lam.max(), 0.0), d, np.float64))
    r = int(keep.sum())
    if r == 0:
        if not bool(jnp.any(diffs != 0)):
            raise ValueError("diffs: every candidate edge difference is zero; no design has information")
        margins = np.abs(np.asarray(beta * (diffs @ theta), dtype=np.float64))
        raise ValueError(
            "saturated information: sigmoid'(beta theta.z_e) is 0 to floating-point precision on every candidate edge "
            f"(|beta theta.z_e| from {margins.min():.3g} to {margins.max():.3g}, largest |z_e| "
            f"{float(jnp.max(jnp.abs(diffs))):.3g}), so no design has information at this theta; "
            "theta, beta or the scale of the features is too large (margins beyond about "
            f"{float(-np.log(np.finfo(np.asarray(diffs).dtype).tiny)):.0f} give sigmoid' = 0 in "
            f"{np.asarray(diffs).dtype})"
        )
    u = jnp.asarray(vec[:, keep], dtype=dtype)  # [d, r] orthonormal basis of span{z_e}
    vr = v @ u
    eye = jnp.eye(r, dtype=dtype)
    if criterion == "D":
        const = -(d - r) * float(np.log(ridge)) if (ridge > 0 and r < d) else 0.0
        return _Problem(vr, ridge * eye, None, "D", const, r)
    if criterion == "A":
        const = (d - r) / ridge if (ridge > 0 and r < d) else 0.0
        return _Problem(vr, ridge * eye, None, "A", const, r)
    cur = np.asarray(curvature, dtype=np.float64)
    cur = 0.5 * (cur + cur.T)
    u64 = vec[:, keep]
    cur_r = u64.T @ cur @ u64
    outside = float(np.trace(cur) - np.trace(cur_r))
    tr_i = max(float(np.trace(cur)), np.finfo(np.float64).tiny)
    if ridge == 0 and outside > np.sqrt(np.finfo(np.asarray(diffs).dtype).eps) * tr_i:
        raise ValueError(
            "curvature: a direction with curvature is not spanned by any candidate edge "
            f"(curvature mass {outside:.3g} of {tr_i:.3g} lies outside span{{z_e}}), so every "
            "design has criterion +inf; add edges that see it or use ridge > 0"
        )
    const = max(outside, 0.0) / ridge if ridge > 0 else 0.0
    mu, w = np.linalg.eigh(cur_r)
    mu_max = max(mu.max(), 0.0)
    if mu_max <= 0:
        raise ValueError("curvature is zero on the span of the candidate edges: every design has criterion 0")
    if mu.min() > 1e3 * np.sqrt(np.finfo(np.asarray(diffs).dtype).eps) * mu_max:
        # Whiten: with I_r = L L^T, L = W mu^{1/2}, tr(I_r T^-1) = tr((L^-1 T L^-T)^-1);
        # v -> L^-1 v and the ridge becomes ridge * diag(1 / mu).
        a = w / np.sqrt(mu)[None, :]  # L^-T
        x = vr @ jnp.asarray(a, dtype=dtype)
        offset = jnp.asarray(np.diag(ridge / mu), dtype=dtype)
        return _Problem(x, offset, None, "A", const, r)
    pos = mu > float(rank_threshold(mu_max, r, np.float64))
    b = jnp.asarray(w[:, pos] * np.sqrt(mu[pos])[None, :], dtype=dtype)
    return _Problem(vr, ridge * eye, b, "L", const, r)


# ----------------------------------------------------------------------------------
# State and its exact recomputation


class _State(NamedTuple):
    w: jnp.ndarray  # [E]
    tinv: jnp.ndarray  # [r, r]
    m: jnp.ndarray  # [E, r]   X T^-1
    q: jnp.ndarray  # [E, k]   X T^-1 b (general L), else [E, 0]
    dd: jnp.ndarray  # [E]   d_e
    value: jnp.ndarray  # scalar, reduced criterion


def _scores(kind, x, m, q):
    if kind == "A":
        return jnp.sum(m * m, axis=1)
    if kind == "L":
        return jnp.sum(q * q, axis=1)
    return jnp.sum(m * x, axis=1)


@functools.partial(jax.jit, static_argnames=("kind",))
def _refresh(w, x, offset, b, kind):
    t = offset + (x.T * w) @ x
    t = 0.5 * (t + t.T)
    chol = jnp.linalg.cholesky(t)
    eye = jnp.eye(t.shape[0], dtype=t.dtype)
    tinv = jax.scipy.linalg.cho_solve((chol, True), eye)
    tinv = 0.5 * (tinv + tinv.T)
    m = x @ tinv
    q = m @ b if kind == "L" else m[:, :0]
    if kind == "A":
        value = jnp.trace(tinv)
    elif kind == "L":
        value = jnp.trace(b.T @ tinv @ b)
    else:
        value = -2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    return _State(w, tinv, m, q, _scores(kind, x, m, q), value)


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
        if caps is None:
            tot = jax.ops.segment_sum(w, groups, num_segments=num_groups)
            w = jnp.where(st.w > 0, w * (masses / jnp.where(tot > 0, tot, 1.0))[groups], 0.0)
            ok = True
        else:
            w, ok = _scale_to_caps(jnp.where(st.w > 0, w, 0.0), caps, groups, masses, num_groups)
        new = _refresh(w, x, offset, b, kind)
        better = ok & jnp.isfinite(new.value) & (new.value < st.value)
        return jax.tree_util.tree_map(lambda a, c: jnp.where(better, a, c), new, st)

    return jax.lax.fori_loop(0, num_steps, body, state)


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
    t = offset + (x.T * state.w) @ x
    t = 0.5 * (t + t.T)
    chol = jnp.linalg.cholesky(t)
    dmat = (x.T * delta) @ x
    linv_d = jax.scipy.linalg.solve_triangular(chol, dmat, lower=True)
    mmat = jax.scipy.linalg.solve_triangular(chol, linv_d.T, lower=True)
    lam, q = jnp.linalg.eigh(0.5 * (mmat + mmat.T))
    if kind == "D":
        h = jnp.ones_like(lam)
    else:
        bb = b if kind == "L" else jnp.eye(t.shape[0], dtype=t.dtype)
        h = jnp.sum((q.T @ jax.scipy.linalg.solve_triangular(chol, bb, lower=True)) ** 2, axis=1)

    def fprime(g):
        den = 1.0 + g * lam
        if kind == "D":
            return -jnp.sum(lam / den)
        return -jnp.sum(h * lam / den**2)

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        fm = fprime(mid)
        up = ~(fm <= 0) | jnp.any(1.0 + mid * lam <= 0)
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    one = jnp.ones((), t.dtype)
    end_ok = (fprime(one) <= 0) & jnp.all(1.0 + lam > 0)
    lo, _ = jax.lax.fori_loop(0, iters, body, (jnp.zeros((), t.dtype), one))
    gamma = jnp.where(end_ok, one, lo)
    w = jnp.clip(state.w + gamma * delta, 0.0, caps)
    w = jnp.where(end_ok, vertex, w)
    return _refresh(w, x, offset, b, kind), gamma


# ----------------------------------------------------------------------------------
# One pairwise step


def _two_by_two_inv(a):
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    adj = jnp.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]], dtype=a.dtype)
    return adj / det


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

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        fm = fprime(mid)
        up = ~(fm <= 0)  # NaN (past a singularity) counts as positive
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    lo, _ = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(alpha_max), alpha_max))
    alpha = jnp.where(full, alpha_max, lo)
    return alpha, full, phi_drop(alpha)


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
    dtype = x.dtype

    def scale(value):
        return const if kind == "D" else value + const
    def cond(carry: _StepLoop):
        return (carry.it < num_steps) & (carry.cert > tol * scale(carry.state.value))

    def body(carry: _StepLoop) -> _StepLoop:
        st, it = carry.state, carry.it
        gaps, _ = _certificate(st, groups, masses, num_groups, caps, thr)
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
        p, qv = st.m[j], st.m[a]
        xj, xa = x[j], x[a]
        gm = jnp.array([[xj @ p, xj @ qv], [xa @ p, xa @ qv]], dtype=dtype)
        gm = 0.5 * (gm + gm.T)
        if kind == "L":
            hj, ha = st.q[j], st.q[a]
        else:
            hj, ha = p, qv
        hm = jnp.array([[hj @ hj, hj @ ha], [ha @ hj, ha @ ha]], dtype=dtype)
        if caps is None:
            alpha_max = st.w[a]
        else:
            room_j = caps[j] - st.w[j]
            alpha_max = jnp.minimum(st.w[a], room_j)
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
        pcols = x @ rows.T  # [E, 2] = X T^-1 W
        pk = pcols @ kmat
        m = st.m - pk @ rows
        q = st.q - pk @ (rows @ b) if kind == "L" else st.q
        tinv = st.tinv - rows.T @ kmat @ rows
        if caps is None:
            w = st.w.at[j].add(alpha)
            w = w.at[a].set(jnp.where(full, 0.0, st.w[a] - alpha))
        else:
            a_binds = st.w[a] <= room_j
            w = st.w.at[j].set(jnp.where(full & ~a_binds, caps[j], jnp.minimum(st.w[j] + alpha, caps[j])))
            w = w.at[a].set(jnp.where(full & a_binds, 0.0, jnp.maximum(st.w[a] - alpha, 0.0)))
        new = _State(w, tinv, m, q, _scores(kind, x, m, q), st.value + dphi)
        _, cert = _certificate(new, groups, masses, num_groups, caps, thr)
        # A rejected step ends the loop (the certificate is reported as 0 to stop it;
        # the caller recomputes the true one from scratch).
        cert = jnp.where(ok, cert, 0.0)
        return _StepLoop(new, it + ok.astype(it.dtype), cert, carry.hist_value.at[it].set(new.value),
                         carry.hist_cert.at[it].set(cert))

    _, cert0 = _certificate(state, groups, masses, num_groups, caps, thr)
    nan = jnp.full((num_steps,), jnp.nan, dtype)
    out = jax.lax.while_loop(cond, body, _StepLoop(state, jnp.asarray(0), cert0, nan, nan))
    return out.state, out.it, out.hist_value, out.hist_cert


# ----------------------------------------------------------------------------------
# Start: a small spanning support


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


# ----------------------------------------------------------------------------------
# Working sets


@functools.partial(jax.jit, static_argnames=("kind",))
def _price(x, tinv, b, kind):
    """``d_e`` for every edge from ``T^-1``: one ``O(E r^2)`` pass."""
    m = x @ tinv
    q = m @ b if kind == "L" else m[:, :0]
    return _scores(kind, x, m, q)


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


def _full_certificate(dd, w, groups, masses, num_groups, caps=None):
    """``<d, s - w>`` with ``s`` the (capped) linear-maximisation vertex: bounds ``Phi(w) - Phi*``."""
    if caps is not None:
        lmo, _ = _capped_lmo_np(dd, caps, groups, masses, num_groups)
        return float(np.sum(lmo) - np.sum(w * dd))
    best = np.full(num_groups, -np.inf)
    np.maximum.at(best, groups, dd)
    best = np.where(masses > 0, best, 0.0)
    return float(np.sum(masses * best) - np.sum(w * dd))


def _check_caps(caps, groups, masses, num_groups, e):
    """``caps`` as float64 ``[E]`` upper bounds, at most each group's mass (``None`` stays ``None``)."""
    if caps is None:
        return None
    c = np.asarray(caps, dtype=np.float64)
    if c.ndim == 0:
        c = np.full(e, float(c))
    if c.shape != (e,):
        raise ValueError(f"caps must be a scalar or an array of shape [E] = [{e}], got shape {list(np.shape(caps))}")
    if np.any(np.isnan(c)) or np.any(c < 0):
        raise ValueError("caps must be >= 0 (inf for no cap), got NaN or a negative value")
    c = np.minimum(c, masses[groups])
    room = np.bincount(groups, weights=c, minlength=num_groups)
    short = room < masses * (1 - 1e-12)
    if np.any(short):
        if num_groups == 1:
            raise ValueError(
                f"caps sum to {room[0]:.6g} < 1: no design satisfies 0 <= w_e <= caps_e (with budget n and c_e labels "
                "an edge, caps_e = c_e / n, so the caps allow fewer than n labels)"
            )
        g = int(np.flatnonzero(short)[0])
        raise ValueError(
            f"caps: group {g} has caps summing to {room[g]:.6g} < its mass {masses[g]:.6g} ({int(short.sum())} groups "
            "short); no design satisfies the caps and the group masses"
        )
    return c


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
    cap = 256
    while cap < n:
        cap *= 2
    return min(cap, total) if n <= total else n


def _refresh_subset(idx, w_full, x, offset, b, kind):
    sub = jnp.asarray(idx)
    return _refresh(jnp.asarray(w_full[idx], dtype=x.dtype), x[sub], offset, b, kind)


def _solve_restricted(
    ws, w_full, x, b, prob, groups, masses, num_groups, tol, max_steps, refresh_every, scale, scale_const, polish_max,
    newton_cg=True, caps=None, vertex_steps=3,
):
    """Pairwise Frank-Wolfe on the edges ``ws`` (padded with zero rows to a bucket size).

    ``caps``: ``None`` or the float64 ``[E]`` caps (already at most each group's mass).
    """
    e = x.shape[0]
    cap = _capacity(ws.size, e)
    pad = cap - ws.size
    idx = np.concatenate([ws, np.zeros(pad, dtype=np.int64)])
    real = np.concatenate([np.ones(ws.size), np.zeros(pad)])
    xw = x[jnp.asarray(idx)] * jnp.asarray(real, dtype=x.dtype)[:, None]
    g_np = np.where(real > 0, groups[idx], 0).astype(np.int32)
    gw = jnp.asarray(g_np)
    ww = jnp.asarray(np.where(real > 0, w_full[idx], 0.0), dtype=x.dtype)
    mj = jnp.asarray(masses, dtype=x.dtype)
    if caps is None:
        cw = cw64 = None
    else:
        cw64 = np.where(real > 0, caps[idx], 0.0)  # padded rows: cap 0, never weighted
        cw = jnp.asarray(cw64, dtype=x.dtype)
    state = _refresh(ww, xw, prob.offset, b, prob.kind)
    if not bool(jnp.isfinite(state.value)):
        raise ValueError("init: the starting design is singular on the span of the edges; use ridge > 0")

    def exact(st):
        """Certificate of ``st`` on the working set (exact capped LMO) and thresholds."""
        if caps is None:
            return float(_certificate(st, gw, mj, num_groups)[1]), None
        dd = np.asarray(st.dd, dtype=np.float64)
        lmo, thr = _capped_lmo_np(dd, cw64, g_np, np.asarray(masses, dtype=np.float64), num_groups)
        spent = np.bincount(g_np, weights=np.asarray(st.w, dtype=np.float64) * dd, minlength=num_groups)
        return float(np.sum(lmo - spent)), thr

    def level(st):
        """Certificate of ``st`` and the reference levels of the Newton steps' held sets."""
        cert, _ = exact(st)
        dd, w = np.asarray(st.dd, dtype=np.float64), np.asarray(st.w, dtype=np.float64)
        return cert, _reference_level(dd, w, cw64, g_np, np.asarray(masses, dtype=np.float64), num_groups)

    hist_v, hist_c = [], []
    done = 0
    tol_j = jnp.asarray(tol, x.dtype)
    const_j = jnp.asarray(scale_const, x.dtype)
    state = _multiplicative(state, xw, prob.offset, b, gw, mj, prob.kind, num_groups, 5, caps=cw)
    blocks, next_cg, cg_gap = 0, 0, 1
    while done < max_steps:
        cert, thr = exact(state)
        if cert / scale(float(state.value)) <= tol:
            break
        if caps is not None:
            # Frank-Wolfe steps to the capped LMO vertex first: a capped optimum is close to
            # a vertex (edges at 0 or at their cap, few free), and one such step moves all
            # the edges that pairwise steps would move one at a time (at HH scale, tens of
            # thousands); the pairwise steps then settle the free edges.
            for _ in range(vertex_steps):
                if cert / scale(float(state.value)) <= tol:
                    break
                dd = np.asarray(state.dd, dtype=np.float64)
                _, _, vertex = _capped_lmo_np(dd, cw64, g_np, np.asarray(masses, dtype=np.float64), num_groups, True)
                new, _ = _vertex_step(state, xw, prob.offset, b, cw, jnp.asarray(vertex, x.dtype), prob.kind)
                if not (bool(jnp.isfinite(new.value)) and float(new.value) < float(state.value)):
                    break
                state = new
                cert, _ = exact(state)
            cert, thr = exact(state)
            if cert / scale(float(state.value)) <= tol:
                break
        steps = int(min(refresh_every, max_steps - done))
        thr_j = None if thr is None else jnp.asarray(thr, x.dtype)
        state, n_done, hv, hc = _run_steps(state, xw, b, gw, mj, tol_j, const_j, prob.kind, num_groups, steps, caps=cw, thr=thr_j)
        n_done = int(n_done)
        hist_v.extend(np.asarray(hv[:n_done]).tolist())
        hist_c.extend(np.asarray(hc[:n_done]).tolist())
        done += n_done
        state = _refresh(state.w, xw, prob.offset, b, prob.kind)
        state = _multiplicative(state, xw, prob.offset, b, gw, mj, prob.kind, num_groups, 5, caps=cw)
        cert, _ = exact(state)
        support = int(jnp.sum(state.w > 0))
        if cert / scale(float(state.value)) > tol and 0 < support <= polish_max:
            # Pairwise steps zig-zag between nearly collinear support points; a Newton
            # step on the support settles the weights (and drops the redundant ones).
            wp = _polish(state.w, xw, prob.offset, b, prob.kind, np.asarray(gw), num_groups, caps=cw64)
            polished = _refresh(jnp.asarray(wp, x.dtype), xw, prob.offset, b, prob.kind)
            if float(polished.value) < float(state.value):
                state = polished
        elif cert / scale(float(state.value)) > tol and support > polish_max and newton_cg and blocks >= next_cg:
            # Large supports (an interior optimum has every edge in it): projected Newton,
            # matrix-free. When it does not halve the certificate it is tried half as
            # often (1, 2, 4, ... blocks apart).
            state = _polish_cg(state, xw, prob.offset, b, prob.kind, gw, num_groups, caps=cw64, thr_fn=level)
            after, _ = exact(state)
            cg_gap = 1 if after <= 0.5 * cert else 2 * cg_gap
            next_cg = blocks + cg_gap
        blocks += 1
        if n_done == 0:
            break
    return state, done, hist_v, hist_c


# ----------------------------------------------------------------------------------
# Newton polish on the support


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
def _reduced_value(w, xs, offset, b, kind):
    t = offset + (xs.T * w) @ xs
    t = 0.5 * (t + t.T)
    chol = jnp.linalg.cholesky(t)
    if kind == "D":
        return -2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(t.shape[0], dtype=t.dtype))
    if kind == "A":
        return jnp.trace(inv)
    return jnp.trace(b.T @ inv @ b)


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


def _polish(w, xs, offset, b, kind, groups, num_groups, steps=8, caps=None):
    """Projected Newton on the weighted edges (``w > 0``) of the working set.

    With ``caps`` (float64 numpy, one per edge of ``w``) the edges at their cap are held
    and trials are projected on the capped simplex."""
    sup = np.flatnonzero(np.asarray(w) > 0)
    cap = 16
    while cap < sup.size:
        cap *= 2
    idx = np.concatenate([sup, np.zeros(cap - sup.size, dtype=np.int64)])
    real_np = np.arange(cap) < sup.size
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
    if caps is not None:
        caps_s = np.where(real_np, np.asarray(caps, dtype=np.float64)[idx], 0.0)
        movable_np = real_np & (ws64 < caps_s)
        movable = jnp.asarray(movable_np)
        onehot = onehot * movable[:, None].astype(xs.dtype)
        members_step = [movable_np & (gs == g) for g in range(num_groups)]
        masses_arr = np.asarray(masses)
    else:
        movable, members_step = real, members
    value = float(_reduced_value(ws, xs, offset, b, kind))
    for _ in range(steps):
        t = offset + (xs.T * ws) @ xs
        tinv = jnp.linalg.inv(0.5 * (t + t.T))
        delta = np.array(_newton_direction(ws, xs, 0.5 * (tinv + tinv.T), offset, b, kind, onehot, movable), dtype=np.float64)
        for m in members_step:
            if m.any():
                delta[m] -= delta[m].mean()
        wsn = np.asarray(ws, dtype=np.float64)
        neg = delta < 0
        alpha_max = float(np.min(-wsn[neg] / delta[neg])) if neg.any() else np.inf
        alpha = min(1.0, alpha_max) if caps is None else 1.0
        improved = False
        for _ in range(30):
            if caps is not None:
                trial = _project_capped_np(wsn + alpha * delta, caps_s, gs, masses_arr, num_groups)
            else:
                trial = np.where(real_np, np.maximum(wsn + alpha * delta, 0.0), 0.0)
                if alpha == alpha_max:
                    trial[np.argmin(np.where(neg, -wsn / np.where(neg, delta, -1.0), np.inf))] = 0.0
                for m, mass in zip(members, masses):
                    tot = trial[m].sum()
                    if tot > 0:
                        trial[m] *= mass / tot
            tv = float(_reduced_value(jnp.asarray(trial, xs.dtype), xs, offset, b, kind))
            if np.isfinite(tv) and tv < value:
                improved = True
                break
            alpha *= 0.5
        if not improved:
            break
        ws, value = jnp.asarray(trial, xs.dtype), tv
    out = np.asarray(w, dtype=np.float64).copy()
    out[sup] = np.asarray(ws, dtype=np.float64)[: sup.size]
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
    rr: jax.Array  # squared residual norm
    it: jax.Array
    stop: jax.Array  # a direction of no curvature was met


@functools.partial(jax.jit, static_argnames=("kind", "num_groups", "max_iter"))
def _newton_cg_direction(state, x, groups, kind, num_groups, max_iter=100, rtol=1e-3, caps=None, thr=None):
    """Projected Newton direction with the group masses fixed (Bertsekas 1982).

    Projected conjugate gradients on ``P H P delta = -P g``, ``g = -d`` the gradient and
    ``P`` the projection on the free edges with zero mass change per group. ``H`` is
    positive semi-definite (the criterion is convex); CG stops at a residual of
    ``rtol`` relative, at ``max_iter`` steps, or at a direction of no curvature.

    With ``caps`` the bounds are ``0 <= w <= c`` and the reference level ``thr_g`` is
    the weighted mean of ``d`` over the free edges (:func:`_reference_level`): an edge
    within eps of its cap whose ``d_e`` is at least that level is held there too (it
    steps to its cap).
    """
    # Bertsekas' projected Newton: an edge is held at its bound only when its weight is
    # within eps of zero *and* its d_e does not beat its group's weighted mean (the
    # gradient pushes it to zero); every other edge is free, including unweighted edges
    # that would gain mass. eps is 1% of the group's uniform weight. Held edges step to
    # zero; the free ones take the Newton step.
    spent = jax.ops.segment_sum(state.w * state.dd, groups, num_segments=num_groups)
    mass = jax.ops.segment_sum(state.w, groups, num_segments=num_groups)
    mean = spent / jnp.where(mass > 0, mass, 1.0)
    real = jnp.any(x != 0, axis=1) | (state.w > 0)  # padded rows of a working set are zero
    cnt = jax.ops.segment_sum(real.astype(x.dtype), groups, num_segments=num_groups)
    eps = 0.01 * (mass / jnp.maximum(cnt, 1.0))[groups]
    if caps is None:
        free = ~((state.w <= eps) & (state.dd <= mean[groups])) & (mass[groups] > 0) & real
    else:
        eps = jnp.minimum(eps, 0.01 * caps)
        ref = thr[groups]
        at_cap = (state.w >= caps - eps) & (state.dd >= ref)
        free = ~((state.w <= eps) & (state.dd <= ref)) & ~at_cap & (mass[groups] > 0) & real & (caps > 0)
    rhs = _project_groups(state.dd, free, groups, num_groups)
    rr0 = rhs @ rhs

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
        rrn = r @ r
        p = r + (rrn / jnp.where(rr > 0, rr, 1.0)) * p
        return _CGState(d, r, p, rrn, c.it + 1, ~ok)

    init = _CGState(jnp.zeros_like(rhs), rhs, rhs, rr0, jnp.asarray(0), rr0 <= 0)
    delta = jax.lax.while_loop(cond, body, init).direction
    # Held edges take the projected gradient step, which sends them to zero (the
    # renormalisation hands their mass to the rest); left in place, the tiny weights
    # of a sparse optimum would never leave the support.
    held = ~free & (state.w > 0)
    if caps is None:
        return jnp.where(held, -state.w, delta)
    held_up = ~free & at_cap
    return jnp.where(held_up, caps - state.w, jnp.where(held, -state.w, delta))


def _polish_cg(state, x, offset, b, kind, groups, num_groups, steps=8, caps=None, thr_fn=None):
    """Projected Newton with CG directions (for supports too large to factor): steps
    ``max(w + alpha delta, 0)``, ``alpha = 1, 1/2, ...`` until the criterion drops;
    returns the best state found. As in :func:`_polish`, group masses are
    kept exactly: directions have zero mass per group and trials are renormalised in
    float64. Stops at the first step that does not lower the criterion, or when the
    decrease is below ``1e-3`` of the current certificate (nothing left to gain on this
    support).

    With ``caps`` (float64 numpy ``[E]``) trials are the Euclidean projection of
    ``w + alpha delta`` on the capped simplex, and ``thr_fn(state)`` gives the
    certificate and the reference levels (:func:`_reference_level`) of the current state."""
    g_np = np.asarray(groups)
    w64 = np.asarray(state.w, dtype=np.float64)
    masses = np.bincount(g_np, weights=w64, minlength=num_groups)
    for _ in range(steps):
        if caps is None:
            _, cert = _certificate(state, groups, jnp.asarray(masses, state.w.dtype), num_groups)
            delta = _newton_cg_direction(state, x, groups, kind, num_groups)
        else:
            cert, ref = thr_fn(state)
            delta = _newton_cg_direction(state, x, groups, kind, num_groups, caps=jnp.asarray(caps, x.dtype),
                                         thr=jnp.asarray(ref, x.dtype))
        delta = np.asarray(delta, dtype=np.float64)
        wn = np.asarray(state.w, dtype=np.float64)
        if not np.any(delta != 0):
            break
        alpha = 1.0
        new = None
        for _ in range(30):
            if caps is not None:
                trial = _project_capped_np(wn + alpha * delta, caps, g_np, masses, num_groups)
            else:
                trial = np.maximum(wn + alpha * delta, 0.0)  # projected on w >= 0
                tot = np.bincount(g_np, weights=trial, minlength=num_groups)
                if np.any((tot <= 0) & (masses > 0)):
                    alpha *= 0.5
                    continue
                trial *= np.where(tot > 0, masses / np.where(tot > 0, tot, 1.0), 0.0)[g_np]
            cand = _refresh(jnp.asarray(trial, x.dtype), x, offset, b, kind)
            if bool(jnp.isfinite(cand.value)) and float(cand.value) < float(state.value):
                new = cand
                break
            alpha *= 0.5
        if new is None:
            break
        gained = float(state.value) - float(new.value)
        state = new
        if gained < 1e-3 * float(cert):
            break
    return state


# ----------------------------------------------------------------------------------
# Public solver


def _check_groups(groups, group_weights, e):
    if groups is None:
        if group_weights is not None:
            raise ValueError("group_weights given without groups")
        return np.zeros(e, dtype=np.int32), np.ones(1), 1
    g = np.asarray(groups)
    if g.shape != (e,) or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"groups must be an integer array of shape [E] = [{e}], got {g.dtype} shape {list(g.shape)}")
    if g.min() < 0:
        raise ValueError(f"groups must be >= 0, min is {g.min()}")
    num = int(g.max()) + 1
    present = np.bincount(g, minlength=num) > 0
    if group_weights is None:
        masses = present / present.sum()
    else:
        masses = np.asarray(group_weights, dtype=np.float64)
        if masses.shape != (num,):
            raise ValueError(f"group_weights must have shape [num_groups] = [{num}], got {list(masses.shape)}")
        if np.any(~np.isfinite(masses)) or np.any(masses < 0):
            raise ValueError("group_weights must be finite and >= 0")
        if np.any(masses[~present] > 0):
            raise ValueError("group_weights: a group with no edge has positive mass")
        if masses.sum() <= 0:
            raise ValueError("group_weights must not all be zero")
        masses = masses / masses.sum()
    return g.astype(np.int32), masses, num


def optimal_design(
    diffs,
    theta,
    curvature,
    beta,
    criterion: str = "L",
    ridge: float = 0.0,
    tol: float = 1e-3,
    max_iter: int = 100_000,
    groups=None,
    group_weights=None,
    refresh_every: int = 200,
    init=None,
    working_set: int = 2048,
    polish_max: int = 512,
    newton_cg: bool = True,
    caps=None,
    prior_precision: Optional[float] = None,
    budget: Optional[float] = None,
) -> DesignSolution:
    """Minimise an L-, A- or D-criterion over designs on the candidate edges.

    ``optimal_design(diffs, theta, curvature, beta, criterion="L", ridge=0.0, tol=1e-3,
    max_iter=100_000, groups=None, group_weights=None, refresh_every=200, init=None,
    working_set=2048, polish_max=512, newton_cg=True, caps=None, prior_precision=None,
    budget=None)``

    Args:
      diffs: ``[E, d]`` edge differences ``z_e``.
      theta: ``[d]`` where the information is evaluated (``theta*``: oracle;
        ``0``: plug-in at the reference; a pilot estimate: two-stage).
      curvature: ``[d, d]`` ``I(theta)`` for ``"L"``; ignored (may be ``None``) for A, D.
      beta: ``> 0``.
      criterion: ``"L"`` (``tr(I Sigma^+)``, the paper's), ``"A"`` or ``"D"``.
      ridge: ``>= 0``; ``> 0`` gives the paper's ``tr(I (ridge Id + Sigma)^-1)``.
      tol: stop when the relative certificate is ``<= tol`` (see :class:`DesignSolution`).
      max_iter: maximum number of pairwise steps.
      groups: optional ``[E]`` integer group of each edge (e.g. its prompt): the design
        then puts mass ``group_weights[g]`` on group ``g`` (response selection).
      group_weights: ``[G]`` masses (normalised; default uniform over non-empty groups).
      refresh_every: exact recomputation period (steps).
      init: optional ``[E]`` starting design (must satisfy the group masses and give a
        non-singular ``Sigma`` on the span when ``ridge = 0``).
      working_set: when ``E > 2 working_set`` the steps run on a working set of edges
        that grows by this many of the most violating edges after each pricing pass
        over all edges (column generation); the certificate is always over all edges.
      polish_max: after each block of ``refresh_every`` steps that has not converged,
        a projected Newton step on the weighted edges is tried when there are at most
        this many (``O(s^2 r + s^3)``); it is kept only if it lowers the criterion.
      newton_cg: on larger supports, take the same Newton steps matrix-free (projected
        conjugate gradients, ``O(E r k)`` a Hessian-vector product). Interior optima
        (every edge weighted, e.g. a tabular pool with a peaked ``pi0``) need it: pairwise
        steps alone converge slowly there. ``False`` gives the pairwise steps alone.
      caps: ``None`` (no upper bounds: today's solver, number for number), a scalar or an
        ``[E]`` array of upper bounds, finite or ``inf``, ``>= 0``: the design must satisfy
        ``0 <= w_e <= caps_e``. With budget ``n`` and at most ``c_e`` labels on edge ``e``,
        ``caps_e = c_e / n`` (``caps = 1 / n``: each comparison labelled at most once).
        The steps then work on the capped simplex (with groups: each group's capped
        simplex), and the certificate is the duality gap of the capped problem: the
        linear maximisation fills the edges of largest ``d_e`` up to their caps
        (Wynn 1982; Sahm and Schwabe 2001). Caps whose sum is below 1 (below a group's
        mass with groups) admit no design: ``ValueError``.
      prior_precision: ``lambda >= 0`` of a Gaussian prior ``N(0, Id / lambda)`` on
        ``theta``; with ``budget`` (``n``) the criterion is the Bayes one,
        ``tr(I (lambda / n Id + Sigma_w)^-1)`` (A, D alike), i.e. ``ridge = lambda / n``.
        Not together with ``ridge > 0``.
      budget: ``n > 0`` labels; required with ``prior_precision`` and used only there.

    Returns:
      :class:`DesignSolution` (with caps, ``weights`` satisfy them exactly).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> sol = optimal_design(z, jnp.zeros(2), None, 1.0, criterion="D", tol=1e-6)
      >>> [round(float(v), 3) for v in sol.weights]   # D-optimal: equal weights
      [0.333, 0.333, 0.333]
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    e, d = V.check_diffs(diffs)
    V.check_theta(theta, d)
    V.check_beta(beta)
    V.check_nonnegative(ridge, "ridge")
    if criterion == "L":
        if curvature is None:
            raise ValueError('curvature is required for criterion "L"')
        V.check_curvature(curvature, d)
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 0):
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not (isinstance(refresh_every, (int, np.integer)) and refresh_every >= 1):
        raise ValueError(f"refresh_every must be an integer >= 1, got {refresh_every!r}")
    if not (isinstance(working_set, (int, np.integer)) and working_set >= 1):
        raise ValueError(f"working_set must be an integer >= 1, got {working_set!r}")
    groups_np, masses_np, num_groups = _check_groups(groups, group_weights, e)
    ridge = float(ridge)
    if prior_precision is not None or budget is not None:
        if prior_precision is None:
            raise ValueError("budget is used only with prior_precision (the Bayes criterion ridge = prior_precision / budget)")
        if not (isinstance(prior_precision, (int, float, np.integer, np.floating)) and np.isfinite(prior_precision)
                and prior_precision >= 0):
            raise ValueError(f"prior_precision must be a finite number >= 0, got {prior_precision!r}")
        if not (isinstance(budget, (int, float, np.integer, np.floating)) and np.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be a finite number > 0 (the number of labels n) with prior_precision, got {budget!r}")
        if ridge != 0:
            raise ValueError(f"give either ridge or prior_precision and budget (ridge = prior_precision / budget), not both; ridge={ridge}")
        ridge = float(prior_precision) / float(budget)
    caps_np = _check_caps(caps, groups_np, masses_np, num_groups, e)

    diffs = jnp.asarray(diffs)
    dtype = diffs.dtype
    theta = jnp.asarray(theta, dtype=dtype)
    prob = _reduce(diffs, theta, curvature, beta, criterion, ridge)
    x = prob.x
    b = prob.b if prob.b is not None else jnp.zeros((prob.rank, 0), dtype)

    if init is None:
        if e <= 2 * int(working_set):
            # Small problems: start from the uniform design (within groups); the
            # multiplicative and drop steps remove what the optimum does not use.
            counts = np.bincount(groups_np, minlength=num_groups)
            w0 = jnp.asarray(masses_np[groups_np] / counts[groups_np], dtype=dtype)
            if caps_np is not None:
                # The most uniform feasible design (water-filling: min(caps_e, tau_g)).
                w0 = jnp.asarray(_project_capped_np(w0, caps_np, groups_np, masses_np, num_groups), dtype=dtype)
        else:
            w0 = _initial_weights(x, groups_np, masses_np, num_groups, prob.rank)
            if caps_np is not None:
                # The spanning support up to its caps; the mass it cannot hold goes to the
                # edges of largest d_e at that support (the capped linear maximisation on
                # the room left), which keeps the start's support, and working set, small.
                base = np.minimum(np.asarray(w0, dtype=np.float64), caps_np)
                left = masses_np - np.bincount(groups_np, weights=base, minlength=num_groups)
                if np.any(left > 0):
                    sup = np.flatnonzero(base > 0)
                    st0 = _refresh_subset(sup, base, x, prob.offset, b, prob.kind)
                    d0 = np.asarray(_price(x, st0.tinv, b, prob.kind), dtype=np.float64)
                    _, _, extra = _capped_lmo_np(d0, caps_np - base, groups_np, np.maximum(left, 0.0), num_groups, True)
                    base = np.minimum(base + extra, caps_np)
                w0 = jnp.asarray(base, dtype=dtype)
    else:
        w0 = np.asarray(init, dtype=np.float64)
        if w0.shape != (e,) or np.any(~np.isfinite(w0)) or np.any(w0 < 0):
            raise ValueError(f"init must be a non-negative finite array of shape [E] = [{e}]")
        got = np.bincount(groups_np, weights=w0, minlength=num_groups)
        if not np.allclose(got, masses_np, atol=1e-9):
            raise ValueError("init must put each group's mass on the group (sum to 1 without groups)")
        if caps_np is not None:
            if np.any(w0 > caps_np * (1 + 1e-9)):
                raise ValueError("init must satisfy the caps (init_e <= caps_e)")
            w0 = np.minimum(w0, caps_np)
        w0 = jnp.asarray(w0, dtype=dtype)

    scale_const = float(prob.rank) if prob.kind == "D" else prob.constant

    def scale(value):
        return scale_const if prob.kind == "D" else value + scale_const

    # Column generation: solve on a working set of edges, price every edge with one
    # O(E r^2) pass, add the most violating edges, repeat. The certificate is always
    # the one over all E edges.
    w_full = np.asarray(w0, dtype=np.float64)
    chunk = int(working_set)
    if e <= 2 * chunk:
        ws = np.arange(e)
    else:
        st0 = _refresh_subset(np.flatnonzero(w_full > 0), w_full, x, prob.offset, b, prob.kind)
        d0 = np.asarray(_price(x, st0.tinv, b, prob.kind))
        keep = _keep(w_full, d0, caps_np, groups_np, masses_np, num_groups)
        ws = _grow(keep, _violation(d0, w_full, groups_np, masses_np, num_groups, caps_np), chunk)
    tol_inner = tol if ws.size == e else 0.5 * tol
    hist_v, hist_c, hist_full = [], [], []
    it = 0
    while True:
        st, n_done, hv, hc = _solve_restricted(
            ws, w_full, x, b, prob, groups_np, masses_np, num_groups, tol_inner, max_iter - it, refresh_every, scale, scale_const,
            polish_max, bool(newton_cg), caps_np,
        )
        it += n_done
        hist_v.extend(hv)
        hist_c.extend(hc)
        w_full = np.zeros(e)
        w_full[ws] = np.asarray(st.w, dtype=np.float64)[: ws.size]
        val = float(st.value)
        if ws.size == e:
            d_full = np.asarray(st.dd, dtype=np.float64)[:e]
        else:
            d_full = np.asarray(_price(x, st.tinv, b, prob.kind), dtype=np.float64)
        viol = _violation(d_full, w_full, groups_np, masses_np, num_groups, caps_np)
        cert = float(_full_certificate(d_full, w_full, groups_np, masses_np, num_groups, caps_np))
        hist_full.append((it, cert))
        if hist_c:
            hist_v[-1], hist_c[-1] = val, cert
        else:
            hist_v.append(val)
            hist_c.append(cert)
        if cert / scale(val) <= tol or it >= max_iter:
            break
        outside = np.ones(e, dtype=bool)
        outside[ws] = False
        if ws.size < e and np.any(viol[outside] > 0):
            # Keep the support, drop the rest of the old working set, add the most
            # violating edges: the working set stays near support + chunk.
            ws = _grow(_keep(w_full, d_full, caps_np, groups_np, masses_np, num_groups), viol, chunk)
            tol_inner = tol if ws.size == e else 0.5 * tol
        else:
            tol_inner = 0.25 * tol_inner
            if tol_inner < 1e3 * np.finfo(np.asarray(diffs).dtype).eps:
                break
    weights = jnp.asarray(w_full, dtype=dtype)
    value = val + prob.constant
    rel = cert / (prob.rank if prob.kind == "D" else value)
    return DesignSolution(
        weights=weights,
        value=value,
        certificate=cert,
        relative_certificate=rel,
        converged=bool(rel <= tol),
        num_iter=it,
        rank=prob.rank,
        history=SolverHistory(
            value=np.asarray(hist_v) + prob.constant,
            certificate=np.asarray(hist_c),
            pricing=np.asarray(hist_full).reshape(-1, 2),
        ),
    )
