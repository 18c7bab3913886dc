"""The optimal-design solver against independent oracles.

* cvxpy (Clarabel, an interior-point method) solves the same convex programs;
* the equivalence theorems are checked with a dense numpy pseudo-inverse, not with
  the solver's own rank-two bookkeeping;
* classical logistic designs (Kiefer-Wolfowitz / Abdelbasit-Plackett values) posed as
  edge differences.
"""

import dataclasses

import cvxpy as cp
import jax.numpy as jnp
import sys

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from conftest import random_pool
from theory import design_criterion, enumerate_edges, policy_curvature
from theory.design import SolverHistory, _line_search, optimal_design

TIGHT = 1e-8


def _sigmoid_prime(u):
    return np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u))


def _instance(rng, m=3, k=4, d=3, theta_scale=0.7):
    feats, log_ref, rho = random_pool(rng, m=m, k=k, d=d, pad=False)
    edges = enumerate_edges(feats, log_ref)
    theta = theta_scale * rng.normal(size=d)
    curv = np.asarray(policy_curvature(jnp.asarray(theta), feats, log_ref, rho))
    return np.asarray(edges.diffs), theta, curv, edges


def _scaled(diffs, theta, beta):
    c = beta**2 * _sigmoid_prime(beta * diffs @ theta)
    return diffs * np.sqrt(c)[:, None]


def _span_basis(v):
    u, s, _ = np.linalg.svd(v.T, full_matrices=False)
    return u[:, s > 1e-10 * s.max()]


def _cvxpy_optimum(diffs, theta, curv, beta, criterion, ridge=0.0, groups=None, masses=None, caps=None):
    """Optimal value by cvxpy, in reduced span coordinates (ridge = 0) or full space;
    ``caps`` adds the box constraints ``w <= caps``."""
    v = _scaled(diffs, theta, beta)
    d = v.shape[1]
    if ridge > 0:
        basis, offset = np.eye(d), ridge * np.eye(d)
    else:
        basis = _span_basis(v)
        offset = np.zeros((basis.shape[1],) * 2)
    vr = v @ basis
    w = cp.Variable(v.shape[0], nonneg=True)
    sigma = offset + vr.T @ cp.diag(w) @ vr
    sigma = 0.5 * (sigma + sigma.T)
    if groups is None:
        cons = [cp.sum(w) == 1]
    else:
        cons = [cp.sum(w[np.flatnonzero(groups == g)]) == masses[g] for g in range(len(masses))]
    if caps is not None:
        cons.append(w <= caps)
    if criterion == "D":
        obj = -cp.log_det(sigma)
    else:
        mat = curv if criterion == "L" else np.eye(d)
        mat_r = basis.T @ mat @ basis
        lam, vec = np.linalg.eigh(0.5 * (mat_r + mat_r.T))
        bmat = vec * np.sqrt(np.clip(lam, 0, None))[None, :]
        obj = cp.matrix_frac(bmat, sigma)
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert prob.status == cp.OPTIMAL, prob.status
    return float(prob.value), np.asarray(w.value)


def _dense_scores(w, diffs, theta, curv, beta, criterion, ridge=0.0):
    """-dPhi/dw_e from a dense numpy (pseudo-)inverse: independent of the solver."""
    v = _scaled(diffs, theta, beta)
    sigma = v.T @ (w[:, None] * v)
    d = v.shape[1]
    if ridge > 0:
        tinv = np.linalg.inv(ridge * np.eye(d) + sigma)
    else:
        tinv = np.linalg.pinv(sigma, rcond=1e-10, hermitian=True)
    if criterion == "D":
        return np.einsum("ei,ij,ej->e", v, tinv, v)
    mat = curv if criterion == "L" else np.eye(d)
    mv = v @ tinv
    return np.einsum("ei,ij,ej->e", mv, mat, mv)


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_cvxpy(criterion, seed):
    rng = np.random.default_rng(seed)
    diffs, theta, curv, _ = _instance(rng)
    beta = 1.3
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta, criterion=criterion, tol=TIGHT)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, beta, criterion)
    assert sol.converged
    assert abs(sol.value - ref) <= 1e-4 * abs(ref)
    # The certificate bounds the suboptimality of the returned design.
    assert sol.value - ref <= sol.certificate + 1e-7 * abs(ref)


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
def test_matches_cvxpy_with_ridge(criterion):
    rng = np.random.default_rng(7)
    diffs, theta, curv, _ = _instance(rng, d=4)
    beta, ridge = 0.8, 0.05
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta, criterion=criterion, ridge=ridge, tol=TIGHT)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, beta, criterion, ridge=ridge)
    assert abs(sol.value - ref) <= 1e-4 * abs(ref)


def test_ridge_constant_outside_span_matches_design_criterion():
    # A tabular-like instance: the all-ones direction is invisible to every edge.
    rng = np.random.default_rng(3)
    k = 5
    feats = np.eye(k)[None]
    log_ref = np.log(rng.dirichlet(np.ones(k)))[None]
    edges = enumerate_edges(feats, log_ref)
    theta = 0.3 * rng.normal(size=k)
    curv = policy_curvature(jnp.asarray(theta), feats, log_ref)
    for ridge in [0.0, 0.1]:
        sol = optimal_design(edges.diffs, jnp.asarray(theta), curv, 1.0, ridge=ridge, tol=1e-9)
        assert sol.rank == k - 1
        ref = design_criterion(sol.weights, jnp.asarray(theta), edges.diffs, curv, 1.0, ridge=ridge)
        np.testing.assert_allclose(sol.value, float(ref), rtol=1e-10)


def test_groups_match_cvxpy_and_keep_group_mass():
    rng = np.random.default_rng(11)
    diffs, theta, curv, edges = _instance(rng, m=4, k=4, d=3)
    groups = np.asarray(edges.prompt)
    masses = np.array([0.1, 0.2, 0.3, 0.4])
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, groups=groups, group_weights=masses, tol=TIGHT)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L", groups=groups, masses=masses)
    assert abs(sol.value - ref) <= 1e-4 * abs(ref)
    np.testing.assert_allclose(np.bincount(groups, weights=np.asarray(sol.weights)), masses, atol=1e-12)
    # Grouped equivalence theorem: inside each group, every weighted edge attains the group's max.
    dd = _dense_scores(np.asarray(sol.weights), diffs, theta, curv, 1.0, "L")
    for g in range(4):
        members = groups == g
        top = dd[members].max()
        active = members & (np.asarray(sol.weights) > 1e-6)
        np.testing.assert_allclose(dd[active], top, rtol=1e-4)


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
def test_equivalence_theorem_at_optimum(criterion):
    rng = np.random.default_rng(5)
    diffs, theta, curv, _ = _instance(rng, m=4, k=5, d=4)
    beta = 1.0
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta, criterion=criterion, tol=1e-10)
    w = np.asarray(sol.weights)
    dd = _dense_scores(w, diffs, theta, curv, beta, criterion)
    if criterion == "D":
        # Kiefer-Wolfowitz: the largest weighted leverage equals the dimension.
        target = sol.rank
    else:
        # L and A: the largest directional derivative equals the criterion itself.
        target = sol.value
    np.testing.assert_allclose(dd.max(), target, rtol=1e-8)
    np.testing.assert_allclose(dd[w > 1e-8], target, rtol=1e-6)
    np.testing.assert_allclose(np.sum(w * dd), target, rtol=1e-8)


