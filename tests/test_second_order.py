"""Second-order expansion ``n E G = (beta/2) Phi + c2/n + o(1/n)`` (theory/second_order.py).

Oracles: (1) autodiff of the DPO loss and of the exact gap for every derivative tensor,
and a dense re-implementation of the index formula from those tensors; (2) the exact
``E G(theta_hat_n)`` by enumeration of every label outcome (aggregated over the
sufficient statistic) on a tiny world, extrapolated in ``1/n``; (3) Monte-Carlo z-tests
at level 1e-3 through the project's own simulation engine; (4) the first-order term
against :func:`theory.asymptotic_gap`.
"""

from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import binom

from synthetic.estimators import dpo_loss
from synthetic.monte_carlo import replicate_gaps
from synthetic.worlds import tabular_world
from theory import asymptotic_gap, optimality_gap
from theory.edges import enumerate_edges
from theory.second_order import derivative_tensors, second_order_coefficients, second_order_column, second_order_gap

Z_CRIT = NormalDist().inv_cdf(1 - 1e-3 / 2)  # two-sided z-test at level 1e-3


def _small_world(seed=0, constant_feature=True):
    """Two prompts (one with an absent completion), d = 4 with a per-prompt constant feature
    (so Sigma and I are singular), edges from the first prompt and a second training prompt."""
    r = np.random.default_rng(seed)
    f = r.normal(size=(2, 4, 4))
    if constant_feature:
        f[..., 3] = np.array([1.0, -2.0])[:, None]
    log_ref = np.log(r.dirichlet(np.ones(4), size=2))
    log_ref[1, 3] = -np.inf
    train = r.normal(size=(1, 4, 4))
    if constant_feature:
        train[..., 3] = 0.5
    z = np.concatenate([enumerate_edges(jnp.asarray(f[:1]), jnp.asarray(log_ref[:1])).diffs,
                        enumerate_edges(jnp.asarray(train), jnp.zeros((1, 4))).diffs])
    w = r.dirichlet(np.ones(z.shape[0]))
    w[2] = 0.0  # an unlabelled candidate edge
    w /= w.sum()
    ts = 0.6 * r.normal(size=4)
    return (jnp.asarray(w), jnp.asarray(ts), jnp.asarray(f), jnp.asarray(log_ref), jnp.asarray(z), 0.7,
            jnp.asarray([0.3, 0.7]))


# ----------------------------------------------------------------- (1) derivatives


def _directional(fun, k):
    """``(theta, v_1..v_k) -> d^k fun(theta)[v_1, ..., v_k]`` by nested forward-mode autodiff (jitted)."""
    def deriv(theta, *vs):
        g = fun
        for v in vs:
            g = (lambda g_, v_: lambda th: jax.jvp(g_, (th,), (v_,))[1])(g, v)
        return g(theta)

    return jax.jit(deriv)


def _check_tensor(tensor, fun, theta, rng, rtol):
    d = theta.shape[0]
    deriv = _directional(fun, tensor.ndim)
    for _ in range(2):  # two random direction sets: a polarised check of the whole tensor
        vs = [jnp.asarray(rng.normal(size=d)) for _ in range(tensor.ndim)]
        got = tensor
        for v in vs:
            got = jnp.tensordot(got, v, axes=([0], [0]))
        np.testing.assert_allclose(float(got), float(deriv(theta, *vs)), rtol=rtol, atol=1e-12)


def test_label_tensors_match_autodiff_of_dpo_loss(rng):
    w, ts, f, lr, z, beta, rho = _small_world()
    t = derivative_tensors(w, ts, f, lr, z, beta, rho)
    # dpo_loss with counts w is psi_bar(theta) - theta . t_bar: its derivatives of order >= 2 are K_k
    loss = lambda th: dpo_loss(th, z, w, 0.3 * w, beta)  # noqa: E731
    for tensor in (t.k2, t.k3, t.k4):
        _check_tensor(tensor, loss, ts, rng, 1e-9)
    for tensor in (t.k3, t.k4):  # symmetric, as cumulant tensors are
        np.testing.assert_allclose(tensor, jnp.swapaxes(tensor, 0, 2), rtol=1e-12, atol=1e-15)


