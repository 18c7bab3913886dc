"""Newton MLE against statsmodels/scipy, separation against an LP oracle, optax DPO against Newton."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import statsmodels.api as sm

from synthetic import dpo_loss, fit_dpo_optax, fit_newton, simulate_wins
from synthetic.estimators import fit_newton_shared as _fit_newton_shared

fit_newton_shared = jax.jit(_fit_newton_shared, static_argnames=(
    "beta", "ridge", "max_iter", "tol", "curvature_floor", "chord_iter", "fallback_size", "fallback_iter"))
from theory import enumerate_edges


def _data(seed, e=25, d=3, c=30, beta=0.7):
    rng = np.random.default_rng(seed)
    diffs = rng.normal(size=(e, d))
    ts = rng.normal(size=d)
    counts = rng.integers(1, c, size=e).astype(float)
    wins = np.asarray(simulate_wins(jax.random.PRNGKey(seed), ts, diffs, counts, beta))
    return diffs, counts, wins, beta


@pytest.mark.parametrize("seed", range(4))
def test_newton_matches_statsmodels_binomial_glm(seed):
    diffs, counts, wins, beta = _data(seed)
    fit = fit_newton(jnp.asarray(diffs), counts, wins, beta)
    assert bool(fit.converged) and bool(fit.mle_exists)
    glm = sm.GLM(np.c_[wins, counts - wins], beta * diffs, family=sm.families.Binomial()).fit(tol=1e-13)
    np.testing.assert_allclose(fit.theta, glm.params, rtol=1e-8, atol=1e-10)
    assert float(fit.grad_norm) < 1e-10


def test_newton_min_norm_on_non_identifiable_tabular_edges():
    """Tabular diffs never see the all-ones direction: theta_hat is orthogonal to it and
    the identifiable margins equal statsmodels' fitted linear predictor."""
    rng = np.random.default_rng(1)
    k = 5
    feats, log_ref = np.eye(k)[None], np.zeros((1, k))
    edges = enumerate_edges(feats, log_ref)
    diffs = np.asarray(edges.diffs)
    counts = np.full(edges.num_edges, 40.0)
    wins = np.asarray(simulate_wins(jax.random.PRNGKey(1), rng.normal(size=k), diffs, counts, 1.0))
    fit = fit_newton(jnp.asarray(diffs), counts, wins, 1.0)
    assert bool(fit.mle_exists)
    assert abs(float(np.sum(fit.theta))) < 1e-10
    # Reference-item parametrisation (theta_0 = 0) is identifiable: drop column 0.
    glm = sm.GLM(np.c_[wins, counts - wins], diffs[:, 1:], family=sm.families.Binomial()).fit(tol=1e-13)
    np.testing.assert_allclose(diffs @ np.asarray(fit.theta), diffs[:, 1:] @ glm.params, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ridge", [1e-3, 0.1])
def test_newton_with_ridge_matches_scipy_minimize(ridge):
    diffs, counts, wins, beta = _data(9, e=10, d=4, c=5)
    fit = fit_newton(jnp.asarray(diffs), counts, wins, beta, ridge=ridge)
    f = lambda t: float(dpo_loss(jnp.asarray(t), jnp.asarray(diffs), counts, wins, beta, ridge))
    g = lambda t: np.asarray(jax.grad(dpo_loss)(jnp.asarray(t), jnp.asarray(diffs), counts, wins, beta, ridge))
    ref = scipy.optimize.minimize(f, np.zeros(4), jac=g, method="BFGS", options={"gtol": 1e-12})
    np.testing.assert_allclose(fit.theta, ref.x, rtol=1e-6, atol=1e-8)


def _separable_lp(diffs, counts, wins):
    """Exact oracle: labels are (quasi-)separable iff some v has A v >= 0 and 1^T A v >= 1,
    where A stacks +z_e for every edge with a win and -z_e for every edge with a loss."""
    rows = [diffs[e] for e in range(len(counts)) if wins[e] > 0] + [
        -diffs[e] for e in range(len(counts)) if counts[e] - wins[e] > 0
    ]
    a = np.array(rows)
    d = a.shape[1]
    res = scipy.optimize.linprog(
        np.zeros(d), A_ub=np.vstack([-a, -a.sum(axis=0, keepdims=True)]),
        b_ub=np.r_[np.zeros(len(a)), -1.0], bounds=[(None, None)] * d, method="highs",
    )
    return res.status == 0


@pytest.mark.parametrize("seed, e, d, max_count", [(0, 5, 2, 2), (1, 6, 3, 3), (2, 9, 4, 5)])
def test_separation_detection_agrees_with_lp_oracle(seed, e, d, max_count):
    """Small random samples separate often; the Newton flag must agree with the LP on each."""
    rng = np.random.default_rng(seed)
    n_cases = 300
    diffs = rng.normal(size=(n_cases, e, d))
    counts = rng.integers(1, max_count + 1, size=(n_cases, e)).astype(float)
    ts = rng.normal(size=d)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_cases)
    wins = np.asarray(jax.vmap(lambda k, z, c: simulate_wins(k, ts, z, c, 1.5))(keys, diffs, counts))
    fits = jax.jit(jax.vmap(lambda z, c, w: fit_newton(z, c, w, 1.0)))(jnp.asarray(diffs), counts, wins)
    separable = np.array([_separable_lp(diffs[i], counts[i], wins[i]) for i in range(n_cases)])
    assert 0.05 < separable.mean() < 0.95  # both kinds are exercised
    flagged = ~np.asarray(fits.mle_exists)
    assert np.all(flagged[separable])  # every separable sample is flagged
    # The converse holds except for MLEs that exist but lie beyond float64's resolution:
    # margins past about 20, where the curvature e^-|m| is below the floor (documented in
    # fit_newton). Such a fit predicts preferences of 1 - 1e-9; allow at most 2% of them.
    beyond = flagged & ~separable
    assert beyond.mean() <= 0.02 and np.all(np.asarray(fits.max_margin)[beyond] > 20)
    ok = np.asarray(fits.mle_exists)
    assert np.all(np.asarray(fits.grad_norm)[ok] < 1e-8)


