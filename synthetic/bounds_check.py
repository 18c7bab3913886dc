r"""Monte-Carlo checks of the bounds of ``theory.bounds`` (derivation section 8).

Two quantities are simulated, each the one its theorem is about:

* the **pointwise risk** ``E_{theta*} G(theta_hat)`` of plain DPO (Theorem 1 bounds it
  from above, the asymptotic prediction is its limit). Theorem 1 holds whatever DPO
  returns when the MLE does not exist, so the simulation charges those replicates the
  largest gap any policy can have, ``G_sup`` (:func:`dpo_gaps`): it simulates the worst
  DPO variant, and a bound that holds for it holds for all;
* the **Bayes risk** ``E_{theta ~ pi} E_theta G_theta(theta_hat)`` under the van Trees
  prior of Theorem 2 (the quantity that theorem bounds from below for every
  estimator; the local worst case is at least as large), for the estimator "the MLE
  when it exists, else the reference ``theta = 0``".
  Theorem 5 (section 10) has its own prior (``lower_bound_jensen(...).widths`` and ``.shape``);
  its Bayes risk is simulated separately (``bayes_new_*`` in :class:`BoundRow`).

Labels are simulated as binomial win counts on a dense ``[E]`` count vector, so one
compiled function serves every design and budget of a world (no re-tracing when the
allocation changes).

Each comparison is a one-sided z-test at level ``alpha`` on the Monte-Carlo mean:
the upper bound is rejected when ``(mean - upper) / se > z_{1-alpha}``, the lower
bound when ``(lower - mean) / se > z_{1-alpha}``, and the asymptotic ratio when
``|ratio - 1| / se_ratio > z_{1 - alpha/2}``. The high-probability bound (Theorem 1')
is rejected when the number of replicates above it has a binomial tail probability
below ``alpha`` under its failure probability ``n^{-a}``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from synthetic.designs import DesignProblem, run_design
from synthetic.monte_carlo import replicate_gaps
from synthetic.rounding import efficient_rounding
from synthetic.worlds import Pool, World
from theory import bounds as TB
from theory.checked import check_argument
from theory.second_order import second_order_gap

__all__ = [
    "BoundRow",
    "dpo_gaps",
    "safeguarded_gaps",
    "check_design_bounds",
    "default_radius",
    "subspace_world",
]


def subspace_world(key=None, corr: float = 0.9, beta: float = 1.0) -> World:
    """A world whose labelled span is larger than ``range(I)`` (the regression world of issue 18).

    Four training prompts (whose pairs are labelled) with three completions vary all
    three features, the third correlated with the first (``corr``); six evaluation
    prompts (where the gap is measured) keep the third feature constant within each
    prompt. So ``e_3`` is in ``ker I`` but not in ``ker S``, ``S`` mixes it with
    ``range(I)``, and ``tr(I S^+)`` exceeds the inverse of the compression of ``S`` to
    ``range(I)`` (about 3x with the default key and ``corr``). A1-A3 hold.

    Args:
      key: JAX PRNG key (``jax.random.key(0)`` when ``None``).
      corr: correlation of features 1 and 3 on the training prompts, in ``[0, 1)``.
      beta: ``> 0``.
    """
    check_argument("corr", corr, "number in [0, 1)")
    kt, ke, kth, kr1, kr2 = jax.random.split(jax.random.key(0) if key is None else key, 5)
    m_train, m_eval, k = 4, 6, 3
    f = jax.random.normal(kt, (m_train, k, 3), jnp.float64)
    f = f.at[..., 2].set(corr * f[..., 0] + math.sqrt(1 - corr**2) * f[..., 2])
    g = jax.random.normal(ke, (m_eval, k, 3), jnp.float64)
    g = g.at[..., 2].set(jnp.broadcast_to(g[:, :1, 2], (m_eval, k)))
    train = Pool(f, jax.nn.log_softmax(jax.random.normal(kr1, (m_train, k), jnp.float64), -1), jnp.full(m_train, 1 / m_train))
    ev = Pool(g, jax.nn.log_softmax(jax.random.normal(kr2, (m_eval, k), jnp.float64), -1), jnp.full(m_eval, 1 / m_eval))
    return World(train, ev, 0.5 * jax.random.normal(kth, (3,), jnp.float64), float(beta))


def default_radius(world: World) -> float:
    """A parameter ball for the safeguarded estimator: ``B = 2 ||theta*|| + 1``."""
    return 2.0 * float(np.linalg.norm(np.asarray(world.theta_star))) + 1.0


def dpo_gaps(key, world: World, diffs, counts, num_replicates: int):
    """Gaps of plain DPO over ``num_replicates`` label draws, worst case where the MLE does not exist.

    Where the MLE exists, the gap of the Newton MLE; where it does not, ``G_sup``
    (:func:`theory.bounds.gap_sup`), which no policy exceeds: an upper envelope of the
    gap of every DPO variant (ridge limit, diverging iterate, fallback), the estimator
    Theorem 1 is about.

    Returns:
      ``(gaps [R], mle_exists [R])`` as numpy arrays.
    """
    check_argument("num_replicates", num_replicates, "int >= 2")
    ev = world.eval
    keys = jax.random.split(key, num_replicates)
    res = replicate_gaps(keys, world.theta_star, jnp.asarray(diffs), counts, float(world.beta), ev)
    # ``mle_exists`` where the engine reports it (the ridge-path-limit engine of issue 19
    # makes ``valid`` true for every replicate); ``valid`` is "the MLE exists" otherwise.
    exists = np.asarray(getattr(res, "mle_exists", res.valid))
    g_sup = TB.gap_sup(world.theta_star, ev.features, ev.log_ref, world.beta, ev.prompt_weights)
    return np.where(exists, np.asarray(res.gap), g_sup), exists


def _binomial_tail(k: int, size: int, p: float) -> float:
    """``P(Binomial(size, p) >= k)``."""
    if k <= 0:
        return 1.0
    return min(1.0, sum(math.comb(size, j) * p**j * (1.0 - p) ** (size - j) for j in range(k, size + 1)))


def safeguarded_gaps(key, world: World, diffs, counts, num_replicates: int, radius: float, prior=None):
    """Gaps of the safeguarded DPO estimator over ``num_replicates`` label draws.

    The estimator is the Newton MLE when it exists and lies in the ball
    ``||theta|| <= radius``, else the reference ``theta = 0`` (a genuine estimator, used
    for the Bayes risk of Theorem 2; Theorem 1 no longer needs the ball, see
    :func:`dpo_gaps`).

    Args:
      key: JAX PRNG key.
      world: the world (its ``eval`` pool measures the gap).
      diffs: ``[E, d]`` candidate edge differences.
      counts: ``[E]`` labels per edge (zeros allowed).
      num_replicates: ``R >= 2``.
      radius: ``B > 0`` (``inf``: the MLE whenever it exists).
      prior: ``None`` (truth ``theta*``), ``(constants, n, alpha)`` to draw the truth
        from the van Trees prior of :func:`theory.bounds.lower_bound`, or
        ``(constants, widths)`` for the box of half-widths ``widths`` in the coordinates
        ``constants.prior_basis``, or ``(constants, widths, shape)`` with ``shape`` ``"box"`` or
        ``"ball"`` (the ellipsoid of semi-axes ``widths``), or ``(constants, lb)`` with ``lb`` a
        :class:`theory.bounds.JensenLowerBound`: the prior that gave ``lb`` (its ``widths`` and
        ``shape``), the safe way to simulate the Bayes risk that Theorem 5 bounds.

    Returns:
      ``(gaps [R], used_mle [R])`` as numpy arrays.
    """
    check_argument("num_replicates", num_replicates, "int >= 2")
    diffs = jnp.asarray(diffs)
    truth_prior = None
    if prior is not None:
        shape = "box"
        if len(prior) == 2 and isinstance(prior[1], TB.JensenLowerBound):
            prior = (prior[0], prior[1].widths, prior[1].shape)  # Theorem 5's own prior, its shape included
        if len(prior) == 3 and not isinstance(prior[2], str):
            c, n, alpha = prior
            widths = TB.prior_widths(c, n, alpha)
        elif len(prior) in (2, 3):
            c, widths = prior[:2]
            shape = check_argument("prior shape", prior[2], TB.SHAPE) if len(prior) == 3 else "box"
            widths = np.asarray(widths, np.float64)
            if widths.shape != (c.prior_basis.shape[1],) or not np.all(np.isfinite(widths)) or np.any(widths < 0):
                raise ValueError(f"prior widths must be {c.prior_basis.shape[1]} finite numbers >= 0, got {widths!r}")
        else:
            raise ValueError(f"prior must be None, (constants, n, alpha), (constants, widths) or (constants, widths, shape), "
                             f"got {len(prior)} items")
        truth_prior = (c.prior_basis, widths)
        if shape == "ball":
            truth_prior += (TB.ball_radial_cdf(widths.size),)
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
    hp_upper: float
    hp_exceed: int
    valid_from: float
    asymptotic: float
    ratio: float
    ratio_se: float
    upper_over_lower: float
    lower_ok: bool
    upper_ok: bool
    ratio_ok: bool
    hp_ok: bool
    no_mle_rate: float
    # Theorems 4-5 (sections 9-10 of theory/DERIVATIONS.md)
    upper_new: float = math.inf
    upper_new_valid: bool = False
    valid_from_new: float = math.inf
    lower_new: float = 0.0
    bayes_new_mean: float = math.nan
    bayes_new_se: float = math.nan
    upper_over_lower_new: float = math.inf
    upper_new_ok: bool = True
    lower_new_ok: bool = True
    # the second-order prediction (beta/2 Phi + c2/n)/n of plain DPO (theory/SECOND_ORDER.md)
    second_order: float = math.nan
    # the shape of Theorem 5's prior that gave lower_new (and under which bayes_new is simulated)
    lower_new_shape: str = "box"
    # P(no MLE) >= separation_floor at this allocation (theory.bounds.separation_floor, coordinate
    # directions); floor_ok: the simulated no-MLE share is not below it (binomial test at alpha)
    separation_floor: float = 0.0
    floor_ok: bool = True
    # the largest budget (grid of 20 a decade, 1e2-1e8, the design's rounding) at which the floor
    # exceeds n^-tail: no event of probability >= 1 - n^-tail keeps the MLE finite there (0: none)
    n0_floor: float = 0.0
    # Theorem 4 at the best tail a of theory.bounds.TAIL_GRID (upper_bound_bernstein_tuned; section 9.6),
    # tested against MC like upper_new; valid_from_tuned: where it starts to hold (the smallest tail's n0)
    upper_tuned: float = math.inf
    tail_tuned: float = math.nan
    upper_over_lower_tuned: float = math.inf
    upper_tuned_ok: bool = True
    valid_from_tuned: float = math.inf
    # the smallest budget (20 a decade) from which the tuned bound is within 2x of beta Phi / (2 n), for the
    # design's empirical design at the reference budget (1e6 if among the budgets, else the largest), as n0_floor once a design
    within2_from: float = math.inf

    #: the row's tests (each a bool field); :attr:`all_ok` is their conjunction
    TESTS = ("lower_ok", "upper_ok", "ratio_ok", "hp_ok", "upper_new_ok", "lower_new_ok", "floor_ok", "upper_tuned_ok")

    @property
    def all_ok(self) -> bool:
        """Every test of the row passes (Theorems 1, 1', 2, 4 at a = 2 and at the tuned tail, 5, the asymptotic ratio
        and the separation floor)."""
        return all(getattr(self, k) for k in self.TESTS)


def floor_test_ok(no_mle: int, replicates: int, floor: float, alpha: float) -> bool:
    """One-sided binomial test of ``P(no MLE) >= floor``: fails (at level ``alpha``) only
    when ``no_mle`` of ``replicates`` is implausibly few. With 400 replicates it can fail
    only for floors above about 0.017 (the bounds table's largest is about 4e-3)."""
    return bool(scipy.stats.binom.cdf(no_mle, replicates, floor) >= alpha)


#: Budgets at which :func:`separation_n0_floor` looks (20 a decade from 1e2 to 1e8).
FLOOR_GRID = tuple(int(x) for x in np.unique(np.round(np.logspace(2, 8, 121))))


def separation_n0_floor(weights, theta_star, diffs, beta, tail: float = 2.0, grid=FLOOR_GRID) -> float:
    """The largest budget of ``grid`` at which the design (``weights``, efficient rounding)
    leaves the MLE undefined with probability above ``n^-tail``, by
    :func:`theory.bounds.separation_floor` along the coordinate axes; ``0`` if none.

    Theorems 1, 1' and 4 rest on an event of probability ``>= 1 - n^-tail`` on which the
    MLE exists; at that budget no such event exists, so Theorem 1' is false there and the
    ``n0`` of Theorems 1 and 4 at that budget's allocation exceeds it."""
    w = np.asarray(weights, np.float64)
    d = np.shape(diffs)[1]
    worst = 0.0
    for n in grid:
        counts = efficient_rounding(w / w.sum(), int(n)).dense_counts(w.shape[0])
        if TB.separation_floor(counts, theta_star, diffs, beta, np.eye(d)) > float(n) ** -tail:
            worst = float(n)
    return worst


def _allocation_weights(problem: DesignProblem, design: str, key, budget: int) -> np.ndarray:
    out = run_design(design, key, problem, budget)
    if out.weights is not None:
        w = np.asarray(out.weights, np.float64)
    else:
        w = out.allocation.dense_counts(problem.num_edges).astype(np.float64)
    return w / w.sum()


def _empirical_constants(world, problem, counts):
    """:func:`theory.bounds.instance_constants` of the empirical design ``n_e / n`` of an allocation ``counts``."""
    ev = world.eval
    return TB.instance_constants(counts / counts.sum(), world.theta_star, ev.features, ev.log_ref, problem.edges.diffs, world.beta,
                                 prompt_weights=ev.prompt_weights)


def check_design_bounds(
    key,
    world: World,
    problem: DesignProblem,
    design: str,
    budgets,
    num_replicates: int = 400,
    alpha: float = 1e-3,
    tail: float = 2.0,
    ratio_from: float | None = None,
) -> list[BoundRow]:
    """Lower bounds, Monte-Carlo risks and upper bounds of one design over budgets.

    Theorems 1, 1' and 4 are tested on the risk at ``theta*``; Theorem 2 on the Bayes
    risk under its prior and Theorem 5 on the Bayes risk under its own (different) prior.

    The design's weights are computed once; at each budget ``n`` efficient rounding
    gives the allocation, and the bounds use its empirical design ``n_e / n`` (they
    are statements for a fixed allocation).

    Args:
      key: JAX PRNG key.
      world, problem: the instance (``problem = design_problem(world)``).
      design: a registered, non-adaptive design name.
      budgets: label budgets.
      num_replicates: Monte-Carlo replicates per budget (each of the two risks).
      alpha: level of each one-sided z-test (and of the binomial test of Theorem 1').
      tail: ``a`` of Theorem 1.
      ratio_from: test ``n gap / ((beta/2) Phi) = 1`` at budgets ``>= ratio_from``
        (default: where the upper bound is valid).
    """
    k_design, k_sim = jax.random.split(key)
    w = _allocation_weights(problem, design, k_design, int(max(budgets)))
    ev = world.eval
    n0_floor = separation_n0_floor(w, world.theta_star, problem.edges.diffs, world.beta, tail)
    n_ref = 10**6 if 10**6 in [int(n) for n in budgets] else int(max(budgets))
    c_ref = _empirical_constants(world, problem, efficient_rounding(w, n_ref).dense_counts(problem.num_edges))
    within2 = TB.upper_bound_bernstein_within(c_ref, 2.0)
    z_one = NormalDist().inv_cdf(1.0 - alpha)
    z_two = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    rows = []
    for i, n in enumerate(budgets):
        n = int(n)
        counts = efficient_rounding(w, n).dense_counts(problem.num_edges)
        w_hat = counts / counts.sum()
        c = c_ref if n == n_ref else _empirical_constants(world, problem, counts)
        ub = TB.upper_bound(c, n, tail)
        hp = TB.upper_bound_high_probability(c, n, tail)
        lb = TB.lower_bound(c, n)
        asym = TB.asymptotic_prediction(c, n)
        second = float(second_order_gap(w_hat, world.theta_star, ev.features, ev.log_ref, problem.edges.diffs, world.beta, n,
                                        prompt_weights=ev.prompt_weights))
        k_point, k_bayes = jax.random.split(jax.random.fold_in(k_sim, i))
        g, exists = dpo_gaps(k_point, world, problem.edges.diffs, counts, num_replicates)
        gb, _ = safeguarded_gaps(k_bayes, world, problem.edges.diffs, counts, num_replicates, math.inf, prior=(c, n, lb.alpha))
        ub2 = TB.upper_bound_bernstein(c, n, tail)
        ub3 = TB.upper_bound_bernstein_tuned(c, n)
        lb2 = TB.lower_bound_jensen(c, n)
        gb2, _ = safeguarded_gaps(jax.random.fold_in(k_bayes, 1), world, problem.edges.diffs, counts, num_replicates,
                                  math.inf, prior=(c, lb2))
        b2mean, b2se = float(gb2.mean()), float(gb2.std(ddof=1) / math.sqrt(gb2.size))
        exceed = int(np.sum(g > hp.value)) if hp.valid else 0
        mean, se = float(g.mean()), float(g.std(ddof=1) / math.sqrt(g.size))
        bmean, bse = float(gb.mean()), float(gb.std(ddof=1) / math.sqrt(gb.size))
        ratio, ratio_se = mean / asym, se / asym
        test_ratio = ub.valid if ratio_from is None else n >= ratio_from
        floor = TB.separation_floor(counts, world.theta_star, problem.edges.diffs, world.beta, np.eye(world.dim))
        no_mle = int(np.sum(~np.asarray(exists, bool)))
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
                hp_upper=hp.value,
                hp_exceed=exceed,
                valid_from=TB.upper_bound_valid_from(c, tail),
                asymptotic=asym,
                ratio=ratio,
                ratio_se=ratio_se,
                upper_over_lower=ub.value / lb.value if lb.value > 0 else math.inf,
                lower_ok=bool((lb.value - bmean) <= z_one * bse),
                upper_ok=bool((not ub.valid) or (mean - ub.value) <= z_one * se),
                ratio_ok=bool((not test_ratio) or abs(ratio - 1.0) <= z_two * ratio_se),
                hp_ok=bool((not hp.valid) or _binomial_tail(exceed, g.size, hp.failure_probability) >= alpha),
                no_mle_rate=float(1.0 - exists.mean()),
                upper_new=ub2.value,
                upper_new_valid=ub2.valid,
                valid_from_new=TB.upper_bound_bernstein_valid_from(c, tail),
                lower_new=lb2.value,
                second_order=second,
                bayes_new_mean=b2mean,
                bayes_new_se=b2se,
                upper_over_lower_new=ub2.value / lb2.value if lb2.value > 0 else math.inf,
                upper_new_ok=bool((not ub2.valid) or (mean - ub2.value) <= z_one * se),
                lower_new_ok=bool((lb2.value - b2mean) <= z_one * b2se),
                lower_new_shape=lb2.shape,
                separation_floor=floor,
                floor_ok=floor_test_ok(no_mle, int(g.size), floor, alpha),
                n0_floor=n0_floor,
                upper_tuned=ub3.value,
                tail_tuned=ub3.tail,
                upper_over_lower_tuned=ub3.value / lb2.value if lb2.value > 0 else math.inf,
                upper_tuned_ok=bool((not ub3.valid) or (mean - ub3.value) <= z_one * se),
                valid_from_tuned=TB.upper_bound_bernstein_valid_from(c, min(TB.TAIL_GRID)),
                within2_from=within2,
            )
        )
    return rows