def test_gap_tensors_match_autodiff_and_finite_differences_of_gap(rng):
    w, ts, f, lr, z, beta, rho = _small_world()
    t = derivative_tensors(w, ts, f, lr, z, beta, rho)
    gap = lambda th: optimality_gap(th, ts, f, lr, beta, rho)  # noqa: E731
    for tensor in (t.h2, t.h3, t.h4):
        _check_tensor(tensor, gap, ts, rng, 1e-8)
    # finite differences of the gap itself along a line: G(theta* + s v) = H2 s^2/2 + H3 s^3/6 + H4 s^4/24 + O(s^5)
    v = jnp.asarray([0.3, -0.2, 0.5, 0.1])
    q = [float(jnp.einsum("ij,i,j", t.h2, v, v)), float(jnp.einsum("ijk,i,j,k", t.h3, v, v, v)),
         float(jnp.einsum("ijkl,i,j,k,l", t.h4, v, v, v, v))]
    s = 0.05
    vals = {k: float(optimality_gap(ts + k * s * v, ts, f, lr, beta, rho)) for k in (-2, -1, 1, 2)}
    fd3 = (vals[2] - 2 * vals[1] + 2 * vals[-1] - vals[-2]) / (2 * s**3)  # third derivative, O(s^2)
    fd4 = (vals[2] - 4 * vals[1] - 4 * vals[-1] + vals[-2]) / s**4  # fourth derivative (G(theta*) = 0), O(s^2)
    np.testing.assert_allclose(fd3, q[1], rtol=2e-2, atol=1e-3 * abs(q[0]))
    np.testing.assert_allclose(fd4, q[2], rtol=5e-2, atol=1e-2 * abs(q[0]))


def _dense_c2(t, ts, lam=0.0):
    """The index formula of SECOND_ORDER.md from dense tensors, in numpy (pinv-square-root whitening)."""
    k2 = np.asarray(t.k2)
    ev, vec = np.linalg.eigh(k2)
    keep = ev > 1e-10 * ev.max()
    b_ = vec[:, keep] / np.sqrt(ev[keep])
    tr = lambda a, k: np.einsum(  # noqa: E731
        {2: "ij,ia,jb->ab", 3: "ijk,ia,jb,kc->abc", 4: "ijkl,ia,jb,kc,ld->abcd"}[k], np.asarray(a), *([b_] * k))
    m, k3, k4, h3, h4 = tr(t.h2, 2), tr(t.k3, 3), tr(t.k4, 4), tr(t.h3, 3), tr(t.h4, 4)
    b = np.einsum("ikk->i", k3)
    mv = np.einsum("ij,ijk->k", m, k3)
    hv = np.einsum("iik->k", h3)
    c2 = (0.75 * np.einsum("ij,ikl,jkl->", m, k3, k3) + b @ m @ b / 8 + 0.5 * b @ mv
          - 0.5 * np.einsum("ij,ijkk->", m, k4) - np.einsum("ijk,ijk->", h3, k3) / 3 - 0.25 * hv @ b
          + np.einsum("iijj->", h4) / 8)
    tt = b_.T @ np.asarray(ts)
    nn = b_.T @ b_
    ridge = 0.5 * lam**2 * tt @ m @ tt + 0.5 * lam * b @ m @ tt + lam * mv @ tt - lam * np.trace(m @ nn) - 0.5 * lam * hv @ tt
    return c2 + ridge


