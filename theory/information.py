r"""Design information matrix, the design criterion and the asymptotic gap.

For an edge ``e = (x, y, y')`` with difference ``z_e = phi(x,y) - phi(x,y')`` one
Bradley-Terry label is a logistic observation with covariate ``beta z_e``; its Fisher
information at ``theta`` is ``beta^2 sigmoid'(beta theta.z_e) z_e z_e^T``. A design
``w`` (probability vector over edges) has per-label information

.. math::

    \Sigma_w(\theta) = \beta^2 \sum_e w_e\, \sigma'(\beta\,\theta^\top z_e)\, z_e z_e^\top,
    \qquad \sigma'(u) = \sigma(u)\,\sigma(-u),

and criterion :math:`\Phi(w;\theta) = \mathrm{tr}(I(\theta)\,\Sigma_w(\theta)^+)`.
Theory brief section 3; :math:`n\,\mathbb{E}G(\hat\theta_n) \to (\beta/2)\Phi(w;\theta^*)`.

The pseudo-inverse is taken on the range of ``Sigma``. Equivalently
:math:`\Phi = \lim_{\epsilon \downarrow 0} \mathrm{tr}(I (\Sigma + \epsilon\,\mathrm{Id})^{-1})`:
directions that no edge sees (a per-prompt constant feature, the all-ones direction
of a tabular model) carry no curvature and drop out, while a direction that carries
curvature but that the design does not cover makes the criterion ``+inf``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from theory.checked import checked
from theory.policy import normalized_prompt_weights, policy_curvature_kernel
from theory.shapes import Diffs, EdgeWeights, Features, LogRef, PromptWeights, Scalar, Vector

__all__ = [
    "information_matrix",
    "design_criterion",
    "trace_criterion",
    "asymptotic_gap",
    "information_matrix_kernel",
    "trace_criterion_kernel",
    "sigmoid_prime",
    "rank_threshold",
    "numerical_range",
    "numerical_rank",
    "rows_rank",
    "unit_rows_eigh",
    "data_precision",
    "SaturationWarning",
    "check_saturation",
    "saturation_screen",
    "SaturationScreen",
]


def sigmoid_prime(u):
    # sigmoid'(u) = sigmoid(u) sigmoid(-u), computed without cancellation for large |u|.
    return jnp.exp(jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u))


def rank_threshold(lam_max, d, dtype):
    """Eigenvalues at or below ``10 d eps lam_max`` count as zero (numerical rank)."""
    return 10.0 * d * jnp.finfo(dtype).eps * lam_max


def numerical_range(lam, d, dtype) -> np.ndarray:
    """Which eigenvalues ``lam`` (numpy, any precision) of a ``d x d`` symmetric PSD matrix
    computed in ``dtype`` are non-zero: above :func:`rank_threshold` at ``dtype``'s precision.

    The threshold belongs to the precision the matrix was *computed* in, not the one its
    eigenvalues are read in: a float32 matrix's rounding leaves about ``1e-8 lambda_max`` in
    an exact null direction, far above float64's threshold, and read at float64's it counts
    as a direction.
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.size == 0:
        return np.zeros(0, bool)
    return lam > float(rank_threshold(max(float(lam.max()), 0.0), d, dtype))


def numerical_rank(matrix, dtype=None) -> int:
    """Numerical rank of the symmetric PSD ``matrix`` computed in ``dtype`` (default: its own
    dtype): its eigenvalues, in float64, counted by :func:`numerical_range`."""
    a = np.asarray(matrix)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"matrix must be square, got shape {list(a.shape)}")
    if a.shape[0] == 0:
        return 0
    a64 = a.astype(np.float64)
    lam = np.linalg.eigvalsh(0.5 * (a64 + a64.T))
    return int(numerical_range(lam, a.shape[0], a.dtype if dtype is None else dtype).sum())