def test_certificate_shrinks_to_requested_tolerance_and_bounds_every_iterate():
    rng = np.random.default_rng(9)
    diffs, theta, curv, _ = _instance(rng, m=6, k=5, d=4)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L")
    for tol in [1e-1, 1e-2, 1e-3, 1e-5]:
        sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=tol)
        assert sol.converged and sol.relative_certificate <= tol
        # No order between the runs' final certificates: a looser run may stop at a better
        # point (its Newton polish, tried only while the certificate exceeds tol, can land on
        # the optimum: with LLVM -O0 the 1e-2 run ended at 9e-15, the 1e-3 run at 4e-5).
        # What each run promises is its own: the certificate within tol, and below it the
        # true suboptimality against cvxpy's optimum, both recomputed here from the weights by a
        # dense pseudo-inverse (the L criterion's gap: the largest score less the weighted mean).
        w = np.asarray(sol.weights)
        dd = _dense_scores(w, diffs, theta, curv, 1.0, "L")
        value, cert = w @ dd, dd.max() - w @ dd
        np.testing.assert_allclose([value, cert], [sol.value, sol.certificate], rtol=1e-6, atol=1e-9 * ref)
        assert value - ref <= cert + 1e-9 * ref
        hist = sol.history
        # Valid at every iterate: Phi(w_t) - Phi* <= cert(w_t).
        assert np.all(hist.value - ref <= hist.certificate + 1e-9 * ref)
        # Exact line search: the criterion never increases.
        assert np.all(np.diff(hist.value) <= 1e-9 * ref)


def test_working_set_path_reaches_the_full_solution():
    rng = np.random.default_rng(13)
    diffs, theta, curv, _ = _instance(rng, m=20, k=6, d=4)
    full = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-9)
    small = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-9, working_set=8)
    assert len(small.history.pricing) > 1  # several pricing rounds happened
    assert small.converged
    np.testing.assert_allclose(small.value, full.value, rtol=1e-8)


def test_float32_input_reaches_tolerance():
    rng = np.random.default_rng(2)
    diffs, theta, curv, _ = _instance(rng, m=5, k=5, d=3)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L")
    sol = optimal_design(
        jnp.asarray(diffs, jnp.float32), jnp.asarray(theta, jnp.float32), jnp.asarray(curv, jnp.float32), 1.0, tol=1e-3
    )
    assert sol.weights.dtype == jnp.float32
    assert sol.converged
    assert abs(sol.value - ref) <= 2e-3 * ref


@pytest.mark.parametrize("kind", ["L", "D"])
def test_line_search_is_exact(kind):
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2, 2))
    gm = a @ a.T + 0.1 * np.eye(2)
    h = rng.normal(size=(2, 2))
    hm = h @ h.T
    # Make the exchange improving: Phi'(0) = -(H11 - H22) (L) or -(G11 - G22) (D) < 0.
    if kind == "L":
        hm[0, 0] += 1.0
    else:
        gm[0, 0] += 1.0
    dmat = np.diag([1.0, -1.0])

    def phi(alpha):
        if kind == "D":
            return -np.log(np.linalg.det(np.eye(2) + alpha * dmat @ gm))
        return -np.trace(alpha * np.linalg.inv(dmat + alpha * gm) @ hm)

    alpha_max = 0.2
    alpha, _, dphi = _line_search(kind, jnp.asarray(gm), jnp.asarray(hm), jnp.asarray(alpha_max))
    ref = minimize_scalar(phi, bounds=(0, alpha_max), method="bounded", options={"xatol": 1e-12})
    np.testing.assert_allclose(float(dphi), phi(float(alpha)), rtol=1e-10, atol=1e-14)
    assert float(dphi) <= ref.fun + 1e-12


def test_two_parameter_logistic_d_optimal_design():
    # logit P = theta . (1, t) with theta = (0, 1): the D-optimal design puts weight 1/2
    # at linear predictors +-1.5434 (response probabilities 0.176 and 0.824). On a grid
    # of step 0.02 that also holds +-1.5434, the solver must put (almost) all mass there
    # and nowhere else: the grid neighbours at +-0.0034 or more are strictly worse.
    t = np.union1d(np.linspace(-4, 4, 401), [-1.5434, 1.5434])
    diffs = np.stack([np.ones_like(t), t], axis=1)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray([0.0, 1.0]), None, 1.0, criterion="D", tol=1e-8)
    assert sol.converged
    w = np.asarray(sol.weights)
    at = np.isin(t, [-1.5434, 1.5434])
    np.testing.assert_allclose(w[at], [0.5, 0.5], atol=2e-3)
    # Kiefer-Wolfowitz on the whole grid: max leverage is the dimension, 2, attained there.
    assert set(t[np.argsort(-w)[:2]]) == {-1.5434, 1.5434}
    p = 1 / (1 + np.exp(-1.5434))
    np.testing.assert_allclose([1 - p, p], [0.176, 0.824], atol=5e-4)
    # Without the inserted points the mass on each side is centred within one grid
    # step of +-1.5434 (a certified design need not put all of it on the neighbours).
    t2 = np.linspace(-4, 4, 401)
    sol2 = optimal_design(jnp.asarray(np.stack([np.ones_like(t2), t2], 1)), jnp.asarray([0.0, 1.0]), None, 1.0, criterion="D", tol=1e-6)
    w2 = np.asarray(sol2.weights)
    for side in (t2 > 0, t2 < 0):
        centre = np.sum(w2[side] * np.abs(t2[side])) / w2[side].sum()
        assert abs(centre - 1.5434) < 0.02
    assert sol2.value >= sol.value - 1e-12  # the grid without the points cannot do better


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
def test_one_parameter_logistic_design(criterion):
    # One parameter: every criterion maximises sigmoid'(t) t^2, at |t| = 2.3994.
    scipy_opt = minimize_scalar(lambda s: -_sigmoid_prime(s) * s**2, bounds=(0.5, 5), method="bounded", options={"xatol": 1e-10})
    np.testing.assert_allclose(scipy_opt.x, 2.3994, atol=1e-4)
    t = np.union1d(np.linspace(-5, 5, 501), [-2.3994, 2.3994])
    sol = optimal_design(jnp.asarray(t[:, None]), jnp.asarray([1.0]), jnp.eye(1), 1.0, criterion=criterion, tol=1e-10)
    w = np.asarray(sol.weights)
    np.testing.assert_allclose(w[np.abs(np.abs(t) - 2.3994) < 1e-12].sum(), 1.0, atol=1e-12)


def test_value_is_the_design_criterion():
    rng = np.random.default_rng(21)
    diffs, theta, curv, _ = _instance(rng, m=5, k=6, d=3)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 0.5, tol=1e-6)
    ref = design_criterion(sol.weights, jnp.asarray(theta), jnp.asarray(diffs), jnp.asarray(curv), 0.5)
    np.testing.assert_allclose(sol.value, float(ref), rtol=1e-10)
    w = np.asarray(sol.weights)
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12