def test_separable_labels_flagged_and_ridge_restores_existence():
    diffs, counts, wins = jnp.array([[1.0, 0.0], [0.0, 1.0]]), np.array([3.0, 2.0]), np.array([3.0, 1.0])
    fit = fit_newton(diffs, counts, wins, 1.0)
    assert not bool(fit.mle_exists) and float(fit.max_margin) > 20  # iterates ran off
    ridged = fit_newton(diffs, counts, wins, 1.0, ridge=0.01)
    assert bool(ridged.mle_exists) and bool(ridged.converged)


@pytest.mark.parametrize("optimizer, lr, steps", [("adam", 0.05, 3000), ("rmsprop", 0.01, 3000)])
def test_optax_dpo_reaches_newton_solution(optimizer, lr, steps):
    diffs, counts, wins, beta = _data(3)
    newton = fit_newton(jnp.asarray(diffs), counts, wins, beta)
    dpo = fit_dpo_optax(jnp.asarray(diffs), counts, wins, beta, optimizer=optimizer, learning_rate=lr, num_steps=steps)
    # The loss is flat near the optimum: parameters agree to ~1e-4 when losses agree to ~1e-9.
    np.testing.assert_allclose(dpo.theta, newton.theta, rtol=1e-4, atol=1e-5)
    assert float(dpo.loss) - float(newton.loss) < 1e-8
    assert float(dpo.loss_history[0]) > float(dpo.loss)


def test_optax_label_smoothing_equals_newton_on_smoothed_wins():
    diffs, counts, wins, beta = _data(4)
    eps = 0.1
    smoothed = (1 - eps) * wins + eps * (counts - wins)
    newton = fit_newton(jnp.asarray(diffs), counts, smoothed, beta)
    dpo = fit_dpo_optax(jnp.asarray(diffs), counts, wins, beta, label_smoothing=eps, num_steps=3000)
    np.testing.assert_allclose(dpo.theta, newton.theta, rtol=1e-4, atol=1e-5)
    # and the smoothed solution is shrunk towards 0 relative to the plain MLE
    plain = fit_newton(jnp.asarray(diffs), counts, wins, beta)
    assert float(jnp.linalg.norm(newton.theta)) < float(jnp.linalg.norm(plain.theta))


