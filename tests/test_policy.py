"""Exact gap and curvature against independent computations (theory brief sections 3-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_pool
from theory import log_partition, optimality_gap, policy_curvature, policy_log_probs


def numpy_gap(theta, theta_star, feats, log_ref, beta, rho):
    """beta sum_x rho_x KL(pi_theta || pi_theta*), in plain numpy over present completions."""
    total = 0.0
    for x in range(feats.shape[0]):
        present = np.isfinite(log_ref[x])
        f, lr = feats[x][present], log_ref[x][present]
        lp = lr + f @ theta
        lp = lp - np.logaddexp.reduce(lp)
        lq = lr + f @ theta_star
        lq = lq - np.logaddexp.reduce(lq)
        total += rho[x] * np.sum(np.exp(lp) * (lp - lq))
    return beta * total


def numpy_curvature(theta, feats, log_ref, rho):
    d = feats.shape[2]
    out = np.zeros((d, d))
    for x in range(feats.shape[0]):
        present = np.isfinite(log_ref[x])
        f = feats[x][present]
        lp = log_ref[x][present] + f @ theta
        p = np.exp(lp - np.logaddexp.reduce(lp))
        mu = p @ f
        out += rho[x] * ((f - mu).T * p) @ (f - mu)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_gap_matches_numpy_kl(seed):
    rng = np.random.default_rng(seed)
    feats, log_ref, rho = random_pool(rng)
    theta, theta_star = rng.normal(size=3), rng.normal(size=3)
    got = optimality_gap(theta, theta_star, feats, log_ref, 0.7, rho)
    np.testing.assert_allclose(got, numpy_gap(theta, theta_star, feats, log_ref, 0.7, rho), rtol=1e-12)


def test_gap_zero_at_truth_and_uniform_prompt_weights(rng):
    feats, log_ref, _ = random_pool(rng)
    ts = rng.normal(size=3)
    assert optimality_gap(ts, ts, feats, log_ref, 2.0) == pytest.approx(0.0, abs=1e-14)
    theta = rng.normal(size=3)
    uniform = np.full(feats.shape[0], 1.0 / feats.shape[0])
    np.testing.assert_allclose(
        optimality_gap(theta, ts, feats, log_ref, 2.0),
        numpy_gap(theta, ts, feats, log_ref, 2.0, uniform),
        rtol=1e-12,
    )


def test_padding_is_invisible(rng):
    """A padded pool gives the same gap as the per-prompt unpadded pools, reweighted."""
    feats, log_ref, rho = random_pool(rng, m=3, k=6)
    theta, ts = rng.normal(size=3), rng.normal(size=3)
    per_prompt = []
    for x in range(3):
        present = np.isfinite(log_ref[x])
        per_prompt.append(optimality_gap(theta, ts, feats[x][present][None], log_ref[x][present][None], 1.3))
    np.testing.assert_allclose(optimality_gap(theta, ts, feats, log_ref, 1.3, rho), rho @ np.array(per_prompt), rtol=1e-12)


def test_policy_log_probs_normalised_and_zero_on_padding(rng):
    feats, log_ref, _ = random_pool(rng)
    lp = np.asarray(policy_log_probs(rng.normal(size=3), feats, log_ref))
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(np.isneginf(lp[~np.isfinite(log_ref)]))
    np.testing.assert_allclose(log_partition(np.zeros(3), feats, log_ref), 0.0, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_curvature_matches_numpy_covariance_and_hessian_of_log_partition(seed):
    rng = np.random.default_rng(100 + seed)
    feats, log_ref, rho = random_pool(rng)
    theta = rng.normal(size=3)
    curv = policy_curvature(theta, feats, log_ref, rho)
    np.testing.assert_allclose(curv, numpy_curvature(theta, feats, log_ref, rho), rtol=1e-11, atol=1e-14)
    hess = jax.hessian(lambda t: jnp.dot(rho, log_partition(t, feats, log_ref)))(jnp.asarray(theta))
    np.testing.assert_allclose(curv, hess, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("seed", range(3))
def test_hessian_of_gap_at_truth_is_beta_curvature(seed):
    rng = np.random.default_rng(200 + seed)
    feats, log_ref, rho = random_pool(rng)
    ts, beta = jnp.asarray(rng.normal(size=3)), 0.4 + seed
    hess = jax.hessian(lambda t: optimality_gap(t, ts, feats, log_ref, beta, rho))(ts)
    np.testing.assert_allclose(hess, beta * policy_curvature(ts, feats, log_ref, rho), rtol=1e-9, atol=1e-12)
    grad = jax.grad(lambda t: optimality_gap(t, ts, feats, log_ref, beta, rho))(ts)
    np.testing.assert_allclose(grad, 0.0, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_f1_gap_is_bregman_divergence_of_log_partition(seed):
    rng = np.random.default_rng(300 + seed)
    feats, log_ref, rho = random_pool(rng)
    theta, ts, beta = rng.normal(size=3), rng.normal(size=3), 0.3

    def mean_a(t):
        return jnp.dot(rho, log_partition(t, feats, log_ref))

    bregman = beta * (mean_a(ts) - mean_a(theta) - jnp.dot(jax.grad(mean_a)(jnp.asarray(theta)), ts - theta))
    np.testing.assert_allclose(optimality_gap(theta, ts, feats, log_ref, beta, rho), bregman, rtol=1e-10)


def _rho_delta(delta, feats, log_ref):
    proj = feats @ delta
    present = np.isfinite(log_ref)
    hi = np.where(present, proj, -np.inf).max(axis=1)
    lo = np.where(present, proj, np.inf).min(axis=1)
    return float(np.max(hi - lo))


@pytest.mark.parametrize("seed", range(20))
def test_f2_sandwich_over_random_instances_directions_and_scales(seed):
    rng = np.random.default_rng(400 + seed)
    feats, log_ref, rho = random_pool(rng, m=3, k=5, d=4, concentration=2.0)
    ts, beta = rng.normal(size=4), float(rng.uniform(0.1, 3.0))
    curv = np.asarray(policy_curvature(ts, feats, log_ref, rho))
    direction = rng.normal(size=4)
    for t in (1e-3, 0.1, 0.5, 1.0, 2.0, 4.0):
        delta = t * direction
        gap = float(optimality_gap(ts + delta, ts, feats, log_ref, beta, rho))
        quad = 0.5 * beta * delta @ curv @ delta
        r = _rho_delta(delta, feats, log_ref)
        # relative slack 1e-10 for rounding only
        assert np.exp(-r) * quad * (1 - 1e-10) <= gap <= np.exp(r) * quad * (1 + 1e-10), (t, r, gap, quad)


@pytest.mark.parametrize("seed", range(10))
def test_f3_radial_monotonicity_and_its_derivative(seed):
    rng = np.random.default_rng(500 + seed)
    feats, log_ref, rho = random_pool(rng, d=4, concentration=2.0)
    ts, beta = jnp.asarray(rng.normal(size=4)), 0.8
    delta = jnp.asarray(rng.normal(size=4))

    def g(t):
        return optimality_gap(ts + t * delta, ts, feats, log_ref, beta, rho)

    ts_grid = np.linspace(0.0, 5.0, 41)
    values = np.array([float(g(t)) for t in ts_grid])
    assert np.all(np.diff(values) >= -1e-14)
    # dG/dt = beta t Var_{pi_{theta_t}}(delta . phi) = beta t delta^T I(theta_t) delta
    for t in (0.3, 1.7, 4.2):
        var = delta @ policy_curvature(ts + t * delta, feats, log_ref, rho) @ delta
        np.testing.assert_allclose(jax.grad(g)(t), beta * t * var, rtol=1e-9)


def test_non_identifiable_direction_leaves_gap_unchanged():
    """Adding a per-prompt constant (tabular all-ones) to theta does not change the policy."""
    rng = np.random.default_rng(7)
    feats = np.eye(5)[None]
    log_ref = np.log(rng.dirichlet(np.ones(5)))[None]
    theta, ts = rng.normal(size=5), rng.normal(size=5)
    np.testing.assert_allclose(
        optimality_gap(theta + 3.0, ts, feats, log_ref, 1.0), optimality_gap(theta, ts, feats, log_ref, 1.0), rtol=1e-12
    )
    np.testing.assert_allclose(policy_curvature(ts, feats, log_ref) @ np.ones(5), 0.0, atol=1e-15)


def test_jit_and_vmap_agree_with_eager(rng):
    feats, log_ref, rho = random_pool(rng)
    thetas = rng.normal(size=(7, 3))
    ts = rng.normal(size=3)
    batched = jax.jit(jax.vmap(lambda t: optimality_gap(t, ts, feats, log_ref, 1.0, rho)))(thetas)
    eager = np.array([float(optimality_gap(t, ts, feats, log_ref, 1.0, rho)) for t in thetas])
    np.testing.assert_allclose(batched, eager, rtol=1e-12)