def data_precision(x) -> np.dtype:
    """The precision data ``x`` carries: its floating dtype, float64 for integer data."""
    dt = np.asarray(x).dtype
    return dt if dt.kind == "f" else np.dtype(np.float64)


def unit_rows_eigh(rows, dtype=None):
    """``(lam, vec, keep)``: the eigen-decomposition of the Gram matrix of the non-zero rows of
    ``rows`` made unit (formed in float64), and which eigenvalues count as directions: above
    float64's threshold and above ``(10 d eps(dtype))^2`` of the top (``dtype``: the data's
    precision, default :func:`data_precision`), since rounding of relative size ``eps`` in the data
    enters the Gram matrix squared (float32 features built as sums carry 1e-7 in null directions,
    1e-14 in the Gram matrix, which float64's threshold alone counted). ``None`` without a row."""
    z = np.asarray(rows)
    dt = np.dtype(dtype) if dtype is not None else data_precision(z)
    if z.ndim != 2:
        return None
    z = z.astype(np.float64)
    norms = np.linalg.norm(z, axis=1)
    z = z[norms > 0] / norms[norms > 0][:, None]
    if z.shape[0] == 0:
        return None
    d = z.shape[1]
    lam, vec = np.linalg.eigh(z.T @ z)
    top = max(float(lam[-1]), 0.0)
    thr = max(float(rank_threshold(top, d, np.float64)), (10.0 * d * float(np.finfo(dt).eps)) ** 2 * top)
    return lam, vec, lam > thr


def rows_rank(rows, dtype=None) -> int:
    """Numerical rank of the rows of ``rows`` (data in ``dtype``, default its own): the directions
    :func:`unit_rows_eigh` counts."""
    eig = unit_rows_eigh(rows, dtype)
    return 0 if eig is None else int(eig[2].sum())


class SaturationWarning(UserWarning):
    """Directions the weighted edges label lie below floating-point resolution of ``Sigma``.

    ``sigmoid'(beta theta . z_e)`` falls like ``exp(-|margin|)``: an edge of margin 35 carries
    ``6e-16`` of an edge of margin 0, below float64's rank threshold of ``Sigma``, and a direction
    only such edges see is counted as unlabelled, though ``I`` shrinks with it and its share of
    ``tr(I Sigma^+)`` is of order one (two prompts of margins 0 and 40, equal weights: the exact
    criterion is 2, the computed one 1). The computed value then leaves those directions out.
    """


class SaturationScreen(NamedTuple):
    """:func:`saturation_screen`'s answer: the support's rows (float64), weights, ``sigmoid'``,
    ``|margins|``, the data's precision, the rows' rank (:func:`rows_rank`), and ``clear`` (no
    direction can be below resolution)."""

    z: np.ndarray
    w: np.ndarray
    c: np.ndarray
    margins: np.ndarray
    dtype: np.dtype
    rank: int
    clear: bool


def saturation_screen(theta, diffs, weights, beta) -> SaturationScreen | None:
    """The screen shared by :func:`check_saturation` and the design solver's: ``None`` when no edge
    has weight and a non-zero difference, else the support with ``clear`` true when a lower bound on
    ``Sigma``'s smallest eigenvalue on the edges' span is above ``1e3`` times the rank threshold
    (then no direction of the span can fall below ``Sigma``'s resolution, and ``Sigma`` itself is
    not decomposed). The bound: with unit rows ``u_e`` and shares ``s_e = w_e sigmoid'_e ||z_e||^2``,
    ``Sigma = sum_e s_e u_e u_e^T >= (min_e s_e) U^T U``, so ``lambda_min^+(Sigma) >= min_e s_e
    lambda_min^+(U^T U)`` (:func:`unit_rows_eigh`, which also gives the rows' rank). The shares
    alone (the first screen) are no bound: two edges 1e-3 apart in angle have large shares and
    span a direction of ``Sigma`` 1e-7 of the top, below float32's resolution (the criterion was
    then 0.44 for 535, unwarned). ``weights=None``: every edge, weight 1."""
    dtype = data_precision(diffs)
    z = np.asarray(diffs).astype(np.float64)
    w = np.ones(z.shape[0]) if weights is None else np.asarray(weights, np.float64)
    norms = np.linalg.norm(z, axis=1)
    sup = (w > 0) & (norms > 0)
    if not sup.any():
        return None
    z, w, norms = z[sup], w[sup], norms[sup]
    u = np.abs(float(beta) * (z @ np.asarray(theta, np.float64)))
    a = np.exp(-u)
    c = a / (1.0 + a) ** 2
    share = w * c * norms**2
    lam, _, keep = unit_rows_eigh(z, dtype)
    thr = 1e3 * 10 * z.shape[1] * float(np.finfo(dtype).eps) * share.sum()
    clear = bool(share.min() * float(lam[keep].min()) > thr)
    return SaturationScreen(z, w, c, u, dtype, int(keep.sum()), clear)


