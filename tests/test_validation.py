"""Bad input gets a clear ValueError naming the argument, before any work starts."""

import numpy as np
import pytest

from theory import (
    asymptotic_gap,
    design_criterion,
    enumerate_edges,
    information_matrix,
    optimality_gap,
    policy_curvature,
)

F = np.random.default_rng(0).normal(size=(2, 3, 2))
L = np.log(np.full((2, 3), 1 / 3))
D = F[:, 0] - F[:, 1]  # [2, 2] diffs
W = np.array([0.5, 0.5])
T = np.zeros(2)
I2 = np.eye(2)

BAD = {
    "features wrong rank": (lambda: optimality_gap(T, T, F[0], L, 1.0), "features"),
    "log_ref shape mismatch": (lambda: optimality_gap(T, T, F, L[:, :2], 1.0), "log_ref"),
    "theta wrong length": (lambda: optimality_gap(np.zeros(3), T, F, L, 1.0), "theta"),
    "theta_star NaN": (lambda: optimality_gap(T, np.array([np.nan, 0.0]), F, L, 1.0), "theta_star"),
    "beta zero": (lambda: optimality_gap(T, T, F, L, 0.0), "beta"),
    "beta negative": (lambda: information_matrix(T, D, W, -1.0), "beta"),
    "beta nan": (lambda: asymptotic_gap(W, T, F, L, D, float("nan"), 10), "beta"),
    "features NaN": (lambda: policy_curvature(T, np.where(F > 1, np.nan, F), L), "features"),
    "features inf": (lambda: optimality_gap(T, T, np.where(F > 1, np.inf, F), L, 1.0), "features"),
    "log_ref NaN": (lambda: policy_curvature(T, F, np.where(L < 0, np.nan, L)), "log_ref"),
    "log_ref +inf": (lambda: policy_curvature(T, F, np.full((2, 3), np.inf)), "log_ref"),
    "empty prompt": (lambda: policy_curvature(T, F, np.full((2, 3), -np.inf)), "log_ref"),
    "prompt weights sum": (lambda: optimality_gap(T, T, F, L, 1.0, np.array([0.7, 0.7])), "prompt_weights"),
    "prompt weights negative": (lambda: policy_curvature(T, F, L, np.array([1.5, -0.5])), "prompt_weights"),
    "weights negative": (lambda: information_matrix(T, D, np.array([1.5, -0.5]), 1.0), "weights"),
    "weights do not sum to 1": (lambda: design_criterion(np.array([0.2, 0.2]), T, D, I2, 1.0), "weights"),
    "weights wrong length": (lambda: design_criterion(np.ones(3) / 3, T, D, I2, 1.0), "weights"),
    "diffs NaN": (lambda: information_matrix(T, np.full((2, 2), np.nan), W, 1.0), "diffs"),
    "no edges (empty diffs)": (lambda: information_matrix(T, np.zeros((0, 2)), np.zeros(0), 1.0), "no edges"),
    "no edges (pool)": (lambda: enumerate_edges(F, np.array([[0.0, -np.inf, -np.inf]] * 2)), "no edges"),
    "curvature shape": (lambda: design_criterion(W, T, D, np.eye(3), 1.0), "curvature"),
    "curvature asymmetric": (lambda: design_criterion(W, T, D, np.array([[1.0, 1.0], [0.0, 1.0]]), 1.0), "curvature"),
    "ridge negative": (lambda: design_criterion(W, T, D, I2, 1.0, ridge=-1.0), "ridge"),
    "budget zero": (lambda: asymptotic_gap(W, T, F, L, D, 1.0, 0), "n"),
    "diffs dimension": (lambda: asymptotic_gap(W, T, F, L, np.zeros((2, 3)), 1.0, 10), "diffs"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_naming_the_argument(case):
    call, name = BAD[case]
    with pytest.raises(ValueError, match=name):
        call()


def test_a_width_mismatch_of_diffs_names_diffs_not_theta():
    wide = np.zeros((2, 3))
    for call in (lambda: information_matrix(T, wide, W, 1.0), lambda: design_criterion(W, T, wide, I2, 1.0)):
        with pytest.raises(ValueError, match=r"^diffs must have shape \[E, d\] with d = 2 columns to match theta"):
            call()


def test_the_gap_is_never_negative_where_rounding_would_make_it_so():
    """Saturated policies (features x 1e6) near theta*: the plain KL sum rounds to about
    -6e-11 in half of these draws; the gap is clamped at 0 per prompt."""
    rng = np.random.default_rng(0)
    logr = np.log(np.full((3, 5), 0.2))
    gaps = []
    for _ in range(100):
        f = rng.normal(size=(3, 5, 2)) * 1e6
        ts = rng.normal(size=2)
        gaps.append(float(optimality_gap(ts + 1e-9 * rng.normal(size=2), ts, f, logr, 1.0)))
    assert min(gaps) >= 0.0
    # far from theta* the clamp changes nothing: the gap equals a float64 numpy KL
    f = rng.normal(size=(3, 5, 2))
    t, ts = rng.normal(size=2), rng.normal(size=2)

    def logp(th):
        a = f @ th + logr
        return a - np.logaddexp.reduce(a, axis=1, keepdims=True)

    kl = np.sum(np.exp(logp(t)) * (logp(t) - logp(ts)), axis=1).mean()
    assert float(optimality_gap(t, ts, f, logr, 1.0)) == pytest.approx(kl, rel=1e-12)


def test_which_checks_hold_under_jit():
    """The contract (README, "Checks under jit and vmap"): shapes are checked at trace
    time, so they hold under jit and vmap; values (NaN, sums, signs) need concrete
    arrays and are checked only in eager calls."""
    import jax

    jitted = jax.jit(design_criterion)
    with pytest.raises(ValueError, match="weights must have shape"):
        jitted(np.ones(3) / 3, T, D, I2, 1.0)  # shape: checked under jit
    with pytest.raises(ValueError, match="diffs must have shape"):
        jitted(W, T, np.zeros((2, 3)), I2, 1.0)
    for bad in [(2 * W, T, 1.0), (W, T, -1.0), (W, np.array([np.nan, 0.0]), 1.0)]:
        with pytest.raises(ValueError):  # values: checked eagerly ...
            design_criterion(bad[0], bad[1], D, I2, bad[2])
        jitted(bad[0], bad[1], D, I2, bad[2])  # ... and not under jit: the caller's responsibility
    # what an unchecked value does: weights summing to 2 halve the criterion
    assert float(jitted(2 * W, T, D, I2, 1.0)) == pytest.approx(float(design_criterion(W, T, D, I2, 1.0)) / 2)