def test_contextual_x_block_is_not_identifiable_and_handled():
    # phi = [x; a; x (x) a]: edge differences never see the x block, nor does I.
    from synthetic import contextual_world, world_curvature
    import jax

    world = contextual_world(jax.random.PRNGKey(0), num_train_prompts=10, num_eval_prompts=20, num_completions=4)
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    curv = world_curvature(world, world.theta_star)
    sol = optimal_design(edges.diffs, world.theta_star, curv, world.beta, tol=1e-6)
    assert sol.rank == world.dim - 3
    ref = design_criterion(sol.weights, world.theta_star, edges.diffs, curv, world.beta)
    np.testing.assert_allclose(sol.value, float(ref), rtol=1e-9)


def test_errors_name_the_field():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)))
    th = jnp.zeros(2)
    with pytest.raises(ValueError, match=r"criterion must be one of \['L', 'A', 'D'\]"):
        optimal_design(z, th, jnp.eye(2), 1.0, criterion="E")
    with pytest.raises(ValueError, match="curvature is required"):
        optimal_design(z, th, None, 1.0)
    with pytest.raises(ValueError, match="no edges"):
        optimal_design(jnp.zeros((0, 2)), th, jnp.eye(2), 1.0)
    with pytest.raises(ValueError, match="tol must be"):
        optimal_design(z, th, jnp.eye(2), 1.0, tol=0)
    with pytest.raises(ValueError, match="groups must be an integer array"):
        optimal_design(z, th, jnp.eye(2), 1.0, groups=np.zeros(3, int))
    # Curvature in a direction that no edge sees: every design is +inf.
    z1 = jnp.asarray([[1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="not spanned by any candidate edge"):
        optimal_design(z1, th, jnp.eye(2), 1.0)
    # With a ridge the same instance is well posed.
    sol = optimal_design(z1, th, jnp.eye(2), 1.0, ridge=0.1, tol=1e-8)
    assert np.isfinite(sol.value)


@pytest.mark.parametrize("kind", ["A", "L", "D"])
def test_support_hessian_matches_autodiff(kind):
    """The dense support Hessian, and the matrix-free O(E r k) Hessian-vector product of
    the Newton-CG polish, against jax.hessian."""
    import jax

    from theory.design import _hessian_vector, _reduced_value, _support_hessian

    rng = np.random.default_rng(17)
    s, r = 7, 3
    xs = jnp.asarray(rng.normal(size=(s, r)))
    w = jnp.asarray(rng.dirichlet(np.ones(s)))
    offset = 0.01 * jnp.eye(r)
    b = jnp.asarray(rng.normal(size=(r, 2)))

    def f(w):
        return _reduced_value(w, xs, offset, b, kind)

    t = offset + (xs.T * w) @ xs
    g, h = _support_hessian(xs, jnp.linalg.inv(t), b, kind)
    np.testing.assert_allclose(g, jax.grad(f)(w), rtol=1e-10)
    hess = jax.hessian(f)(w)
    np.testing.assert_allclose(h, hess, rtol=1e-9, atol=1e-12)
    u = jnp.asarray(rng.normal(size=s))
    tinv = jnp.linalg.inv(t)
    np.testing.assert_allclose(_hessian_vector(u, xs, xs @ tinv, xs @ tinv @ b, kind), hess @ u, rtol=1e-9, atol=1e-12)


def test_float32_solve_keeps_the_weights_a_probability_vector_and_its_certificate_honest():
    """Regression: the support Newton polish once let float32 weights drift to sum 3.4
    (the KKT constraint rows hold only to the solve's conditioning), which lowered the
    unnormalised criterion and reported a negative certificate."""
    rng = np.random.default_rng(0)
    e, d = 3000, 32
    z = rng.normal(size=(e, d))
    theta = rng.normal(size=d) / np.sqrt(d)
    a = rng.normal(size=(d, 2 * d))
    curv = a @ a.T / (2 * d)
    sol = optimal_design(jnp.asarray(z, jnp.float32), jnp.asarray(theta, jnp.float32), jnp.asarray(curv, jnp.float32), 1.0, tol=1e-3)
    w = np.asarray(sol.weights, np.float64)
    assert abs(w.sum() - 1.0) < 1e-5 and w.min() >= 0
    # the certificate recomputed in float64 from scratch (dense inverse) agrees and is below tol
    s = 0.25 / np.cosh(z @ theta / 2) ** 2
    sinv = np.linalg.inv((z * (w / w.sum() * s)[:, None]).T @ z)
    phi = np.trace(curv @ sinv)
    de = s * ((z @ (sinv @ curv @ sinv)) * z).sum(axis=1)
    rel = (de.max() - phi) / phi
    assert 0 <= rel <= 1.01e-3 and abs(rel - sol.relative_certificate) < 1e-5


@pytest.mark.parametrize("criterion", ["L", "D"])
def test_float32_tabular_solve_finds_the_rank_and_the_optimum_of_float64(criterion):
    """A tabular world's edges span K - 1 of K directions; in float32 the Gram matrix's rounding in
    the null direction (1e-8 of its top) was above float64's rank threshold, so the solver worked on
    K directions and certified a design 690x worse than optimal (L: Phi 17,767 against 25.85, converged).
    The rank is now taken at the Gram matrix's own precision: K - 1, and the float32 design's criterion,
    recomputed in float64, is within the tolerance of the float64 optimum."""
    import jax

    from synthetic import tabular_world

    w = tabular_world(jax.random.PRNGKey(0), num_completions=30)
    e = enumerate_edges(w.train.features, w.train.log_ref)
    curv = policy_curvature(w.theta_star, w.train.features, w.train.log_ref)
    sol = optimal_design(*(jnp.asarray(a, jnp.float32) for a in (e.diffs, w.theta_star, curv)), w.beta, criterion=criterion)
    ref = optimal_design(e.diffs, w.theta_star, curv, w.beta, criterion=criterion)
    assert sol.rank == ref.rank == 29 and sol.converged
    z, c = np.asarray(e.diffs, np.float64), 0.25 / np.cosh(np.asarray(e.diffs) @ np.asarray(w.theta_star) * w.beta / 2) ** 2 * w.beta**2

    def value(weights):  # in float64 from scratch: L = tr(I S^+), D = -log pdet(S) on the 29-dimensional span
        wt = np.asarray(weights, np.float64) / np.sum(np.asarray(weights, np.float64))
        sig = (z * (wt * c)[:, None]).T @ z
        if criterion == "L":
            return float(np.trace(np.asarray(curv) @ np.linalg.pinv(sig, rcond=1e-10, hermitian=True)))
        return -float(np.sum(np.log(np.linalg.eigvalsh(sig)[1:])))  # the one null eigenvalue dropped

    got, want = value(sol.weights), value(ref.weights)
    # each solve's certificate bounds its gap to the optimum: L by tol * Phi, D by tol * rank
    slack = 1e-3 * (abs(want) if criterion == "L" else 29)
    assert abs(got - want) <= 2 * slack, (got, want)


def test_group_projection_is_the_orthogonal_projection_on_the_constraints():
    """``_project_groups`` equals the dense projector onto {delta: delta_F^c = 0, sum per group 0}."""
    from theory.design import _project_groups

    rng = np.random.default_rng(5)
    e, g = 12, 3
    groups = rng.integers(0, g, size=e)
    free = rng.random(e) < 0.7
    v = rng.normal(size=e)
    got = np.asarray(_project_groups(jnp.asarray(v), jnp.asarray(free), jnp.asarray(groups), g))
    idx = np.flatnonzero(free)
    a = (groups[idx][None, :] == np.arange(g)[:, None]).astype(float)
    a = a[a.sum(axis=1) > 0]
    proj = np.eye(idx.size) - a.T @ np.linalg.solve(a @ a.T, a)
    want = np.zeros(e)
    want[idx] = proj @ v[idx]
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
@pytest.mark.parametrize("prompts", [1, 3])
def test_newton_cg_polish_matches_cvxpy_on_interior_optima(criterion, prompts):
    """Tabular worlds have interior optima (every edge, or nearly, weighted). polish_max=16
    forces the matrix-free projected Newton path; the answer must match cvxpy, keep the
    group masses, and need at least 1.5x fewer pairwise steps than pairwise steps alone
    (1.7x to 5x on these instances)."""
    import jax

    from synthetic import design_problem, tabular_world

    world = tabular_world(jax.random.key(0), num_prompts=prompts, num_completions=24 if prompts == 1 else 10, theta_scale=0.2)
    p = design_problem(world)
    diffs, theta = np.asarray(p.edges.diffs), np.asarray(world.theta_star)
    curv = np.asarray(p.curvature(world.theta_star))
    groups = np.asarray(p.edges.prompt) if prompts > 1 else None
    masses = None if groups is None else np.array([0.5, 0.3, 0.2])
    kw = dict(criterion=criterion, tol=1e-7, polish_max=16, groups=groups, group_weights=masses)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, newton_cg=True, **kw)
    plain = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, newton_cg=False, **kw)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, criterion, groups=groups, masses=masses)
    np.testing.assert_allclose(sol.value, ref, rtol=1e-6)
    assert sol.value - ref <= sol.certificate + 1e-9 * abs(ref)  # the certificate is honest
    assert sol.converged and (np.asarray(sol.weights) > 0).sum() > 16  # the large-support path ran
    w = np.asarray(sol.weights)
    if groups is None:
        assert abs(w.sum() - 1) < 1e-12
    else:
        np.testing.assert_allclose(np.bincount(groups, weights=w), masses, atol=1e-12)
    # Without a useful Newton step the iterates would be the plain ones, step for step.
    assert sol.num_iter * 3 <= plain.num_iter * 2, (sol.num_iter, plain.num_iter)