def check_saturation(theta, diffs, weights, beta, what: str = "the criterion", stacklevel: int = 3) -> int:
    """Warn :class:`SaturationWarning` and return how many directions of ``span{z_e : w_e > 0}``
    fall below the resolution of ``Sigma_w(theta)`` at the inputs' precision (``0``: none; also
    ``0`` under tracing, where values are unknown).

    In exact arithmetic ``range(Sigma_w) = span{z_e : w_e > 0}`` (``sigmoid' > 0``), so a numerical
    rank of ``Sigma_w`` below that of the edges (unit rows, float64) is rounding alone. Cheap when
    :func:`saturation_screen` clears the edges (the usual case): no eigen-decomposition.
    """
    from theory import _validation as V

    if not V.is_concrete(theta, diffs, weights, beta):
        return 0
    sc = saturation_screen(theta, diffs, weights, beta)
    if sc is None or sc.clear:
        return 0
    labelled = sc.rank
    sig = (sc.z.astype(sc.dtype) * (sc.w * sc.c).astype(sc.dtype)[:, None]).T @ sc.z.astype(sc.dtype)
    lost = labelled - numerical_rank(sig, sc.dtype)
    if lost > 0:
        warnings.warn(SaturationWarning(
            f"{what}: {lost} of the {labelled} directions the weighted edges label are below {np.dtype(sc.dtype).name}'s "
            f"resolution of Sigma (sigmoid'(beta theta.z_e) from {sc.c.min():.3g} to {sc.c.max():.3g} on those edges, margins "
            f"up to {sc.margins.max():.3g}; or edges nearly parallel at this precision), so the value leaves them out and may "
            "be far from tr(I Sigma^+), which counts them; smaller margins (theta, beta or the features' scale) or float64 "
            "resolve them"), stacklevel=stacklevel)
    return max(lost, 0)


_GRAM_BLOCK = 2048


def _weighted_gram(x, s):
    """``x^T diag(s) x``, accumulated over blocks of ``_GRAM_BLOCK`` rows.

    One ``[d, E] x [E, d]`` product is 1.6-2x slower than the machine's BLAS on CPU
    for E = 10^6; summing ``[d, b] x [b, d]`` products over row blocks (no copy of
    ``x``) brings it within 1.05x (float64) and 1.2x (float32) of it
    (``BENCHMARKS.md``, section 3).
    """
    e, d = x.shape
    nb = e // _GRAM_BLOCK
    acc = jnp.zeros((d, d), x.dtype)
    rest = 0
    if nb >= 2:
        def body(acc, i):
            xi = jax.lax.dynamic_slice_in_dim(x, i * _GRAM_BLOCK, _GRAM_BLOCK)
            si = jax.lax.dynamic_slice_in_dim(s, i * _GRAM_BLOCK, _GRAM_BLOCK)
            return acc + (xi.T * si) @ xi, None

        acc = jax.lax.scan(body, acc, jnp.arange(nb))[0]
        rest = nb * _GRAM_BLOCK
    xr, sr = x[rest:], s[rest:]
    return acc + (xr.T * sr) @ xr