@pytest.mark.parametrize("lam", [None, 2.5])
def test_c2_contractions_match_dense_tensor_formula(lam):
    w, ts, f, lr, z, beta, rho = _small_world(seed=3)
    so = second_order_coefficients(w, ts, f, lr, z, beta, rho, prior_precision=lam)
    t = derivative_tensors(w, ts, f, lr, z, beta, rho)
    np.testing.assert_allclose(float(so.c2), _dense_c2(t, ts, lam or 0.0), rtol=1e-8)
    parts = sum(float(v) for k, v in so._asdict().items() if k not in ("first", "c2"))
    np.testing.assert_allclose(parts, float(so.c2), rtol=1e-12)


def test_plain_c2_is_invariant_under_reparametrisation():
    """phi -> A phi, theta -> A^-T theta leaves every policy and label law unchanged, so
    (beta/2) Phi and c2 of plain DPO must not move (MAP's ridge is not invariant)."""
    w, ts, f, lr, z, beta, rho = _small_world(seed=2)
    a = jnp.asarray(np.random.default_rng(9).normal(size=(4, 4))) + 2 * jnp.eye(4)
    so = second_order_coefficients(w, ts, f, lr, z, beta, rho)
    so2 = second_order_coefficients(w, jnp.linalg.solve(a.T, ts), f @ a.T, lr, z @ a.T, beta, rho)
    np.testing.assert_allclose(float(so2.first), float(so.first), rtol=1e-8)
    np.testing.assert_allclose(float(so2.c2), float(so.c2), rtol=1e-7)


# ------------------------------------------------------ (2) exact enumeration oracle


# One prompt, 3 completions, d = 3 with a constant third feature (not identifiable, and
# theta*_3 != 0); a second evaluation prompt with 2 present completions.
_FEATS = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
                   [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
_LOGREF = np.log(np.array([[0.6, 0.3, 0.1], [0.8, 0.2, 1.0]]))
_LOGREF[1, 2] = -np.inf
_RHO = np.array([0.7, 0.3])
_Z = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, -1.0, 0.0]])  # pairs (0,1), (0,2), (1,2)
_TS = np.array([0.4, -0.3, 0.7])
_W = np.array([0.4, 0.3, 0.3])
_BETA = 1.0


def _gap_np(th):
    """Exact gap of ``[N, 3]`` parameters, in numpy (independent of theory.policy)."""
    out = 0.0
    for x in range(2):
        present = np.isfinite(_LOGREF[x])
        f, lr = _FEATS[x][present], _LOGREF[x][present]
        lp = lr[None] + th @ f.T
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        ls = lr + f @ _TS
        ls = ls - np.log(np.exp(ls).sum())
        out = out + _RHO[x] * (np.exp(lp) * (lp - ls[None])).sum(1)
    return _BETA * out


def _exact_expected_gap(n, lam):
    """``E G(theta_hat_n)`` exactly: the estimator depends on the labels only through
    ``T = beta sum_e W_e z_e``; its law is a convolution of the three binomials.
    Returns the expectation and the probability of outcomes without an estimate."""
    c = np.round(n * _W).astype(int)
    p = 1.0 / (1.0 + np.exp(-_BETA * _Z @ _TS))
    pm = [binom.pmf(np.arange(ci + 1), ci, pi) for ci, pi in zip(c, p)]
    # T/beta = (W3 - W1, -(W2 + W3)); index a = W3 - W1 + c1, b = W2 + W3
    a = np.zeros((c[0] + c[2] + 1, c[1] + c[2] + 1))
    base = np.outer(pm[0][::-1], pm[1])
    for w3 in range(c[2] + 1):
        a[w3:w3 + c[0] + 1, w3:w3 + c[1] + 1] += pm[2][w3] * base
    ia, ib = np.nonzero(a > 1e-25 * a.max())
    prob = a[ia, ib]
    t = _BETA * np.stack([ia - c[0], -ib], 1).astype(float)
    z2 = _Z[:, :2]
    th = np.tile(_TS[:2], (prob.size, 1))
    for _ in range(14):  # Newton on grad psi(theta) + lam theta = T (2-d labelled span)
        s = 1.0 / (1.0 + np.exp(-_BETA * th @ z2.T))
        g = _BETA * (s * c) @ z2 - t + lam * th
        h = _BETA**2 * np.einsum("ne,ei,ej->nij", s * (1 - s) * c, z2, z2) + (lam + 1e-12) * np.eye(2)
        step = np.linalg.solve(h, g[..., None])[..., 0]
        th = th - step * np.minimum(1.0, 2.0 / np.maximum(np.linalg.norm(step, axis=1), 1e-300))[:, None]
    s = 1.0 / (1.0 + np.exp(-_BETA * th @ z2.T))
    ok = (np.linalg.norm(_BETA * (s * c) @ z2 - t + lam * th, axis=1) < 1e-8) & (np.abs(th).max(1) < 30)
    full = np.concatenate([th, np.zeros((th.shape[0], 1))], 1)  # no label sees the constant feature
    gaps = _gap_np(full[ok])
    return float(prob[ok] @ gaps), float(prob[~ok].sum() + (1.0 - a.sum()))