def test_projected_newton_keeps_a_sparse_optimum_sparse():
    """Regression: held edges (tiny weight, d_e below the mean) once kept their weight, so a
    1e-3 solve of a sparse D-optimum (27 edges of 1,400) ended with 590 weighted edges,
    and the rounded allocations of the design changed. Held edges now step to zero."""
    import jax

    from synthetic import contextual_world, design_problem

    world = contextual_world(jax.random.key(0))
    p = design_problem(world)
    zero = jnp.zeros(p.dim)
    loose = optimal_design(p.edges.diffs, zero, None, p.beta, criterion="D", tol=1e-3)
    tight = optimal_design(p.edges.diffs, zero, None, p.beta, criterion="D", tol=1e-9)
    n_loose, n_tight = int((np.asarray(loose.weights) > 0).sum()), int((np.asarray(tight.weights) > 0).sum())
    assert n_tight < 100 < p.num_edges  # a sparse optimum, larger than polish_max before it is found
    assert n_loose <= 2 * n_tight, (n_loose, n_tight)
    assert loose.value - tight.value <= loose.certificate


# ----------------------------------------------------------------------------------
# Designs with caps (finite budgets: 0 <= w_e <= caps_e = c_e / n)


def _capped_case(grouped):
    """An instance whose caps bind: the uncapped optimum puts more than the cap on some edges."""
    rng = np.random.default_rng(5)
    diffs, theta, curv, edges = _instance(rng, m=4, k=5, d=4)
    e = diffs.shape[0]
    if grouped:
        groups, masses = np.asarray(edges.prompt), np.array([0.1, 0.2, 0.3, 0.4])
        # per-edge caps, each group's summing to at least 1.5x its mass
        caps = masses[groups] / np.bincount(groups)[groups] * rng.uniform(1.2, 2.2, size=e)
    else:
        groups, masses, caps = None, None, 1.5 / e
    return diffs, theta, curv, groups, masses, caps


def _greedy_capped_gap(dd, w, caps, groups, masses):
    """The capped duality gap <d, s - w> with s filled edge by edge (a plain loop)."""
    groups = np.zeros(dd.size, int) if groups is None else groups
    masses = np.ones(1) if masses is None else masses
    caps = np.broadcast_to(caps, dd.shape)
    s = np.zeros_like(dd)
    for g, mass in enumerate(masses):
        left = mass
        for e in sorted(np.flatnonzero(groups == g), key=lambda i: -dd[i]):
            s[e] = min(caps[e], left)
            left -= s[e]
    return float(dd @ (s - w))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("criterion", ["L", "A", "D"])
def test_capped_design_matches_cvxpy_with_box_constraints(criterion, grouped):
    diffs, theta, curv, groups, masses, caps = _capped_case(grouped)
    kw = dict(criterion=criterion, groups=groups, group_weights=masses)
    free = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-9, **kw)
    assert np.any(np.asarray(free.weights) > caps * (1 + 1e-6))  # the caps bind
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=TIGHT, caps=caps, **kw)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, criterion, groups=groups, masses=masses, caps=caps)
    assert sol.converged
    assert abs(sol.value - ref) <= 1e-4 * abs(ref)
    assert sol.value > free.value + 1e-6 * abs(free.value)  # capping costs something here
    w = np.asarray(sol.weights)
    assert np.all(w >= 0) and np.all(w <= caps)  # exactly, not to a tolerance
    if grouped:
        np.testing.assert_allclose(np.bincount(groups, weights=w), masses, atol=1e-12)
    else:
        assert abs(w.sum() - 1) < 1e-12
    # The certificate is the capped duality gap at the returned weights (recomputed here
    # with a dense pseudo-inverse and a plain greedy fill) and bounds the suboptimality,
    # at the end and at every iterate.
    dd = _dense_scores(w, diffs, theta, curv, 1.0, criterion)
    np.testing.assert_allclose(sol.certificate, _greedy_capped_gap(dd, w, caps, groups, masses), rtol=1e-4, atol=1e-9 * abs(ref))
    assert sol.value - ref <= sol.certificate + 1e-9 * abs(ref)
    hist = sol.history
    assert np.all(hist.value - ref <= hist.certificate + 1e-9 * abs(ref))


