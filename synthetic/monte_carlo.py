"""Monte-Carlo replicates: labels -> DPO fit -> exact gap, ``vmap``-ed over keys.

``make_replicate`` resolves everything static in Python and returns a pure
``run(key)``; :func:`simulate_gaps` compiles ``jax.vmap(run)`` once and evaluates all
replicates in one call (STYLE.md habit 4).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.estimators import fit_dpo_optax, fit_newton
from synthetic.labels import Allocation, simulate_wins
from synthetic.worlds import World
from theory.policy import _optimality_gap

__all__ = ["ReplicateResult", "make_replicate", "simulate_gaps", "mean_and_ci"]


class ReplicateResult(NamedTuple):
    """One replicate (or ``[R]``-batched replicates under ``vmap``).

    Attributes:
      gap: exact optimality gap of the fitted policy on the evaluation pool.
      theta_hat: ``[d]`` estimate.
      valid: the estimate exists (Newton: MLE exists; optax: always ``True``).
    """

    gap: jax.Array
    theta_hat: jax.Array
    valid: jax.Array


_ESTIMATORS = ("newton", "optax")


def make_replicate(world: World, edge_diffs, allocation: Allocation, estimator: str = "newton", **estimator_kwargs) -> Callable:
    """Build ``run(key) -> ReplicateResult`` for one world, allocation and estimator.

    Args:
      world: the synthetic world.
      edge_diffs: ``[E, d]`` differences of the candidate edges (``Edges.diffs``).
      allocation: labelled edges and counts.
      estimator: ``"newton"`` (exact MLE) or ``"optax"`` (gradient DPO).
      **estimator_kwargs: passed to :func:`fit_newton` or :func:`fit_dpo_optax`.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(_ESTIMATORS)}, got {estimator!r}")
    diffs = jnp.asarray(edge_diffs)[np.asarray(allocation.edges)]
    counts = jnp.asarray(allocation.counts, dtype=diffs.dtype)
    beta = world.beta
    ev = world.eval
    theta_star = world.theta_star

    def run(key):
        wins = simulate_wins(key, theta_star, diffs, counts, beta)
        if estimator == "newton":
            fit = fit_newton(diffs, counts, wins, beta, **estimator_kwargs)
            theta, valid = fit.theta, fit.mle_exists
        else:
            fit = fit_dpo_optax(diffs, counts, wins, beta, **estimator_kwargs)
            theta, valid = fit.theta, jnp.isfinite(fit.loss)
        gap = _optimality_gap(theta, theta_star, ev.features, ev.log_ref, beta, ev.prompt_weights)
        return ReplicateResult(gap, theta, valid)

    return run


def simulate_gaps(key, world: World, edge_diffs, allocation: Allocation, num_replicates: int, estimator: str = "newton", **estimator_kwargs) -> ReplicateResult:
    """Run ``num_replicates`` independent replicates in one compiled, vmapped call.

    Returns:
      :class:`ReplicateResult` with a leading ``[R]`` axis.
    """
    if isinstance(num_replicates, bool) or not isinstance(num_replicates, int) or num_replicates < 1:
        raise ValueError(f"num_replicates must be an integer >= 1, got {num_replicates!r}")
    run = make_replicate(world, edge_diffs, allocation, estimator, **estimator_kwargs)
    keys = jax.random.split(key, num_replicates)
    return jax.jit(jax.vmap(run))(keys)


def mean_and_ci(x, level: float = 0.95):
    """Mean, standard error and normal-approximation confidence interval of ``x``.

    Returns:
      ``(mean, se, lo, hi)`` as floats.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"x must be a 1-d sample of size >= 2, got shape {list(a.shape)}")
    mean = float(a.mean())
    se = float(a.std(ddof=1) / np.sqrt(a.size))
    q = NormalDist().inv_cdf(0.5 + level / 2)
    return mean, se, mean - q * se, mean + q * se
