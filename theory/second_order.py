r"""Second-order expansion of the expected DPO gap: ``n E G = (beta/2) Phi + c2 / n + o(1/n)``.

Derivation: ``theory/SECOND_ORDER.md``. In brief, with ``n`` labels spread over the
edges with *deterministic* counts ``c_e = n w_e`` (as :func:`synthetic.monte_carlo.replicate_gaps`
draws them: ``W_e ~ Binomial(c_e, sigmoid(beta theta*.z_e))``), the DPO log-likelihood is
a canonical exponential family,

.. math::

    \ell(\theta) = n\big(\theta^\top \bar t - \bar\psi(\theta)\big),\qquad
    \bar t = \tfrac{\beta}{n}\sum_e W_e z_e,\qquad
    \bar\psi(\theta) = \sum_e w_e\,\mathrm{softplus}(\beta\,\theta^\top z_e),

so the observed information is not random and the cumulants of ``t_bar`` are the
derivatives ``K_k = grad^k psi_bar(theta*)`` divided by ``n^{k-1}``. The MLE is the
inverse of the mean map; expanding it to third order in ``t_bar - E t_bar``, and the
gap ``G(theta* + Delta)`` to fourth order (``grad^k G(theta*) = H_k``: ``H_2 = beta I``,
``H_3 = 2 beta F_3``, ``H_4 = 3 beta F_4`` with ``F_k`` the prompt-averaged ``k``-th
cumulant tensors of ``phi`` under ``pi_theta*``), gives ``c2`` in closed form. In
coordinates that whiten ``Sigma = K_2`` on the labelled span (``B^T Sigma B = Id``),
with ``M = B^T H_2 B`` and all tensors expressed in those coordinates,

.. math::

    c_2 = \tfrac34 \langle M, K_3 K_3\rangle + \tfrac18 b^\top M b + \tfrac12 b^\top m
          - \tfrac12 M_{ij} K_{4,ijkk} - \tfrac13 \langle H_3, K_3\rangle
          - \tfrac14 h^\top b + \tfrac18 H_{4,iijj},

where ``b_i = K_{3,ikk}`` (``-b/(2n)`` is the Cox-Snell bias), ``m_k = M_{ij} K_{3,ijk}``,
``h_k = H_{3,iik}`` and ``(K_3 K_3)_{ij} = K_{3,ikl} K_{3,jkl}``. The ridge/MAP estimator
with prior precision ``Lambda`` (total penalty ``Lambda ||theta||^2 / 2``, the per-label
ridge ``Lambda / n`` of :func:`synthetic.estimators.fit_map`) adds, with ``t = B^T theta*``
and ``N = B^T B``,

.. math::

    \tfrac{\Lambda^2}{2} t^\top M t + \tfrac{\Lambda}{2} b^\top M t + \Lambda\, m^\top t
    - \Lambda\,\mathrm{tr}(M N) - \tfrac{\Lambda}{2} h^\top t .

Nothing of order ``d^3`` or ``d^4`` is formed: every contraction is a sum over edges,
edge pairs (in blocks) or completions. :func:`derivative_tensors` builds the dense
tensors for small ``d`` (the tests compare them with autodiff).

The expansion describes the estimator where it exists. For plain DPO it is meaningful
only while the MLE exists with probability ``1 - o(n^-2)``; where separation is
frequent (the tabular worlds below a few labels an edge) the simulated gap is dominated
by the non-existence event (``n G_sup P(no MLE)``) and no power series in ``1/n``
describes it (``SECOND_ORDER.md``, section 6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtyping import Array, ArrayLike, Float, Real

from theory import _validation as V
from theory.checked import check_argument, checked
from theory.information import DESIGN_INSTANCE, check_saturation, rank_threshold, sigmoid_prime, trace_criterion_kernel
from theory.policy import normalized_prompt_weights, policy_curvature_kernel, policy_log_probs_kernel
from theory.shapes import Diffs, EdgeWeights, Features, LogRef, PromptWeights, Scalar, Vector

__all__ = [
    "SecondOrder",
    "DerivativeTensors",
    "second_order_coefficients",
    "second_order_gap",
    "second_order_column",
    "derivative_tensors",
    "link_derivatives",
    "derivative_tensors_kernel",
    "second_order_kernel",
]

_PAIR_BLOCK = 256  # edges a block in the edge-pair sums (memory block x E)


class SecondOrder(NamedTuple):
    """``n E G(theta_hat_n) = first + c2 / n + o(1/n)`` and the parts of ``c2``.

    Attributes:
      first: ``(beta/2) tr(I Sigma^+)`` (``inf`` when a direction with curvature is unlabelled).
      c2: the second-order coefficient (``nan`` when ``first`` is ``inf``).
      variance_k3: ``(3/4) <M, K3 K3>`` (curvature of the mean map, in the covariance).
      bias: ``(1/8) b^T M b`` (squared Cox-Snell bias ``-b / (2n)``).
      bias_k3: ``(1/2) b^T m`` (bias x skewness of the score).
      k4: ``-(1/2) M_ij K4_ijkk`` (fourth derivative of the log-partition of the labels).
      gap_k3: ``-(1/3) <H3, K3>`` (third derivative of G against the score's third cumulant).
      gap_bias: ``-(1/4) h^T b`` (third derivative of G against the bias).
      gap_h4: ``(1/8) H4_iijj`` (fourth derivative of G against the covariance squared).
      ridge: the MAP terms (0 for plain DPO).
    """

    first: jax.Array
    c2: jax.Array
    variance_k3: jax.Array
    bias: jax.Array
    bias_k3: jax.Array
    k4: jax.Array
    gap_k3: jax.Array
    gap_bias: jax.Array
    gap_h4: jax.Array
    ridge: jax.Array


class DerivativeTensors(NamedTuple):
    """Dense derivative tensors at ``theta*`` (``d``-dimensional; small ``d`` only).

    Attributes:
      k2, k3, k4: ``grad^k psi_bar(theta*)``, ``psi_bar(theta) = sum_e w_e softplus(beta theta.z_e)``:
        the per-label cumulants of the sufficient statistic (``k2 = Sigma_w``).
      h2, h3, h4: ``grad^k G(theta*)`` of the exact gap ``G = beta E_x KL(pi_theta || pi_theta*)``.
    """

    k2: jax.Array
    k3: jax.Array
    k4: jax.Array
    h2: jax.Array
    h3: jax.Array
    h4: jax.Array


def link_derivatives(u):
    """Derivatives 2-4 of ``softplus`` at ``u``: ``s2 = sigma(1-sigma)``, ``s3 = s2 (1 - 2 sigma)``,
    ``s4 = s2 (1 - 6 sigma + 6 sigma^2)``."""
    sig = jax.nn.sigmoid(u)
    s2 = sigmoid_prime(u)
    return s2, s2 * (1.0 - 2.0 * sig), s2 * (1.0 - 6.0 * sig + 6.0 * sig**2)


def _policy_centred(theta_star, features, log_ref):
    """``pi_theta*(y|x)`` (0 on absent completions) and ``phi - E_pi phi`` ``[m, K, d]``."""
    present = jnp.isfinite(log_ref)
    p = jnp.where(present, jnp.exp(policy_log_probs_kernel(theta_star, features, log_ref)), 0.0)
    mean = jnp.einsum("mk,mkd->md", p, features)
    return p, jnp.where(present[..., None], features - mean[:, None, :], 0.0)


@jax.jit
def derivative_tensors_kernel(weights, theta_star, features, log_ref, diffs, beta, rho):
    """Unchecked :func:`derivative_tensors` with the prompt weights ``rho`` given as an array ``[m]``."""
    s2, s3, s4 = link_derivatives(beta * (diffs @ theta_star))
    g = beta * diffs
    k2 = jnp.einsum("e,ei,ej->ij", weights * s2, g, g)
    k3 = jnp.einsum("e,ei,ej,ek->ijk", weights * s3, g, g, g)
    k4 = jnp.einsum("e,ei,ej,ek,el->ijkl", weights * s4, g, g, g, g)
    p, c = _policy_centred(theta_star, features, log_ref)
    om = rho[:, None] * p
    f2 = jnp.einsum("mk,mki,mkj->ij", om, c, c)
    f3 = jnp.einsum("mk,mki,mkj,mkl->ijl", om, c, c, c)
    mu4 = jnp.einsum("mk,mki,mkj,mkl,mkq->ijlq", om, c, c, c, c)
    cov = jnp.einsum("mk,mki,mkj->mij", p, c, c)
    pairs = (jnp.einsum("m,mij,mlq->ijlq", rho, cov, cov) + jnp.einsum("m,mil,mjq->ijlq", rho, cov, cov)
             + jnp.einsum("m,miq,mjl->ijlq", rho, cov, cov))
    return DerivativeTensors(k2, k3, k4, beta * f2, 2.0 * beta * f3, 3.0 * beta * (mu4 - pairs))


@checked(**DESIGN_INSTANCE)
def derivative_tensors(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    prompt_weights: PromptWeights = None,
) -> DerivativeTensors:
    """The dense tensors ``K_2..K_4`` (labels) and ``H_2..H_4`` (gap) at ``theta*``.

    Memory ``O(d^4)``: meant for small ``d`` (tests, worked examples). The expansion itself
    (:func:`second_order_coefficients`) never forms them.
    """
    rho = normalized_prompt_weights(prompt_weights, np.shape(features)[0], jnp.result_type(features))
    return derivative_tensors_kernel(jnp.asarray(weights), jnp.asarray(theta_star), jnp.asarray(features),
                               jnp.asarray(log_ref), jnp.asarray(diffs), beta, rho)


def _core(weights, theta_star, features, log_ref, diffs, beta, rho, prior_precision, block):
    dtype = diffs.dtype
    d = diffs.shape[1]
    s2, s3, s4 = link_derivatives(beta * (diffs @ theta_star))
    g_raw = beta * diffs
    sigma = jnp.einsum("e,ei,ej->ij", weights * s2, g_raw, g_raw)
    sigma = 0.5 * (sigma + sigma.T)
    curv = policy_curvature_kernel(theta_star, features, log_ref, rho)
    first = 0.5 * beta * trace_criterion_kernel(curv, sigma, 0.0)  # inf when A1 fails

    # Whitening on the labelled span: B = V diag(1/sqrt(lam)) on range(Sigma), 0 elsewhere.
    lam, vec = jnp.linalg.eigh(sigma)
    in_range = lam > rank_threshold(jnp.maximum(jnp.max(lam), 0.0), d, dtype)
    inv_sqrt = jnp.where(in_range, 1.0 / jnp.sqrt(jnp.where(in_range, lam, 1.0)), 0.0)
    basis = vec * inv_sqrt
    mw = beta * basis.T @ curv @ basis  # M = B^T H2 B
    g = g_raw @ basis  # whitened edge covariates [E, d]
    v3, v4 = weights * s3, weights * s4
    gg = jnp.sum(g * g, axis=1)
    gmg = jnp.einsum("ei,ij,ej->e", g, mw, g)
    b = (v3 * gg) @ g  # b_i = K3_ikk
    mvec = (v3 * gmg) @ g  # m_k = M_ij K3_ijk
    k4_term = jnp.sum(v4 * gmg * gg)  # M_ij K4_ijkk

    p, c = _policy_centred(theta_star, features, log_ref)
    om = rho[:, None] * p
    ct = c @ basis  # whitened centred features [m, K, d]
    cc = jnp.sum(ct * ct, axis=-1)
    h = 2.0 * beta * jnp.einsum("mk,mk,mkd->d", om, cc, ct)  # h_k = H3_iik
    # H4_iijj = 3 beta E_x [E|c|^4 - (tr C_x)^2 - 2 ||C_x||_F^2]
    tr_c = jnp.sum(p * cc, axis=1)
    gram = jnp.einsum("mkd,mld->mkl", ct, ct)
    frob = jnp.einsum("mk,ml,mkl->m", p, p, gram**2)
    h4_trace = 3.0 * beta * (jnp.sum(om * cc**2) - jnp.dot(rho, tr_c**2 + 2.0 * frob))

    # Edge-pair and edge-completion sums, in blocks of edges.
    e = g.shape[0]
    nb = -(-e // block)
    pad = nb * block - e
    gp = jnp.concatenate([g, jnp.zeros((pad, d), dtype)])
    vp = jnp.concatenate([v3, jnp.zeros((pad,), dtype)])

    def blk(i):
        gb = jax.lax.dynamic_slice_in_dim(gp, i * block, block)
        vb = jax.lax.dynamic_slice_in_dim(vp, i * block, block)
        q = gb @ g.T
        r = (gb @ mw) @ g.T
        pair = jnp.sum(vb[:, None] * v3[None, :] * q**2 * r)  # <M, K3 K3>
        proj = jnp.einsum("mkd,bd->mkb", ct, gb)
        h3k3 = 2.0 * beta * jnp.sum(vb * jnp.einsum("mk,mkb->b", om, proj**3))  # <H3, K3>
        return pair, h3k3

    pair, h3k3 = jax.lax.map(blk, jnp.arange(nb))
    pair, h3k3 = jnp.sum(pair), jnp.sum(h3k3)

    parts = dict(
        variance_k3=0.75 * pair,
        bias=0.125 * b @ mw @ b,
        bias_k3=0.5 * b @ mvec,
        k4=-0.5 * k4_term,
        gap_k3=-h3k3 / 3.0,
        gap_bias=-0.25 * h @ b,
        gap_h4=0.125 * h4_trace,
    )
    t = basis.T @ theta_star
    lam_p = prior_precision
    tr_mn = jnp.sum(jnp.diag(mw) * inv_sqrt**2)
    ridge = (0.5 * lam_p**2 * t @ mw @ t + 0.5 * lam_p * b @ mw @ t + lam_p * mvec @ t
             - lam_p * tr_mn - 0.5 * lam_p * h @ t)
    c2 = sum(parts.values()) + ridge
    ok = jnp.isfinite(first)
    nan = jnp.asarray(jnp.nan, dtype)
    c2 = jnp.where(ok, c2, nan)
    return SecondOrder(first, c2, **{k: jnp.where(ok, v, nan) for k, v in parts.items()}, ridge=jnp.where(ok, ridge, nan))


second_order_kernel = jax.jit(_core, static_argnames=("block",))
second_order_kernel.__doc__ = """Unchecked second-order expansion on the labelled edges (``block``: edges a block, static)."""
_core_jit = second_order_kernel  # the name before the kernel was public

# prior_precision: None (plain DPO, ridge 0) or Lambda > 0 (MAP), as a float.
_PRIOR_PRECISION = "optional number > 0 as float"


def _check_prior_precision(prior_precision):
    v = check_argument("prior_precision", prior_precision, _PRIOR_PRECISION)
    return 0.0 if v is None else v


@checked(**DESIGN_INSTANCE, prior_precision=_PRIOR_PRECISION)
def second_order_coefficients(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    prompt_weights: PromptWeights = None,
    prior_precision: float | None = None,
) -> SecondOrder:
    """``(beta/2) Phi`` and ``c2`` of ``n E G(theta_hat_n) = (beta/2) Phi + c2 / n + o(1/n)``.

    Args:
      weights: ``[E]`` empirical design ``c_e / n`` (the label counts divided by ``n``).
      theta_star: ``[d]``.
      features, log_ref, prompt_weights: the pool on which the gap is measured.
      diffs: ``[E, d]`` candidate edge differences.
      beta: ``> 0``.
      prior_precision: ``None`` for plain DPO (the MLE), or ``Lambda > 0`` for the MAP
        estimator of :func:`synthetic.estimators.fit_map` (total ridge ``Lambda``).

    Returns:
      :class:`SecondOrder` (scalars in the dtype of ``diffs``; float64 under x64).
    """
    return _coefficients(weights, theta_star, features, log_ref, diffs, beta, prompt_weights, prior_precision)


def _coefficients(weights, theta_star, features, log_ref, diffs, beta, prompt_weights, prior_precision) -> SecondOrder:
    """Unchecked :func:`second_order_coefficients` (arguments already checked)."""
    m = np.shape(features)[0]
    lam = 0.0 if prior_precision is None else prior_precision
    dtype = jnp.result_type(features)
    rho = normalized_prompt_weights(prompt_weights, m, dtype)
    w = jnp.asarray(weights, dtype)
    z = jnp.asarray(diffs, dtype)
    if V.is_concrete(weights):  # only the labelled edges enter
        keep = np.flatnonzero(np.asarray(weights) > 0)
        w, z = w[keep], z[keep]
    block = int(min(_PAIR_BLOCK, max(1, w.shape[0])))
    if prior_precision is None or prior_precision == 0:
        check_saturation(theta_star, diffs, weights, beta, "second-order coefficients", stacklevel=5)
    return second_order_kernel(w, jnp.asarray(theta_star, dtype), jnp.asarray(features, dtype), jnp.asarray(log_ref),
                     z, beta, rho, jnp.asarray(lam, dtype), block=block)


@checked(n="number > 0", **DESIGN_INSTANCE, prior_precision=_PRIOR_PRECISION)
def second_order_gap(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    n: Scalar,
    prompt_weights: PromptWeights = None,
    prior_precision: float | None = None,
) -> Float[Array, ""]:
    """Prediction of ``E G(theta_hat_n)`` to order ``1/n^2``: ``((beta/2) Phi + c2 / n) / n``.

    The first term is :func:`theory.asymptotic_gap`; ``c2`` is
    :func:`second_order_coefficients` (plain DPO, or MAP with ``prior_precision``). The
    design is the empirical one, ``weights = c / n`` with deterministic counts ``c``.
    Meaningful only where the estimator exists with probability ``1 - o(n^-2)`` (for plain
    DPO: no separation), see ``theory/SECOND_ORDER.md``.

    Returns:
      Scalar ``E G`` prediction (``inf`` when a direction with curvature is unlabelled).
    """
    so = _coefficients(weights, theta_star, features, log_ref, diffs, beta, prompt_weights, prior_precision)
    return jnp.where(jnp.isfinite(so.first), (so.first + so.c2 / n) / n, jnp.inf)


def _check_budgets(budgets):
    ns = np.asarray(budgets, np.float64).reshape(-1)
    for x in ns:
        check_argument("budgets", float(x), "number > 0")
    return budgets


@checked(**DESIGN_INSTANCE, prior_precision=_PRIOR_PRECISION)
def second_order_column(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    budgets: Real[ArrayLike, " B"],
    prompt_weights: PromptWeights = None,
    prior_precision: float | None = None,
) -> dict:
    """Columns for a bounds table: ``n E G`` predicted to first and to second order at each budget.

    Args:
      weights: ``[E]`` the design (its empirical form at each budget is assumed equal to it).
      budgets: sequence of ``n``.
      (others as :func:`second_order_gap`).

    Returns:
      ``{"n": [B], "first_order": [B] (beta/2) Phi, "second_order": [B] (beta/2) Phi + c2/n, "c2": float}``
      as float64 numpy arrays (``n E G`` scale).
    """
    ns = np.asarray(_check_budgets(budgets), np.float64).reshape(-1)
    so = _coefficients(weights, theta_star, features, log_ref, diffs, beta, prompt_weights, prior_precision)
    first, c2 = float(so.first), float(so.c2)
    return {"n": ns, "first_order": np.full(ns.shape, first), "second_order": first + c2 / ns, "c2": c2}