@pytest.mark.parametrize("criterion", ["L", "A", "D"])
def test_capped_equivalence_theorem(criterion):
    """Wynn (1982), Sahm and Schwabe (2001): at the capped optimum some threshold t has
    d_e >= t on edges at their cap, d_e = t on free support edges, d_e <= t off the
    support; d_e recomputed with a dense numpy pseudo-inverse."""
    diffs, theta, curv, _, _, caps = _capped_case(False)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, criterion=criterion, tol=1e-11, caps=caps)
    w = np.asarray(sol.weights)
    dd = _dense_scores(w, diffs, theta, curv, 1.0, criterion)
    at_cap = w >= caps * (1 - 1e-9)
    off = w <= 1e-9 * caps
    free = ~at_cap & ~off
    assert at_cap.any() and off.any() and free.any(), (at_cap.sum(), free.sum(), off.sum())
    t = dd[free].mean()
    np.testing.assert_allclose(dd[free], t, rtol=1e-6)
    assert dd[at_cap].min() >= t * (1 - 1e-6)
    assert dd[off].max() <= t * (1 + 1e-6)
    # the threshold separates strictly here: a wrong design (the uncapped optimum clipped
    # and refilled) breaks it
    assert dd[at_cap].min() > dd[off].max()


def test_capped_design_with_inactive_caps_is_the_uncapped_optimum():
    rng = np.random.default_rng(5)
    diffs, theta, curv, _ = _instance(rng, m=4, k=5, d=4)
    free = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-10)
    for caps in (np.inf, 1.0, 1.01 * float(np.max(free.weights))):
        sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-10, caps=caps)
        np.testing.assert_allclose(sol.value, free.value, rtol=1e-9)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("polish_max", [512, 4])
def test_capped_design_on_working_sets_and_matrix_free_newton(polish_max, grouped):
    """Column generation (working_set=16 on 120 or 300 edges) prices against the capped problem's
    threshold; polish_max=4 sends large supports to the matrix-free projected Newton with
    bounds. Both reach the optimum of the full capped problem (cvxpy), with and without
    groups (20 prompts of equal mass)."""
    rng = np.random.default_rng(13)
    diffs, theta, curv, edges = _instance(rng, m=20, k=6 if grouped else 4, d=4)
    e = diffs.shape[0]
    if grouped:
        groups, masses, caps = np.asarray(edges.prompt), np.full(20, 0.05), 0.015
    else:
        groups, masses, caps = None, None, 4.0 / e
    kw = dict(groups=groups, group_weights=masses)
    free = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-9, **kw)
    assert np.any(np.asarray(free.weights) > caps * (1 + 1e-6))  # the caps bind
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L", caps=caps, groups=groups, masses=masses)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-9, caps=caps, working_set=16,
                         polish_max=polish_max, **kw)
    assert len(sol.history.pricing) > 1 and sol.converged
    np.testing.assert_allclose(sol.value, ref, rtol=1e-6)
    w = np.asarray(sol.weights)
    assert np.all(w <= caps)
    if grouped:
        np.testing.assert_allclose(np.bincount(groups, weights=w), masses, atol=1e-12)
    else:
        assert abs(w.sum() - 1) < 1e-12


def test_infeasible_caps_are_an_error_naming_caps():
    rng = np.random.default_rng(5)
    diffs, theta, curv, edges = _instance(rng, m=4, k=5, d=4)
    e = diffs.shape[0]
    args = (jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0)
    with pytest.raises(ValueError, match=r"caps sum to 0\.9 < 1"):
        optimal_design(*args, caps=0.9 / e)
    with pytest.raises(ValueError, match=r"caps: group 3 has caps summing to 0\.3 < its mass 0\.4"):
        optimal_design(*args, groups=np.asarray(edges.prompt), group_weights=[0.1, 0.2, 0.3, 0.4], caps=0.03)
    with pytest.raises(ValueError, match=r"caps must be >= 0"):
        optimal_design(*args, caps=np.r_[-1.0, np.ones(e - 1)])
    with pytest.raises(ValueError, match=r"caps must be a scalar or an array of shape \[E\] = \[40\]"):
        optimal_design(*args, caps=np.ones(3))
    with pytest.raises(ValueError, match=r"init must satisfy the caps"):
        optimal_design(*args, caps=1.5 / e, init=np.r_[1.0, np.zeros(e - 1)])
    # sum of caps exactly 1: the only design is the caps themselves
    c = np.random.default_rng(0).dirichlet(np.ones(e))
    sol = optimal_design(*args, caps=c)
    np.testing.assert_allclose(np.asarray(sol.weights), c, rtol=1e-12)


# ----------------------------------------------------------------------------------
# Bayes criterion with prior precision lambda and n labels: tr(I (lambda/n Id + Sigma_w)^-1)


@pytest.mark.parametrize("capped", [False, True])
def test_bayes_criterion_with_prior_precision_and_budget(capped):
    rng = np.random.default_rng(7)
    diffs, theta, curv, _ = _instance(rng, d=4)
    e = diffs.shape[0]
    lam, n, beta = 3.0, 60, 0.8
    caps = 2.0 / e if capped else None
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta, prior_precision=lam, budget=n,
                         tol=TIGHT, caps=caps)
    w = np.asarray(sol.weights)
    v = _scaled(diffs, theta, beta)
    dense = np.trace(curv @ np.linalg.inv(lam / n * np.eye(4) + v.T @ (w[:, None] * v)))
    np.testing.assert_allclose(sol.value, dense, rtol=1e-10)
    ref, _ = _cvxpy_optimum(diffs, theta, curv, beta, "L", ridge=lam / n, caps=caps)
    assert abs(sol.value - ref) <= 1e-4 * abs(ref)
    # n-aware: fewer labels, a stronger prior term, a different (larger) optimum
    few = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta, prior_precision=lam, budget=n // 4,
                         tol=TIGHT, caps=caps)
    assert few.value < sol.value  # more prior mass per label gives a smaller posterior trace
    args = (jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), beta)
    with pytest.raises(ValueError, match="budget must be a finite number > 0"):
        optimal_design(*args, prior_precision=lam)
    with pytest.raises(ValueError, match="budget is used only with prior_precision"):
        optimal_design(*args, budget=n)
    with pytest.raises(ValueError, match="not both"):
        optimal_design(*args, prior_precision=lam, budget=n, ridge=0.1)
    with pytest.raises(ValueError, match="prior_precision must be a finite number >= 0"):
        optimal_design(*args, prior_precision=-1.0, budget=n)