@jax.jit
def information_matrix_kernel(theta, diffs, weights, beta):
    """Unchecked ``beta^2 sum_e weights_e sigmoid'(beta theta.z_e) z_e z_e^T``.

    ``weights`` need not sum to one (the estimators pass label counts).
    """
    s = weights * sigmoid_prime(beta * (diffs @ theta))
    return beta**2 * _weighted_gram(diffs, s)


@checked(theta="[d] finite", diffs="[E, d] finite", weights="[E] probability", beta="number > 0")
def information_matrix(
    theta: Vector,
    diffs: Diffs,
    weights: EdgeWeights,
    beta: Scalar,
) -> Float[Array, "d d"]:
    """Per-label information matrix ``Sigma_w(theta)`` of a design.

    Args:
      theta: ``[d]``.
      diffs: ``[E, d]`` edge differences ``z_e = phi(x, y) - phi(x, y')``.
      weights: ``[E]`` design, a probability vector over the edges.
      beta: KL strength ``> 0``.

    Returns:
      ``[d, d]``: ``beta^2 sum_e w_e sigmoid'(beta theta.z_e) z_e z_e^T``.

    Examples:
      >>> import jax.numpy as jnp
      >>> S = information_matrix(jnp.zeros(2), jnp.eye(2), jnp.array([0.5, 0.5]), 1.0)
      >>> bool(jnp.allclose(S, 0.125 * jnp.eye(2)))   # sigmoid'(0) = 1/4
      True
    """
    return information_matrix_kernel(theta, diffs, weights, beta)


@jax.jit
def trace_criterion_kernel(curvature, sigma, ridge):
    """``tr(I Sigma^+)`` on range(Sigma) (``ridge == 0``) or ``tr(I (ridge Id + Sigma)^-1)``."""
    d = sigma.shape[0]
    eps = jnp.finfo(sigma.dtype).eps
    sym = 0.5 * (sigma + sigma.T)
    lam, vec = jnp.linalg.eigh(sym)
    proj = jnp.einsum("ia,ij,ja->a", vec, curvature, vec)  # v_a^T I v_a
    lam_max = jnp.maximum(jnp.max(lam), 0.0)
    # Numerical rank of Sigma: eigenvalues below 10 d eps lam_max are zero.
    in_range = lam > rank_threshold(lam_max, d, sigma.dtype)
    pinv_value = jnp.sum(jnp.where(in_range, proj / jnp.where(in_range, lam, 1.0), 0.0))
    # Curvature outside range(Sigma): a direction that matters to I is not covered.
    uncovered = jnp.sum(jnp.where(in_range, 0.0, proj))
    tr_i = jnp.maximum(jnp.trace(curvature), jnp.finfo(sigma.dtype).tiny)
    not_covered = uncovered > jnp.sqrt(eps) * tr_i
    pinv_value = jnp.where(not_covered, jnp.inf, pinv_value)
    # Regularised form: tr(I (ridge Id + Sigma)^-1) shifts every eigenvalue by ridge.
    ridge_value = jnp.sum(proj / (lam + ridge))
    return jnp.where(ridge > 0, ridge_value, pinv_value)


@checked(sigma="[d, d] psd", curvature="[d, d] psd", ridge="number >= 0")
def trace_criterion(
    curvature: Float[ArrayLike, "d d"],
    sigma: Float[ArrayLike, "d d"],
    ridge: Scalar = 0.0,
) -> Float[Array, ""]:
    """``tr(I Sigma^+)`` from the two matrices (see :func:`design_criterion`).

    Args:
      curvature: ``[d, d]`` the policy curvature ``I``.
      sigma: ``[d, d]`` an information matrix.
      ridge: ``>= 0``; when ``> 0`` returns ``tr(I (ridge Id + Sigma)^-1)``.
    """
    return trace_criterion_kernel(curvature, sigma, ridge)