@pytest.mark.parametrize("lam", [None, 0.5])
def test_c2_matches_exact_enumeration(lam):
    ns = np.array([150, 200, 250, 300, 400, 500])
    vals, lost = zip(*(_exact_expected_gap(n, lam or 0.0) for n in ns))
    assert max(lost) < 1e-15  # outcomes without an MLE carry no weight at these n
    neg = ns * np.array(vals)
    # n E G = a0 + c2/n + c3/n^2 + ... : least squares in powers of 1/n (exact data)
    coef = np.linalg.lstsq(np.vander(1.0 / ns, 5, increasing=True), neg, rcond=None)[0]
    so = second_order_coefficients(_W, _TS, _FEATS, _LOGREF, _Z, _BETA, _RHO, prior_precision=lam)
    np.testing.assert_allclose(coef[0], float(so.first), rtol=1e-6)
    np.testing.assert_allclose(coef[1], float(so.c2), rtol=1e-4)
    # the second-order term matters here: the exact value at n = 150 is off the first order
    # by about c2/n, and the second-order prediction cuts the error at least 20-fold
    err1 = abs(neg[0] - float(so.first))
    err2 = abs(neg[0] - float(so.first) - float(so.c2) / ns[0])
    assert err2 < err1 / 20


# --------------------------------------------------------------- (3) Monte-Carlo


def _mc_world():
    """Tabular world, K = 20 items (190 edges), uniform labels: 5-6 an edge at n = 1000."""
    world = tabular_world(jax.random.key(1), num_completions=20, theta_scale=0.3, ref_concentration=1.0)
    z = enumerate_edges(world.train.features, world.train.log_ref).diffs
    return world, z