def test_saturated_information_is_named_as_such():
    """Issue 15 item 11: features scaled by 1e6 make every sigmoid'(beta theta.z_e) 0; the
    error names the saturation (theta, beta, feature scale), not zero differences."""
    rng = np.random.default_rng(5)
    diffs, theta, curv, _ = _instance(rng, m=4, k=5, d=4)
    with pytest.raises(ValueError, match=r"saturated information.*theta, beta or the scale of the features is too large"):
        optimal_design(jnp.asarray(1e6 * diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0)
    with pytest.raises(ValueError, match="every candidate edge difference is zero"):
        optimal_design(jnp.zeros_like(jnp.asarray(diffs)), jnp.asarray(theta), jnp.asarray(curv), 1.0)
    # at theta = 0 the same large features carry information (sigmoid'(0) = 1/4)
    sol = optimal_design(jnp.asarray(1e6 * diffs), jnp.zeros(4), jnp.asarray(curv), 1.0, criterion="D", tol=1e-6)
    assert sol.converged


@pytest.mark.parametrize("kind", ["L", "A", "D"])
def test_vertex_step_line_search_is_exact(kind):
    """The Frank-Wolfe step to the capped LMO vertex minimises Phi(w + gamma (s - w)) over
    [0, 1]: against scipy on the dense criterion."""
    from theory.design import _refresh, _vertex_step

    rng = np.random.default_rng(8)
    e, r = 30, 4
    x = rng.normal(size=(e, r))
    b = rng.normal(size=(r, 2)) if kind == "L" else np.zeros((r, 0))
    caps = np.full(e, 0.1)
    w = np.full(e, 1.0 / e)
    vertex = np.zeros(e)
    vertex[rng.permutation(e)[:10]] = 0.1  # a vertex of the capped simplex

    def phi(g):
        wg = w + g * (vertex - w)
        t = x.T @ (wg[:, None] * x)
        if kind == "D":
            return -np.linalg.slogdet(t)[1]
        inv = np.linalg.inv(t)
        return np.trace(b.T @ inv @ b) if kind == "L" else np.trace(inv)

    state = _refresh(jnp.asarray(w), jnp.asarray(x), jnp.zeros((r, r)), jnp.asarray(b), kind)
    new, gamma = _vertex_step(state, jnp.asarray(x), jnp.zeros((r, r)), jnp.asarray(b), jnp.asarray(caps), jnp.asarray(vertex), kind)
    ref = minimize_scalar(phi, bounds=(0, 1), method="bounded", options={"xatol": 1e-12})
    assert 0 < float(gamma) < 1  # an interior step here: the search is tested, not a bound
    np.testing.assert_allclose(float(gamma), ref.x, atol=1e-6)
    np.testing.assert_allclose(float(new.value), phi(float(gamma)), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(new.w), w + float(gamma) * (vertex - w), atol=1e-15)


def test_history_is_typed_and_its_lengths_are_as_documented():
    """SolverHistory: one entry per pairwise step (at least one), the last recomputed; one pricing row per round."""
    rng = np.random.default_rng(21)
    diffs, theta, curv, _ = _instance(rng, m=20, k=6, d=4)
    for ws in (64, 8):
        sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-8, working_set=ws)
        h = sol.history
        assert isinstance(h, SolverHistory)
        assert len(h.value) == len(h.certificate) == max(sol.num_iter, 1)
        assert h.value[-1] == sol.value and h.certificate[-1] == sol.certificate
        assert h.pricing.shape[1] == 2 and h.pricing[-1, 0] == sol.num_iter and h.pricing[-1, 1] == sol.certificate
        assert np.all(np.diff(h.pricing[:, 0]) >= 0)
    # an optimal start takes no step and still reports one entry
    again = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-3, init=np.asarray(sol.weights))
    assert again.num_iter == 0 and len(again.history.value) == 1


def _same_solution(a, b):
    """Every field of two DesignSolutions bit for bit (history included)."""
    np.testing.assert_array_equal(np.asarray(a.weights), np.asarray(b.weights))
    assert (a.value, a.certificate, a.relative_certificate) == (b.value, b.certificate, b.relative_certificate)
    assert (a.converged, a.num_iter, a.rank) == (b.converged, b.num_iter, b.rank)
    for x, y in zip(a.history, b.history):
        np.testing.assert_array_equal(x, y)


def test_a_solver_configured_once_solves_problems_as_optimal_design_does():
    """One DesignSolver called on two reduced problems (and on the first again) gives what two
    optimal_design calls give: the solver carries no state from one call to the next."""
    from theory.design import DesignSolver, reduce_problem

    rng = np.random.default_rng(31)
    diffs, theta, curv, edges = _instance(rng, m=6, k=5, d=4)
    groups = np.asarray(edges.prompt)
    z, th, cu = jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv)
    config = dict(tol=1e-8, working_set=8, polish_max=4)
    solver = DesignSolver(**config)
    first = reduce_problem(z, th, cu, 1.0, criterion="L", caps=1.0 / 20)
    second = reduce_problem(z, th, cu, 1.0, criterion="D", groups=groups)
    got = [solver(first), solver(second), solver(first)]
    want_first = optimal_design(z, th, cu, 1.0, criterion="L", caps=1.0 / 20, **config)
    want_second = optimal_design(z, th, cu, 1.0, criterion="D", groups=groups, **config)
    _same_solution(got[0], want_first)
    _same_solution(got[1], want_second)
    _same_solution(got[2], want_first)
    assert (first.criterion, second.criterion) == ("L", "D") and second.num_groups == groups.max() + 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        solver.tol = 1.0  # configured once: frozen


@pytest.mark.parametrize("capped", [False, True])
def test_warm_start_from_a_loose_design_reaches_the_cvxpy_optimum(capped):
    """``solver(problem, init=w)`` from a loose solution: the criterion never rises above the
    start's, the tight solve is within its certificate of cvxpy's optimum, and a start off
    the simplex is refused naming ``init`` before any step."""
    from theory.design import DesignSolver, reduce_problem

    rng = np.random.default_rng(32)
    diffs, theta, curv, _ = _instance(rng)
    caps = 1.0 / 12 if capped else None
    problem = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, caps=caps)
    loose = DesignSolver(tol=1e-2)(problem)
    warm = DesignSolver(tol=TIGHT)(problem, init=np.asarray(loose.weights))
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L", caps=caps)
    assert warm.converged and warm.relative_certificate <= TIGHT
    assert warm.value <= loose.value * (1 + 1e-12)
    assert -1e-7 * abs(ref) <= warm.value - ref <= warm.certificate + 1e-7 * abs(ref)
    with pytest.raises(ValueError, match="init must"):
        DesignSolver(tol=TIGHT)(problem, init=2 * np.asarray(loose.weights))


def test_converged_flag_is_the_relative_certificate_against_tol():
    """A solve cut off by max_iter reports converged=False with a relative certificate above
    tol that a dense numpy recomputation confirms; the same problem run on reports True."""
    from theory.design import DesignSolver, reduce_problem

    rng = np.random.default_rng(33)
    diffs, theta, curv, _ = _instance(rng, m=6, k=5, d=4)
    problem = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, criterion="D")
    cut = DesignSolver(tol=1e-10, max_iter=2, newton_cg=False, polish_max=0, multiplicative_steps=0)(problem)
    w = np.asarray(cut.weights)
    dd = _dense_scores(w, diffs, theta, curv, 1.0, "D")
    dense_rel = (dd.max() - w @ dd) / cut.rank  # D: cert / rank, Kiefer-Wolfowitz
    assert cut.num_iter == 2 and not cut.converged
    np.testing.assert_allclose(cut.relative_certificate, dense_rel, rtol=1e-8)
    assert dense_rel > 1e-10
    full = DesignSolver(tol=1e-6)(problem, init=w)
    assert full.converged and full.relative_certificate <= 1e-6


