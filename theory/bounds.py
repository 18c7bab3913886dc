r"""Finite-budget bounds on the DPO optimality gap, as numbers an instance gives.

Every constant here is named in ``theory/DERIVATIONS.md`` (section numbers in the
docstrings). The three results:

* **Upper bound** (Theorem 1, section 5): for plain DPO on ``n`` labels with
  empirical design ``w`` -- the MLE when it exists, *anything* when it does not (a
  ridge limit, a diverging iterate, a fallback) --

  .. math::

     \mathbb E\,G(\hat\theta_n) \le \frac{\beta}{2n}\,\Phi\;
       \psi_+(\zeta_I s_n)\Big(1 + \eta(m_n)\sqrt{\kappa\, d_V/\Phi}\Big)^2 + G_{\sup}\, n^{-a}

  for every ``n >= n_0`` (:func:`upper_bound_valid_from`), where
  ``G_sup = beta E_x max_y log(1 / pi_theta*(y|x))`` bounds the gap of every policy
  (:func:`gap_sup`). The same event gives a high-probability bound
  (:func:`upper_bound_high_probability`).
* **Lower bound** (Theorem 2, section 6): for *every* estimator from the same labels,
  the worst-case expected gap over a box ``N`` around ``theta*`` (shrinking as ``n``
  grows) is at least :func:`lower_bound`; the van Trees prior on ``N`` is a product of
  cosine-squared densities in coordinates that whiten ``S`` on the labelled span and
  diagonalise ``S^{+1/2} I S^{+1/2}`` (plus, when A1 fails, the directions of
  ``range(I)`` that no label sees).
* **Plug-in bound** (Theorem 3, section 7): designing at ``theta0`` instead of
  ``theta*`` costs at most ``exp(2 (rho(delta) + m(delta)))`` in the criterion.

``psi_+`` is the sharpened sandwich factor of F2' (:func:`sandwich_factors`).

All three depend on the instance only through :class:`BoundConstants`, computed once
by :func:`instance_constants`. Constants are float64 numpy numbers (the eigen-analysis
of two ``d x d`` matrices), whatever JAX's default precision.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float


from theory.checked import check_argument, checked, one_of
from theory.information import DESIGN_INSTANCE, SaturationWarning, information_matrix_kernel, rows_rank
from theory.policy import POOL, normalized_prompt_weights, policy_curvature_kernel, policy_log_probs_kernel

from theory.second_order import second_order_coefficients, second_order_column, second_order_gap  # noqa: E402,F401 (issue 18, goal 3)
from theory.shapes import Diffs, EdgeWeights, Features, LogRef, PromptWeights, Scalar, Vector

__all__ = [
    "second_order_gap",
    "second_order_coefficients",
    "second_order_column",
    "BoundConstants",
    "UpperBound",
    "HighProbabilityBound",
    "LowerBound",
    "instance_constants",
    "gap_sup",
    "separation_floor",
    "asymptotic_prediction",
    "upper_bound",
    "upper_bound_high_probability",
    "upper_bound_valid_from",
    "lower_bound",
    "plug_in_factor",
    "plug_in_factor_radius",
    "pair_diameter",
    "check_boundedness",
    "check_coverage",
    "check_radius",
    "sample_prior",
    "prior_widths",
    "sandwich_factors",
    "BernsteinUpperBound",
    "JensenLowerBound",
    "score_radius_bernstein",
    "score_radius_subgaussian",
    "subgaussian_proxy",
    "upper_bound_bernstein",
    "upper_bound_bernstein_high_probability",
    "upper_bound_bernstein_valid_from",
    "upper_bound_bernstein_tuned",
    "upper_bound_bernstein_within",
    "TAIL_GRID",
    "lower_bound_jensen",
    "jensen_terms",
    "sample_box_kernel",
    "sample_ball_kernel",
    "ball_prior_information",
    "ball_radial_cdf",
    "PRIOR_SHAPES",
    "PRIOR_SCALES",
]

# Specs of the scalar arguments the results share (theory.checked): a budget and a tail exponent.
BUDGET = "number >= 1 as float"
TAIL = "number > 0 as float"

_RANK_TOL = 1e-9  # relative eigenvalue floor for ranges (float64 eigen-analysis)
_COVER_TOL = 1e-8  # curvature outside the labelled span, relative to lambda_max(I): A1 fails above it


class BoundConstants(NamedTuple):
    """Instance constants of ``theory/DERIVATIONS.md`` (symbol in brackets).

    Attributes:
      beta: KL strength [beta].
      criterion: ``tr(I S^+)`` [Phi]; ``inf`` when not identifiable.
      identifiable: ``range(I) <= range(S)`` [assumption A1].
      dim: ``rank(S)``, the dimension of the labelled span [d_V].
      kappa: ``lambda_max(S^{+1/2} I S^{+1/2})`` [kappa].
      zeta: ``beta max_{e: w_e > 0} ||z_e||_{S^+}`` [zeta].
      tau: third-moment self-concordance constant [tau] (section 9, Lemma 9.3):
        ``tau >= max_{v, delta} sum_e c_e (b_e.v)^2 |b_e.delta|`` over unit ``v, delta`` in the
        labelled span, with ``b_e = beta S^{+1/2} z_e`` and ``c_e = w_e sigma'_e``; computed as
        ``min(zeta, sqrt(lambda_max(sum_e c_e vec(b_e b_e^T) vec(b_e b_e^T)^T)))``, the square
        root of a rigorous (Collatz-Wielandt) upper bound of that largest eigenvalue.
      tau_a, tau_am: the loss-weighted third-moment constants of Lemma 9.4 [tau_A, tau_Am]:
        ``tau_A >= max sum_e c_e |w.A b_e| (b_e.delta)^2`` over unit ``w`` and unit ``delta`` in
        the labelled span (``A = I^{1/2} S^{+1/2}``), and ``tau_Am`` the same with each edge's term
        times ``m_e = |1 - 2 sigma(beta theta*^T z_e)|``; computed as ``sqrt(lambda_max)`` of
        ``sum_e c_e m_e^2 vec(A b_e b_e^T) vec(A b_e b_e^T)^T`` (``m_e = 1`` for ``tau_A``). Both are
        at most ``sqrt(kappa) tau``; ``inf`` (Lemma 9.4 unused) where the eigenproblem is too large.
      zeta_eval: ``max_{target pairs} ||phi - phi'||_{S^+}`` [zeta_I]; ``inf`` when a
        target pair leaves the labelled span. Target pairs are those of the prompts of
        weight ``rho(x) > 0``.
      coverage: smallest non-zero eigenvalue of ``S`` [lambda_S, assumption A3].
      theta_norm: ``||P_V theta*||``, the part of ``theta*`` the labels can see.
      radius: radius of the parameter ball of the safeguarded estimator [B]; ``inf``
        when none was given (Theorem 1 no longer needs it).
      diameter: ``max_{target pairs} ||phi - phi'||`` [D_phi, assumption A2].
      gap_max: ``beta (B + ||P_V theta*||) D_phi`` [G_max], the largest gap of the
        safeguarded estimator (``inf`` without a ball); kept for that estimator only.
      gap_sup: ``beta E_x max_y log(1 / pi_theta*(y|x))`` [G_sup], the largest gap of
        *any* policy (:func:`gap_sup`); Theorem 1's remainder.
      criterion_eigs: ``[d_V]`` eigenvalues ``k_j`` of ``S^{+1/2} I S^{+1/2}`` on the
        labelled span (ascending); their sum is ``tr(I S^+)`` under A1.
      unseen_dim: number of directions of ``range(I)`` outside the labelled span
        (0 under A1).
      curv_dim: ``rank(I)`` [d_I].
      c_curv: ``max_{target pairs} ||phi - phi'||_{I^+}`` [c_I].
      prior_basis: ``[d, d_p]`` columns ``b_j``: first the labelled directions with
        ``k_j > 0`` (``b_j^T S b_i = delta_ij``, ``b_j^T I b_i = k_j delta_ij``), then
        the unseen directions (orthonormal, ``S b = 0``). The van Trees prior moves
        ``theta* + sum_j nu_j b_j`` (section 6).
      prior_info: ``[d_p]`` ``b_j^T S b_j``: 1 on labelled, 0 on unseen directions.
      prior_loss: ``[d_p]`` ``b_j^T I b_j``: ``k_j`` on labelled directions.
      unseen_curv: ``lambda_max`` of ``I`` on the unseen directions (0 under A1).
      pair_coords: ``[P, d_p]`` ``|b_j^T z|`` for the target pair differences ``z`` [tilde z].
      edge_coords: ``[E', d_p]`` ``beta |b_j^T z_e|`` for the labelled edges.
      pair_prompt: ``[P]`` the prompt of each target pair (row of ``pair_coords``).
      prompt_loss: ``[M, d_p]`` ``rho(x) b_j^T Cov_{pi*(.|x)}[phi] b_j``; its column sums are
        ``prior_loss`` (Theorem 5 weights each prompt by its own tilt over the box).
      pair_ends: ``[P, 2]`` the two completions (indices within the prompt) of each target pair.
      prompt_log_probs: ``[M, K]`` ``log pi*(y|x)`` (``-inf`` for absent completions); with
        ``pair_ends`` they give each prompt's tilt over the prior's support (Lemma 10.2).
      score_proxy_eigs: ``[d_V]`` eigenvalues of ``Gamma = sum_e w_e s_e^2 b_e b_e^T`` (ascending),
        ``s_e^2 = tanh(mu_e / 2) / (2 mu_e)`` the optimal sub-Gaussian variance proxy of one centred
        label of edge ``e`` (Kearns-Saul; ``>= sigma'(mu_e)``, so ``Gamma >= P_V``); ``n Cov``'s
        sub-Gaussian counterpart for the score radius of Lemma 9.1b.
    """

    beta: float
    criterion: float
    identifiable: bool
    dim: int
    kappa: float
    zeta: float
    tau: float
    zeta_eval: float
    coverage: float
    theta_norm: float
    radius: float
    diameter: float
    gap_max: float
    gap_sup: float
    criterion_eigs: np.ndarray
    unseen_dim: int
    curv_dim: int
    c_curv: float
    prior_basis: np.ndarray
    prior_info: np.ndarray
    prior_loss: np.ndarray
    unseen_curv: float
    pair_coords: np.ndarray
    edge_coords: np.ndarray
    pair_prompt: np.ndarray
    prompt_loss: np.ndarray
    tau_a: float = math.inf
    tau_am: float = math.inf
    pair_ends: np.ndarray | None = None
    prompt_log_probs: np.ndarray | None = None
    score_proxy_eigs: np.ndarray | None = None


class UpperBound(NamedTuple):
    """Theorem 1 at one budget.

    Attributes:
      value: the bound on ``E G`` (``inf`` where not valid).
      valid: ``n >= n_0``: the condition of Theorem 1 holds.
      leading: ``beta Phi / (2 n)``.
      factor: multiplies ``leading``; tends to 1.
      remainder: ``G_sup n^{-a}``.
      score_radius: ``r_n``, the high-probability radius of the score in ``S^+``-norm.
      error_radius: ``s_n``, the matching radius of ``theta_hat - theta*`` in ``S``-norm.
    """

    value: float
    valid: bool
    leading: float
    factor: float
    remainder: float
    score_radius: float
    error_radius: float


class HighProbabilityBound(NamedTuple):
    """Theorem 1' at one budget: ``P(G(theta_hat) <= value) >= 1 - failure_probability``.

    Attributes:
      value: ``(beta/2) psi_+(zeta_I s_n) kappa (1 + eta(m_n))^2 r_n^2`` (``inf`` where not valid).
      valid: ``n >= n_0`` (the same condition as :func:`upper_bound`).
      failure_probability: ``n^{-a}``.
      score_radius, error_radius: ``r_n`` and ``s_n``.
    """

    value: float
    valid: bool
    failure_probability: float
    score_radius: float
    error_radius: float


class LowerBound(NamedTuple):
    """Theorem 2 at one budget.

    Attributes:
      value: lower bound on the worst-case (and the prior-averaged) expected gap.
      halfwidth: ``h``, an upper bound on the ``I``-seminorm radius of the neighbourhood
        (prior support), exact under A1.
      rho0: the truncation level of F3.
      alpha: the prior scale (half-widths :func:`prior_widths`).
      factor: ``value / (beta Phi / (2 n))``; tends to 1.
    """

    value: float
    halfwidth: float
    rho0: float
    alpha: float
    factor: float


# ----------------------------------------------------------------------- helpers


def _psd_range(a):
    """Eigenvectors ``[d, r]`` and eigenvalues ``[r]`` of a PSD matrix on its range."""
    a = 0.5 * (a + a.T)
    lam, vec = np.linalg.eigh(a)
    top = max(lam.max(initial=0.0), 0.0)
    keep = lam > _RANK_TOL * top if top > 0 else np.zeros_like(lam, dtype=bool)
    return vec[:, keep], lam[keep]


def _target_pairs(features, log_ref, with_prompt=False, prompts=None):
    """Differences ``phi(x, y) - phi(x, y')`` of all present target pairs ``[P, d]`` (and their
    prompts ``[P]`` and completions ``[P, 2]``); ``prompts``: an optional ``[M]`` mask of the prompts
    to take (the target's: ``rho(x) > 0``)."""
    f = np.asarray(features, dtype=np.float64)
    present = np.isfinite(np.asarray(log_ref))
    ii, jj = np.triu_indices(f.shape[1], 1)
    keep = present[:, ii] & present[:, jj]
    if prompts is not None:
        keep &= np.asarray(prompts, bool)[:, None]
    x, p = np.nonzero(keep)
    z = f[x, ii[p]] - f[x, jj[p]]
    return (z, x, np.stack([ii[p], jj[p]], axis=1)) if with_prompt else z


def _max_mahalanobis(z, basis, lam):
    """``max_i ||z_i||_{M^+}`` with ``M = basis diag(lam) basis^T``; ``inf`` if ``z_i`` leaves the range."""
    if z.shape[0] == 0:
        return 0.0
    coords = z @ basis
    outside = np.linalg.norm(z - coords @ basis.T, axis=1)
    scale = np.linalg.norm(z, axis=1).max()
    if outside.max() > 1e-7 * max(scale, 1e-300):
        return math.inf
    return float(np.sqrt(((coords**2) / lam).sum(axis=1)).max())


def _fourth_moment_bound(b, c, iters: int = 300, rtol: float = 1e-10) -> float:
    """An upper bound of ``lambda_max(sum_e c_e vec(b_e b_e^T) vec(b_e b_e^T)^T)`` (Lemma 9.3).

    That matrix is ``A^T A`` with rows ``A_e = sqrt(c_e) vec(b_e b_e^T)``, so its largest
    eigenvalue is that of the non-negative Gram matrix ``G_ef = sqrt(c_e c_f) (b_e.b_f)^2``.
    For any positive ``x``, ``lambda_max(G) <= max_e (G x)_e / x_e`` (Collatz-Wielandt), so
    every power iterate gives a rigorous bound; the smallest one is returned. ``G`` is never
    formed: ``(G x)_e = sqrt(c_e) b_e^T (sum_f x_f sqrt(c_f) b_f b_f^T) b_e``.

    Args:
      b: ``[E, r]`` whitened edge vectors ``beta S^{+1/2} z_e``.
      c: ``[E]`` positive weights ``w_e sigma'_e``.
    """
    if b.shape[0] == 0:
        return 0.0
    sq = np.sqrt(c)
    x = sq.copy()  # G sqrt(c) = sqrt(c) ||b_e||^2: the first bound is zeta^2
    best = math.inf
    for _ in range(iters):
        m = (b.T * (x * sq)) @ b
        gx = sq * np.sum((b @ m) * b, axis=1)
        bound = float(np.max(gx / x))
        lower = float(x @ gx / (x @ x))  # Rayleigh quotient <= lambda_max
        best = min(best, bound)
        if best - lower <= rtol * best:
            break
        x = gx / np.linalg.norm(gx)
        x = np.maximum(x, 1e-300)  # stays positive (G has a positive diagonal); guards underflow
    return best


#: Largest eigenproblem (``min(E', d_V^2)``) for :func:`_loss_third_moments`; above it Lemma 9.4 is not used.
_TRILINEAR_MAX = 3000
#: Edges per chunk of the ``d_V^2 x d_V^2`` sum in :func:`_loss_third_moments`.
_TRILINEAR_CHUNK = 2048


def _loss_third_moments(b, c, margin, k_root) -> tuple[float, float]:
    """``(tau_A, tau_Am)`` of Lemma 9.4: ``sqrt(lambda_max(sum_e c_e m_e^2 vec(K^{1/2} b_e b_e^T) vec(.)^T))``.

    ``K = A^T A = S^{+1/2} I S^{+1/2}`` in the whitened coordinates of ``b``, so
    ``||A b_e b_e^T x|| = ||K^{1/2} b_e b_e^T x||``; ``m_e = 1`` for ``tau_A`` and
    ``|tanh(margin_e / 2)| = |1 - 2 sigma(margin_e)|`` for ``tau_Am``. The largest eigenvalue is
    taken from the smaller of the Gram form ``G_ef = sqrt(c_e c_f) m_e m_f (b_e^T K b_f)(b_e.b_f)``
    (``E' x E'``) and the ``d_V^2 x d_V^2`` form, by a dense symmetric eigensolver, and raised by
    ``1e-10`` relative (its rounding error is ``O(size eps lambda_max)``; like ``kappa``, ``zeta`` and
    ``tau``, the value is exact up to the rounding of ``S^{+1/2}`` and ``I`` themselves). ``(inf, inf)``
    above :data:`_TRILINEAR_MAX`.

    Args:
      b: ``[E', r]`` whitened edge vectors ``beta S^{+1/2} z_e``.
      c: ``[E']`` weights ``w_e sigma'_e``.
      margin: ``[E']`` ``beta theta*^T z_e``.
      k_root: ``[r, r]`` ``K^{1/2}`` (symmetric).
    """
    e, r = b.shape
    if e == 0:
        return 0.0, 0.0
    if min(e, r * r) > _TRILINEAR_MAX:
        return math.inf, math.inf
    out = []
    for m in (np.ones(e), np.abs(np.tanh(0.5 * margin))):
        w = np.sqrt(c) * m
        if e <= r * r:
            kb = b @ k_root
            top = np.linalg.eigvalsh(np.outer(w, w) * (kb @ kb.T) * (b @ b.T))[-1]
        else:  # sum_e w_e^2 vec vec^T in chunks of edges (E' x d_V^2 at once could be gigabytes)
            kb, gram = b @ k_root, np.zeros((r * r, r * r))
            for lo in range(0, e, _TRILINEAR_CHUNK):
                hi = lo + _TRILINEAR_CHUNK
                rows = w[lo:hi, None] * np.einsum("ei,ej->eij", kb[lo:hi], b[lo:hi]).reshape(-1, r * r)
                gram += rows.T @ rows
            top = np.linalg.eigvalsh(gram)[-1]
        out.append(math.sqrt(max(float(top), 0.0) * (1.0 + 1e-10)))
    return out[0], out[1]


@checked(**POOL)
def pair_diameter(features: Features, log_ref: LogRef) -> float:
    """``D_phi = max_x max_{y, y'} ||phi(x, y) - phi(x, y')||`` over present completions."""
    return _pair_diameter(features, log_ref)


def _pair_diameter(features, log_ref) -> float:
    z = _target_pairs(features, log_ref)
    return float(np.linalg.norm(z, axis=1).max()) if z.shape[0] else 0.0


@checked(**POOL, theta_star="[d] finite", beta="number > 0", prompt_weights="optional [m] probability")
def gap_sup(
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    beta: Scalar,
    prompt_weights: PromptWeights = None,
) -> float:
    """``G_sup = beta E_x max_y log(1 / pi_theta*(y|x))``: no policy has a larger gap.

    For any distribution ``pi`` on ``Y_x``, ``KL(pi || pi*) = sum pi log pi - sum pi log pi*
    <= 0 + max_y log(1 / pi*(y|x))`` (section 1), so ``G(theta) <= G_sup`` for every
    ``theta`` and for every limit of policies (a diverging DPO iterate included). The
    bound is approached by policies that put all their mass on ``argmin_y pi*(y|x)``.

    Args:
      theta_star: ``[d]``.
      features, log_ref, prompt_weights: the target pool (absent completions, ``-inf``,
        are not candidates for the maximum).
      beta: ``> 0``.
    """
    return _gap_sup(theta_star, features, log_ref, beta, prompt_weights)


@checked(counts="[E] finite", theta_star="[d] finite", diffs="[E, d] finite", beta="number > 0 as float",
         directions="[k, d] finite")
def separation_floor(
    counts: EdgeWeights,
    theta_star: Vector,
    diffs: Diffs,
    beta: Scalar,
    directions: Float[ArrayLike, "k d"],
) -> float:
    """A lower bound on ``P(the DPO MLE does not exist)`` for a fixed allocation (section 11.3).

    For a direction ``v``, if every label of every labelled edge with ``z_e . v != 0``
    agrees with ``sign(z_e . v)`` (the winner is the end ``v`` favours), the
    log-likelihood strictly increases along ``v`` and no maximiser exists. Labels are
    independent, so that event has probability ``prod_e q_e^{c_e}`` with
    ``q_e = sigmoid(beta sign(z_e . v) z_e . theta*)``; the events for ``v`` and ``-v``
    are disjoint. Returns ``max_v [P(v) + P(-v)]`` over the given directions (``0`` if no
    direction meets a labelled edge). In the tabular world the coordinate axes give the
    events "completion ``y`` wins every comparison" and "loses every comparison".

    Where this floor exceeds ``n^-a`` no event of probability ``>= 1 - n^-a`` keeps the MLE
    finite: Theorem 1' is false there and Theorems 1 and 4 cannot start there (their
    ``n0`` at that allocation exceeds ``n``; their expectation inequality may still hold).

    Args:
      counts: ``[E]`` labels per edge (``>= 0``).
      theta_star: ``[d]``; diffs: ``[E, d]``, ``z_e = phi(first) - phi(second)``; beta: ``> 0``.
      directions: ``[k, d]`` candidate directions ``v`` (e.g. ``np.eye(d)``).
    """
    c = np.asarray(counts, np.float64)
    if np.any(c < 0):
        raise ValueError("counts must be >= 0 (labels per edge)")
    z = np.asarray(diffs, np.float64)
    margin = beta * (z @ np.asarray(theta_star, np.float64))  # log-odds that the first completion wins
    v = np.asarray(directions, np.float64)
    proj = v @ z.T  # [k, E]
    # z_e . v counts as 0 below rounding of the product's size, ||v|| max_e ||z_e|| (a scale
    # of the direction's own projections would call rounding noise a sign when v is orthogonal to every edge)
    scale = 1e-12 * np.linalg.norm(v, axis=1, keepdims=True) * max(float(np.linalg.norm(z, axis=1).max()), 1e-300)
    sign = np.where(np.abs(proj) > scale, np.sign(proj), 0.0) * (c > 0)
    met = np.any(sign != 0, axis=1)
    # log q_e for the labels agreeing with +v and with -v: log sigmoid(+-sign * margin)
    log_plus = -(np.logaddexp(0.0, -sign * margin) * np.abs(sign)) @ c
    log_minus = -(np.logaddexp(0.0, sign * margin) * np.abs(sign)) @ c
    both = np.where(met, np.logaddexp(log_plus, log_minus), -np.inf)
    return float(np.exp(both.max()))


@checked(margin="[E] finite")
def subgaussian_proxy(margin: Float[ArrayLike, " E"]) -> np.ndarray:
    """The optimal sub-Gaussian variance proxy of one centred label, ``tanh(mu / 2) / (2 mu)`` (1/4 at 0).

    A label ``Y ~ Bernoulli(p)``, ``p = sigma(mu)``, satisfies ``E exp(l (Y - p)) <= exp(s^2 l^2 / 2)``
    for every real ``l`` with ``s^2 = (1 - 2p) / (2 log((1 - p) / p))`` (Kearns and Saul 1998;
    Berend and Kontorovich 2013, the smallest such constant), which is ``tanh(mu / 2) / (2 mu)``
    in the margin; ``sigma'(mu) <= s^2 <= 1/4``. Used by Lemma 9.1b (``theory/DERIVATIONS.md``).
    """
    m = np.abs(np.asarray(margin, np.float64))
    small = m < 1e-3
    safe = np.where(small, 1.0, m)
    # below 1e-3 the alternating series 1/4 - m^2/48 + m^4/480 - ..., cut after a positive term: not below the value
    return np.where(small, 0.25 - m * m / 48.0 + m**4 / 480.0, np.tanh(0.5 * safe) / (2.0 * safe))


def _gap_sup(theta_star, features, log_ref, beta, prompt_weights) -> float:
    m = np.shape(features)[0]
    dtype = jnp.result_type(features)
    rho = np.asarray(normalized_prompt_weights(prompt_weights, m, dtype), np.float64)
    logp = np.asarray(policy_log_probs_kernel(jnp.asarray(theta_star, dtype), jnp.asarray(features, dtype), jnp.asarray(log_ref, dtype)), np.float64)
    present = np.isfinite(np.asarray(log_ref))
    worst = np.where(present, -logp, -np.inf).max(axis=1)
    return float(beta) * float(rho @ worst)


# ----------------------------------------------------------------------- constants


@checked(**DESIGN_INSTANCE, radius="optional number > 0 as float")
def instance_constants(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    radius: float | None = None,
    prompt_weights: PromptWeights = None,
) -> BoundConstants:
    """All constants of Theorems 1-2 for one instance and empirical design.

    Args:
      weights: ``[E]`` empirical design ``n_e / n`` (or a continuous design).
      theta_star: ``[d]``.
      features, log_ref, prompt_weights: the target pool (where the gap is measured).
      diffs: ``[E, d]`` candidate edge differences.
      beta: ``> 0``.
      radius: ``None`` or ``B > 0``, the radius of the safeguarded estimator's ball;
        only ``gap_max`` and :func:`check_radius` use it (Theorem 1 holds for plain DPO).
    """
    m = np.shape(features)[0]
    beta_f = float(beta)
    if radius is None:
        radius = math.inf

    f64 = np.float64
    dtype = jnp.result_type(features)
    if dtype != jnp.float64:
        # the ranges of S and I are taken at a float64 tolerance (_RANK_TOL): float32 rounding (1e-7) would count as
        # labelled directions, and the constants (Phi, the bounds' validity) would say a design sees what it does not
        raise ValueError(f"features: the bounds' constants need float64 (got {jnp.dtype(dtype).name}): enable jax_enable_x64 "
                         "and give float64 arrays (experiments.cell.float64() does both)")
    rho = normalized_prompt_weights(prompt_weights, m, dtype)
    theta = jnp.asarray(theta_star, dtype)
    curv = np.asarray(policy_curvature_kernel(theta, jnp.asarray(features, dtype), jnp.asarray(log_ref, dtype), rho), f64)
    curv = 0.5 * (curv + curv.T)
    sigma = np.asarray(information_matrix_kernel(theta, jnp.asarray(diffs, dtype), jnp.asarray(weights, dtype), beta), f64)
    labelled = np.asarray(weights) > 0
    z_edges = np.asarray(diffs, f64)[labelled]
    # c_e = w_e sigma'(beta theta*^T z_e) on the labelled edges (S = sum_e c_e beta^2 z_e z_e^T).
    margin = beta_f * (z_edges @ np.asarray(theta_star, f64))
    edge_info = np.asarray(weights, f64)[labelled] * np.exp(-np.logaddexp(0.0, margin) - np.logaddexp(0.0, -margin))
    # The target's pairs: prompts of weight rho(x) > 0 (a prompt of weight 0 is no part of the gap; its pairs had made
    # zeta_eval infinite, and so the design "unidentifiable" with criterion inf, where tr(I S^+) is finite)
    z_pairs, pair_prompt, pair_ends = _target_pairs(features, log_ref, with_prompt=True, prompts=np.asarray(rho) > 0)
    ts = np.asarray(theta_star, f64)
    beta = float(beta)
    d = ts.size

    # Labelled span V = range(S), in coordinates that whiten S (B0^T S B0 = Id) ...
    ws, lam_s = _psd_range(sigma)
    dim = int(lam_s.size)
    if dim == 0:
        raise ValueError("weights put no mass on a non-zero edge difference: the design sees nothing")
    if z_edges.shape[0]:  # range(S) is span{z_e : w_e > 0} in exact arithmetic: a smaller range is S's resolution
        seen = rows_rank(z_edges, np.float64)
        if dim < seen:
            m_top = float(np.abs(margin).max())
            warnings.warn(SaturationWarning(
                f"instance_constants: {seen - dim} of the {seen} labelled directions are below {_RANK_TOL:g} of S's top "
                f"eigenvalue (sigmoid'(beta theta*.z_e) down to {float(np.exp(-np.logaddexp(0.0, m_top) - np.logaddexp(0.0, -m_top))):.3g}"
                f", margins up to {float(np.abs(margin).max()):.3g}), so the constants treat them as unlabelled: identifiable, "
                "the criterion and the bounds' validity are those of a design that does not see them"), stacklevel=3)
    s_half_inv = ws / np.sqrt(lam_s)
    # ... and diagonalise S^{+1/2} I S^{+1/2}: b_j = S^{+1/2} q_j, b^T S b = Id, b^T I b = diag(k).
    a_mat = s_half_inv.T @ curv @ s_half_inv
    k_eigs, q = np.linalg.eigh(0.5 * (a_mat + a_mat.T))
    k_eigs = np.clip(k_eigs, 0.0, None)
    kappa = float(k_eigs.max())
    zeta = beta * _max_mahalanobis(z_edges, ws, lam_s)
    b_edges = beta * (z_edges @ s_half_inv)  # b_e = beta S^{+1/2} z_e in V's whitened coordinates (Lemmas 9.1b, 9.3, 9.4)
    proxy = (b_edges.T * (np.asarray(weights, f64)[labelled] * subgaussian_proxy.kernel(margin))) @ b_edges
    tau_a, tau_am = _loss_third_moments(b_edges, edge_info, margin, (q * np.sqrt(k_eigs)) @ q.T)
    zeta_eval = _max_mahalanobis(z_pairs, ws, lam_s)
    theta_norm = float(np.linalg.norm(ws.T @ ts))
    diameter = float(np.linalg.norm(z_pairs, axis=1).max()) if z_pairs.shape[0] else 0.0

    # Identifiable subspace range(I); the part of it that no label sees (A1 fails if any).
    wi, lam_i = _psd_range(curv)
    p_out = np.eye(d) - ws @ ws.T
    lam_o, vec_o = np.linalg.eigh(0.5 * (p_out @ curv @ p_out + (p_out @ curv @ p_out).T))
    top_i = float(lam_i.max(initial=0.0))
    unseen = lam_o > _COVER_TOL * top_i if top_i > 0 else np.zeros_like(lam_o, dtype=bool)
    identifiable = (not bool(unseen.any())) and math.isfinite(zeta_eval)
    criterion = float(k_eigs.sum()) if identifiable else math.inf

    relevant = k_eigs > _RANK_TOL * kappa if kappa > 0 else np.zeros_like(k_eigs, dtype=bool)
    prior_basis = np.concatenate([(s_half_inv @ q)[:, relevant], vec_o[:, unseen]], axis=1)
    prior_info = np.concatenate([np.ones(int(relevant.sum())), np.zeros(int(unseen.sum()))])
    prior_loss = np.concatenate([k_eigs[relevant], lam_o[unseen]])
    # Per-prompt loss weights rho(x) Var_{pi*(.|x)}(b_j . phi) (Theorem 5).
    f_np = np.asarray(features, f64)
    present = np.isfinite(np.asarray(log_ref))
    log_probs = np.where(present, np.asarray(policy_log_probs_kernel(theta, jnp.asarray(features, dtype), jnp.asarray(log_ref, dtype)), f64), -np.inf)
    probs = np.exp(log_probs)
    proj = np.where(present[..., None], f_np @ prior_basis, 0.0)
    centred = proj - np.einsum("mk,mkj->mj", probs, proj)[:, None, :]
    prompt_loss = np.asarray(rho, f64)[:, None] * np.einsum("mk,mkj->mj", probs, centred**2)
    return BoundConstants(
        beta=beta,
        criterion=criterion,
        identifiable=identifiable,
        dim=dim,
        kappa=kappa,
        zeta=zeta,
        tau=min(zeta, math.sqrt(_fourth_moment_bound(b_edges, edge_info))),
        zeta_eval=zeta_eval,
        coverage=float(lam_s.min()),
        theta_norm=theta_norm,
        radius=radius,
        diameter=diameter,
        gap_max=beta * (radius + theta_norm) * diameter,
        gap_sup=_gap_sup(theta_star, features, log_ref, beta, prompt_weights),
        criterion_eigs=k_eigs,
        unseen_dim=int(unseen.sum()),
        curv_dim=int(lam_i.size),
        c_curv=_max_mahalanobis(z_pairs, wi, lam_i),
        prior_basis=prior_basis,
        prior_info=prior_info,
        prior_loss=prior_loss,
        unseen_curv=float(lam_o[unseen].max(initial=0.0)),
        pair_coords=np.abs(z_pairs @ prior_basis),
        edge_coords=beta * np.abs(z_edges @ prior_basis),
        pair_prompt=pair_prompt,
        prompt_loss=prompt_loss,
        tau_a=tau_a,
        tau_am=tau_am,
        pair_ends=pair_ends,
        prompt_log_probs=log_probs,
        score_proxy_eigs=np.linalg.eigvalsh(0.5 * (proxy + proxy.T)),
    )


# ------------------------------------------------------------------- assumptions


@checked(**POOL, diffs="[E, d] finite")
def check_boundedness(
    features: Features, log_ref: LogRef, diffs: Diffs
) -> dict:
    """Assumption A2 (bounded features): the pool's two diameters.

    Returns:
      ``{"target_diameter": D_phi, "edge_diameter": max_e ||z_e||}``, both finite. ``D_phi`` is over
      every prompt of the pool (no weights here); :func:`instance_constants`' ``diameter`` is over the
      prompts of weight ``> 0``, so it is at most this one.
    """
    z = np.asarray(diffs, np.float64)
    return {"target_diameter": _pair_diameter(features, log_ref), "edge_diameter": float(np.linalg.norm(z, axis=1).max())}


def check_coverage(c: BoundConstants) -> dict:
    """Assumptions A1 (identifiability) and A3 (coverage) on an instance.

    Returns:
      ``identifiable`` (every direction of ``range(I)`` is seen by the design),
      ``coverage`` (smallest non-zero eigenvalue of ``S`` on the labelled span),
      ``unseen_directions`` (how many directions of ``range(I)`` no labelled edge sees).
    """
    return {
        "identifiable": c.identifiable,
        "coverage": c.coverage,
        "unseen_directions": c.unseen_dim,
    }


def check_radius(c: BoundConstants) -> dict:
    """The safeguarded estimator's ball contains ``theta*`` (former assumption A4).

    Theorem 1 no longer needs it (it holds for plain DPO); the safeguarded estimator
    of :func:`synthetic.bounds_check.safeguarded_gaps` does.

    Returns:
      ``inside`` and ``margin = B - ||P_V theta*||`` (``inf`` without a ball).
    """
    margin = c.radius - c.theta_norm
    return {"inside": margin > 0, "margin": margin}


def _check_n(n):
    """``float(n)`` for a number of labels ``n >= 1`` (the spec ``BUDGET``)."""
    return check_argument("n", n, BUDGET)


def _check_tail(tail):
    """``float(tail)`` for a tail exponent ``> 0`` (the spec ``TAIL``)."""
    return check_argument("tail", tail, TAIL)


# ------------------------------------------------------------------ the results


@checked(n=BUDGET)
def asymptotic_prediction(c: BoundConstants, n) -> float:
    """``beta Phi / (2 n)``, the common leading term (section 3)."""
    return c.beta * c.criterion / (2.0 * n)


def sandwich_factors(rho):
    """F2 sharpened: ``(psi_-(rho), psi_+(rho))`` with ``G / ((beta/2) Delta^T I Delta)`` between them.

    ``psi_-(rho) = 2 (1 - (1 + rho) e^{-rho}) / rho^2 >= e^{-rho}`` and
    ``psi_+(rho) = 2 ((rho - 1) e^{rho} + 1) / rho^2 <= e^{rho}`` (section 4, F2').
    """
    rho = float(rho)
    if rho < 0 or not math.isfinite(rho):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    if rho < 1e-4:
        return 1.0 - 2.0 * rho / 3.0, 1.0 + 2.0 * rho / 3.0
    lo = 2.0 * (-math.expm1(-rho) - rho * math.exp(-rho)) / rho**2
    hi = 2.0 * (rho * math.exp(rho) - math.expm1(rho)) / rho**2
    return lo, hi


def _eta(m):
    """``eta(m) = m / (1 - e^{-m}) - 1``: ``||M^{-1} - Id||`` for ``spec(M) in [c_-(m), c_+(m)]`` (Lemma 5.2)."""
    if m < 1e-8:
        return 0.5 * m
    return m / (-math.expm1(-m)) - 1.0


def _score_radius(c, n, tail):
    """``r_n = sqrt(d_V / n) + zeta sqrt(a log n / (2 n))`` (Lemma 5.3, McDiarmid)."""
    return math.sqrt(c.dim / n) + c.zeta * math.sqrt(tail * math.log(n) / (2.0 * n))


def _upper_conditions(c, n, tail):
    """Theorem 1's condition at ``n``: A1, ``n >= 3`` and ``zeta r_n < 1``; returns ``(valid, r_n, s_n)``."""
    r = _score_radius(c, n, tail)
    if not (c.identifiable and c.zeta * r < 1.0 and n >= 3):
        return False, r, math.inf
    return True, r, -math.log1p(-c.zeta * r) / c.zeta


@checked(n=BUDGET, tail=TAIL)
def upper_bound(c: BoundConstants, n, tail: float = 2.0) -> UpperBound:
    """Theorem 1: the expected gap of plain DPO at budget ``n``, whatever it returns without an MLE.

    Args:
      c: :func:`instance_constants` of the empirical design.
      n: number of labels.
      tail: ``a > 0``: the score leaves its ball with probability ``<= n^{-a}``.

    Returns:
      :class:`UpperBound` (``value = inf`` and ``valid = False`` below ``n_0``).
    """
    leading = c.beta * c.criterion / (2.0 * n)
    valid, r, s = _upper_conditions(c, n, tail)
    if not valid:
        return UpperBound(math.inf, False, leading, math.inf, math.inf, r, s)
    m = c.zeta * s
    factor = sandwich_factors(c.zeta_eval * s)[1] * (1.0 + _eta(m) * math.sqrt(c.kappa * c.dim / c.criterion)) ** 2
    remainder = c.gap_sup * n ** (-tail)
    return UpperBound(leading * factor + remainder, True, leading, factor, remainder, r, s)


@checked(n=BUDGET, tail=TAIL)
def upper_bound_high_probability(c: BoundConstants, n, tail: float = 2.0) -> HighProbabilityBound:
    """Theorem 1': with probability ``>= 1 - n^{-a}``, ``G(theta_hat) <= (beta/2) psi_+(zeta_I s_n) kappa (1 + eta(m_n))^2 r_n^2``.

    The event is the one of Theorem 1 (``||S^{+1/2} g_n|| <= r_n``); on it the MLE exists.

    Args:
      c: :func:`instance_constants` of the empirical design.
      n: number of labels.
      tail: ``a > 0``.
    """
    valid, r, s = _upper_conditions(c, n, tail)
    if not valid:
        return HighProbabilityBound(math.inf, False, n ** (-tail), r, s)
    value = 0.5 * c.beta * sandwich_factors(c.zeta_eval * s)[1] * c.kappa * (1.0 + _eta(c.zeta * s)) ** 2 * r**2
    return HighProbabilityBound(value, True, n ** (-tail), r, s)


@checked(tail=TAIL)
def upper_bound_valid_from(c: BoundConstants, tail: float = 2.0) -> float:
    """``n_0``: the smallest integer ``n >= 3`` from which Theorem 1 holds (``inf`` if none).

    The condition ``zeta r_n < 1`` is monotone in ``n`` for ``n >= 3`` (``r_n``
    decreases), so ``n_0`` is found by doubling and bisection.
    """
    if not c.identifiable:
        return math.inf
    hi = 4.0
    while not _upper_conditions(c, hi, tail)[0]:
        hi *= 2.0
        if hi > 1e30:
            return math.inf
    lo = 3.0
    if _upper_conditions(c, lo, tail)[0]:
        return lo
    while hi - lo > 1.0:
        mid = math.floor(0.5 * (lo + hi))
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if _upper_conditions(c, mid, tail)[0] else (mid, hi)
    return float(hi)


def prior_widths(c: BoundConstants, n, alpha) -> np.ndarray:
    """Half-widths ``a_j = alpha / sqrt(n s_j + 1)`` of the van Trees prior box, ``s_j`` = ``prior_info`` (section 6).

    ``alpha / sqrt(n + 1)`` on the labelled directions (``S``-whitened), ``alpha`` on
    the unseen ones.
    """
    return float(alpha) / np.sqrt(float(n) * c.prior_info + 1.0)


def _box_radius(c, a):
    """``h >= sup_{nu in box} ||sum_j nu_j b_j||_I``: exact on the labelled block, triangle inequality across blocks."""
    lab = c.prior_info > 0
    return float(np.sqrt(np.sum(c.prior_loss[lab] * a[lab] ** 2)) + np.sqrt(c.unseen_curv * np.sum(a[~lab] ** 2)))


def _lower_terms(c, n, alpha, rho0):
    """Theorem 2's bound for one ``(alpha, rho0)``, with its pieces (Lemmas 6.1-6.4)."""
    a = prior_widths(c, n, alpha)
    h = _box_radius(c, a)
    rho_box = float((c.pair_coords @ a).max()) if c.pair_coords.size else 0.0
    m_box = float((c.edge_coords @ a).max()) if c.edge_coords.size else 0.0
    if rho_box > 50.0 or m_box > 50.0:  # the factor e^{-rho_box} is below 2e-22: the bound is ~0
        return 0.0, h
    trace = float(np.sum(c.prior_loss / (n * math.exp(m_box) * c.prior_info + math.pi**2 / a**2)))
    radius = rho0 / c.c_curv
    shrink = (radius / (radius + 2.0 * h)) ** 2
    return sandwich_factors(rho0)[0] * math.exp(-rho_box) * shrink * 0.5 * c.beta * trace, h


@checked(n=BUDGET, grid="int >= 2")
def lower_bound(c: BoundConstants, n, grid: int = 40) -> LowerBound:
    """Theorem 2: no estimator from ``n`` labels of this design does better, worst case over ``N``.

    ``N`` is the prior's box around ``theta*`` (columns ``c.prior_basis``, half-widths
    :func:`prior_widths`, ``I``-seminorm radius at most ``h``). The bound holds for every ``alpha > 0`` and ``rho0 > 0``;
    this returns the largest value over a log grid of both (a maximum of valid
    bounds is valid). It needs no lower limit on ``n`` and stays positive when the
    design misses a direction of ``range(I)`` (then it does not vanish as ``n`` grows).

    Args:
      c: :func:`instance_constants`.
      n: number of labels.
      grid: points per axis of the search grid.

    Returns:
      :class:`LowerBound`.
    """
    leading = c.beta * c.criterion / (2.0 * n)
    if c.curv_dim == 0 or not math.isfinite(c.c_curv):
        return LowerBound(0.0, 0.0, 0.0, 0.0, 0.0)
    best = (-1.0, 0.0, 0.0, 0.0)
    for alpha in np.geomspace(1e-2, 1e3, grid):
        for rho0 in np.geomspace(1e-3, 10.0, grid):
            v, h = _lower_terms(c, n, alpha, rho0)
            if v > best[0]:
                best = (v, h, float(rho0), float(alpha))
    value, h, rho0, alpha = best
    factor = value / leading if math.isfinite(leading) and leading > 0 else math.nan
    return LowerBound(value, h, rho0, alpha, factor)


def sample_box_kernel(key, theta_star, basis, widths):
    """``theta* + basis @ nu`` with independent ``nu_i`` of density ``cos^2(pi nu / (2 a_i)) / a_i``."""
    u = jax.random.uniform(key, widths.shape, dtype=widths.dtype)

    def body(_, lh):
        lo, hi = lh
        mid = 0.5 * (lo + hi)
        below = (mid + 1) / 2 + jnp.sin(jnp.pi * mid) / (2 * jnp.pi) < u
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (-jnp.ones_like(u), jnp.ones_like(u)))
    return theta_star + basis @ (widths * 0.5 * (lo + hi))


def sample_prior(key, c: BoundConstants, theta_star, n, alpha):
    """Draw ``theta ~ pi`` of Theorem 2 (``vmap`` over keys for many draws).

    ``theta = theta* + sum_i nu_i b_i`` with ``b_i`` the columns of
    ``c.prior_basis`` (``S``-whitened labelled directions, then unseen ones) and independent ``nu_i`` on ``[-a_i, a_i]`` with density
    ``cos^2(pi nu / (2 a_i)) / a_i`` (section 6), sampled by inverting its CDF
    ``F(x) = (x + 1) / 2 + sin(pi x) / (2 pi)`` (``x = nu / a_i``) by bisection.

    Args:
      key: JAX PRNG key.
      c: constants.
      theta_star: ``[d]``.
      n, alpha: the budget and prior scale (``LowerBound.alpha`` of that budget).
    """
    theta_star = jnp.asarray(theta_star)
    dtype = theta_star.dtype
    widths = jnp.asarray(prior_widths(c, n, alpha), dtype)
    return sample_box_kernel(key, theta_star, jnp.asarray(c.prior_basis, dtype), widths)


# --------------------------------------------------------------------- plug-in


@checked(**POOL, theta0="[d] finite", theta_star="[d] finite", diffs="[E, d] finite", beta="number > 0",
         relative_certificate="number >= 0")
def plug_in_factor(
    theta0: Vector,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    relative_certificate: float = 0.0,
) -> float:
    """Theorem 3: ``Phi(w_{theta0}; theta*) / Phi(w_{theta*}; theta*) <= exp(2 (rho(delta) + m(delta)))``.

    ``delta = theta* - theta0``, ``rho(delta)`` its largest within-prompt spread on the
    target pool and ``m(delta) = beta max_e |delta . z_e|`` over the candidate edges.
    With a plug-in design certified only to a relative gap ``eps``, multiply by ``1 + eps``.
    """
    delta = np.asarray(theta_star, np.float64) - np.asarray(theta0, np.float64)
    f = np.asarray(features, np.float64)
    present = np.isfinite(np.asarray(log_ref))
    proj = f @ delta
    spread = np.where(present, proj, -np.inf).max(axis=1) - np.where(present, proj, np.inf).min(axis=1)
    rho = float(spread.max())
    m = float(beta) * float(np.abs(np.asarray(diffs, np.float64) @ delta).max())
    return math.exp(2.0 * (rho + m)) * (1.0 + float(relative_certificate))


@checked(r0="number >= 0", target_diameter="number >= 0", edge_diameter="number >= 0", beta="number > 0")
def plug_in_factor_radius(r0, target_diameter, edge_diameter, beta) -> float:
    """Theorem 3 in terms of ``r0 = ||theta0 - theta*||`` only: ``exp(2 r0 (D_phi + beta D_z))``."""
    return math.exp(2.0 * float(r0) * (float(target_diameter) + float(beta) * float(edge_diameter)))


# ---------------------------------------------- Theorems 4-5 (issue 18, sections 9-10)
#
# Theorem 4 replaces the McDiarmid radius of Lemma 5.3 by a Bernstein bound on an
# epsilon-net of the labelled span and localises with the third-moment constant tau <= zeta
# of Lemma 9.3 (n_0 ~ tau (tau + zeta) instead of zeta^4) and bounds the
# leading factor with the actual score norm instead of its high-probability radius
# (factor 1 + O(n^{-1/2}) instead of 1 + O(sqrt(log n / n))). Theorem 5 replaces the
# truncation of Lemmas 6.1-6.2 by the Bayes risk of a Bregman loss (a Jensen gap of the
# log-partition at the posterior mean) and the worst-case Fisher information by its
# prior mean (log-concavity of sigma'): factor 1 - O(n^{-1/3}) instead of 1 - O(n^{-1/8}).

_NET_GRID = tuple(float(e) for e in np.round(np.arange(0.02, 1.405, 0.01), 2))


class BernsteinUpperBound(NamedTuple):
    """Theorem 4 at one budget (section 9).

    Attributes:
      value: the bound on ``E G`` (``inf`` where not valid).
      valid: ``n >= n_0`` (:func:`upper_bound_bernstein_valid_from`).
      leading: ``beta Phi / (2 n)``.
      factor: ``(value - remainder) / leading``; tends to 1 as ``1 + O(n^{-1/2})``.
      remainder: ``G_sup n^{-a}``.
      score_radius: ``r_n``, the smaller of Lemma 9.1's net-Bernstein radius of ``||S^{+1/2} g_n||``
        and Lemma 9.1b's quadratic-form radius (:func:`score_radius_subgaussian`).
      net: the net parameter ``epsilon`` that minimises Lemma 9.1's radius, ``nan`` where
        Lemma 9.1b's radius is the smaller (and is ``r_n``).
      error_radius: ``s_n = -log(1 - tau r_n) / tau``.
      e1, e2: the chord slopes ``(psi_+(zeta_I s_n) - 1) / r_n`` and
        ``min(sqrt(kappa) eta_n / r_n, gamma(s_n) / r_n^2)``, ``eta_n`` the perturbation bound of
        Lemmas 5.2 and 9.3 at ``r_n`` and ``gamma`` Lemma 9.4's.
      moment_r4, moment_x4: the bounds ``M_R >= E ||u||^4`` and ``M_X >= E ||A u||^4`` (Lemma 9.2).
      tail: the tail exponent ``a`` the bound was computed at (for :func:`upper_bound_bernstein_tuned`,
        the one of :data:`TAIL_GRID` that gave the smallest bound).
    """

    value: float
    valid: bool
    leading: float
    factor: float
    remainder: float
    score_radius: float
    net: float
    error_radius: float
    e1: float
    e2: float
    moment_r4: float
    moment_x4: float
    tail: float = math.nan


class JensenLowerBound(NamedTuple):
    """Theorem 5 at one budget (section 10).

    Attributes:
      value: lower bound on the Bayes risk under the prior (hence on the worst case over its box).
      factor: ``value / (beta Phi / (2 n))``; tends to 1 as ``1 - O(n^{-1/3})``.
      alpha: the scale of the best one-parameter prior ``a_j = alpha / sqrt(n s_j + 1)``.
      widths: ``[d_p]`` the half-widths ``a_j`` of the prior box actually used (after the
        per-direction refinement when it helped); :func:`jensen_terms` recomputes ``value`` from them.
      rho_box: ``rho_N``, the largest target-pair spread over the prior's support.
      tilt: ``t_N``, the largest prompt tilt over the prior's support (Lemma 10.2; ``<= rho_N``).
      fisher_inflation: ``mu_N``, with ``E_pi Sigma_w(theta) <= e^{mu_N} S``.
      refined: whether the per-direction refinement improved on the one-parameter family.
      shape: ``"box"`` (independent coordinates, section 10) or ``"ball"`` (the ellipsoid
        ``sum_j (nu_j / a_j)^2 <= 1``, section 10.5), whichever gave the larger bound.
    """

    value: float
    factor: float
    alpha: float
    widths: np.ndarray
    rho_box: float
    fisher_inflation: float
    refined: bool
    shape: str = "box"
    tilt: float = 0.0


#: Per net parameter ``epsilon`` of :data:`_NET_GRID`: ``log(1 + 2 / epsilon)`` and ``1 - epsilon^2 / 2``.
_NET_LOG = np.array([math.log1p(2.0 / e) for e in _NET_GRID])
_NET_DEN = np.array([1.0 - 0.5 * e * e for e in _NET_GRID])


def _net_minima(c, n, tails) -> tuple[np.ndarray, np.ndarray]:
    """Lemma 9.1's radius at each tail ``a``: the smallest over :data:`_NET_GRID` of
    ``(sqrt(2 y / n) + zeta y / (3 n)) / (1 - eps^2 / 2)``, ``y = a log n + d_V log(1 + 2 / eps)``;
    returns ``(r [T], eps [T])`` (the first ``eps`` of a tie). One array expression over
    tails x grid, each element by the same IEEE operations (+, *, /, sqrt) in the same order as the
    scalar formula, so the same numbers."""
    y = np.asarray(tails, np.float64)[:, None] * math.log(n) + c.dim * _NET_LOG[None, :]
    radii = (np.sqrt(2.0 * y / n) + c.zeta * y / (3.0 * n)) / _NET_DEN[None, :]
    best = np.argmin(radii, axis=1)
    return radii[np.arange(best.size), best], np.asarray(_NET_GRID)[best]


@checked(n=BUDGET, tail=TAIL)
def score_radius_bernstein(c: BoundConstants, n, tail: float = 2.0):
    """Lemma 9.1: ``P(||S^{+1/2} g_n|| > r_n) <= n^{-a}``; returns ``(r_n, epsilon)``.

    ``r_n`` is the smallest net-Bernstein radius over the fixed grid of net parameters
    ``epsilon`` (a deterministic choice, so the probability statement holds for it).
    """
    r, eps = _net_minima(c, n, (tail,))
    return float(r[0]), float(eps[0])


@checked(n=BUDGET, tail=TAIL)
def score_radius_subgaussian(c: BoundConstants, n, tail: float = 2.0) -> float:
    """Lemma 9.1b: ``P(||S^{+1/2} g_n|| > r_n) <= n^{-a}`` with
    ``r_n^2 = (tr Gamma + 2 sqrt(tr(Gamma^2) t) + 2 ||Gamma|| t) / n``, ``t = a log n``.

    The quadratic-form tail of Hsu, Kakade and Zhang (2012, Thm 1) for the score, a linear map of
    independent sub-Gaussian labels, with each label's proxy ``s_e^2`` (:func:`subgaussian_proxy`)
    in ``Gamma`` (``BoundConstants.score_proxy_eigs``). No net and no range term: smaller than
    Lemma 9.1's radius where the margins are moderate (``Gamma`` near ``P_V``), larger where a
    direction rests on edges of large margin (``s_e^2 >> sigma'``). ``inf`` without the eigenvalues.
    """
    return _subgaussian_radius(_subgaussian_parts(c), n, tail)


def _subgaussian_parts(c):
    """``(tr Gamma, tr(Gamma^2), ||Gamma||)`` of Lemma 9.1b, or ``None`` without the eigenvalues."""
    g = c.score_proxy_eigs
    if g is None:
        return None
    return float(np.sum(g)), float(np.sum(g * g)), float(np.max(g))


def _subgaussian_radius(parts, n, tail) -> float:
    """Lemma 9.1b's radius from :func:`_subgaussian_parts` (``inf`` for ``None``)."""
    if parts is None:
        return math.inf
    trace, squares, top = parts
    t = tail * math.log(n)
    return math.sqrt((trace + 2.0 * math.sqrt(squares * t) + 2.0 * top * t) / n)


def _bernstein_conditions(c, n, tail, radii=None):
    """Theorem 4's condition: A1, ``n >= 3`` and ``tau r_n < 1``; returns ``(valid, r_n, eps, s_n)``.

    ``r_n`` is the smaller of Lemma 9.1's net radius and Lemma 9.1b's quadratic-form radius (each
    holds with probability ``>= 1 - n^{-a}`` and the choice depends on ``(n, a)`` and the design
    only); ``eps`` is ``nan`` where Lemma 9.1b's is the smaller. ``radii``: ``(net radius, its eps,
    Lemma 9.1b's radius)`` at ``(n, tail)`` if already computed (:func:`_tuned`, every tail at once).
    """
    if radii is None:
        r, eps = score_radius_bernstein.kernel(c, float(n), float(tail))  # as their checked forms take them
        r_q = score_radius_subgaussian.kernel(c, float(n), float(tail))
    else:
        r, eps, r_q = float(radii[0]), float(radii[1]), radii[2]
    if r_q < r:
        r, eps = r_q, math.nan
    if not (c.identifiable and n >= 3 and c.tau * r < 1.0):
        return False, r, eps, math.inf
    return True, r, eps, -math.log1p(-c.tau * r) / c.tau


def _perturbation(c, r, s):
    """A bound on ``||M^{-1} - Id||`` at score norm ``r`` (Lemmas 5.2 and 9.3), convex in ``r``, 0 at 0.

    ``s = -log(1 - tau r) / tau``. Lemma 9.3 gives ``eta(tau s) + tau^2 s^2 e^{zeta s} / 6``; where
    ``zeta r < 1`` Lemma 5.2's ``eta(zeta s')``, ``s' = -log(1 - zeta r) / zeta``, also holds, and
    the smaller of the two is returned (both are convex in ``r`` and vanish at 0, so each
    chord bound of Theorem 4 holds for the minimum of their chords).
    """
    new = _eta(c.tau * s) + (c.tau * s) ** 2 * math.exp(c.zeta * s) / 6.0
    if c.zeta * r < 1.0:
        return min(new, _eta(-math.log1p(-c.zeta * r)))
    return new


def _loss_perturbation(c, s):
    """Lemma 9.4's ``gamma(s)``: ``||A (M^{-1} - Id) u|| <= tau_Am s^2 / 2 + zeta tau_A s^3 e^{zeta s} / 6`` at ``||Delta||_S <= s``.

    Increasing in ``s``, and over ``s^2`` too, so along ``s = s(r)`` it is at most its value
    at ``r_n`` times ``(r / r_n)^2`` (Theorem 4's chord, with ``R^2`` in place of ``R``).
    ``inf`` where the constants were not computed.
    """
    if not (math.isfinite(c.tau_a) and math.isfinite(c.tau_am)):
        return math.inf
    return 0.5 * c.tau_am * s * s + c.zeta * c.tau_a * s**3 * math.exp(c.zeta * s) / 6.0


def _e2(c, r, s):
    """Theorem 4's ``e_2``: the smaller of ``sqrt(kappa) eta_n / r_n`` (Lemmas 5.2, 9.3) and ``gamma(s_n) / r_n^2`` (Lemma 9.4)."""
    return min(math.sqrt(c.kappa) * _perturbation(c, r, s) / r, _loss_perturbation(c, s) / (r * r))


def _score_fourth_moments(c, n):
    """``(M_R, M_X)``: ``E ||u||^4 <= M_R`` and ``E ||A u||^4 <= M_X`` (Lemma 9.2)."""
    d, phi, z2 = float(c.dim), c.criterion, c.zeta**2
    m_r = (d * d + 2.0 * d) / n**2 + z2 * d / n**3
    m_x = (phi * phi + 2.0 * float(np.sum(c.criterion_eigs**2))) / n**2 + c.kappa * z2 * phi / n**3
    return m_r, m_x


@checked(n=BUDGET, tail=TAIL)
def upper_bound_bernstein(c: BoundConstants, n, tail: float = 2.0) -> BernsteinUpperBound:
    """Theorem 4: the expected gap of plain DPO, whatever it returns without an MLE (section 9).

    .. math::

       \\mathbb E\\,G \\le \\frac\\beta2\\Big(\\sqrt{\\Phi/n + e_1\\sqrt{d_V/n}\\sqrt{M_X}}
         + e_2\\sqrt{(1 + e_1 r_n) M_R}\\Big)^2 + G_{\\sup} n^{-a}

    for ``n >= n_0`` (``tau r_n < 1`` with the score radius ``r_n`` of Lemma 9.1 or 9.1b and the
    third-moment constant ``tau <= zeta`` of Lemma 9.3).

    Args:
      c: :func:`instance_constants` of the empirical design.
      n: number of labels.
      tail: ``a > 0``: the score leaves its ball with probability ``<= n^{-a}``.
    """
    return _upper_bernstein(c, n, tail)


def _upper_bernstein(c, n, tail, radii=None) -> BernsteinUpperBound:
    """:func:`upper_bound_bernstein` for checked arguments (``radii``: see :func:`_bernstein_conditions`)."""
    leading = c.beta * c.criterion / (2.0 * n)
    valid, r, eps, s = _bernstein_conditions(c, n, tail, radii)
    if not valid:
        return BernsteinUpperBound(math.inf, False, leading, math.inf, math.inf, r, eps, s, math.inf, math.inf, math.inf, math.inf, tail)
    e1 = (sandwich_factors(c.zeta_eval * s)[1] - 1.0) / r
    e2 = _e2(c, r, s)
    m_r, m_x = _score_fourth_moments(c, n)
    first = math.sqrt(c.criterion / n + e1 * math.sqrt(c.dim / n) * math.sqrt(m_x))
    second = e2 * math.sqrt((1.0 + e1 * r) * m_r)
    main = 0.5 * c.beta * (first + second) ** 2
    remainder = c.gap_sup * n ** (-tail)
    return BernsteinUpperBound(main + remainder, True, leading, main / leading, remainder, r, eps, s, e1, e2, m_r, m_x, tail)


#: The tail exponents over which :func:`upper_bound_bernstein_tuned` takes the smallest Theorem 4
#: bound: ``a = 0.05, 0.10, ..., 4.00`` (a computational choice: the minimum over any set of tails is a bound).
TAIL_GRID = tuple(round(0.05 * k, 2) for k in range(1, 81))


def _check_tails(tails) -> tuple:
    """The tails as floats; a clear error for anything but a non-empty sequence of finite numbers > 0."""
    try:
        if isinstance(tails, (str, bytes)) or any(isinstance(a, (bool, np.bool_)) for a in tails):
            raise TypeError
        out = tuple(float(a) for a in tails)
    except (TypeError, ValueError):
        raise ValueError(f"tails must be a non-empty sequence of numbers > 0, got {tails!r}") from None
    if not out or not all(math.isfinite(a) and a > 0 for a in out):
        raise ValueError(f"tails must be a non-empty sequence of finite numbers > 0, got {tails!r}")
    return out


@checked(n=BUDGET)
def upper_bound_bernstein_tuned(c: BoundConstants, n, tails=TAIL_GRID) -> BernsteinUpperBound:
    """Theorem 4 at the tail exponent that gives the smallest bound at this ``n`` (section 9.6).

    Theorem 4 bounds ``E G`` for *every* ``a > 0``, ``E G`` does not depend on ``a`` and each bound
    is a number (nothing in it is random); so the smallest of the bounds over any set of tails is
    again a bound (no union bound: each is a statement about the same expectation; the grid is a
    computational choice, and ``n_0`` keeps falling as its smallest tail does). A small ``a`` gives a small score
    radius (valid from a smaller ``n``) and a large remainder ``G_sup n^{-a}``; a large ``a`` the
    converse. Theorem 4' (a statement at probability ``1 - n^{-a}``) keeps its own ``a``.

    Args:
      c: :func:`instance_constants` of the empirical design.
      n: number of labels.
      tails: the candidate ``a`` (default :data:`TAIL_GRID`).

    Returns:
      the :class:`BernsteinUpperBound` of the best tail (its ``tail`` field); where no tail
      gives a valid bound, the invalid bound at the smallest tail.
    """
    return _tuned(c, n, _check_tails(tails))


def _tuned(c, n, tails) -> BernsteinUpperBound:
    """:func:`upper_bound_bernstein_tuned` for checked ``n`` and ``tails``."""
    tails = sorted(tails)
    r_net, eps, parts = *_net_minima(c, n, tails), _subgaussian_parts(c)
    bounds = [_upper_bernstein(c, n, a, (r_net[k], eps[k], _subgaussian_radius(parts, n, a))) for k, a in enumerate(tails)]
    return min(bounds, key=lambda b: b.value)  # the first (smallest a) among ties, e.g. all inf


def _budget_grid(n_max: float, per_decade: int) -> np.ndarray:
    """Budgets from 3 to ``n_max``, about ``per_decade`` a decade, log-spaced and rounded to integers."""
    return np.unique(np.round(np.logspace(math.log10(3.0), math.log10(n_max), int(per_decade * math.log10(n_max / 3.0)) + 1)))


@checked(factor="number > 1 as float", n_max="number >= 3 as float", per_decade="int >= 1")
def upper_bound_bernstein_within(c: BoundConstants, factor: float = 2.0, tails=TAIL_GRID, n_max: float = 1e12,
                                 per_decade: int = 20) -> float:
    """The smallest budget of a grid (``per_decade`` a decade from 3 to ``n_max``) from which the tuned
    Theorem 4 bound (:func:`upper_bound_bernstein_tuned`) is at most ``factor`` times the
    asymptotic prediction ``beta Phi / (2 n)`` at that grid point and every larger one (``inf`` if
    not even at ``n_max``).

    Where :func:`upper_bound_bernstein_valid_from` says where the bound starts to hold, this
    says where it starts to say something close to the truth (the prediction is the limit of
    ``n E G``, section 3). A statement about the grid's points, not between them.
    """
    tails = _check_tails(tails)
    if not c.identifiable:
        return math.inf
    first = math.inf
    for m in _budget_grid(n_max, per_decade)[::-1]:  # down from n_max to the first grid point that fails
        if _tuned(c, float(m), tails).value > factor * asymptotic_prediction(c, float(m)):
            break
        first = float(m)
    return first


@checked(n=BUDGET, tail=TAIL)
def upper_bound_bernstein_high_probability(c: BoundConstants, n, tail: float = 2.0) -> HighProbabilityBound:
    """Theorem 4': with probability ``>= 1 - n^{-a}``,
    ``G <= (beta/2) psi_+(zeta_I s_n) (sqrt(kappa) r_n + min(sqrt(kappa) eta_n r_n, gamma(s_n)))^2``.

    ``s_n = -log(1 - tau r_n) / tau``, ``eta_n`` the perturbation bound of Lemmas 5.2 and 9.3 and
    ``gamma`` Lemma 9.4's (:func:`_loss_perturbation`).

    Theorem 1' on the event of Lemma 9.1 or 9.1b (the smaller radius ``r_n``).
    """
    valid, r, _, s = _bernstein_conditions(c, n, tail)
    if not valid:
        return HighProbabilityBound(math.inf, False, n ** (-tail), r, s)
    root_k = math.sqrt(c.kappa)
    error = min(root_k * _perturbation(c, r, s) * r, _loss_perturbation(c, s))
    value = 0.5 * c.beta * sandwich_factors(c.zeta_eval * s)[1] * (root_k * r + error) ** 2
    return HighProbabilityBound(value, True, n ** (-tail), r, s)


@checked(tail=TAIL)
def upper_bound_bernstein_valid_from(c: BoundConstants, tail: float = 2.0) -> float:
    """``n_0`` of Theorem 4: the smallest integer ``n >= 3`` with ``tau r_n < 1`` (``inf`` if none).

    Each net radius and Lemma 9.1b's radius decrease in ``n >= 3``, so their minimum does and the condition is
    monotone; found by doubling and bisection.
    """
    if not c.identifiable:
        return math.inf
    ok = lambda m: _bernstein_conditions(c, m, tail)[0]  # noqa: E731
    if ok(3.0):
        return 3.0
    hi = 4.0
    while not ok(hi):
        hi *= 2.0
        if hi > 1e30:
            return math.inf
    lo = 3.0
    while hi - lo > 1.0:
        mid = math.floor(0.5 * (lo + hi))
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return float(hi)


#: The prior supports of Theorem 5: the box ``|nu_j| <= a_j`` (independent cos^2 coordinates)
#: and the ellipsoid ``sum_j (nu_j / a_j)^2 <= 1`` (the ball's first Dirichlet eigenfunction squared).
PRIOR_SHAPES = ("box", "ball")
SHAPE = one_of(PRIOR_SHAPES)
#: The scales ``alpha`` of the one-parameter prior family ``a_j = alpha / sqrt(n s_j + 1)``
#: that :func:`lower_bound_jensen` searches (before adding the rate proof's ``alpha_n``).
PRIOR_SCALES = tuple(float(a) for a in np.geomspace(1e-2, 1e5, 141))


@functools.lru_cache(maxsize=256)
def _bessel_first_zero(nu: float) -> float:
    """The first positive zero ``j_{nu,1}`` of ``J_nu`` (``nu >= -1/2``), by a scan and Brent's method.

    ``J_nu`` is positive on ``(0, j_{nu,1})`` and ``j_{nu,1} > nu``. The scan starts at ``10^-3``, or at
    ``nu`` where ``J_nu`` underflows to 0 there (``J_74(10^-3) = 0`` in double precision), and stops at the
    first non-positive value (a sign test, not a product of two tiny values, which underflows too).
    """
    from scipy import optimize, special

    x = 1e-3
    fx = float(special.jv(nu, x))
    if not fx > 0.0:
        x = float(nu)
        fx = float(special.jv(nu, x))
    if not fx > 0.0:
        raise ArithmeticError(f"J_{nu}({x}) = {fx}: cannot locate the first zero of J_{nu}")
    while x < nu + 10.0 * max(nu, 1.0) ** (1.0 / 3.0) + 10.0:  # j_{nu,1} < nu + 1.86 nu^{1/3} + 1.1 for nu >= 0
        y = x + 0.05
        fy = float(special.jv(nu, y))
        if fy <= 0.0:
            return float(optimize.brentq(lambda t: special.jv(nu, t), x, y, xtol=1e-15, rtol=1e-15))
        x, fx = y, fy
    raise ArithmeticError(f"no zero of J_{nu} found up to {x}")


def ball_prior_information(dim: int) -> float:
    """``4 j_{dim/2-1,1}^2 / dim``: the Fisher information per direction of the prior ``psi^2`` on the unit
    ball of ``R^dim``, ``psi(w) ~ |w|^{-nu} J_nu(j |w|)``, ``nu = dim/2 - 1`` (section 10.5).

    ``psi`` is the first Dirichlet eigenfunction of the ball, so ``psi^2`` has the smallest Fisher
    information (trace ``4 j^2``) of all densities on it; by symmetry the matrix is ``4 j^2 / dim``
    times the identity. ``dim = 1`` gives ``pi^2``, the box's ``cos^2`` prior.
    """
    dim = check_argument("dim", dim, "int >= 1")
    return 4.0 * _bessel_first_zero(0.5 * dim - 1.0) ** 2 / dim


@functools.lru_cache(maxsize=64)
def _ball_radial_cdf(dim: int, size: int) -> np.ndarray:
    from scipy import special

    nu = 0.5 * dim - 1.0
    j = _bessel_first_zero(nu)
    r = np.linspace(0.0, 1.0, size)
    x = j * r[1:]
    # Lommel: int_0^r t J_nu(j t)^2 dt = (r^2 / 2) (J_nu(jr)^2 - J_{nu-1}(jr) J_{nu+1}(jr)); at r = 1 it is J_{nu+1}(j)^2 / 2.
    f = r[1:] ** 2 * (special.jv(nu, x) ** 2 - special.jv(nu - 1.0, x) * special.jv(nu + 1.0, x)) / special.jv(nu + 1.0, j) ** 2
    if not np.all(np.isfinite(f)):
        raise ArithmeticError(f"the ball prior's radial CDF is not finite for dim = {dim}")
    cdf = np.concatenate([[0.0], np.clip(f, 0.0, 1.0)])
    cdf[-1] = 1.0
    cdf = np.maximum.accumulate(cdf)
    cdf.setflags(write=False)
    return cdf


def ball_radial_cdf(dim: int, size: int = 4097) -> np.ndarray:
    """``[size]`` CDF of the radius ``|w|`` of the ball prior at ``r = k / (size - 1)``.

    The radius has density proportional to ``r^{dim-1} psi(r)^2 = r J_nu(j r)^2`` on ``[0, 1]``;
    its CDF is Lommel's integral in closed form. :func:`sample_ball_kernel` inverts it by
    linear interpolation.
    """
    dim = check_argument("dim", dim, "int >= 1")
    size = check_argument("size", size, "int >= 3")
    return _ball_radial_cdf(dim, size)


def sample_ball_kernel(key, theta_star, basis, widths, radial_cdf):
    """``theta* + basis @ (widths * w)`` with ``w`` from the ball prior: a uniform direction times a
    radius drawn by inverting ``radial_cdf`` (:func:`ball_radial_cdf` of ``dim = widths.size``)."""
    k_dir, k_rad = jax.random.split(key)
    g = jax.random.normal(k_dir, widths.shape, dtype=widths.dtype)
    u = jax.random.uniform(k_rad, (), dtype=widths.dtype)
    r = jnp.interp(u, radial_cdf, jnp.linspace(0.0, 1.0, radial_cdf.shape[0], dtype=widths.dtype))
    return theta_star + basis @ (widths * (r * g / jnp.linalg.norm(g)))


@checked(n=BUDGET, shape=SHAPE)
def jensen_terms(c: BoundConstants, n, widths, shape: str = "box"):
    """Theorem 5's right side for one prior; returns ``(value, rho_N, mu_N, t_N)`` (sections 10, 10.5).

    ``value = (beta/2) sum_j (sum_x e^{-t_{x,N}} L_{xj}) / (n e^{mu_N} s_j + J / a_j^2)`` with
    ``L_{xj} = rho(x) Var_{pi*(.|x)}(b_j . phi)`` (``prompt_loss``; ``sum_x L_{xj} = c_j``),
    ``mu_N = max_{labelled e} sum_j beta^2 (b_j . z_e)^2 a_j^2 / 2`` and each prompt's tilt
    ``t_{x,N} = max_{y'} log sum_y pi*(y|x) e^{s_N(y, y')}`` (Lemma 10.2), where ``s_N(y, y')`` is
    the pair's spread over the prior's support: for the box ``J = pi^2`` and
    ``s_N = sum_j a_j |b_j . z|``; for the ellipsoid ``J = 4 j_{d_p/2-1,1}^2 / d_p``
    (:func:`ball_prior_information`) and ``s_N = (sum_j a_j^2 (b_j . z)^2)^{1/2}``
    (``z = phi(x, y) - phi(x, y')``). ``rho_N`` is the largest spread ``s_N`` (the tilt of
    the first version of Lemma 10.2, ``t_{x,N} <= max_{pairs of x} s_N``) and ``t_N`` the largest tilt.

    Args:
      c: constants.
      n: number of labels.
      widths: ``[d_p]`` half-widths ``a_j > 0`` (box) or semi-axes (ellipsoid) in the coordinates ``c.prior_basis``.
      shape: ``"box"`` or ``"ball"``.
    """
    a = np.asarray(widths, np.float64)
    if a.shape != c.prior_info.shape or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"widths must be {c.prior_info.shape[0]} finite numbers > 0, got {widths!r}")
    return _jensen_terms(c, n, a, shape)


class _Squares(NamedTuple):
    """``c.pair_coords**2`` and ``c.edge_coords**2``, squared once for all of a search's evaluations of Theorem 5."""

    pair: np.ndarray
    edge: np.ndarray


def _squares(c) -> _Squares:
    return _Squares(c.pair_coords**2, c.edge_coords**2)


def _pair_spreads(c, a, shape, sq=None):
    """Each target pair's spread over the prior's support ``[P]``, and the prior's information per direction ``J``."""
    if shape == "box":
        return c.pair_coords @ a, math.pi**2
    pair_sq = c.pair_coords**2 if sq is None else sq.pair
    return np.sqrt(pair_sq @ (a**2)), ball_prior_information(a.size)


def _tilt_sums(c, spreads):
    """``acc[x, y'] = sum_y pi*(y|x) e^{s(y, y') - top_x}`` ``[M, K]`` (``s(y, y) = 0``), summed in log space:
    ``top_x`` is the prompt's largest term ``log pi*(y|x) + s(y, y')``, so the largest summand is 1 and
    nothing that matters underflows, however small ``pi*`` or large the spreads. Also returns, per pair,
    its two summands' shifted values ``e^{log pi*(j) + s_p - top_x}`` (column ``i``) and ``e^{log pi*(i) + s_p - top_x}``
    (column ``j``)."""
    logq = c.prompt_log_probs  # [M, K], -inf where absent
    m, k = logq.shape
    x, i, j = c.pair_prompt, c.pair_ends[:, 0], c.pair_ends[:, 1]
    to_i, to_j = logq[x, j] + spreads, logq[x, i] + spreads  # the pair's terms in columns i and j
    top = np.max(logq, axis=1, initial=-np.inf)
    np.maximum.at(top, x, np.maximum(to_i, to_j))
    top = np.where(np.isfinite(top), top, 0.0)  # a prompt without completions: nothing to sum
    w_i, w_j = np.exp(to_i - top[x]), np.exp(to_j - top[x])
    # the y = y' term, then each pair once for each of its ends
    acc = np.exp(logq - top[:, None]).ravel()
    acc = acc + np.bincount(x * k + i, weights=w_i, minlength=m * k)
    acc = acc + np.bincount(x * k + j, weights=w_j, minlength=m * k)
    return acc.reshape(m, k), top, w_i, w_j


def _tilts_from_sums(acc, top):
    """``t_x = max(top_x + log max_{y'} acc[x, y'], 0)`` (0 for a prompt without completions), and the maximiser ``y'``."""
    m = acc.shape[0]
    ystar = acc.argmax(axis=1) if acc.shape[1] else np.zeros(m, int)
    best = acc[np.arange(m), ystar] if acc.shape[1] else np.zeros(m)
    with np.errstate(divide="ignore"):
        return np.where(best > 0, np.maximum(top + np.log(best), 0.0), 0.0), ystar, best


def _prompt_tilts(c, spreads):
    """``t_x = max_{y'} log sum_y pi*(y|x) e^{s(y, y')}`` per prompt (``s(y, y) = 0``), from the
    target pairs' spreads ``[P]`` (0 for a prompt without completions)."""
    acc, top, _, _ = _tilt_sums(c, spreads)
    return _tilts_from_sums(acc, top)[0]


def _jensen_core(c, n, a, shape, gradient, sq=None):
    """Theorem 5's value at widths ``a`` with ``(rho_N, mu_N, t_N)``, and (``gradient``) its gradient in ``log a``
    (where a maximum over prompts' ``y'`` or over edges is tied, the gradient of the maximiser that ``argmax``
    picks: a subgradient); ``None`` otherwise. The value is 0 where ``mu_N > 700`` (``e^{mu_N}`` overflows).
    ``sq``: :func:`_squares` of ``c`` if already computed (the same numbers either way)."""
    sq = _squares(c) if sq is None else sq
    spreads, info = _pair_spreads(c, a, shape, sq)
    rho_box = float(spreads.max()) if spreads.size else 0.0
    acc, top, w_i, w_j = _tilt_sums(c, spreads)
    tilt, ystar, best = _tilts_from_sums(acc, top)
    tilt_box = float(tilt.max(initial=0.0))
    if c.edge_coords.size:
        mus = 0.5 * (sq.edge @ (a**2))
        top_e = int(np.argmax(mus))
        mu_box, dmu = float(mus[top_e]), sq.edge[top_e] * a**2
    else:
        mu_box, dmu = 0.0, np.zeros(a.size)
    if mu_box > 700.0:
        return 0.0, rho_box, mu_box, tilt_box, (np.zeros(a.size) if gradient else None)
    expt = np.exp(-tilt)
    loss = expt @ c.prompt_loss  # [d_p]: sum_x e^{-t_x,N} rho(x) Var_x(b_j . phi)
    fisher = n * math.exp(mu_box) * c.prior_info
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # a_j -> 0: the prior pins direction j, its term -> 0
        denom = fisher + info / a**2
        value = 0.5 * c.beta * float(np.sum(loss / denom))
    if not gradient:
        return value, rho_box, mu_box, tilt_box, None
    if shape == "box":
        ds = c.pair_coords * a  # d s_p / d log a_k
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = np.where(spreads[:, None] > 0, sq.pair * (a**2) / spreads[:, None], 0.0)
    x, i, j = c.pair_prompt, c.pair_ends[:, 0], c.pair_ends[:, 1]
    # d t_x = sum_y softmax_y d s(y, y*): the pairs with an end at y*, weighted by their term in column y*
    term = np.where(i == ystar[x], w_i, 0.0) + np.where(j == ystar[x], w_j, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(best[x] > 0, term / best[x], 0.0)
    # sum over each prompt's pairs, per direction: one bincount over (prompt, direction) cells, each cell's
    # terms added in the pairs' order (as np.add.at adds them: the same numbers, faster)
    dp = a.size
    cells = (x[:, None] * dp + np.arange(dp)).ravel()
    dtilt = np.bincount(cells, weights=(coef[:, None] * ds).ravel(), minlength=acc.shape[0] * dp).reshape(acc.shape[0], dp)
    dloss = -(c.prompt_loss.T * expt) @ dtilt  # [j, k]: d loss_j / d log a_k
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        grad = 0.5 * c.beta * (dloss.T @ (1.0 / denom) - np.sum(loss * fisher / denom**2) * dmu
                               + 2.0 * info * loss / (a**2 * denom**2))
    return value, rho_box, mu_box, tilt_box, grad


def _jensen_objective(log_a, c, n, shape, sq=None):
    """``-log`` of Theorem 5's value at ``a = e^{log_a}`` and its gradient in ``log_a`` (:func:`_jensen_core`).
    Used by the refinement of :func:`lower_bound_jensen`; any widths give a valid bound."""
    value, _, _, _, grad = _jensen_core(c, n, np.exp(log_a), shape, True, sq)
    if not (value > 0 and math.isfinite(value)) or not np.all(np.isfinite(grad)):
        return 1e300, np.zeros(log_a.size)
    return -math.log(value), -grad / value


def _jensen_terms(c, n, a, shape, sq=None):
    return _jensen_core(c, n, a, shape, False, sq)[:4]


@checked(n=BUDGET, refine="bool")
def lower_bound_jensen(c: BoundConstants, n, refine: bool = True) -> JensenLowerBound:
    """Theorem 5: no estimator (of any policy) from ``n`` labels of this design does better (section 10).

    The bound holds for every box of half-widths ``a_j > 0`` and every ellipsoid of semi-axes
    ``a_j`` (section 10.5). For each shape this takes the best of the one-parameter family
    ``a_j = alpha / sqrt(n s_j + 1)`` over a log grid of ``alpha`` that contains
    ``alpha_n = (2 pi^2 sqrt(n) / p)^{1/3}`` (the choice of the rate proof,
    ``p = max_pairs sum_j |b_j . z|``), then, when ``refine``, improves the widths one by
    one (L-BFGS on ``log a``), and returns the better shape. Any widths give a valid bound,
    so the optimiser only affects how tight it is; :func:`jensen_terms` recomputes
    ``value`` from ``widths`` and ``shape``.

    Args:
      c: :func:`instance_constants`.
      n: number of labels.
      refine: optimise the widths per direction after the one-parameter search.
    """
    leading = c.beta * c.criterion / (2.0 * n)
    dp = c.prior_info.shape[0]
    if dp == 0 or c.curv_dim == 0:
        return JensenLowerBound(0.0, 0.0, 0.0, np.zeros(0), 0.0, 0.0, False, "box", 0.0)
    p = float(c.pair_coords.sum(axis=1).max()) if c.pair_coords.size else 0.0
    alphas = list(PRIOR_SCALES)
    if p > 0:
        alphas.append((2.0 * math.pi**2 * math.sqrt(n) / p) ** (1.0 / 3.0))
    best, sq = None, _squares(c)
    for shape in PRIOR_SHAPES:  # ties keep the box (the first)
        cand = _best_widths(c, n, alphas, shape, refine, sq)
        if best is None or cand[0] > best[0]:
            best = cand
    value, alpha, widths, refined, shape = best
    _, rho_box, mu_box, tilt = _jensen_terms(c, n, widths, shape, sq)
    factor = value / leading if math.isfinite(leading) and leading > 0 else math.nan
    return JensenLowerBound(value, factor, alpha, widths, rho_box, mu_box, refined, shape, tilt)


def _best_widths(c, n, alphas, shape, refine, sq):
    """Theorem 5's best prior of one shape: the one-parameter family, then (``refine``) L-BFGS per direction."""
    value, alpha = max(((_jensen_terms(c, n, prior_widths(c, n, al), shape, sq)[0], float(al)) for al in alphas))
    widths = prior_widths(c, n, alpha)
    refined = False
    if refine and value > 0:
        from scipy import optimize

        start = np.log(widths)  # each width stays within e^{+-30} of the one-parameter optimum (finite J / a^2)
        res = optimize.minimize(_jensen_objective, start, args=(c, n, shape, sq), jac=True, method="L-BFGS-B",
                                bounds=list(zip(start - 30.0, start + 30.0)))
        cand = np.exp(res.x)
        v = _jensen_terms(c, n, cand, shape, sq)[0] if np.all(np.isfinite(cand)) and np.all(cand > 0) else 0.0
        if v > value:
            value, widths, refined = v, cand, True
    return value, alpha, widths, refined, shape


# The name before the kernel was public (synthetic/monte_carlo.py imports it).
_sample_box = sample_box_kernel