def test_dpo_loss_matches_trl_per_label_form():
    """Sum over expanded labels of -(1-eps) log sigmoid(beta m) - eps log sigmoid(-beta m)."""
    diffs, counts, wins, beta = _data(5, e=6, c=4)
    theta, eps = np.array([0.3, -0.2, 0.5]), 0.2
    total, n = 0.0, 0
    for e in range(6):
        for s, k in ((1.0, wins[e]), (-1.0, counts[e] - wins[e])):
            m = s * diffs[e] @ theta  # chosen minus rejected
            total += k * (-(1 - eps) * np.log(1 / (1 + np.exp(-beta * m))) - eps * np.log(1 / (1 + np.exp(beta * m))))
            n += k
    np.testing.assert_allclose(dpo_loss(jnp.asarray(theta), jnp.asarray(diffs), counts, wins, beta, 0.0, eps), total / n, rtol=1e-12)


def test_vmapped_newton_equals_per_replicate_fits():
    diffs, counts, _, beta = _data(6)
    ts = np.ones(3) * 0.4
    keys = jax.random.split(jax.random.PRNGKey(2), 6)
    wins = jax.vmap(lambda k: simulate_wins(k, ts, diffs, counts, beta))(keys)
    batched = jax.jit(jax.vmap(lambda w: fit_newton(jnp.asarray(diffs), counts, w, beta)))(wins)
    for r in range(6):
        single = fit_newton(jnp.asarray(diffs), counts, wins[r], beta)
        np.testing.assert_allclose(batched.theta[r], single.theta, rtol=1e-10)


def _shared_data(seed, e, d, c, r, scale=1.0, beta=1.0):
    rng = np.random.default_rng(seed)
    diffs = jnp.asarray(rng.normal(size=(e, d)))
    counts = rng.integers(1, c + 1, size=e).astype(float)
    ts = scale * rng.normal(size=d) / np.sqrt(d)
    keys = jax.random.split(jax.random.PRNGKey(seed), r)
    wins = jax.vmap(lambda k: simulate_wins(k, ts, diffs, counts, beta))(keys)
    return diffs, counts, wins, beta


@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_shared_count_fit_equals_per_replicate_newton(ridge):
    """The chord iteration lands on Newton's minimiser with Newton's flags (no fallback needed here)."""
    diffs, counts, wins, beta = _shared_data(3, e=400, d=12, c=4, r=64)
    ref = jax.jit(jax.vmap(lambda w: fit_newton(diffs, counts, w, beta, ridge=ridge)))(wins)
    got = fit_newton_shared(diffs, counts, wins, beta, ridge=ridge)
    assert bool(jnp.all(ref.mle_exists)) and bool(jnp.all(got.mle_exists)) and bool(jnp.all(got.converged))
    np.testing.assert_allclose(got.theta, ref.theta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got.loss, ref.loss, rtol=1e-12)
    assert float(jnp.max(got.grad_norm)) < 1e-8
    assert int(jnp.max(got.num_iter)) < 40  # accepted by the chord iteration itself, not refitted


@pytest.mark.parametrize("fallback_size, tol", [(None, None), (300, None), (300, 1e-2)])
def test_shared_count_fit_flags_separation_like_the_lp_oracle(fallback_size, tol):
    """Small counts separate often. Flagged replicates are refitted by Newton, either in the
    one batch (fallback_size = R) or in batches of R // 8: the existence flag
    must equal the LP oracle's on every replicate, and the estimates Newton's where it exists.
    With a loose tol, chord steps on separable labels shrink below it while the iterates run
    off; only the contraction test (step <= half the previous one) keeps them from being accepted."""
    diffs, counts, wins, beta = _shared_data(4, e=12, d=3, c=1, r=300)
    got = fit_newton_shared(diffs, counts, wins, beta, fallback_size=fallback_size, tol=tol)
    separable = np.array([_separable_lp(np.asarray(diffs), counts, np.asarray(w)) for w in wins])
    assert 0.05 < separable.mean() < 0.95
    np.testing.assert_array_equal(~np.asarray(got.mle_exists), separable)
    chord_only = np.asarray(got.num_iter) < 40  # accepted without a refit: about a third here
    assert 0.1 < chord_only.mean() < 0.9
    mle = np.asarray(jax.jit(jax.vmap(lambda w: fit_newton(diffs, counts, w, beta)))(wins).theta)[np.asarray(got.mle_exists)]
    err = np.linalg.norm(np.asarray(got.theta)[np.asarray(got.mle_exists)] - mle, axis=1)
    # the remaining error is about the accepted step (below tol (1 + ||theta||)) times the
    # observed contraction (at most 1/2); the contraction is an estimate, hence the factor 2
    assert np.all(err <= 2 * (1e-9 if tol is None else tol) * (1 + np.linalg.norm(mle, axis=1)))