def test_solver_settings_are_checked_when_it_is_configured():
    from theory.design import DesignSolver

    for field, bad in [("tol", 0.0), ("max_iter", -1), ("refresh_every", 0), ("working_set", 0),
                       ("vertex_steps", -1), ("multiplicative_steps", 1.5)]:
        with pytest.raises(ValueError, match=field):
            DesignSolver(**{field: bad})


def test_exact_certificate_is_the_linear_programme_gap():
    """exact_certificate = max {d.s : s in the (capped, grouped) simplex} - d.w, against scipy's
    linprog (HiGHS), with and without caps."""
    from scipy.optimize import linprog

    from theory.design import exact_certificate

    rng = np.random.default_rng(34)
    e, g = 40, 3
    groups = rng.integers(0, g, size=e).astype(np.int32)
    masses = np.array([0.2, 0.3, 0.5])
    dd = rng.gamma(2.0, size=e)
    a_eq = (groups[None, :] == np.arange(g)[:, None]).astype(float)
    for caps in (None, np.full(e, 0.06)):
        ub = np.full(e, np.inf) if caps is None else caps
        w = linprog(np.zeros(e), A_eq=a_eq, b_eq=masses, bounds=list(zip(np.zeros(e), ub))).x  # a feasible design
        lp = linprog(-dd, A_eq=a_eq, b_eq=masses, bounds=list(zip(np.zeros(e), ub)), method="highs")
        cert, thr = exact_certificate(dd, w, groups, masses, g, caps)
        np.testing.assert_allclose(cert, -lp.fun - dd @ w, rtol=1e-12, atol=1e-12)
        assert (thr is None) == (caps is None)


def test_capped_start_whose_spanning_support_lost_its_caps():
    """A cap of 0 on the start's spanning support (a pilot took those edges) leaves a
    support that does not span: its scores are NaN. The start fills those edges last,
    without a RuntimeWarning (once an 'invalid value' warning in the capped LMO), and the
    solve still reaches the cvxpy optimum."""
    import warnings

    from theory.design import reduce_problem
    from theory.design.start import _initial_weights

    rng = np.random.default_rng(5)
    diffs, theta, curv, _ = _instance(rng, m=12, k=5, d=4)
    e = diffs.shape[0]
    p = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, caps=4.0 / e)
    support = np.flatnonzero(np.asarray(_initial_weights(p.x, p.groups, p.masses, p.num_groups, p.rank)) > 0)
    caps = np.full(e, 4.0 / e)
    caps[support] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-8, caps=caps, working_set=8)
    assert sol.converged and np.all(np.asarray(sol.weights)[support] == 0)
    w = cp.Variable(e)
    scaled = _scaled(diffs, theta, 1.0)
    info = scaled.T @ cp.diag(w) @ scaled
    root = np.linalg.cholesky(curv + 1e-15 * np.eye(curv.shape[0]))
    objective = cp.sum([cp.matrix_frac(root[:, i], info) for i in range(root.shape[1])])
    prob = cp.Problem(cp.Minimize(objective), [w >= 0, w <= caps, cp.sum(w) == 1])
    prob.solve()
    assert abs(sol.value - prob.value) <= 1e-4 * prob.value


def _support_bound_brute(diffs, groups, masses, caps):
    """``r (r + 1) / 2`` (numpy's rank of the edges) plus, group by group, the fewest edges whose
    caps (each at most the group's mass) reach the group's mass, by a loop over sorted caps."""
    r = np.linalg.matrix_rank(diffs)
    need = 0
    for g, mass in enumerate(masses):
        members = np.flatnonzero(groups == g)
        if mass <= 0 or members.size == 0:
            continue
        held = 0.0
        for count, c in enumerate(sorted(np.minimum(caps[members], mass), reverse=True), start=1):
            held += c
            if held >= mass * (1 - 1e-9):
                need += count
                break
    return r * (r + 1) // 2 + need


@pytest.mark.parametrize("case", ["free", "uniform caps", "ragged caps", "groups", "groups and caps", "a tiny group"])
def test_support_bound_matches_a_brute_force_count(case):
    """theory.design.working_set.support_bound: the Caratheodory term r(r+1)/2 and the fewest edges
    the caps need, group by group, against a loop over sorted caps and numpy's rank."""
    from theory.design import reduce_problem
    from theory.design.working_set import support_bound

    rng = np.random.default_rng(31)
    diffs, theta, curv, edges = _instance(rng, m=8, k=5, d=4)
    e = diffs.shape[0]
    groups, masses, caps = None, None, None
    if case == "uniform caps":
        caps = 1.0 / 23
    elif case == "ragged caps":
        caps = rng.uniform(0.0, 0.2, size=e)
    elif case == "groups":
        groups, masses = np.asarray(edges.prompt), rng.dirichlet(np.ones(8))
    elif case == "groups and caps":
        groups, masses = np.asarray(edges.prompt), np.r_[0.0, rng.dirichlet(np.ones(7))]
        caps = rng.uniform(0.05, 0.5, size=e) * masses.max()
    elif case == "a tiny group":  # its caps each hold its mass, after groups whose caps hold ~10 in all
        groups, masses = np.asarray(edges.prompt), np.r_[rng.dirichlet(np.ones(7)), 5e-13]
        caps = np.where(groups == 7, 5e-13 / (1 + 5e-13), 1.0)
    p = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, groups=groups, group_weights=masses, caps=caps)
    c = np.full(e, np.inf) if p.caps is None else np.asarray(p.caps)
    want = _support_bound_brute(diffs, np.asarray(p.groups), np.asarray(p.masses), c)
    assert support_bound(p) == want
    if case == "uniform caps":
        assert want == 10 + 23  # r = 4: 10, and 23 caps of 1/23
    if case == "free":
        assert want == 10 + 1
    if case == "a tiny group":
        assert want == 10 + 8  # one edge a group: every cap holds its group's mass


def test_a_tabular_pool_is_solved_on_every_edge_and_a_low_rank_pool_on_working_sets():
    """The path: a tabular pool (one prompt, one-hot features: r (r + 1) / 2 >= E) is solved on
    every edge (one pricing round) even with a small working_set; a pool of rank 4 and 180 edges
    runs column generation (several rounds), with caps too, and on
    every edge once the caps need half of them (24 and 90 of 180 edges at their caps). Each reaches cvxpy's optimum."""
    from theory.design import reduce_problem
    from theory.design.working_set import uses_working_sets

    k = 12
    feats = np.eye(k)[None]
    rng = np.random.default_rng(4)
    log_ref = rng.normal(size=(1, k))
    log_ref -= np.logaddexp.reduce(log_ref, axis=1, keepdims=True)
    edges = enumerate_edges(feats, log_ref)
    diffs = np.asarray(edges.diffs)
    theta = 0.3 * rng.normal(size=k)
    curv = np.asarray(policy_curvature(jnp.asarray(theta), feats, log_ref, np.ones(1)))
    p = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0)
    assert diffs.shape[0] == 66 and p.rank == 11 and not uses_working_sets(p, 8)
    sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-7, working_set=8)
    assert len(sol.history.pricing) == 1 and sol.converged
    ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L")
    np.testing.assert_allclose(sol.value, ref, rtol=1e-6)

    diffs, theta, curv, _ = _instance(np.random.default_rng(13), m=30, k=4, d=4)
    e = diffs.shape[0]
    for caps, working in ((None, True), (1.0 / 24, True), (1.0 / 90, False)):
        p = reduce_problem(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, caps=caps)
        assert e == 180 and uses_working_sets(p, 8) is working, caps
        sol = optimal_design(jnp.asarray(diffs), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=1e-8, caps=caps, working_set=8)
        assert (len(sol.history.pricing) > 1) is working and sol.converged, caps
        ref, _ = _cvxpy_optimum(diffs, theta, curv, 1.0, "L", caps=caps)
        np.testing.assert_allclose(sol.value, ref, rtol=1e-6)