@checked(theta="[d] finite", diffs="[E, d] finite", weights="[E] probability", curvature="[d, d] psd",
         beta="number > 0", ridge="number >= 0")
def design_criterion(
    weights: EdgeWeights,
    theta: Vector,
    diffs: Diffs,
    curvature: Float[ArrayLike, "d d"],
    beta: Scalar,
    ridge: Scalar = 0.0,
) -> Float[Array, ""]:
    """Design criterion ``Phi(w; theta) = tr(I Sigma_w(theta)^+)``.

    The pseudo-inverse acts on the identifiable subspace (the range of
    ``Sigma_w``). When some direction with curvature (``v^T I v > 0``) is not seen by
    any weighted edge, the value is ``+inf``. With ``ridge > 0`` it is the paper's
    regularised ``tr(I (ridge Id + Sigma_w)^-1)``.

    Args:
      weights: ``[E]`` design, a probability vector.
      theta: ``[d]`` where the information is evaluated (``theta*`` for the oracle,
        the reference ``0`` for the plug-in design).
      diffs: ``[E, d]`` edge differences.
      curvature: ``[d, d]`` ``I(theta)`` (from :func:`theory.policy_curvature`).
      beta: ``> 0``.
      ridge: ``>= 0``.

    Returns:
      Scalar in ``(0, inf]``.
    """
    sigma = information_matrix_kernel(theta, diffs, weights, beta)
    if not isinstance(ridge, jax.core.Tracer) and float(ridge) == 0:  # eager only: under jit there are no values
        check_saturation(theta, diffs, weights, beta, "design_criterion", stacklevel=4)
    return trace_criterion_kernel(curvature, sigma, ridge)


# The checks of a design on candidate edges measured on a target pool (the order of
# theory._validation.check_design_instance: the pool first, then the edges, the design,
# theta*, beta and the prompt weights).
DESIGN_INSTANCE = dict(
    features="[m, K, d] finite",
    log_ref="[m, K] logprob",
    diffs="[E, d] finite",
    weights="[E] probability",
    theta_star="[d] finite",
    beta="number > 0",
    prompt_weights="optional [m] probability",
)


@checked(**DESIGN_INSTANCE, n="number > 0")
def asymptotic_gap(
    weights: EdgeWeights,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    diffs: Diffs,
    beta: Scalar,
    n: Scalar,
    prompt_weights: PromptWeights = None,
) -> Float[Array, ""]:
    """Asymptotic prediction ``E G(theta_hat_n) ~ (beta / (2 n)) tr(I(theta*) Sigma_w(theta*)^+)``.

    ``features``/``log_ref``/``prompt_weights`` describe the pool on which the gap is
    measured (held-out prompts in the contextual world); ``diffs`` are the candidate
    edges of the design, which may come from other (training) prompts.

    Args:
      weights: ``[E]`` design.
      theta_star: ``[d]``.
      features: ``[m, K, d]``.
      log_ref: ``[m, K]``.
      diffs: ``[E, d]``.
      beta: ``> 0``.
      n: number of labels ``> 0``.
      prompt_weights: ``[m]`` or ``None``.
    """
    m = jnp.shape(features)[0]
    rho = normalized_prompt_weights(prompt_weights, m, jnp.result_type(features))
    curvature = policy_curvature_kernel(theta_star, features, log_ref, rho)
    sigma = information_matrix_kernel(theta_star, diffs, weights, beta)
    check_saturation(theta_star, diffs, weights, beta, "asymptotic_gap", stacklevel=4)
    return beta / (2.0 * n) * trace_criterion_kernel(curvature, sigma, 0.0)


# The names other modules imported before the kernels were public (synthetic/ and
# experiments/ still use some of them).
_sigmoid_prime = sigmoid_prime
_information_matrix = information_matrix_kernel
_trace_criterion = trace_criterion_kernel
