r"""Monte-Carlo checks of the bounds of ``theory.bounds`` (derivation section 8).

Two quantities are simulated, each the one its theorem is about:

* the **pointwise risk** ``E_{theta*} G(theta_hat)`` of the safeguarded DPO estimator
  (Theorem 1 bounds it from above, the asymptotic prediction is its limit);
* the **Bayes risk** ``E_{theta ~ pi} E_theta G_theta(theta_hat)`` under the van Trees
  prior of Theorem 2 (the quantity that theorem bounds from below for every
  estimator; the local worst case is at least as large).

Labels are simulated as binomial win counts on a dense ``[E]`` count vector, so one
compiled function serves every design and budget of a world (no re-tracing when the
allocation changes).

Each comparison is a one-sided z-test at level ``alpha`` on the Monte-Carlo mean:
the upper bound is rejected when ``(mean - upper) / se > z_{1-alpha}``, the lower
bound when ``(lower - mean) / se > z_{1-alpha}``, and the asymptotic ratio when
``|ratio - 1| / se_ratio > z_{1 - alpha/2}``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.designs import DesignProblem, run_design
from synthetic.monte_carlo import replicate_gaps
from synthetic.rounding import efficient_rounding
from synthetic.worlds import World
from theory import bounds as TB

__all__ = [
    "BoundRow",
    "safeguarded_gaps",
    "check_design_bounds",
    "default_radius",
]


def default_radius(world: World) -> float:
    """The parameter ball used in the checks: ``B = 2 ||theta*|| + 1``."""
    return 2.0 * float(np.linalg.norm(np.asarray(world.theta_star))) + 1.0


def safeguarded_gaps(key, world: World, diffs, counts, num_replicates: int, radius: float, prior=None):
    """Gaps of the safeguarded DPO estimator over ``num_replicates`` label draws.

    The estimator (Theorem 1) is the Newton MLE when it exists and lies in the ball
    ``||theta|| <= radius``, else the reference ``theta = 0``.

    Args:
      key: JAX PRNG key.
      world: the world (its ``eval`` pool measures the gap).
      diffs: ``[E, d]`` candidate edge differences.
      counts: ``[E]`` labels per edge (zeros allowed).
      num_replicates: ``R >= 2``.
      radius: ``B > 0``.
      prior: ``None`` (truth ``theta*``) or ``(constants, n, alpha)`` to draw the truth
        from the van Trees prior of :func:`theory.bounds.lower_bound`.

    Returns:
      ``(gaps [R], used_mle [R])`` as numpy arrays.
    """
    if isinstance(num_replicates, bool) or not isinstance(num_replicates, int) or num_replicates < 2:
        raise ValueError(f"num_replicates must be an integer >= 2, got {num_replicates!r}")
    diffs = jnp.asarray(diffs)
    truth_prior = None
    if prior is not None:
        c, n, alpha = prior
        truth_prior = (c.prior_basis, TB.prior_widths(c, n, alpha))
    keys = jax.random.split(key, num_replicates)
    res = replicate_gaps(keys, world.theta_star, diffs, counts, float(world.beta), world.eval,
                         safeguard_radius=float(radius), truth_prior=truth_prior)
    gaps, used = res.gap, res.valid
    return np.asarray(gaps), np.asarray(used)


class BoundRow(NamedTuple):
    """One (design, budget) comparison of theory and simulation."""

    design: str
    n: int
    lower: float
    bayes_mean: float
    bayes_se: float
    mc_mean: float
    mc_se: float
    upper: float
    upper_valid: bool
    valid_from: float
    asymptotic: float
    ratio: float
    ratio_se: float
    upper_over_lower: float
    lower_ok: bool
    upper_ok: bool
    ratio_ok: bool
    fallback_rate: float


def _allocation_weights(problem: DesignProblem, design: str, key, budget: int) -> np.ndarray:
    out = run_design(design, key, problem, budget)
    if out.weights is not None:
        w = np.asarray(out.weights, np.float64)
    else:
        w = out.allocation.dense_counts(problem.num_edges).astype(np.float64)
    return w / w.sum()


def check_design_bounds(
    key,
    world: World,
    problem: DesignProblem,
    design: str,
    budgets,
    num_replicates: int = 400,
    alpha: float = 1e-3,
    radius: float | None = None,
    tail: float = 2.0,
    ratio_from: float | None = None,
) -> list[BoundRow]:
    """Lower bound, Monte-Carlo risks and upper bound of one design over budgets.

    The design's weights are computed once; at each budget ``n`` efficient rounding
    gives the allocation, and the bounds use its empirical design ``n_e / n`` (they
    are statements for a fixed allocation).

    Args:
      key: JAX PRNG key.
      world, problem: the instance (``problem = design_problem(world)``).
      design: a registered, non-adaptive design name.
      budgets: label budgets.
      num_replicates: Monte-Carlo replicates per budget (each of the two risks).
      alpha: level of each one-sided z-test.
      radius: parameter ball ``B``; :func:`default_radius` when ``None``.
      tail: ``a`` of Theorem 1.
      ratio_from: test ``n gap / ((beta/2) Phi) = 1`` at budgets ``>= ratio_from``
        (default: where the upper bound is valid).
    """
    radius = default_radius(world) if radius is None else float(radius)
    k_design, k_sim = jax.random.split(key)
    w = _allocation_weights(problem, design, k_design, int(max(budgets)))
    ev = world.eval
    z_one = NormalDist().inv_cdf(1.0 - alpha)
    z_two = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    rows = []
    for i, n in enumerate(budgets):
        n = int(n)
        counts = efficient_rounding(w, n).dense_counts(problem.num_edges)
        w_hat = counts / counts.sum()
        c = TB.instance_constants(w_hat, world.theta_star, ev.features, ev.log_ref, problem.edges.diffs, world.beta, radius, ev.prompt_weights)
        ub = TB.upper_bound(c, n, tail)
        lb = TB.lower_bound(c, n)
        asym = TB.asymptotic_prediction(c, n)
        k_point, k_bayes = jax.random.split(jax.random.fold_in(k_sim, i))
        g, used = safeguarded_gaps(k_point, world, problem.edges.diffs, counts, num_replicates, radius)
        gb, _ = safeguarded_gaps(k_bayes, world, problem.edges.diffs, counts, num_replicates, radius, prior=(c, n, lb.alpha))
        mean, se = float(g.mean()), float(g.std(ddof=1) / math.sqrt(g.size))
        bmean, bse = float(gb.mean()), float(gb.std(ddof=1) / math.sqrt(gb.size))
        ratio, ratio_se = mean / asym, se / asym
        test_ratio = ub.valid if ratio_from is None else n >= ratio_from
        rows.append(
            BoundRow(
                design=design,
                n=n,
                lower=lb.value,
                bayes_mean=bmean,
                bayes_se=bse,
                mc_mean=mean,
                mc_se=se,
                upper=ub.value,
                upper_valid=ub.valid,
                valid_from=TB.upper_bound_valid_from(c, tail),
                asymptotic=asym,
                ratio=ratio,
                ratio_se=ratio_se,
                upper_over_lower=ub.value / lb.value if lb.value > 0 else math.inf,
                lower_ok=bool((lb.value - bmean) <= z_one * bse),
                upper_ok=bool((not ub.valid) or (mean - ub.value) <= z_one * se),
                ratio_ok=bool((not test_ratio) or abs(ratio - 1.0) <= z_two * ratio_se),
                fallback_rate=float(1.0 - used.mean()),
            )
        )
    return rows