def test_non_convergence_is_reported_at_each_callers_line():
    """The warning named theory/checked.py (the checked wrapper's frame) for every caller, so
    Python's default once-per-location filter showed one caller's non-convergence and hid every
    other's; it now names the line that called optimal_design, and a real solve stopped after a
    few iterations (not max_iter = 0) reports a positive certificate."""
    import warnings

    from theory.design import DesignNotConvergedWarning

    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(60, 4)))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        sol = optimal_design(z, jnp.zeros(4), None, 1.0, criterion="D", tol=1e-12, max_iter=2, polish_max=0)
        line = sys._getframe().f_lineno - 1
    mine = [w for w in got if issubclass(w.category, DesignNotConvergedWarning)]
    assert not sol.converged and len(mine) == 1
    assert mine[0].filename == __file__ and mine[0].lineno == line, (mine[0].filename, mine[0].lineno)
    assert sol.relative_certificate > 1e-12


@pytest.mark.parametrize("criterion", ["A", "D", "L"])
def test_a_group_whose_edges_all_score_zero_keeps_its_mass(criterion):
    """A group whose edges see nothing the criterion weighs (here z_e = 0) had lost its whole mass in the
    multiplicative re-weighting (weights summing to 0.5, converged True). Its mass is fixed by the groups;
    the other groups' part is the solution of the problem without it, scaled: Sigma = (1 - m_0) Sigma',
    so A and L values scale by 1 / (1 - m_0) and D's by ``- d log(1 - m_0)`` (solved independently)."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(30, 4))
    z[::3] = 0.0
    groups = np.arange(30) % 3
    masses = np.array([0.5, 0.3, 0.2])
    curv = None
    if criterion == "L":
        a = rng.normal(size=(4, 4))
        curv = a @ a.T
    sol = optimal_design(z, np.zeros(4), curv, 1.0, criterion=criterion, groups=groups, group_weights=masses, tol=1e-8)
    w = np.asarray(sol.weights)
    np.testing.assert_allclose(np.bincount(groups, weights=w), masses, rtol=0, atol=1e-12)
    keep = groups > 0
    rest = optimal_design(z[keep], np.zeros(4), curv, 1.0, criterion=criterion, groups=groups[keep] - 1,
                          group_weights=masses[1:] / masses[1:].sum(), tol=1e-8)
    expected = (float(rest.value) / 0.5 if criterion != "D" else float(rest.value) - 4 * np.log(0.5))
    assert sol.converged and abs(float(sol.value) - expected) <= 1e-6 * abs(expected)


def test_an_indefinite_curvature_is_refused_and_a_rounded_psd_one_is_not():
    """I = diag(1, 1, -0.5) had been taken for its positive part: the solver reported 11.03 where
    tr(I Sigma^-1) at its weights is 1.66, converged, without a word."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 3))
    bad = np.diag([1.0, 1.0, -0.5])
    w = np.full(12, 1 / 12)
    with pytest.raises(ValueError, match="curvature must be positive semi-definite; its smallest eigenvalue is -0.5"):
        optimal_design(z, np.zeros(3), bad, 1.0, criterion="L")
    with pytest.raises(ValueError, match="curvature must be positive semi-definite"):
        design_criterion(w, np.zeros(3), z, bad, 1.0)
    from theory import trace_criterion

    with pytest.raises(ValueError, match="sigma must be positive semi-definite"):
        trace_criterion(np.eye(3), bad)
    # a rank-deficient curvature computed in float32 has eigenvalues of about -eps lambda_max: accepted
    v = rng.normal(size=(3, 2)).astype(np.float32)
    psd32 = (v @ v.T).astype(np.float32)
    design_criterion(w, np.zeros(3), z, psd32.astype(np.float64), 1.0)
    optimal_design(z.astype(np.float32), np.zeros(3, np.float32), psd32, 1.0, criterion="L")


def test_an_l_design_that_empties_edges_the_curvature_does_not_weigh_says_so():
    """Edges along e1 and e2, I = diag(1, 0): the L-optimal design empties the e2 edges, where Sigma is
    singular on the edges' span. The solver had blamed an ``init`` the caller never gave."""
    rng = np.random.default_rng(0)
    z = np.zeros((8, 2))
    z[:4, 0] = rng.uniform(0.5, 2, 4)
    z[4:, 1] = rng.uniform(0.5, 2, 4)
    with pytest.raises(ValueError, match="iterate became singular on the span of the edges") as err:
        optimal_design(z, np.zeros(2), np.diag([1.0, 0.0]), 1.0, criterion="L")
    assert "init" not in str(err.value)
    # the way out it names: a ridge; the design then puts (almost) nothing on the e2 edges
    sol = optimal_design(z, np.zeros(2), np.diag([1.0, 0.0]), 1.0, criterion="L", ridge=1e-9)
    assert sol.converged and float(np.sum(np.asarray(sol.weights)[4:])) < 1e-3


def test_the_capped_multiplicative_step_keeps_working_with_a_group_that_scores_zero():
    """With caps, a group whose edges all score 0 made the re-weighted design infeasible (no room on
    edges of u = 0), so every multiplicative step was refused for every group. It now keeps that
    group's weights and re-weights the others: the criterion falls, masses and caps hold."""
    from theory.design import reduce_problem
    from theory.design.state import _refresh
    from theory.design.steps import _multiplicative

    rng = np.random.default_rng(3)
    z = rng.normal(size=(30, 4))
    z[::3] = 0.0
    groups = np.arange(30) % 3
    masses = np.array([0.5, 0.3, 0.2])
    p = reduce_problem(z, np.zeros(4), None, 1.0, criterion="A", groups=groups, group_weights=masses, caps=np.full(30, 0.1))
    w0 = masses[groups] / np.bincount(groups)[groups]
    st = _refresh(jnp.asarray(w0), p.x, p.offset, p.b, p.kind)
    new = _multiplicative(st, p.x, p.offset, p.b, jnp.asarray(p.groups), jnp.asarray(p.masses), p.kind, p.num_groups, 5,
                          caps=jnp.asarray(p.caps))
    w = np.asarray(new.w)
    assert float(new.value) < 0.9 * float(st.value)
    np.testing.assert_allclose(np.bincount(groups, weights=w), masses, rtol=0, atol=1e-12)
    assert w.max() <= 0.1 + 1e-12
    np.testing.assert_allclose(w[groups == 0], w0[groups == 0], rtol=1e-12)  # the zero-score group keeps its weights