def _counts(e, n):
    c = np.full(e, n // e, np.float64)
    c[: n - int(c.sum())] += 1
    return c


@pytest.mark.parametrize("n,lam", [(1000, None), (3000, None), (1000, 1.0), (3000, 1.0)])
def test_second_order_matches_monte_carlo(n, lam):
    world, z = _mc_world()
    counts = _counts(z.shape[0], n)
    reps = 2000
    res = replicate_gaps(jax.random.split(jax.random.key(7 + n), reps), world.theta_star, z, counts, world.beta,
                         world.eval, estimator="newton" if lam is None else "map",
                         estimator_params={} if lam is None else {"prior_precision": lam})
    assert bool(np.all(res.mle_exists))  # the expansion's premise holds on this world
    g = n * np.asarray(res.gap, np.float64)
    mean, se = g.mean(), g.std(ddof=1) / np.sqrt(reps)
    so = second_order_coefficients(counts / n, world.theta_star, world.eval.features, world.eval.log_ref, z,
                                   world.beta, world.eval.prompt_weights, prior_precision=lam)
    pred = float(so.first) + float(so.c2) / n
    assert abs(mean - pred) < Z_CRIT * se, (mean, se, pred, float(so.first))
    if lam is not None and n == 1000:
        # the MAP's first-order prediction is rejected at the same level: c2 is what matches
        assert abs(mean - float(so.first)) > Z_CRIT * se


# ------------------------------------------------------ (4) first order and API


def test_first_order_equals_asymptotic_gap_and_gap_combines_terms():
    w, ts, f, lr, z, beta, rho = _small_world(seed=5)
    so = second_order_coefficients(w, ts, f, lr, z, beta, rho)
    for n in [10.0, 1234.0]:
        np.testing.assert_allclose(float(so.first) / n, float(asymptotic_gap(w, ts, f, lr, z, beta, n, rho)), rtol=1e-12)
        np.testing.assert_allclose(float(second_order_gap(w, ts, f, lr, z, beta, n, rho)),
                                   (float(so.first) + float(so.c2) / n) / n, rtol=1e-12)
    col = second_order_column(w, ts, f, lr, z, beta, [100, 1000], rho, prior_precision=2.0)
    so2 = second_order_coefficients(w, ts, f, lr, z, beta, rho, prior_precision=2.0)
    np.testing.assert_allclose(col["second_order"], float(so2.first) + float(so2.c2) / np.array([100.0, 1000.0]), rtol=1e-12)
    np.testing.assert_allclose(col["first_order"], float(so.first), rtol=1e-12)
    # the MAP terms vanish as Lambda -> 0
    so3 = second_order_coefficients(w, ts, f, lr, z, beta, rho, prior_precision=1e-9)
    np.testing.assert_allclose(float(so3.c2), float(so.c2), rtol=1e-6)


def test_unlabelled_curvature_gives_inf_and_nan():
    w, ts, f, lr, z, beta, rho = _small_world(seed=1, constant_feature=False)
    w = jnp.zeros_like(w).at[0].set(1.0)  # one edge: a 1-d labelled span, I has rank 3
    so = second_order_coefficients(w, ts, f, lr, z, beta, rho)
    assert np.isinf(float(so.first)) and np.isnan(float(so.c2))
    assert np.isinf(float(second_order_gap(w, ts, f, lr, z, beta, 100, rho)))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), True, "x"])
def test_bad_prior_precision_is_rejected(bad):
    w, ts, f, lr, z, beta, rho = _small_world()
    with pytest.raises(ValueError, match="prior_precision"):
        second_order_coefficients(w, ts, f, lr, z, beta, rho, prior_precision=bad)


def test_bad_budget_and_shapes_are_rejected():
    w, ts, f, lr, z, beta, rho = _small_world()
    with pytest.raises(ValueError, match="n must be"):
        second_order_gap(w, ts, f, lr, z, beta, 0, rho)
    with pytest.raises(ValueError, match="budgets"):
        second_order_column(w, ts, f, lr, z, beta, [100, -1], rho)
    with pytest.raises(ValueError, match="weights"):
        second_order_coefficients(w[:-1], ts, f, lr, z, beta, rho)


def test_second_order_table_predicts_the_estimator_it_simulates():
    """est='map' without lam ran MAP at the default prior precision (1) beside the expansion of plain DPO
    (prior_precision=None), under the label 'map'; both now take the map estimator's default, and a
    prior precision for plain DPO, or an estimator the expansion does not cover, is refused."""
    from experiments import second_order_table as T
    from synthetic.monte_carlo import MAP_PRIOR_PRECISION

    got = T.row("contextual", "uniform", 300, 2, est="map")
    want = T.row("contextual", "uniform", 300, 2, est="map", lam=MAP_PRIOR_PRECISION)
    assert got == want and got["estimator"] == f"map(L={MAP_PRIOR_PRECISION})"
    plain = T.row("contextual", "uniform", 300, 2)
    assert plain["c2"] != got["c2"]  # the prior changes the second-order term
    with pytest.raises(ValueError, match="lam = 2.0 is the MAP prior precision"):
        T.row("contextual", "uniform", 300, 2, est="newton", lam=2.0)
    with pytest.raises(ValueError, match="est must be 'newton'"):
        T.row("contextual", "uniform", 300, 2, est="optax")
