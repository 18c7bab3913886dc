r"""DPO estimators on per-edge win counts.

In the log-linear class the DPO margin of a label is ``beta theta . z`` (the
partition function cancels), so DPO is logistic regression without intercept on the
covariates ``beta z_e`` (theory brief section 2). With ``c_e`` labels and ``w_e`` wins
of the first completion on edge ``e``, ``n = sum_e c_e`` and ``u_e = beta theta.z_e``:

.. math::

    L_n(\theta) = \frac1n \sum_e \big[w_e\,\mathrm{softplus}(-u_e)
                   + (c_e - w_e)\,\mathrm{softplus}(u_e)\big] + \frac{\lambda}{2}\|\theta\|^2,

using ``-log sigmoid(u) = softplus(-u)``. The ridge ``lambda`` (default 0) is per
label. Wins may be fractional (label smoothing, see :func:`fit_dpo_optax`).

Two estimators reach the same minimiser:

* :func:`fit_newton` -- exact MLE by damped Newton on the identifiable subspace (the
  span of the labelled edge differences; the component of ``theta`` orthogonal to it
  is 0, the reference value). It reports convergence and whether the MLE exists.
* :func:`fit_dpo_optax` -- gradient DPO as practitioners train it (TRL's sigmoid loss,
  Adam or RMSprop), full batch on the same sufficient statistics.

Both are pure functions of arrays and ``vmap`` over replicates. So is
:func:`fit_map`, the posterior mode under the prior ``N(0, Lambda^-1 Id)`` (the ridge
``Lambda / n`` per label), which always exists.

Where the unpenalised MLE does not exist (separable labels, Albert and Anderson 1984),
:func:`ridge_path_limit` computes the limit of the ridge path ``lambda -> 0`` exactly
(host-side numpy/scipy: linear programs, a non-negative least-squares SVM and small
convex fits): the parameter diverges along a hierarchy of max-margin directions while a
finite part is fit on the rest, and the policy converges (:func:`ridge_limit_log_probs`,
:func:`ridge_limit_gap`). The derivation is in ``theory/SEPARATION.md``;
:func:`mle_exists_exact` is the exact existence test (a linear program).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.sparse
import scipy.special

from theory.checked import check_argument, one_of
from theory.information import data_precision, unit_rows_eigh

__all__ = [
    "NewtonResult",
    "DPOResult",
    "dpo_loss",
    "fit_newton",
    "fit_newton_shared",
    "fit_dpo_optax",
    "fit_map",
    "RidgeLimit",
    "ridge_path_limit",
    "ridge_limit_log_probs",
    "ridge_limit_gap",
    "mle_exists_exact",
    "ESTIMATOR_PARAMS",
]


class NewtonResult(NamedTuple):
    """Result of :func:`fit_newton`.

    Attributes:
      theta: ``[d]`` estimate (minimum-norm: no component outside the labelled span).
      loss: final ``L_n``.
      grad_norm: Euclidean norm of the final gradient.
      num_iter: Newton iterations taken.
      converged: the last accepted step moved the labelled margins ``beta z_e . theta`` by at most
        ``tol (1 + max_e |beta z_e . theta|)``.
      mle_exists: ``converged`` and the Hessian on the labelled span is not
        degenerate (see :func:`fit_newton`). ``False`` flags separable labels (the
        unpenalised MLE is at infinity); the returned ``theta`` is then the last
        iterate and must not be used as an estimate.
      max_margin: ``max_e |beta theta.z_e|`` over labelled edges.
    """

    theta: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    num_iter: jax.Array
    converged: jax.Array
    mle_exists: jax.Array
    max_margin: jax.Array


class DPOResult(NamedTuple):
    """Result of :func:`fit_dpo_optax`.

    Attributes:
      theta: ``[d]`` final parameter.
      loss: final DPO loss (with label smoothing if any).
      grad_norm: norm of the final gradient.
      loss_history: ``[num_steps]`` loss before each step.
    """

    theta: jax.Array
    loss: jax.Array
    grad_norm: jax.Array
    loss_history: jax.Array


def dpo_loss(theta, diffs, counts, wins, beta, ridge=0.0, label_smoothing=0.0):
    """Mean DPO (sigmoid) loss over labels, from per-edge counts.

    A label says "chosen beats rejected"; its margin is ``beta theta.(phi_chosen -
    phi_rejected)``. TRL's sigmoid loss with label smoothing ``eps`` (cDPO) is
    ``-(1 - eps) log sigmoid(beta m) - eps log sigmoid(-beta m)``; summed over an edge's
    wins and losses this is the logistic loss with wins replaced by
    ``(1 - eps) w + eps (c - w)``.

    Args:
      theta: ``[d]``.
      diffs: ``[A, d]``.
      counts: ``[A]`` labels per edge.
      wins: ``[A]`` wins of the first completion.
      beta: ``> 0``.
      ridge: per-label ridge ``lambda >= 0``.
      label_smoothing: ``eps in [0, 1/2)``.
    """
    counts = jnp.asarray(counts, dtype=diffs.dtype)
    wins = (1.0 - label_smoothing) * wins + label_smoothing * (counts - wins)
    u = beta * (diffs @ theta)
    nll = jnp.sum(wins * jax.nn.softplus(-u) + (counts - wins) * jax.nn.softplus(u))
    return nll / jnp.sum(counts) + 0.5 * ridge * jnp.dot(theta, theta)


def _grad_hess(theta, diffs, counts, wins, beta, ridge):
    n = jnp.sum(counts)
    u = beta * (diffs @ theta)
    sig = jax.nn.sigmoid(u)
    grad = beta * diffs.T @ (counts * sig - wins) / n + ridge * theta
    s = counts * jnp.exp(jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u))
    hess = beta**2 * (diffs.T * s) @ diffs / n + ridge * jnp.eye(theta.shape[0], dtype=theta.dtype)
    return grad, hess


def _null_projector(diffs, counts):
    """Projector onto the orthogonal complement of span{z_e : c_e > 0}, from the singular values of
    the unit rows at the data's precision (above ``10 d eps`` of the largest): the rows' Gram matrix
    squares scales and angles, and a direction only edges 1e-3 as long see, or rows 3e-3 apart in
    angle, fell below float32's threshold there (its component of theta was then left at 0, and
    separable labels along it were fitted as if the MLE existed)."""
    norms = jnp.linalg.norm(diffs, axis=1)
    z = diffs * jnp.where((counts > 0) & (norms > 0), 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)[:, None]
    d = diffs.shape[1]
    _, sv, vt = jnp.linalg.svd(z, full_matrices=False)  # vt [min(A, d), d]
    eps = jnp.finfo(diffs.dtype).eps
    keep = sv > 10.0 * d * eps * jnp.maximum(sv[0], eps)
    v = vt * keep[:, None]
    return jnp.eye(d, dtype=diffs.dtype) - v.T @ v


_OPTIMIZERS = {"adam": optax.adam, "rmsprop": optax.rmsprop, "sgd": optax.sgd}

#: Every estimator's parameters and the values each allows (specs of :mod:`theory.checked`):
#: the sweep checks ``estimator.params`` with them before any job, and each fit checks the
#: concrete values it is given. A negative ridge had fitted a non-minimiser reported as
#: converged (gaps 80x the truth's) and a negative ``final_lr_fraction`` ended Adam's
#: schedule in gradient ascent, both without a word.
ESTIMATOR_PARAMS = {
    "newton": {"ridge": "number >= 0", "max_iter": "int >= 0", "tol": "optional number > 0",
               "curvature_floor": "optional number >= 0"},
    "map": {"prior_precision": "number > 0", "max_iter": "int >= 0", "tol": "optional number > 0"},
    "optax": {"optimizer": one_of(sorted(_OPTIMIZERS)), "learning_rate": "number > 0", "num_steps": "int >= 1",
              "label_smoothing": "number in [0, 0.5)", "ridge": "number >= 0", "final_lr_fraction": "number in [0, 1]"},
}


def _check_fit_args(estimator: str, **values) -> None:
    """Check the concrete values among ``values`` by :data:`ESTIMATOR_PARAMS` (traced ones are skipped:
    the callers that trace them, the Monte-Carlo core, have checked the parameters they come from)."""
    specs = ESTIMATOR_PARAMS[estimator]
    for name, value in values.items():
        if isinstance(value, jax.core.Tracer):
            continue
        if isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0:
            value = value.item()
        check_argument(name, value, specs[name])


def _newton_setup(diffs, counts, wins, tol, curvature_floor):
    """dtype, eps, default tolerances (``eps^0.6`` step, ``eps^0.5`` curvature floor), typed counts and wins."""
    dtype = diffs.dtype
    eps = float(jnp.finfo(dtype).eps)
    tol = eps**0.6 if tol is None else tol
    curvature_floor = eps**0.5 if curvature_floor is None else curvature_floor
    return dtype, eps, tol, curvature_floor, jnp.asarray(counts, dtype=dtype), jnp.asarray(wins, dtype=dtype)


class _NewtonState(NamedTuple):
    """Loop state of :func:`fit_newton`: iterate, last step norm (0 once converged), iterations, loss."""

    theta: jax.Array
    step: jax.Array
    it: jax.Array
    loss: jax.Array


class _Backtrack(NamedTuple):
    """Loop state of a backtracking line search: step size, loss there, halvings."""

    t: jax.Array
    loss: jax.Array
    k: jax.Array


def _armijo(loss, theta, delta, f0, slope, eps, dtype, max_halvings=60):
    """Halve ``t`` from 1 until the Armijo test with rounding slack passes; ``(t, loss, accepted)``.

    The test is ``L(theta + t delta) <= L(theta) + t slope / 4 + 10 eps (1 + |L|)`` (see
    :func:`fit_newton`); ``slope = g . delta <= 0``.
    """
    slack = 10.0 * eps * (1.0 + jnp.abs(f0))

    def ok(t, f_new):
        return jnp.isfinite(f_new) & (f_new <= f0 + 0.25 * t * slope + slack)

    def halve(ls: _Backtrack) -> _Backtrack:
        t = 0.5 * ls.t
        return _Backtrack(t, loss(theta + t * delta), ls.k + 1)

    init = _Backtrack(jnp.asarray(1.0, dtype), loss(theta + delta), 0)
    ls = jax.lax.while_loop(lambda ls: ~ok(ls.t, ls.loss) & (ls.k < max_halvings), halve, init)
    return ls.t, ls.loss, ok(ls.t, ls.loss)


def fit_newton(diffs, counts, wins, beta, ridge=0.0, max_iter=100, tol=None, curvature_floor=None):
    """Exact DPO/MLE by damped Newton with Armijo backtracking.

    Newton directions solve ``(H + P_null) delta = -g`` with ``P_null`` the projector
    on the directions no labelled edge sees; since ``g`` lies in the labelled span,
    so do the iterates, giving the minimum-norm minimiser. The Armijo test allows a
    rounding slack of ``10 eps (1 + |L|)`` so that steps whose decrease is below the
    loss's resolution (close to the optimum, or in float32) are still taken.

    Separation (no finite MLE) is detected, not hidden. Along an escape direction
    ``v`` of separable labels the curvature ``v^T H v`` decays like
    ``exp(-margin)`` while the iterates run off, so either the step test never passes
    within ``max_iter`` (``converged = False``), or the iterates stall where the
    curvature on the labelled span has collapsed. ``mle_exists`` therefore requires
    convergence *and* a smallest eigenvalue of ``H(theta_hat)`` on the labelled span
    of at least ``curvature_floor`` times the largest eigenvalue of ``H(0)``. The rule is checked against an exact
    linear-programming oracle in the tests. It flags every separable sample; the
    converse fails only for MLEs that exist but lie beyond the resolution of the
    dtype: margins so large (past about 20 in float64) that the curvature along the
    weakest direction is below the floor and Newton stalls (about 1 in 300 of the
    tests' tiny near-separable samples). Such an estimate predicts preferences of
    ``1 - 1e-9`` and is treated as not existing. The floor is relative to the largest
    curvature, so a direction whose curvature is far below it for another reason is flagged
    too: features of very different scales (a column of scale 1e-4 next to one of 1, the
    curvature ratio 1e-8) give ``mle_exists = False`` for an MLE that exists. The flag
    errs only that way; :func:`mle_exists_exact` answers exactly, and the Monte Carlo
    path applies it (or :func:`ridge_path_limit`) to every flagged replicate. With
    ``ridge > 0`` the minimiser always exists and only convergence is required.

    Args:
      diffs: ``[A, d]``.
      counts: ``[A]`` labels per edge (zeros allowed).
      wins: ``[A]`` wins of the first completion (may be fractional).
      beta: ``> 0``.
      ridge: per-label ridge ``>= 0``.
      max_iter: Newton iteration cap.
      tol: tolerance on a step's change of the labelled margins, relative to the largest margin
        plus 1 (so alike at any beta and any scale of the features); default ``eps^0.6`` of the
        dtype (4e-10 in float64, 7e-5 in float32).
      curvature_floor: smallest believable ``lambda_min(H(theta_hat)) / lambda_max(H(0))``
        on the labelled span; default ``sqrt(eps)`` (1.5e-8 in float64, 3.5e-4 in float32).

    Returns:
      :class:`NewtonResult`.
    """
    _check_fit_args("newton", ridge=ridge, max_iter=max_iter, tol=tol, curvature_floor=curvature_floor)
    dtype, eps, tol, curvature_floor, counts, wins = _newton_setup(diffs, counts, wins, tol, curvature_floor)
    d = diffs.shape[1]
    p_null = _null_projector(diffs, counts)
    labelled = counts > 0

    def loss(th):
        return dpo_loss(th, diffs, counts, wins, beta, ridge)

    def cond(state: _NewtonState):
        return (state.it < max_iter) & (state.step > 0)

    def body(state: _NewtonState) -> _NewtonState:
        theta, f0 = state.theta, state.loss
        g, h = _grad_hess(theta, diffs, counts, wins, beta, ridge)
        delta = -jnp.linalg.solve(h + p_null, g)
        delta = delta - p_null @ delta  # in the labelled span (a solve of condition (beta |z|)^2 leaks rounding out of it)
        delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, 0.0)
        t, f1, accepted = _armijo(loss, theta, delta, f0, jnp.dot(g, delta), eps, dtype)
        t = jnp.where(accepted, t, 0.0)
        new_theta = theta + t * delta
        step_norm = jnp.linalg.norm(t * delta)
        # Converged: the step's change of the labelled margins beta z_e . theta below tolerance (relative to the
        # margins, plus 1: in theta's own norm it was absolute when |theta| ~ 1 / beta << 1, and beta = 1e8
        # stopped with margins off by 1e-6); stored as step = 0 to stop the loop.
        moved = jnp.max(jnp.where(labelled, jnp.abs(beta * (diffs @ (t * delta))), 0.0))
        done = moved <= tol * (1.0 + jnp.max(jnp.where(labelled, jnp.abs(beta * (diffs @ new_theta)), 0.0)))
        return _NewtonState(new_theta, jnp.where(done, 0.0, step_norm + 1.0), state.it + 1, jnp.where(accepted, f1, f0))

    theta0 = jnp.zeros((d,), dtype)
    init = _NewtonState(theta0, jnp.asarray(jnp.inf, dtype), jnp.asarray(0, jnp.int32), loss(theta0))
    final = jax.lax.while_loop(cond, body, init)
    theta = final.theta
    g, h = _grad_hess(theta, diffs, counts, wins, beta, 0.0)
    converged = final.step == 0
    # Smallest eigenvalue of H on the labelled span (null directions lifted out of
    # the way), against the curvature scale at theta = 0, which no iterate changes.
    _, h0 = _grad_hess(theta0, diffs, counts, wins, beta, 0.0)
    scale = jnp.max(jnp.linalg.eigvalsh(h0))
    lam_min_span = jnp.min(jnp.linalg.eigvalsh(h + scale * p_null))
    curvature_ok = lam_min_span >= curvature_floor * scale
    exists = converged & ((ridge > 0) | curvature_ok)
    g = g + ridge * theta
    max_margin = jnp.max(jnp.where(counts > 0, jnp.abs(beta * (diffs @ theta)), 0.0))
    return NewtonResult(theta, final.loss, jnp.linalg.norm(g), final.it, converged, exists, max_margin)


#: MAP DPO's prior precision ``Lambda`` when none is given (ridge ``Lambda / n`` per label): :func:`fit_map`'s
#: default and ``estimator=map``'s (synthetic.monte_carlo), so a prediction can ask for the same one.
MAP_PRIOR_PRECISION = 1.0


def fit_map(diffs, counts, wins, beta, prior_precision=MAP_PRIOR_PRECISION, max_iter=100, tol=None):
    """MAP (ridge) DPO: the posterior mode under the prior ``theta ~ N(0, Lambda^-1 Id)``.

    With ``n = sum_e c_e`` labels the negative log posterior is ``n L_n(theta) +
    (Lambda / 2) ||theta||^2`` (plus a constant), i.e. ``n`` times the DPO loss with the
    per-label ridge ``lambda = Lambda / n`` (:func:`dpo_loss`). It is strictly convex, so
    the mode exists for every set of labels (separable or not) and is finite; it is
    computed by :func:`fit_newton` with that ridge. Directions no labelled edge sees get
    the prior mode 0, the minimum-norm convention of :func:`fit_newton`.

    Args:
      diffs: ``[A, d]``.
      counts: ``[A]`` labels per edge (zeros allowed; at least one label).
      wins: ``[A]`` wins of the first completion.
      beta: ``> 0``.
      prior_precision: ``Lambda > 0``, the prior precision of each coordinate of theta
        (the same ``prior_precision`` as the Bayes design criterion).
      max_iter, tol: as :func:`fit_newton`.

    Returns:
      :class:`NewtonResult` (``mle_exists`` then means "the mode was found").
    """
    _check_fit_args("map", prior_precision=prior_precision, max_iter=max_iter, tol=tol)
    ridge = prior_precision / jnp.sum(jnp.asarray(counts, dtype=diffs.dtype))
    return fit_newton(diffs, counts, wins, beta, ridge=ridge, max_iter=max_iter, tol=tol)


def fit_dpo_optax(
    diffs,
    counts,
    wins,
    beta,
    optimizer: str = "adam",
    learning_rate: float = 0.05,
    num_steps: int = 2000,
    label_smoothing: float = 0.0,
    ridge: float = 0.0,
    final_lr_fraction: float = 1e-3,
):
    """Gradient-trained DPO with optax (full batch on the per-edge statistics).

    The loss is TRL's ``sigmoid`` DPO loss (:func:`dpo_loss`); the learning rate
    follows a cosine decay from ``learning_rate`` to ``learning_rate *
    final_lr_fraction``, which lets Adam settle on the minimiser that
    :func:`fit_newton` computes exactly (checked in the tests).

    Args:
      diffs: ``[A, d]``.
      counts: ``[A]``.
      wins: ``[A]``.
      beta: ``> 0``.
      optimizer: one of ``"adam"``, ``"rmsprop"``, ``"sgd"``.
      learning_rate: peak step size ``> 0``.
      num_steps: number of full-batch steps ``>= 1``.
      label_smoothing: ``eps in [0, 1/2)`` (cDPO).
      ridge: per-label ridge ``>= 0``.
      final_lr_fraction: end of the cosine schedule, relative to the peak, in ``[0, 1]``.
    """
    _check_fit_args("optax", optimizer=optimizer, num_steps=num_steps, label_smoothing=label_smoothing,
                    learning_rate=learning_rate, ridge=ridge, final_lr_fraction=final_lr_fraction)
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=final_lr_fraction)
    opt = _OPTIMIZERS[optimizer](schedule)
    counts = jnp.asarray(counts, dtype=diffs.dtype)
    wins = jnp.asarray(wins, dtype=diffs.dtype)

    def loss(th):
        return dpo_loss(th, diffs, counts, wins, beta, ridge, label_smoothing)

    # Adam and RMSprop move the margins' scale u = beta theta (the loss is a function of beta theta . z):
    # their steps are about learning_rate whatever the gradient's size, and the minimiser's theta
    # grows like 1/beta, so in theta Adam stopped at |theta| = 85 of the MLE's 744 at beta = 1e-3 (gap
    # 0.16 against 4e-17), its gradient small. In u their run does not depend on beta; at beta = 1 it
    # is the same computation bit for bit. SGD's step scales with the gradient, so it stays in theta
    # (in u its step would shrink like 1/beta^2).
    scale = beta if optimizer in ("adam", "rmsprop") else 1.0
    value_and_grad_u = jax.value_and_grad(lambda u: loss(u / scale))

    def step(carry, _):
        u, state = carry
        f, g = value_and_grad_u(u)
        updates, state = opt.update(g, state, u)
        return (optax.apply_updates(u, updates), state), f

    u0 = jnp.zeros((diffs.shape[1],), diffs.dtype)
    (u, _), history = jax.lax.scan(step, (u0, opt.init(u0)), None, length=num_steps)
    theta = u / scale
    f, g = jax.value_and_grad(loss)(theta)
    return DPOResult(theta, f, jnp.linalg.norm(g), history)


def fit_newton_shared(diffs, counts, wins, beta, ridge=0.0, max_iter=100, tol=None, curvature_floor=None,
                      anchor=None, chord_iter=40, fallback_size=None, fallback_iter=None):
    r"""``vmap(fit_newton)`` over replicates that share their label counts, by a shared-curvature chord iteration.

    Monte-Carlo replicates of one design redraw the wins ``W [R, A]`` but keep the
    counts ``c [A]``, so their Hessians ``Z^T diag(c s'(u)) Z`` differ only through
    the margins ``u``. One Hessian ``M = H(anchor)`` (plus the null projector) is
    factored once, and every replicate iterates the preconditioned (chord) step
    ``theta <- theta - t M^{-1} g(theta)`` with the Armijo rule of :func:`fit_newton`.
    A step costs two ``[R, A] x [A, d]`` matrix products for all replicates together,
    instead of one ``O(A d^2)`` Hessian per replicate.

    The answer and the flags are those of :func:`fit_newton`:

    * A replicate is accepted from the chord iteration when its last accepted step moved
      the labelled margins by at most ``tol (1 + max_e |u_e|)`` *and* at most half the step before it. The iteration
      converges linearly, so the remaining error is about ``step rho / (1 - rho)``, below
      the step for an observed contraction ``rho <= 1/2`` (Newton's last step leaves a
      quadratically small error instead; with the default ``tol`` both are far below
      the Monte-Carlo error).
    * Its curvature test uses ``H(theta) >= r_min M`` on the labelled span, with
      ``r_min = min_e s'(u_e) / s'(u_e^anchor)`` over labelled edges: when
      ``r_min lambda_min(M) >= 2 curvature_floor lambda_max(H(0))`` the exact test of
      :func:`fit_newton` passes too, so ``mle_exists`` is true.
    * Every other replicate (not converged within ``chord_iter`` steps, or curvature
      not certified by the bound) is refitted by :func:`fit_newton` itself, only those,
      ``fallback_size`` at a time.

    Args:
      diffs: ``[A, d]``.
      counts: ``[A]`` labels per edge, shared by all replicates.
      wins: ``[R, A]`` wins of the first completion, one row per replicate.
      beta, ridge, max_iter, tol, curvature_floor: as :func:`fit_newton`.
      anchor: ``[d]`` where ``M`` is formed and the iterations start (its component
        outside the labelled span is dropped); default the MLE of the
        replicate-averaged wins. Pass a value that does not depend on the batch (the
        simulation's ``theta*``) to make each replicate's answer independent of which
        other replicates share its call.
      chord_iter: cap on chord steps.
      fallback_size: replicates refitted by Newton in one batch; default ``max(1, R // 8)``.
      fallback_iter: Newton iteration cap of the refits; default ``max_iter``. A lower cap
        stops refits of separable labels early (Newton runs them to the cap while the
        iterates run off), at the price of flagging an existing MLE that needs more
        Newton steps than the cap: only for callers that settle every flagged replicate
        exactly themselves (``synthetic.monte_carlo``: the ridge-path limit, which is the
        MLE where it exists).

    Returns:
      :class:`NewtonResult` with a leading ``[R]`` axis; ``num_iter`` counts chord
      steps, plus Newton steps for refitted replicates.
    """
    _check_fit_args("newton", ridge=ridge, max_iter=max_iter, tol=tol, curvature_floor=curvature_floor)
    dtype, eps, tol, curvature_floor, counts, wins = _newton_setup(diffs, counts, wins, tol, curvature_floor)
    if wins.ndim != 2 or wins.shape[1] != diffs.shape[0]:
        raise ValueError(f"wins must have shape [R, {diffs.shape[0]}] (one row per replicate), got {list(wins.shape)}")
    r = wins.shape[0]
    fallback_size = max(1, r // 8) if fallback_size is None else min(int(fallback_size), r)
    if anchor is None:
        anchor = fit_newton(diffs, counts, jnp.mean(wins, axis=0), beta, ridge, max_iter, tol, curvature_floor).theta
    chord = _chord_setup(diffs, counts, wins, beta, ridge, anchor, dtype)
    final = _chord_iterate(chord, diffs, counts, wins, beta, ridge, tol, eps, chord_iter, dtype)
    result, accept = _chord_result(chord, final, diffs, counts, wins, beta, ridge, curvature_floor)
    refit_iter = max_iter if fallback_iter is None else min(int(fallback_iter), max_iter)
    newton = jax.vmap(lambda w: fit_newton(diffs, counts, w, beta, ridge, refit_iter, tol, curvature_floor))
    return _refit_flagged(result, ~accept, newton, wins, final.iters, fallback_size)


class _Chord(NamedTuple):
    """The shared preconditioner of :func:`fit_newton_shared`, formed once at the anchor."""

    anchor: jax.Array  # [d], null component dropped
    margins: jax.Array  # [A] beta z_e . anchor
    curvature: jax.Array  # [A] s'(margins)
    chol: jax.Array  # Cholesky factor of M + ridge Id + P_null
    chol_ok: jax.Array
    scale: jax.Array  # lambda_max(H(0))
    lam_m: jax.Array  # lambda_min of M on the labelled span
    p_null: jax.Array  # [d, d] projector on the directions no labelled edge sees


class _ChordState(NamedTuple):
    """Loop state of the chord iteration, one row per replicate (``it`` is shared)."""

    theta: jax.Array  # [R, d]
    margins: jax.Array  # [R, A]
    loss: jax.Array  # [R]
    sig: jax.Array  # [R, A]
    it: jax.Array  # ()
    last: jax.Array  # [R] last accepted step norm
    done: jax.Array  # [R]
    iters: jax.Array  # [R] steps taken while not done


class _ChordBacktrack(NamedTuple):
    t: jax.Array  # [R]
    loss: jax.Array  # [R]
    sig: jax.Array  # [R, A]
    k: jax.Array


def _chord_setup(diffs, counts, wins, beta, ridge, anchor, dtype) -> _Chord:
    d = diffs.shape[1]
    n = jnp.sum(counts)
    p_null = _null_projector(diffs, counts)
    anchor = jnp.asarray(anchor, dtype)
    anchor = jnp.where(jnp.all(jnp.isfinite(anchor)), anchor, 0.0)
    anchor = anchor - p_null @ anchor  # iterates keep the anchor's null component: drop it (minimum norm)
    u_bar = beta * (diffs @ anchor)
    s_bar = jnp.exp(jax.nn.log_sigmoid(u_bar) + jax.nn.log_sigmoid(-u_bar))
    m = beta**2 * (diffs.T * (counts * s_bar)) @ diffs / n  # H(anchor) without the ridge
    chol = jnp.linalg.cholesky(m + ridge * jnp.eye(d, dtype=dtype) + p_null)
    _, h0 = _grad_hess(jnp.zeros((d,), dtype), diffs, counts, wins[0], beta, 0.0)
    scale = jnp.max(jnp.linalg.eigvalsh(h0))
    lam_m = jnp.min(jnp.linalg.eigvalsh(m + scale * p_null))
    return _Chord(anchor, u_bar, s_bar, chol, jnp.all(jnp.isfinite(chol)), scale, lam_m, p_null)


def _chord_stats(u, theta, counts, wins, ridge, n):
    """Per-replicate loss and sigmoid from one exp.

    ``softplus(-u) = softplus(u) - u`` and ``sigmoid(u) = 1 / (1 + e^-u)``, with
    ``e = exp(-|u|)`` for stability.
    """
    e = jnp.exp(-jnp.abs(u))
    softplus = jnp.maximum(u, 0.0) + jnp.log1p(e)
    sig = jnp.where(u >= 0, 1.0, e) / (1.0 + e)
    nll = jnp.sum(counts * softplus - wins * u, axis=1)
    return nll / n + 0.5 * ridge * jnp.sum(theta * theta, axis=1), sig


def _chord_iterate(chord: _Chord, diffs, counts, wins, beta, ridge, tol, eps, chord_iter, dtype) -> _ChordState:
    """Preconditioned steps ``theta <- theta - t M^-1 g`` with per-replicate Armijo backtracking."""
    r, n = wins.shape[0], jnp.sum(counts)
    labelled = counts > 0

    def stats(u, theta):
        return _chord_stats(u, theta, counts, wins, ridge, n)

    def body(state: _ChordState) -> _ChordState:
        theta, u, f, done = state.theta, state.margins, state.loss, state.done
        g = beta * ((counts * state.sig - wins) @ diffs) / n + ridge * theta
        delta = -jax.scipy.linalg.cho_solve((chord.chol, True), g.T).T
        delta = delta - delta @ chord.p_null  # in the labelled span, as fit_newton's steps
        delta = jnp.where(jnp.all(jnp.isfinite(delta), axis=1, keepdims=True), delta, 0.0)
        zd = beta * (delta @ diffs.T)
        slope = jnp.sum(g * delta, axis=1)
        slack = 10.0 * eps * (1.0 + jnp.abs(f))

        def ok(t, f_new):
            return jnp.isfinite(f_new) & (f_new <= f + 0.25 * t * slope + slack)

        def halve(ls: _ChordBacktrack) -> _ChordBacktrack:
            t = jnp.where(ok(ls.t, ls.loss), ls.t, 0.5 * ls.t)
            return _ChordBacktrack(t, *stats(u + t[:, None] * zd, theta + t[:, None] * delta), ls.k + 1)

        init = _ChordBacktrack(jnp.ones((r,), dtype), *stats(u + zd, theta + delta), 0)
        ls = jax.lax.while_loop(lambda ls: jnp.any(~ok(ls.t, ls.loss) & ~done) & (ls.k < 60), halve, init)
        t = jnp.where(ok(ls.t, ls.loss) & ~done, ls.t, 0.0)
        moved = t > 0
        new_theta = theta + t[:, None] * delta
        # the step's change of the labelled margins, relative to them (as fit_newton)
        step = t * jnp.max(jnp.where(labelled, jnp.abs(zd), 0.0), axis=1)
        reach = jnp.max(jnp.where(labelled, jnp.abs(u + t[:, None] * zd), 0.0), axis=1)
        now_done = ~done & moved & (step <= tol * (1.0 + reach)) & (step <= 0.5 * state.last)
        return _ChordState(new_theta, u + t[:, None] * zd, jnp.where(moved, ls.loss, f),
                           jnp.where(moved[:, None], ls.sig, state.sig), state.it + 1,
                           jnp.where(moved, step, state.last), done | now_done, state.iters + (~done).astype(jnp.int32))

    theta0 = jnp.broadcast_to(chord.anchor, (r, diffs.shape[1]))
    u0 = jnp.broadcast_to(chord.margins, (r, diffs.shape[0]))
    init = _ChordState(theta0, u0, *stats(u0, theta0), jnp.asarray(0, jnp.int32), jnp.full((r,), jnp.inf, dtype),
                       jnp.zeros((r,), bool), jnp.zeros((r,), jnp.int32))
    return jax.lax.while_loop(lambda s: (s.it < chord_iter) & ~jnp.all(s.done), body, init)


def _chord_result(chord: _Chord, final: _ChordState, diffs, counts, wins, beta, ridge, curvature_floor):
    """The chord answers as a :class:`NewtonResult` and which replicates are accepted (converged and certified)."""
    labelled = counts > 0
    done = final.done & chord.chol_ok
    # Curvature certificate: H(theta) >= r_min M on the labelled span.
    s = final.sig * (1.0 - final.sig)
    ratio = jnp.where(labelled, s / jnp.where(labelled, chord.curvature, 1.0), jnp.inf)
    r_min = jnp.min(ratio, axis=1)
    certified = (ridge > 0) | (r_min * chord.lam_m >= 2.0 * curvature_floor * chord.scale)
    accept = done & certified
    g = beta * ((counts * final.sig - wins) @ diffs) / jnp.sum(counts) + ridge * final.theta
    max_margin = jnp.max(jnp.where(labelled, jnp.abs(final.margins), 0.0), axis=1)
    result = NewtonResult(final.theta, final.loss, jnp.linalg.norm(g, axis=1), final.iters, accept, accept, max_margin)
    return result, accept


def _refit_flagged(result: NewtonResult, todo, newton, wins, iters, fallback_size) -> NewtonResult:
    """Refit the flagged replicates by ``newton`` (vmapped :func:`fit_newton`), ``fallback_size`` at a time."""
    r = wins.shape[0]

    def refit(state):
        # one compiled batch shape; out-of-range rows are dropped
        res, todo = state
        idx = jnp.nonzero(todo, size=fallback_size, fill_value=0)[0]
        target = jnp.where(jnp.arange(fallback_size) < jnp.sum(todo), idx, r)
        new = newton(wins[idx])
        new = new._replace(num_iter=new.num_iter + iters[idx])
        res = NewtonResult(*(a.at[target].set(b.astype(a.dtype), mode="drop") for a, b in zip(res, new)))
        return res, todo.at[target].set(False, mode="drop")

    return jax.lax.while_loop(lambda state: jnp.any(state[1]), refit, (result, todo))[0]


# ---------------------------------------------------------------------------------------
# The unpenalised MLE at the end of the ridge path (host-side, exact up to rounding)
# ---------------------------------------------------------------------------------------


class RidgeLimit(NamedTuple):
    """The limit of the ridge path ``theta_lambda`` (``lambda -> 0``) of DPO on fixed labels.

    ``theta_lambda = theta_finite + sum_k tau_k(lambda) v_k + o(1)`` with
    ``tau_1 >> tau_2 >> ... -> infinity`` (``tau_1 ~ log(1/lambda)``,
    ``tau_{k+1} ~ log tau_k``); see ``theory/SEPARATION.md``. When the MLE exists,
    ``directions`` is empty and ``finite`` is the (minimum-norm) MLE.

    Attributes:
      finite: ``[d]`` the finite part (the MLE of the overlapping labels plus each
        level's finite correction).
      directions: ``[L, d]`` the divergent directions ``v_1, ..., v_L`` (mutually
        orthogonal; ``L = 0`` when the MLE exists).
      separated: ``[A]`` bool, edges with a label on the separated side (a label
        whose predicted probability tends to 1).
      mle_exists: no label is separated (Albert and Anderson 1984).
      ok: every check of the construction passed (see :func:`ridge_path_limit`);
        when ``False`` the limit is not used and ``message`` says why.
      message: ``""`` or the failed check.
    """

    finite: np.ndarray
    directions: np.ndarray
    separated: np.ndarray
    mle_exists: bool
    ok: bool
    message: str


def _label_rows(diffs, counts, wins, beta):
    """One row per (edge, side) with labels: ``(beta z_e, wins)`` and ``(-beta z_e, losses)``."""
    z = np.asarray(diffs, np.float64)
    c = np.asarray(counts, np.float64)
    w = np.asarray(wins, np.float64)
    pos = (c > 0) & (w > 0)
    neg = (c > 0) & (c - w > 0)
    rows = np.concatenate([beta * z[pos], -beta * z[neg]])
    weight = np.concatenate([w[pos], (c - w)[neg]])
    edge = np.concatenate([np.flatnonzero(pos), np.flatnonzero(neg)])
    return rows, weight, edge, pos.sum()


def _span_basis(x, rtol=1e-10):
    """Orthonormal basis ``[d, r]`` of the row span of ``x [m, d]`` (numerical rank at ``rtol``), from
    its unit rows: a threshold relative to the largest row left out a direction only rows 1e-10 as
    long see (rows of very different scales), and the fits on the span ignored it."""
    d = x.shape[1]
    norms = np.linalg.norm(x, axis=1)
    x = x[norms > 0] / norms[norms > 0][:, None]
    if x.shape[0] == 0:
        return np.zeros((d, 0))
    if x.shape[0] > 4 * d:  # tall: the d x d Gram's eigenvectors (40x faster than an SVD at 1000 x 100)
        lam, vec = np.linalg.eigh(x.T @ x)
        return vec[:, lam > max(rtol, 1e-7) ** 2 * max(lam[-1], 1e-300)]
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    if sv.size == 0 or sv[0] == 0:
        return np.zeros((d, 0))
    return vt[sv > rtol * sv[0]].T


def _separable_rows(rows, orth=None, max_rounds=8):
    """Rows ``i`` for which some ``d`` has ``rows @ d >= 0``, ``rows_i . d > 0`` (and ``orth . d <= 0``).

    The cone of such ``d`` is convex, so the sum of separating directions separates the
    union of their rows. Rounds of the feasibility program of :func:`_any_separable`
    (``rows @ d >= 0``, ``orth . d <= 0``, ``sum_{i in R} rows_i . d >= 1`` over the rows
    ``R`` not yet found; HiGHS) each add the rows their ``d`` makes positive, until the
    program is infeasible: then no ``d`` makes a row of ``R`` positive, and the rows
    found are all the separable ones. Usually one or two rounds; a round that finds no
    row (rounding), or more than ``max_rounds`` rounds, hands over to
    :func:`_separable_rows_lp`, the one-program answer, which is also used directly for
    ``m <= 8 dim`` rows (there the one program, with ``m`` more variables, is faster
    than the rounds: 6 ms against 20-60 ms at 300 x 100; 160 ms against 35 ms at 3,000 x 100).

    Returns:
      ``(separable [m] bool, d [dim] or None)``; ``None`` when a program failed.
    """
    m, dim = rows.shape
    if m <= 8 * dim:
        return _separable_rows_lp(rows, orth)
    norms = np.linalg.norm(rows, axis=1)
    a = rows / np.where(norms > 0, norms, 1.0)[:, None]
    extra = [] if orth is None else [orth / max(np.linalg.norm(orth), 1e-300)]
    found, d_sum = np.zeros(m, bool), np.zeros(dim)
    for _ in range(max_rounds):
        rest = ~found
        if not rest.any():
            break
        res = scipy.optimize.linprog(np.zeros(dim), A_ub=np.vstack([-a, -a[rest].sum(axis=0, keepdims=True), *extra]),
                                     b_ub=np.r_[np.zeros(m), -1.0, np.zeros(len(extra))], bounds=[(None, None)] * dim,
                                     method="highs")
        if res.status == 2:  # infeasible: no row of R can be made positive
            return found, d_sum
        if res.status != 0:
            return np.zeros(m, bool), None
        marg = a @ res.x
        new = rest & (marg > 1e-6 * max(1.0, marg.max()))
        if not new.any():
            break
        found |= new
        d_sum = d_sum + res.x / marg.max()
    return _separable_rows_lp(a, orth)


def _separable_rows_lp(rows, orth=None):
    """:func:`_separable_rows` by one linear program (HiGHS): maximise ``sum_i s_i`` over
    ``rows_i . d >= s_i``, ``0 <= s_i <= 1`` (and ``orth . d <= 0``); the optimum is
    ``s_i = 1`` exactly on the separable rows and 0 elsewhere. Slower than the rounds
    (``m`` more variables); kept as their fallback and as their oracle in the tests."""
    m, dim = rows.shape
    if m == 0:
        return np.zeros(0, bool), np.zeros(dim)
    norms = np.linalg.norm(rows, axis=1)
    a = rows / np.where(norms > 0, norms, 1.0)[:, None]
    a_ub = scipy.sparse.hstack([scipy.sparse.csr_array(-a), scipy.sparse.eye_array(m, format="csr")], format="csr")
    b_ub = np.zeros(m)
    if orth is not None:
        extra = scipy.sparse.csr_array(np.r_[orth / max(np.linalg.norm(orth), 1e-300), np.zeros(m)][None, :])
        a_ub = scipy.sparse.vstack([a_ub, extra], format="csr")
        b_ub = np.r_[b_ub, 0.0]
    res = scipy.optimize.linprog(np.r_[np.zeros(dim), -np.ones(m)], A_ub=a_ub, b_ub=b_ub,
                                 bounds=[(None, None)] * dim + [(0.0, 1.0)] * m, method="highs")
    if res.status != 0:
        return np.zeros(m, bool), None
    s = res.x[dim:]
    return s > 0.5, res.x[:dim]


def _separable_one_sided(rows, two_sided_diffs, on_two_sided):
    """:func:`_separable_rows` of all ``rows``, by a smaller program on the one-sided rows.

    An edge with both outcomes contributes ``a`` and ``-a``, so every separating ``d``
    has ``a . d = 0``: ``d`` lies in the orthogonal complement ``C`` of the two-sided
    edges' span, those rows are never separable, and neither is a row inside that span.
    The program then runs on the remaining rows in coordinates of ``C`` (same optimum).

    Args:
      rows: ``[m, dim]`` label rows; two_sided_diffs: ``[t, dim]``; on_two_sided: ``[m]``
        bool, rows of two-sided edges.

    Returns:
      ``(separable [m] bool, d [dim] or None)`` as :func:`_separable_rows`.
    """
    m, dim = rows.shape
    q_t = _span_basis(two_sided_diffs)
    if q_t.shape[1] == 0:
        return _separable_rows(rows)
    comp = np.linalg.svd(q_t, full_matrices=True)[0][:, q_t.shape[1]:]  # [dim, dim - r]: an orthonormal basis of C
    separable = np.zeros(m, bool)
    if comp.shape[1] == 0:
        return separable, np.zeros(dim)
    red = rows @ comp
    cand = ~on_two_sided & (np.linalg.norm(red, axis=1) > 1e-9 * np.linalg.norm(rows, axis=1))
    sep, y = _separable_rows(red[cand])
    if y is None:
        return separable, None
    separable[np.flatnonzero(cand)[sep]] = True
    return separable, comp @ y


def mle_exists_exact(diffs, counts, wins) -> bool:
    """Whether the unpenalised DPO MLE exists: no direction separates the labels (Albert and Anderson 1984).

    Exact up to the linear program's tolerance (HiGHS, 1e-7). Shortcut: when the edges
    with both a win and a loss already span every labelled edge difference, no direction
    can separate (it would have to be orthogonal to all of them), and no program is solved
    (:func:`_covered_by_two_sided`: each one-sided row against the span, at its own length).

    Args:
      diffs: ``[A, d]``; counts: ``[A]``; wins: ``[A]`` (``beta > 0`` does not matter).
    """
    z = np.asarray(diffs, np.float64)
    c = np.asarray(counts, np.float64)
    w = np.asarray(wins, np.float64)
    labelled = c > 0
    two_sided = labelled & (w > 0) & (c - w > 0)
    if _covered_by_two_sided(z, labelled, two_sided, data_precision(diffs)):
        return True
    rows, _, _, _ = _label_rows(z, c, w, 1.0)
    return not _any_separable(rows)


def _covered_by_two_sided(z, labelled, two_sided, dtype) -> bool:
    """Whether every labelled edge difference lies in the span of the edges with both outcomes
    (then no direction can separate, and no program is needed): each one-sided row's part outside
    that span, relative to the row's own length, at most 1e-9. The span's basis is of unit rows
    (:func:`theory.information.unit_rows_eigh`: noise cannot enter it, so the shortcut never hides a separating direction; a direction it
    drops only sends the question to the program). A rank comparison had thresholds relative to
    the top eigenvalue, which grows with the number of rows: with 1,000 two-sided edges a
    one-sided edge 1e-6 out of their plane was called covered."""
    one = labelled & ~two_sided
    rows = z[one]
    if rows.shape[0] == 0:
        return True
    norms = np.linalg.norm(rows, axis=1)
    eig = unit_rows_eigh(z[two_sided], dtype)
    if eig is None:
        return bool(np.all(norms == 0))
    q = eig[1][:, eig[2]]
    resid = np.linalg.norm(rows - (rows @ q) @ q.T, axis=1)
    return bool(np.all(resid <= 1e-9 * norms))


def _any_separable(rows) -> bool:
    """Feasibility LP: some ``d`` has ``rows @ d >= 0`` and ``1^T rows d >= 1`` (cheaper than :func:`_separable_rows`)."""
    if rows.shape[0] == 0:
        return False
    norms = np.linalg.norm(rows, axis=1)
    a = rows / np.where(norms > 0, norms, 1.0)[:, None]
    dim = a.shape[1]
    res = scipy.optimize.linprog(np.zeros(dim), A_ub=np.vstack([-a, -a.sum(axis=0, keepdims=True)]),
                                 b_ub=np.r_[np.zeros(a.shape[0]), -1.0], bounds=[(None, None)] * dim, method="highs")
    if res.status not in (0, 2):
        raise RuntimeError(f"the separation linear program failed: {res.message}")
    return res.status == 0


def _svm(b):
    """Hard-margin SVM without intercept, ``argmin ||v||^2`` s.t. ``b_i . v >= 1``, and its dual.

    Exactly (finite active-set termination) via the non-negative least squares
    ``min_{lam >= 0} ||b^T lam||^2 + (1^T lam - 1)^2`` (Lawson and Hanson): its KKT
    conditions with ``eta = lam / (1 - 1^T lam)`` are the SVM's (``v = b^T eta``,
    ``b v >= 1``, ``eta >= 0``, ``eta_i (b_i . v - 1) = 0``).

    Solved for ``b / s`` (``s``: the largest row norm), then ``v = v' / s``, ``eta = eta' / s^2``:
    with rows of norm ``1e-6`` the unscaled program's ``1 - 1^T lam`` is ``1e-12``, left with
    ``eta``'s relative error ``1e-4``, and the margin check failed.
    """
    scale = float(np.linalg.norm(b, axis=1).max(initial=0.0))
    if not scale > 0:
        return None, None
    v, eta = _svm_unit(b / scale)
    return (None, None) if v is None else (v / scale, eta / scale**2)


def _svm_unit(b):
    """:func:`_svm` for rows whose largest norm is 1."""
    m, dim = b.shape
    mat = np.vstack([b.T, np.ones((1, m))])
    target = np.r_[np.zeros(dim), 1.0]

    def solution(lam, clean=False):
        kappa = 1.0 - lam.sum()
        if not kappa > 0:
            return None, None, np.inf
        eta = lam / kappa
        # multipliers below 1e-12 of the largest are the solver's rounding (BVLS leaves 1e-31 on inactive rows)
        support = eta > 1e-12 * max(float(eta.max(initial=0.0)), 0.0)
        if clean:
            eta = np.where(support, eta, 0.0)
        v = b.T @ eta
        marg = b @ v
        # the KKT conditions' worst violation: primal (b v >= 1) and complementary slackness
        slack = max(float(1.0 - marg.min()), float(np.max(np.abs(marg - 1.0)[support], initial=0.0)))
        return v, eta, slack

    # SciPy's NNLS (reimplemented since 1.12) can stop at a point that is not the minimiser, silently
    # (scipy/scipy#25389; here SVM margins 0.53-0.93 on 0.8% of the separable replicates of Figure 1's
    # tabular world at n = 100, whose gaps were then dropped): its KKT conditions are checked, and
    # where they fail the bounded-variable least squares of lsq_linear (BVLS) solves it again.
    v, eta, slack = solution(scipy.optimize.nnls(mat, target, maxiter=50 * (m + dim))[0])
    if not slack <= 1e-9:
        res = scipy.optimize.lsq_linear(mat, target, bounds=(0.0, np.inf), method="bvls", tol=1e-15, max_iter=50 * (m + dim))
        v2, eta2, slack2 = solution(np.maximum(res.x, 0.0), clean=True)
        if slack2 < slack:
            v, eta, slack = v2, eta2, slack2
    if not slack <= 1e-9 and eta is not None:
        # large ||v|| (a direction only short rows see) leaves 1 - 1^T lam ~ 1 / ||v||^2 to cancellation:
        # the support is right, the values are not; v is then the least-norm solution of b_S v = 1
        sup = eta > 1e-12 * float(eta.max(initial=0.0))
        v3 = np.linalg.lstsq(b[sup], np.ones(int(sup.sum())), rcond=None)[0]
        eta3 = np.zeros(m)
        eta3[sup] = np.linalg.lstsq(b[sup].T, v3, rcond=None)[0]
        marg = b @ v3
        slack3 = max(float(1.0 - marg.min()), float(np.max(np.abs(marg - 1.0)[sup], initial=0.0)))
        if eta3.min() >= 0 and slack3 < slack:
            v, eta = v3, eta3
    return v, eta


def _damped_newton(value, grad_hess, y0, max_iter=200):
    """Minimise a smooth strictly convex ``value(y) -> (f, aux)`` by damped Newton with Armijo backtracking (host, float64).

    ``grad_hess(y, aux) -> (g, h)``. A trial step whose value overflows is rejected like
    any other that does not decrease enough (no warning). Returns ``(y, grad_norm)``.
    """
    def f(y):
        with np.errstate(over="ignore"):
            return value(y)

    y = y0.copy()
    fy, aux = f(y)
    g, h = grad_hess(y, aux)
    for _ in range(max_iter):
        try:  # Jacobi-scaled: a coordinate only short rows see has curvature 1e-24 of the others at length 1e-12
            sc = 1.0 / np.sqrt(np.maximum(np.diag(h), 1e-300))
            step = -sc * np.linalg.solve(sc[:, None] * h * sc[None, :], sc * g)
        except np.linalg.LinAlgError:
            break
        t, slope = 1.0, float(g @ step)
        if -slope <= 1e-24 * (1.0 + abs(fy)):  # Newton decrement: affine invariant, so short rows count like long ones
            break
        if -slope <= 1e-12 * (1.0 + abs(fy)):
            # the decrease is below f's rounding, so Armijo cannot see it (an ill-conditioned h stalled here with a
            # gradient 1e-7): full Newton steps, well inside their quadratic region, while the gradient falls
            y1 = y + step
            f1, aux1 = f(y1)
            g1, h1 = grad_hess(y1, aux1) if np.isfinite(f1) else (g, h)
            if not (np.isfinite(f1) and np.linalg.norm(g1) < np.linalg.norm(g)):
                break
            y, fy, aux, g, h = y1, f1, aux1, g1, h1
            continue
        while t > 1e-12:
            f1, aux1 = f(y + t * step)
            if np.isfinite(f1) and f1 <= fy + 0.25 * t * slope + 1e-15 * (1 + abs(fy)):
                break
            t *= 0.5
        else:
            break
        y, fy, aux = y + t * step, f1, aux1
        g, h = grad_hess(y, aux)
        if np.linalg.norm(t * step) <= 1e-15 * (1 + np.linalg.norm(y)):  # rounding: a huge coordinate stops nothing else
            break
    return y, float(np.linalg.norm(g))


def _exp_fit(b, logq, v, y0, max_iter=200):
    """``argmin_y sum_i exp(logq_i - c_i . y) + v_c . y`` by damped Newton (strictly convex, coercive).

    ``b`` holds the rows ``c_i`` in coordinates of a basis; returns ``(y, grad_norm)``.
    """

    def value(y):
        e = logq - b @ y
        return float(np.sum(np.exp(e)) + v @ y), e

    def grad_hess(y, e):
        return -(b.T @ np.exp(e)) + v, (b.T * np.exp(e)) @ b

    return _damped_newton(value, grad_hess, y0, max_iter)


def _logistic_fit(c, k, max_iter=200):
    """``argmin_y sum_i k_i log(1 + exp(-c_i . y))`` by damped Newton (host, float64), from ``y = 0``.

    ``c [m, r]`` holds rows in coordinates of an orthonormal basis of their span, on
    which the minimiser exists (no separation) and is unique. Returns ``(y, grad_norm)``.
    """

    def value(y):
        m = c @ y
        return float(k @ np.logaddexp(0.0, -m)), m

    def grad_hess(y, m):
        s = scipy.special.expit(m)
        return -(c.T @ (k * scipy.special.expit(-m))), (c.T * (k * s * (1.0 - s))) @ c

    return _damped_newton(value, grad_hess, np.zeros(c.shape[1]), max_iter)


def ridge_path_limit(diffs, counts, wins, beta, tol=1e-8) -> RidgeLimit:
    r"""Exact limit of the ridge path of DPO (logistic regression without intercept) as ``lambda -> 0``.

    Let the labels be rows ``a_i`` (``beta z_e`` for a win of the first completion of
    ``e``, ``-beta z_e`` for a loss) with multiplicities ``k_i``. The construction
    (``theory/SEPARATION.md``):

    0. ``S`` = rows that some ``d`` with ``a_j . d >= 0`` for all ``j`` makes positive
       (one LP); ``N`` = the rest. ``u*`` = the MLE on ``N`` alone (it exists, and is
       unique on ``V_N = span(N)``). The separated rows enter the next step through
       ``b_i = P_{V_N^perp} a_i`` and ``q_i = k_i exp(-a_i . u*)``.
    1. Level ``k``: ``v_k = argmin ||v||^2`` s.t. ``b_i . v >= 1`` (an SVM, by NNLS);
       ``A`` its active rows; ``D`` the active rows that some ``d`` with ``b_A d >= 0``,
       ``v_k . d = 0`` makes positive (an LP; the rows whose multiplier is 0 in every
       dual solution); ``A+ = A \ D``. The finite correction ``r_k`` minimises
       ``sum_{A+} q_i exp(-b_i . r) + v_k . r`` over ``span(b_{A+})`` (it exists there).
    2. If ``D`` is empty, stop; else recurse on ``D`` with ``b_i`` projected off
       ``span(b_{A+})`` and ``q_i <- q_i exp(-b_i . r_k)``.

    Then ``theta_lambda = u* + sum_k r_k + sum_k tau_k v_k + o(1)``, with
    ``tau_1 + log tau_1 = log(1 / (n lambda))`` and ``tau_{k+1} + log tau_{k+1} = log tau_k``
    to leading order.

    Checks (``ok = False`` with a message if one fails, never a silent answer): the LPs
    and the NNLS solve, ``min_i b_i . v_k >= 1 - tol``, ``v_k`` in ``span(b_{A+})``, the
    finite fits' gradients below ``tol``, the projected rows of ``D`` not vanishing,
    and the fit on ``N`` converging.

    Args:
      diffs: ``[A, d]``; counts: ``[A]``; wins: ``[A]``; beta: ``> 0``.
      tol: tolerance of the checks and of the active set (relative, float64).

    Returns:
      :class:`RidgeLimit` (float64 numpy arrays).
    """
    z = np.asarray(diffs, np.float64)
    c = np.asarray(counts, np.float64)
    w = np.asarray(wins, np.float64)
    dim = z.shape[1]
    rows, weight, edge, _ = _label_rows(z, c, w, float(beta))
    sep_edges = np.zeros(z.shape[0], bool)

    def fail(msg, u=np.zeros(dim), dirs=()):
        return RidgeLimit(u, np.asarray(dirs, np.float64).reshape(-1, dim), sep_edges, not sep_edges.any(), False, msg)

    labelled = c > 0
    two_sided = labelled & (w > 0) & (c - w > 0)
    if _covered_by_two_sided(z, labelled, two_sided, data_precision(diffs)):  # nothing can separate (as in mle_exists_exact)
        separable, d_lp = np.zeros(rows.shape[0], bool), np.zeros(dim)
    else:  # one LP finds the separable rows, or none (callers come here mostly with separable labels)
        separable, d_lp = _separable_one_sided(rows, z[two_sided], two_sided[edge])
    if d_lp is None:
        raise RuntimeError("the separation linear program failed")
    sep_edges[edge[separable]] = True
    if separable.any():  # the LP's direction must separate: a_j . d >= 0 up to rounding
        margins = rows @ d_lp
        if margins.min() < -tol * np.abs(margins).max():
            return fail("the separation LP's direction does not separate the rows")
    # Level 0: the MLE on the overlapping rows N (exists: no direction separates them).
    over = ~separable
    # In coordinates of span(N) (where it is unique): the minimum-norm MLE on N.
    q_n = _span_basis(rows[over])
    if over.any():
        y, gnorm = _logistic_fit(rows[over] @ q_n, weight[over])
        u = q_n @ y
        if not gnorm <= tol:
            return fail("the fit on the overlapping labels did not converge", u)
    else:
        u = np.zeros(dim)
    if not separable.any():
        return RidgeLimit(u, np.zeros((0, dim)), sep_edges, True, True, "")
    b = rows[separable] - (rows[separable] @ q_n) @ q_n.T
    logq = np.log(weight[separable]) - rows[separable] @ u
    finite, dirs = u.copy(), []
    own = np.linalg.norm(rows[separable], axis=1)  # each row's own length: edges of any scale alike
    while b.shape[0]:
        if np.any(np.linalg.norm(b, axis=1) <= tol * own):
            return fail(f"level {len(dirs) + 1}: a separated row has no component left", finite, dirs)
        v, eta = _svm(b)
        if v is None:
            return fail(f"level {len(dirs) + 1}: the SVM (NNLS) failed", finite, dirs)
        marg = b @ v
        if marg.min() < 1 - tol:
            return fail(f"level {len(dirs) + 1}: the SVM margin is {marg.min():.3g} < 1", finite, dirs)
        dirs.append(v)
        active = marg <= 1 + tol
        deg, d_lp = _separable_rows(b[active], orth=v)
        if d_lp is None:
            return fail(f"level {len(dirs)}: the degeneracy LP failed", finite, dirs)
        plus = np.flatnonzero(active)[~deg]
        nxt = np.flatnonzero(active)[deg]
        basis = _span_basis(b[plus])
        if basis.shape[1] == 0 or np.linalg.norm(v - basis @ (basis.T @ v)) > tol * np.linalg.norm(v):
            return fail(f"level {len(dirs)}: v is not in the span of its supporting rows", finite, dirs)
        bc = b[plus] @ basis
        # start from the SVM's multipliers: b_i . r = log(q_i / eta_i) where eta_i > 0
        pos = eta[plus] > 0
        y0 = np.linalg.lstsq(bc[pos], logq[plus][pos] - np.log(eta[plus][pos]), rcond=None)[0] if pos.any() else np.zeros(basis.shape[1])
        y, gnorm = _exp_fit(bc, logq[plus], basis.T @ v, y0)
        if not gnorm <= tol * (1 + np.linalg.norm(v)):
            return fail(f"level {len(dirs)}: the finite fit did not converge (gradient {gnorm:.3g})", finite, dirs)
        r = basis @ y
        finite = finite + r
        logq, own = logq[nxt] - b[nxt] @ r, own[nxt]
        b = b[nxt] - (b[nxt] @ basis) @ basis.T
    return RidgeLimit(finite, np.asarray(dirs).reshape(-1, dim), sep_edges, False, True, "")


def ridge_limit_log_probs(limit: RidgeLimit, features, log_ref, tie_rtol=1e-9):
    """Log-probabilities ``[m, K]`` of the limit policy ``lim pi_{theta_lambda}`` on a pool.

    On each prompt the mass goes to the completions that maximise ``v_1 . phi``, among
    them those that maximise ``v_2 . phi``, and so on (lexicographic); on the survivors
    ``pi ∝ pi0 exp(theta_finite . phi)``; elsewhere ``log pi = -inf``. Scores, of the features
    centred within each prompt, within ``||v_k|| max(tie_rtol D_x, 64 eps max_y ||phi(x, y)||)``
    count as tied, ``D_x = max_y ||phi(x, y) - mean_y phi(x, y)||`` the prompt's own spread: closer
    differences are below double precision's resolution of the directions, or the rounding of
    the features themselves. (Relative to each prompt's own largest ``|v_k . phi|``, a prompt the
    direction does not touch, where its scores are rounding noise of 1e-16, had its noise
    decide the limit: all mass on one arbitrary completion. Relative to the pool's largest
    feature norm, one prompt of large features, even of weight 0, made real differences of
    every other prompt ties (a gap of 0.005 for 0.598); relative to the prompt's own largest
    norm, so did a feature offset common to its completions, which moves no policy.)
    """
    feats = np.asarray(features, np.float64)
    ref = np.asarray(log_ref, np.float64)
    keep = np.isfinite(ref)
    present = keep[..., None]
    count = np.maximum(keep.sum(axis=1), 1)[:, None]
    centred = feats - (np.where(present, feats, 0.0).sum(axis=1) / count)[:, None, :]
    spread = np.where(keep, np.linalg.norm(centred, axis=-1), 0.0).max(axis=1, keepdims=True)  # [m, 1], per prompt
    size = np.where(keep, np.linalg.norm(feats, axis=-1), 0.0).max(axis=1, keepdims=True)
    scale = np.maximum(tie_rtol * spread, 64.0 * np.finfo(np.float64).eps * size)
    for v in np.asarray(limit.directions):
        s = centred @ v
        top = np.where(keep, s, -np.inf).max(axis=1, keepdims=True)
        tol = float(np.linalg.norm(v)) * scale
        keep = keep & (s >= top - tol)
    logits = np.where(keep, np.where(keep, ref, 0.0) + feats @ limit.finite, -np.inf)
    mx = logits.max(axis=1, keepdims=True)
    return logits - (mx + np.log(np.sum(np.exp(logits - mx), axis=1, keepdims=True)))


def ridge_limit_gap(limit: RidgeLimit, theta_star, features, log_ref, beta, rho) -> float:
    """``beta sum_x rho_x KL(pi_lim(.|x) || pi_theta*(.|x))`` for the limit policy (``0 log 0 = 0``)."""
    from theory.policy import policy_log_probs_kernel

    logp = ridge_limit_log_probs(limit, features, log_ref)
    logp_star = np.asarray(policy_log_probs_kernel(jnp.asarray(theta_star, jnp.float64), jnp.asarray(features, jnp.float64),
                                             jnp.asarray(log_ref, jnp.float64)), np.float64)
    p = np.exp(logp)
    on = p > 0
    kl = np.sum(np.where(on, p * (np.where(on, logp, 0.0) - np.where(on, logp_star, 0.0)), 0.0), axis=1)
    return float(beta) * float(np.dot(np.asarray(rho, np.float64), np.maximum(kl, 0.0)))