def test_capped_refits_stop_on_separable_labels_and_never_claim_a_missing_mle():
    """fallback_iter caps the Newton refits: on samples that separate often, the refits of
    separable labels run far past 10 steps uncapped and stop at 10 capped; a capped refit may
    flag an existing MLE (too few steps) but never accepts a separable sample, and what it
    accepts is the uncapped answer. The refitted replicates are those a cap of 0 leaves flagged."""
    diffs, counts, wins, beta = _shared_data(4, e=12, d=3, c=1, r=300)
    full = fit_newton_shared(diffs, counts, wins, beta, fallback_size=300)
    capped = fit_newton_shared(diffs, counts, wins, beta, fallback_size=300, fallback_iter=10)
    refitted = ~np.asarray(fit_newton_shared(diffs, counts, wins, beta, fallback_size=300, fallback_iter=0).mle_exists)
    assert int(np.max(np.asarray(full.num_iter)[refitted])) > 40 + 10
    assert int(np.max(np.asarray(capped.num_iter))) <= 40 + 10
    separable = np.array([_separable_lp(np.asarray(diffs), counts, np.asarray(w)) for w in wins])
    exists = np.asarray(capped.mle_exists)
    assert not np.any(exists & separable) and np.any(exists & refitted)
    np.testing.assert_allclose(np.asarray(capped.theta)[exists], np.asarray(full.theta)[exists], rtol=1e-13, atol=0)


def test_shared_count_fit_curvature_flag_equals_newtons():
    """A curvature floor at the median of the replicates' lambda_min(H) / lambda_max(H(0)) makes
    half the MLEs "not existing" by Newton's rule; the certificate must never accept one of them."""
    from synthetic.estimators import _grad_hess

    diffs, counts, wins, beta = _shared_data(3, e=40, d=4, c=2, r=64)
    ref = jax.jit(jax.vmap(lambda w: fit_newton(diffs, counts, w, beta)))(wins)
    assert bool(jnp.all(ref.mle_exists))
    scale = jnp.max(jnp.linalg.eigvalsh(_grad_hess(jnp.zeros(4), diffs, counts, wins[0], beta, 0.0)[1]))
    lam = [float(jnp.min(jnp.linalg.eigvalsh(_grad_hess(t, diffs, counts, w, beta, 0.0)[1])) / scale)
           for t, w in zip(ref.theta, wins)]
    floor = float(np.median(lam))
    want = jax.jit(jax.vmap(lambda w: fit_newton(diffs, counts, w, beta, curvature_floor=floor)))(wins).mle_exists
    got = fit_newton_shared(diffs, counts, wins, beta, curvature_floor=floor).mle_exists
    assert 0 < int(jnp.sum(want)) < 64
    np.testing.assert_array_equal(got, want)


def test_shared_count_fit_with_fixed_anchor_does_not_depend_on_the_batch():
    diffs, counts, wins, beta = _shared_data(5, e=200, d=6, c=3, r=20)
    anchor = jnp.zeros(6)
    whole = fit_newton_shared(diffs, counts, wins, beta, anchor=anchor)
    part = fit_newton_shared(diffs, counts, wins[5:9], beta, anchor=anchor)
    np.testing.assert_allclose(part.theta, whole.theta[5:9], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match=r"wins must have shape \[R, 200\]"):
        fit_newton_shared(diffs, counts, wins[0], beta)


