r"""The log-linear policy class, its exact optimality gap and its curvature.

A *pool* is padded: ``features`` ``[m, K, d]`` holds ``phi(x, y)``, ``log_ref``
``[m, K]`` holds ``log pi0(y|x)`` with ``-inf`` marking an absent completion, and
``prompt_weights`` ``[m]`` is ``rho(x)`` (uniform when ``None``).

.. math::

    \pi_\theta(y|x) = \pi_0(y|x) \exp(\theta^\top \phi(x,y)) / Z_\theta(x),
    \qquad A_x(\theta) = \log Z_\theta(x).

Theory brief, sections 1 and 3. The gap is exact (no quadratic approximation):

.. math::

    G(\theta) = J(\pi_{\theta^*}) - J(\pi_\theta)
              = \beta\, \mathbb{E}_x \mathrm{KL}(\pi_\theta(\cdot|x) \,\|\, \pi_{\theta^*}(\cdot|x)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from theory.checked import checked
from theory.shapes import Features, LogRef, PromptWeights, Scalar, Vector

__all__ = [
    "log_partition",
    "policy_log_probs",
    "optimality_gap",
    "policy_curvature",
    "normalized_prompt_weights",
    "log_partition_kernel",
    "policy_log_probs_kernel",
    "optimality_gap_kernel",
    "policy_curvature_kernel",
]

# A padded pool and a parameter vector, in the order the checks run.
POOL = dict(features="[m, K, d] finite", log_ref="[m, K] logprob")


def normalized_prompt_weights(prompt_weights, m, dtype):
    """``rho`` as an array ``[m]``: uniform when ``prompt_weights`` is ``None``."""
    if prompt_weights is None:
        return jnp.full((m,), 1.0 / m, dtype=dtype)
    return jnp.asarray(prompt_weights, dtype=dtype)


def _logits(theta, features, log_ref):
    """``log pi0 + theta . phi`` with ``-inf`` kept on absent completions. ``[m, K]``."""
    present = jnp.isfinite(log_ref)
    safe_ref = jnp.where(present, log_ref, 0.0)
    return jnp.where(present, safe_ref + features @ theta, -jnp.inf)


@jax.jit
def log_partition_kernel(theta, features, log_ref):
    """Unchecked :func:`log_partition`."""
    return jax.nn.logsumexp(_logits(theta, features, log_ref), axis=-1)


@jax.jit
def policy_log_probs_kernel(theta, features, log_ref):
    """Unchecked :func:`policy_log_probs`."""
    logits = _logits(theta, features, log_ref)
    return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


@checked(**POOL, theta="[d] finite")
def log_partition(
    theta: Vector, features: Features, log_ref: LogRef
) -> Float[Array, " m"]:
    """Log-partition ``A_x(theta) = log sum_y pi0(y|x) exp(theta . phi(x,y))``.

    Args:
      theta: ``[d]`` policy parameter.
      features: ``[m, K, d]``.
      log_ref: ``[m, K]``, ``-inf`` for an absent completion.

    Returns:
      ``[m]``; equals 0 at ``theta = 0`` when each row of ``log_ref`` is normalised.
    """
    return log_partition_kernel(theta, features, log_ref)


@checked(**POOL, theta="[d] finite")
def policy_log_probs(
    theta: Vector, features: Features, log_ref: LogRef
) -> Float[Array, "m K"]:
    """``log pi_theta(y|x)`` as ``[m, K]`` (``-inf`` on absent completions).

    Examples:
      >>> import jax.numpy as jnp
      >>> f = jnp.eye(3)[None]                      # one prompt, 3 one-hot items
      >>> lp = policy_log_probs(jnp.zeros(3), f, jnp.log(jnp.full((1, 3), 1 / 3)))
      >>> bool(jnp.allclose(jnp.exp(lp).sum(), 1.0))
      True
    """
    return policy_log_probs_kernel(theta, features, log_ref)


@jax.jit
def optimality_gap_kernel(theta, theta_star, features, log_ref, beta, rho):
    """Unchecked :func:`optimality_gap` with the prompt weights ``rho`` given as an array ``[m]``."""
    present = jnp.isfinite(log_ref)
    logp = policy_log_probs_kernel(theta, features, log_ref)
    p = jnp.where(present, jnp.exp(logp), 0.0)
    # log pi_theta - log pi_theta* = (theta - theta*) . phi - (A(theta) - A(theta*)),
    # finite on every entry, so no 0 * inf appears on absent completions.
    log_ratio = features @ (theta - theta_star) - (
        log_partition_kernel(theta, features, log_ref) - log_partition_kernel(theta_star, features, log_ref)
    )[:, None]
    kl = jnp.sum(jnp.where(present, p * log_ratio, 0.0), axis=-1)
    # A KL is >= 0; rounding can leave -1e-11 where pi_theta ~ pi_theta*. Clamp that
    # at 0 (with `where`, not `maximum`, so derivatives at theta* stay exact).
    kl = jnp.where(kl < 0, jnp.zeros_like(kl), kl)
    return beta * jnp.dot(rho, kl)


@checked(**POOL, theta="[d] finite", theta_star="[d] finite", beta="number > 0",
         prompt_weights="optional [m] probability")
def optimality_gap(
    theta: Vector,
    theta_star: Vector,
    features: Features,
    log_ref: LogRef,
    beta: Scalar,
    prompt_weights: PromptWeights = None,
) -> Float[Array, ""]:
    """Exact optimality gap ``G(theta) = beta E_x KL(pi_theta(.|x) || pi_theta*(.|x))``.

    Theory brief section 3: for the KL-regularised objective ``J`` with reward
    ``r* = beta theta* . phi``, ``J(pi_theta*) - J(pi_theta)`` equals this reverse KL.

    Args:
      theta: ``[d]``.
      theta_star: ``[d]`` the optimal parameter.
      features: ``[m, K, d]``.
      log_ref: ``[m, K]`` (``-inf`` = absent).
      beta: KL strength, ``> 0``.
      prompt_weights: ``[m]`` probability vector ``rho``; uniform when ``None``.

    Returns:
      Scalar ``>= 0``: each prompt's KL is clamped at 0, so rounding (about
      ``1e-11`` relative, e.g. for saturated policies) never gives a negative gap.
    """
    rho = normalized_prompt_weights(prompt_weights, np.shape(features)[0], jnp.result_type(features))
    return optimality_gap_kernel(theta, theta_star, features, log_ref, beta, rho)


@jax.jit
def policy_curvature_kernel(theta, features, log_ref, rho):
    """Unchecked :func:`policy_curvature` with the prompt weights ``rho`` given as an array ``[m]``."""
    present = jnp.isfinite(log_ref)
    p = jnp.where(present, jnp.exp(policy_log_probs_kernel(theta, features, log_ref)), 0.0)
    mean = jnp.einsum("mk,mkd->md", p, features)
    centred = features - mean[:, None, :]
    return jnp.einsum("m,mk,mki,mkj->ij", rho, p, centred, centred)


@checked(**POOL, theta="[d] finite", prompt_weights="optional [m] probability")
def policy_curvature(
    theta: Vector,
    features: Features,
    log_ref: LogRef,
    prompt_weights: PromptWeights = None,
) -> Float[Array, "d d"]:
    """Policy curvature ``I(theta) = E_x Cov_{y ~ pi_theta(.|x)}[phi(x, y)]``.

    It is the Hessian of ``E_x A_x(theta)``, and ``hessian(G)(theta*) = beta I(theta*)``
    (theory brief section 3).

    Args:
      theta: ``[d]``.
      features: ``[m, K, d]``.
      log_ref: ``[m, K]`` (``-inf`` = absent).
      prompt_weights: ``[m]`` or ``None`` for uniform.

    Returns:
      ``[d, d]`` symmetric positive semi-definite.
    """
    rho = normalized_prompt_weights(prompt_weights, np.shape(features)[0], jnp.result_type(features))
    return policy_curvature_kernel(theta, features, log_ref, rho)


# The names other modules imported before the kernels were public (synthetic/ and
# experiments/ still use some of them).
_log_partition = log_partition_kernel
_policy_log_probs = policy_log_probs_kernel
_optimality_gap = optimality_gap_kernel
_policy_curvature = policy_curvature_kernel
