"""The reduced problem: the instance in the ``r`` coordinates of the identifiable span.

:func:`reduce_problem` checks the instance (edges, ``theta``, curvature, criterion,
groups, caps) and reduces it once; the solver only ever sees a :class:`ReducedProblem`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

from theory import _validation as V
from theory.checked import check_argument, checked, one_of
from theory.information import SaturationWarning, numerical_range, saturation_screen, sigmoid_prime
from theory.shapes import Diffs, EdgeWeights, Scalar, Vector

CRITERIA = ("L", "A", "D")

# The checks every instance gets before anything else, in the order they run; the
# curvature (needed for "L" only), groups, caps and the Bayes ridge follow in the body.
INSTANCE = dict(
    criterion=one_of(CRITERIA),
    diffs="[E, d] finite",
    theta="[d] finite",
    beta="number > 0",
    ridge="number >= 0",
)


@dataclasses.dataclass(frozen=True, eq=False)
class ReducedProblem:
    """One optimal-design instance, reduced: what every solver step reads.

    ``kind`` is the form the reduction leaves, not the criterion asked for: an L
    problem whose ``I`` is well conditioned on the identifiable span is whitened by
    ``I^{1/2}`` and becomes an A problem (``tr T^-1``); only a rank-deficient or
    ill-conditioned ``I`` keeps the general L form.

    Attributes:
      x: ``[E, r]`` the transformed ``v_e``.
      offset: ``[r, r]`` the ridge term in these coordinates.
      b: ``[r, k]`` with ``I_r = b b^T`` (general L; ``k = 0`` otherwise).
      kind: ``"A"`` (``tr T^-1``), ``"L"`` (``tr b^T T^-1 b``) or ``"D"`` (``-logdet T``).
      criterion: the criterion asked for (``"L"``, ``"A"`` or ``"D"``).
      constant: the criterion's part outside ``span{z_e}`` (does not depend on ``w``).
      rank: ``r``, the dimension of ``span{z_e}``.
      groups: ``[E]`` int32 group of each edge (all 0 without groups).
      masses: ``[G]`` float64 mass of each group (sums to one).
      num_groups: ``G``.
      caps: ``None`` or float64 ``[E]`` upper bounds (at most each group's mass).
      dtype: the dtype of ``diffs`` (of the weights returned).
    """

    x: jnp.ndarray
    offset: jnp.ndarray
    b: jnp.ndarray
    kind: str
    criterion: str
    constant: float
    rank: int
    groups: np.ndarray
    masses: np.ndarray
    num_groups: int
    caps: Optional[np.ndarray]
    dtype: np.dtype

    @property
    def num_edges(self) -> int:
        return int(self.x.shape[0])

    @property
    def scale_constant(self) -> float:
        """The rank for D, the constant otherwise (see :meth:`scale`)."""
        return float(self.rank) if self.kind == "D" else self.constant

    def scale(self, value):
        """What a certificate is relative to at reduced value ``value``: ``value + constant``
        (the full criterion) for A and L, the rank for D."""
        return self.scale_constant if self.kind == "D" else value + self.scale_constant


@checked(**INSTANCE)
def check_instance(diffs, theta, curvature, beta, criterion, ridge):
    """The checks on the instance that need no reduction; returns ``(E, d)``."""
    e, d = np.shape(diffs)
    check_curvature_for(criterion, curvature, d)
    return e, d


def check_curvature_for(criterion, curvature, d) -> None:
    """``curvature`` ``[d, d]``, finite, symmetric and positive semi-definite, is required for ``"L"`` (ignored otherwise)."""
    if criterion == "L":
        if curvature is None:
            raise ValueError('curvature is required for criterion "L"')
        V.check_curvature(curvature, d)


@checked(**INSTANCE)
def reduce_problem(
    diffs: Diffs,
    theta: Vector,
    curvature: Float[ArrayLike, "d d"] | None,
    beta: Scalar,
    criterion: str = "L",
    ridge: float = 0.0,
    groups: Int[ArrayLike, " E"] | None = None,
    group_weights: Float[ArrayLike, " G"] | None = None,
    caps: EdgeWeights | float | None = None,
    prior_precision: float | None = None,
    budget: float | None = None,
) -> ReducedProblem:
    """Check the instance and reduce it (arguments as in :func:`theory.design.optimal_design`)."""
    e, d = np.shape(diffs)
    check_curvature_for(criterion, curvature, d)
    groups_np, masses_np, num_groups = _check_groups(groups, group_weights, e)
    ridge = _bayes_ridge(float(ridge), prior_precision, budget)
    caps_np = _check_caps(caps, groups_np, masses_np, num_groups, e)
    diffs = jnp.asarray(diffs)
    theta = jnp.asarray(theta, dtype=diffs.dtype)
    x, offset, b, kind, const, rank = _reduce(diffs, theta, curvature, beta, criterion, ridge)
    if b is None:
        b = jnp.zeros((rank, 0), diffs.dtype)
    return ReducedProblem(x, offset, b, kind, criterion, const, rank, groups_np, masses_np, num_groups, caps_np,
                          diffs.dtype)


def _bayes_ridge(ridge, prior_precision, budget):
    """``ridge``, or the Bayes criterion's ``prior_precision / budget``."""
    if prior_precision is None and budget is None:
        return ridge
    if prior_precision is None:
        raise ValueError("budget is used only with prior_precision (the Bayes criterion ridge = prior_precision / budget)")
    check_argument("prior_precision", prior_precision, "number >= 0")
    if not (isinstance(budget, (int, float, np.integer, np.floating)) and np.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a finite number > 0 (the number of labels n) with prior_precision, got {budget!r}")
    if ridge != 0:
        raise ValueError(f"give either ridge or prior_precision and budget (ridge = prior_precision / budget), not both; ridge={ridge}")
    return float(prior_precision) / float(budget)


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


def saturated_directions(diffs, theta, beta, rank: int) -> tuple[int, float]:
    """``(k, margin)``: how many directions of the candidates' span (unit rows, float64) the
    ``sigmoid'``-weighted span of rank ``rank`` that the solver works on misses, and the largest
    ``|beta theta.z_e|``. In exact arithmetic the two spans are one (``sigmoid' > 0``): ``k > 0``
    is floating point's resolution at huge margins. :func:`theory.information.saturation_screen`
    first: when it clears the edges nothing can be missed."""
    sc = saturation_screen(theta, diffs, None, beta)
    if sc is None:
        return 0, 0.0
    if sc.clear:
        return 0, float(sc.margins.max())
    return max(sc.rank - int(rank), 0), float(sc.margins.max())


def warn_if_saturated(diffs, theta, beta, rank: int, stacklevel: int) -> None:
    """:class:`~theory.information.SaturationWarning` when :func:`saturated_directions` finds any."""
    k, margin = saturated_directions(diffs, theta, beta, rank)
    if k:
        warnings.warn(SaturationWarning(
            f"optimal_design: {k} of the directions the candidate edges span are below {np.asarray(diffs).dtype}'s "
            f"resolution of their information at theta (margins up to {margin:.3g}, sigmoid' down to "
            f"{float(np.exp(-margin) / (1 + np.exp(-margin)) ** 2):.3g}): the solver does not see them, and its design "
            "and certificate leave them out; smaller margins (theta, beta or the features' scale) resolve them"),
            stacklevel=stacklevel)


def _span(diffs, theta, beta):
    """``v_e`` and the eigen-decomposition of ``sum_e v_e v_e^T``: ``(v, vec, keep)`` with
    ``vec[:, keep]`` an orthonormal basis of ``span{z_e}``; errors when it is empty."""
    d = diffs.shape[1]
    c = beta**2 * sigmoid_prime(beta * (diffs @ theta))
    v = diffs * jnp.sqrt(c)[:, None]
    gram = v.T @ v
    lam, vec = np.linalg.eigh(np.asarray(0.5 * (gram + gram.T), dtype=np.float64))
    # the rank at the precision the Gram matrix was computed in: float32 rounding (1e-8 of lambda_max in a
    # tabular world's null direction) is far above float64's threshold and made a null direction count
    keep = numerical_range(lam, d, gram.dtype)
    if int(keep.sum()) == 0:
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
    return v, vec, keep


def _reduce(diffs, theta, curvature, beta, criterion, ridge):
    """``(x, offset, b, kind, constant, rank)`` of the reduced problem (``b`` ``None`` unless kind L)."""
    d = diffs.shape[1]
    dtype = diffs.dtype
    v, vec, keep = _span(diffs, theta, beta)
    r = int(keep.sum())
    u = jnp.asarray(vec[:, keep], dtype=dtype)  # [d, r] orthonormal basis of span{z_e}
    vr = v @ u
    eye = jnp.eye(r, dtype=dtype)
    if criterion == "D":
        const = -(d - r) * float(np.log(ridge)) if (ridge > 0 and r < d) else 0.0
        return vr, ridge * eye, None, "D", const, r
    if criterion == "A":
        const = (d - r) / ridge if (ridge > 0 and r < d) else 0.0
        return vr, ridge * eye, None, "A", const, r
    return _reduce_l(diffs, curvature, ridge, vec[:, keep], vr, theta, beta)


def _saturation_note(diffs, theta, beta, rank) -> str:
    if theta is None:
        return ""
    k, margin = saturated_directions(diffs, theta, beta, rank)
    return ("" if not k else f" (or it is seen only by edges of huge margin: {k} direction(s) of the candidates' span are "
            f"below floating-point resolution of their information at theta, margins up to {margin:.3g})")


def _reduce_l(diffs, curvature, ridge, u64, vr, theta=None, beta=None):
    """The L criterion on the span: whitened to an A problem when ``I_r`` is well conditioned."""
    dtype = diffs.dtype
    r = u64.shape[1]
    eps = np.finfo(np.asarray(diffs).dtype).eps
    cur = np.asarray(curvature, dtype=np.float64)
    cur = 0.5 * (cur + cur.T)
    cur_r = u64.T @ cur @ u64
    outside = float(np.trace(cur) - np.trace(cur_r))
    tr_i = max(float(np.trace(cur)), np.finfo(np.float64).tiny)
    if ridge == 0 and outside > np.sqrt(eps) * tr_i:
        raise ValueError(
            "curvature: a direction with curvature is not spanned by any candidate edge "
            f"(curvature mass {outside:.3g} of {tr_i:.3g} lies outside span{{z_e}}), so every "
            "design has criterion +inf; add edges that see it or use ridge > 0"
            + _saturation_note(diffs, theta, beta, r)
        )
    const = max(outside, 0.0) / ridge if ridge > 0 else 0.0
    mu, w = np.linalg.eigh(cur_r)
    mu_max = max(mu.max(), 0.0)
    if mu_max <= 0:
        raise ValueError("curvature is zero on the span of the candidate edges: every design has criterion 0")
    if mu.min() > 1e3 * np.sqrt(eps) * mu_max:
        # Whiten: with I_r = L L^T, L = W mu^{1/2}, tr(I_r T^-1) = tr((L^-1 T L^-T)^-1);
        # v -> L^-1 v and the ridge becomes ridge * diag(1 / mu).
        a = w / np.sqrt(mu)[None, :]  # L^-T
        x = vr @ jnp.asarray(a, dtype=dtype)
        offset = jnp.asarray(np.diag(ridge / mu), dtype=dtype)
        return x, offset, None, "A", const, r
    # at the coarser precision of the two inputs (cur_r comes from the curvature, the span from the diffs)
    coarse = max((np.asarray(diffs).dtype, np.asarray(curvature).dtype), key=lambda t: np.finfo(t).eps)
    pos = numerical_range(mu, r, coarse)
    b = jnp.asarray(w[:, pos] * np.sqrt(mu[pos])[None, :], dtype=dtype)
    return vr, ridge * jnp.eye(r, dtype=dtype), b, "L", const, r