def test_shared_count_fit_float32():
    diffs, counts, wins, beta = _shared_data(6, e=300, d=8, c=3, r=16)
    f64 = jax.jit(jax.vmap(lambda w: fit_newton(diffs, counts, w, beta)))(wins)
    f32 = fit_newton_shared(diffs.astype(jnp.float32), counts, wins, beta)
    assert f32.theta.dtype == jnp.float32 and bool(jnp.all(f32.mle_exists))
    np.testing.assert_allclose(f32.theta, f64.theta, rtol=0, atol=2e-4)


def test_newton_float32_close_to_float64():
    diffs, counts, wins, beta = _data(7)
    f64 = fit_newton(jnp.asarray(diffs), counts, wins, beta)
    f32 = fit_newton(jnp.asarray(diffs, dtype=jnp.float32), counts, wins, beta)
    assert f32.theta.dtype == jnp.float32 and bool(f32.mle_exists)
    np.testing.assert_allclose(f32.theta, f64.theta, rtol=1e-4, atol=1e-5)


def test_optax_argument_errors():
    diffs, counts, wins, beta = _data(8, e=4)
    with pytest.raises(ValueError, match="optimizer"):
        fit_dpo_optax(jnp.asarray(diffs), counts, wins, beta, optimizer="lbfgs-magic")
    with pytest.raises(ValueError, match="label_smoothing"):
        fit_dpo_optax(jnp.asarray(diffs), counts, wins, beta, label_smoothing=0.7)


@pytest.mark.parametrize("prior_precision, separable", [(1.0, False), (0.5, True), (20.0, True)])
def test_map_is_the_posterior_mode_scipy(prior_precision, separable):
    """fit_map minimises n L_n(theta) + (Lambda / 2) ||theta||^2 (BFGS on the posterior
    objective written from the per-label log-likelihood), separable labels included."""
    from synthetic.estimators import fit_map

    if separable:
        diffs, counts, wins, beta = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]]), np.array([3.0, 2.0]), np.array([3.0, 0.0]), 0.7
    else:
        diffs, counts, wins, beta = _data(11, e=10, d=3, c=5)
    n = counts.sum()

    def neg_log_post(t):
        m = beta * diffs @ t
        return float(np.sum(wins * np.logaddexp(0, -m) + (counts - wins) * np.logaddexp(0, m)) + 0.5 * prior_precision * t @ t)

    def grad(t):
        m = beta * diffs @ t
        return beta * diffs.T @ (counts / (1 + np.exp(-m)) - wins) + prior_precision * t

    ref = scipy.optimize.minimize(neg_log_post, np.zeros(3), jac=grad, method="BFGS", options={"gtol": 1e-11})
    fit = fit_map(jnp.asarray(diffs), counts, wins, beta, prior_precision=prior_precision)
    assert bool(fit.converged) and bool(fit.mle_exists) and n > 0
    np.testing.assert_allclose(fit.theta, ref.x, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="prior_precision"):
        fit_map(jnp.asarray(diffs), counts, wins, beta, prior_precision=0.0)


@pytest.mark.parametrize("seed, e, d, max_count", [(0, 5, 2, 2), (2, 9, 4, 5)])
def test_mle_exists_exact_agrees_with_lp_oracle(seed, e, d, max_count):
    from synthetic.estimators import mle_exists_exact

    rng = np.random.default_rng(seed)
    got, want = [], []
    for i in range(60):
        diffs = rng.normal(size=(e, d))
        counts = rng.integers(1, max_count + 1, size=e).astype(float)
        wins = np.asarray(simulate_wins(jax.random.PRNGKey(100 * seed + i), rng.normal(size=d), diffs, counts, 1.5))
        got.append(mle_exists_exact(diffs, counts, wins))
        want.append(not _separable_lp(diffs, counts, wins))
    assert 0.05 < np.mean(want) < 0.95
    assert got == want


@pytest.mark.parametrize("beta, scale", [(1e-3, 1000.0), (20.0, 0.05)])
def test_optax_dpo_reaches_the_minimiser_at_any_beta(beta, scale):
    """The minimiser's theta grows like 1/beta while Adam's steps are about the learning rate, so
    with the sweep's defaults (lr 0.05, 2,000 steps) gradient DPO stopped at |theta| = 85 of the
    MLE's 744 at beta = 1e-3 (gap 0.16 against 4e-17), with a small gradient and no flag. It now
    optimises the margins' scale beta theta: at the defaults it reaches fit_newton's minimiser at
    beta = 1e-3 and 20 (margins of order one), and at beta = 1 it is the same run bit for bit."""
    from synthetic import gaussian_world
    from theory import enumerate_edges

    w = gaussian_world(jax.random.PRNGKey(0), num_prompts=10, num_completions=4, dim=4, beta=beta, theta_scale=scale)
    e = enumerate_edges(w.train.features, w.train.log_ref)
    counts = jnp.full(e.num_edges, 20.0)
    wins = jnp.round(counts * jax.nn.sigmoid(beta * e.diffs @ w.theta_star))  # overlapping labels: the MLE exists
    newton = fit_newton(e.diffs, counts, wins, beta)
    assert bool(newton.mle_exists) and bool(newton.converged)
    dpo = fit_dpo_optax(e.diffs, counts, wins, beta)
    np.testing.assert_allclose(beta * np.asarray(dpo.theta), beta * np.asarray(newton.theta), rtol=1e-6, atol=1e-8)
    assert float(dpo.loss) - float(newton.loss) < 1e-10


def test_sgd_steps_in_theta_as_before():
    """SGD's step scales with the gradient, so it stays in theta: at beta = 10 and 300 steps it
    reaches fit_newton's minimum (in u = beta theta its step shrank like 1/beta^2 and it stopped at
    a loss 8e-4 above it, gradient 0.15)."""
    diffs, counts, wins, _ = _data(3)
    newton = fit_newton(jnp.asarray(diffs), counts, wins, 10.0)
    sgd = fit_dpo_optax(jnp.asarray(diffs), counts, wins, 10.0, optimizer="sgd", num_steps=300)
    assert abs(float(sgd.loss) - float(newton.loss)) < 1e-12 and float(sgd.grad_norm) < 1e-10


def _scipy_margins(z, counts, wins):
    """The MLE's margins ``z_e . theta`` (beta = 1) by BFGS in coordinates of the rows' span with
    unit-scaled columns: scipy, independent of the Newton code."""
    import scipy.optimize

    u, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > 1e-12 * s[0]
    x = u[:, keep]  # z = x diag(s) vt: margins are x @ y for y = diag(s) vt theta

    def f(y):
        m = x @ y
        return float(np.sum(counts * np.logaddexp(0.0, m) - wins * m)), x.T @ (counts / (1 + np.exp(-m)) - wins)

    res = scipy.optimize.minimize(f, np.zeros(x.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-12})
    return x @ res.x


def test_newton_sees_a_direction_only_short_edges_see_in_float32():
    """Edges (1, 0), (0, 1e-3), (1, 1e-3) in float32, each labelled both ways: the MLE exists and
    is (0.9929, -709.7). The null projector came from the Gram matrix of the rows (scales squared:
    1e-6 < float32's threshold 2.4e-6 of the top), called the second direction unlabelled and
    left theta_2 at 6e-5 with converged = True, mle_exists = True."""
    z = np.array([[1.0, 0.0], [0.0, 1e-3], [1.0, 1e-3]])
    counts, wins = np.array([10.0, 10.0, 10.0]), np.array([7.0, 3.0, 6.0])
    fit = fit_newton(jnp.asarray(z, jnp.float32), counts, wins, 1.0)
    want = _scipy_margins(z, counts, wins)
    assert bool(fit.converged)
    np.testing.assert_allclose(z @ np.asarray(fit.theta, np.float64), want, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, beta", [(jnp.float32, 1e3), (jnp.float64, 1e8)])
def test_newton_steps_stay_in_the_labelled_span_at_large_beta(dtype, beta):
    """Three labelled edges in R^10: the minimiser is the minimum-norm one (no component outside
    the rows' span). At beta |z| ~ 1e3 (float32) or 1e8 (float64) the solve of ``H + P_null``
    (condition ``(beta |z|)^2``) leaked 4% and 56% of theta outside the span; now under 1e-5
    (float32: its own rounding) and 1e-12. The margins match the scipy oracle (they are
    ``log(w / (c - w))`` here): the stopping rule measured steps in theta, an absolute test when
    ``|theta| ~ 1 / beta``, and left them off by 0.2% (float32) and 1e-6 (float64)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 10))
    counts, wins = np.array([5.0, 4.0, 6.0]), np.array([2.0, 1.0, 4.0])
    fit = fit_newton(jnp.asarray(z, dtype), counts, wins, beta)
    theta = np.asarray(fit.theta, np.float64)
    null = np.linalg.svd(z)[2][3:]
    assert np.linalg.norm(null @ theta) <= (1e-5 if dtype == jnp.float32 else 1e-12) * np.linalg.norm(theta)
    np.testing.assert_allclose(beta * (z @ theta), _scipy_margins(z, counts, wins), rtol=1e-3 if dtype == jnp.float32 else 1e-6)


def test_newton_in_float32_sees_rows_close_in_angle():
    """Rows (1, 0) and (1, 3e-3) in float32: their unit rows' Gram matrix has its second eigenvalue
    at 4.5e-6 of the first, under float32's threshold, so the null projector called the second
    direction unlabelled. Separable labels along it (the second edge always won) were then fitted
    as converged with mle_exists True (the LP and float64 say it does not exist), and with a
    third edge the MLE's margins came out near 0 (against 0.87, -0.80, -0.12: scipy)."""
    from synthetic.estimators import mle_exists_exact

    z = np.array([[1.0, 0.0], [1.0, 3e-3]])
    sep = fit_newton(jnp.asarray(z, jnp.float32), np.array([10.0, 10.0]), np.array([5.0, 10.0]), 1.0)
    assert not mle_exists_exact(z, np.array([10.0, 10.0]), np.array([5.0, 10.0])) and not bool(sep.mle_exists)
    z3 = np.array([[1.0, 0.0], [1.0, 3e-3], [0.5, 1e-3]])
    counts, wins = np.full(3, 10.0), np.array([7.0, 3.0, 5.0])
    fit = fit_newton(jnp.asarray(z3, jnp.float32), counts, wins, 1.0)
    np.testing.assert_allclose(z3 @ np.asarray(fit.theta, np.float64), _scipy_margins(z3, counts, wins), rtol=1e-3, atol=1e-4)


def test_every_estimator_parameter_has_a_value_check_and_bad_values_are_refused():
    """A negative ridge had fitted a non-minimiser reported as converged with mle_exists, a negative
    final_lr_fraction ended Adam's schedule in gradient ascent: both silently. The specs cover each
    estimator's signature exactly, and each fit refuses a bad value naming it."""
    import inspect

    from synthetic.estimators import ESTIMATOR_PARAMS
    from synthetic.monte_carlo import ESTIMATORS, check_estimator_params

    for name, fn in ESTIMATORS.items():
        assert set(ESTIMATOR_PARAMS[name]) == set(inspect.signature(fn).parameters) - {"diffs", "counts", "wins", "beta"}
    z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c, w = jnp.array([4.0, 4.0, 4.0]), jnp.array([1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0, got -0.05"):
        fit_newton(z, c, w, 1.0, ridge=-0.05)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        _fit_newton_shared(z, c, jnp.stack([w, w]), 1.0, ridge=-0.05)
    with pytest.raises(ValueError, match=r"final_lr_fraction must be in \[0, 1\], got -1"):
        fit_dpo_optax(z, c, w, 1.0, final_lr_fraction=-1.0)
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        fit_dpo_optax(z, c, w, 1.0, ridge=-1.0)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 0"):
        fit_newton(z, c, w, 1.0, max_iter=-1)
    with pytest.raises(ValueError, match="estimator.params.ridge must be a finite number >= 0"):
        check_estimator_params("newton", {"ridge": -1.0})
    with pytest.raises(ValueError, match=r"estimator.params.foo is not a parameter of map; allowed: \['max_iter'"):
        check_estimator_params("map", {"foo": 1})
    # a ridge given as a concrete array is checked too, a traced one (the Monte Carlo's MAP ridge) is not
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        fit_newton(z, c, w, 1.0, ridge=jnp.asarray(-0.1))
    from synthetic.estimators import _check_fit_args

    assert float(jax.jit(lambda r: (_check_fit_args("newton", ridge=r), r)[1])(-0.1)) == -0.1
    fit_newton(z, c, w, 1.0, max_iter=0)  # no step: the start (the Monte Carlo's capped refits use such caps)
