"""Argument checks shared by the public functions.

The decorator :func:`theory.checked.checked` builds every public function's checks
from these helpers (its value checks call the ``check_*_values`` functions, so the
messages are the same). Every public function validates its inputs *before* any computation and raises
``ValueError`` with a message that names the argument and says what is allowed.
Value checks (finiteness, signs, sums) need concrete arrays; under ``jax.jit`` or
``jax.vmap`` the arguments are tracers and only the shape checks run, so the
checked entry points stay usable inside compiled code.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = [
    "is_concrete",
    "check_beta",
    "check_pool",
    "check_prompt_weights",
    "check_theta",
    "check_diffs",
    "check_theta_diffs",
    "check_design_weights",
    "check_curvature",
    "check_nonnegative",
    "check_budget",
    "check_log_ref_values",
    "check_probability_values",
    "check_symmetric_values",
]

# Tolerance for "sums to one" on probability vectors given in float32 or float64.
_SUM_TOL = 1e-5


def is_concrete(*xs) -> bool:
    """True when none of ``xs`` is a JAX tracer (so values can be inspected)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_beta(beta) -> None:
    """``beta`` must be a finite positive scalar."""
    if _shape(beta) != ():
        raise ValueError(f"beta must be a scalar, got shape {_shape(beta)}")
    if is_concrete(beta):
        b = float(beta)
        if not np.isfinite(b) or b <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {b}")


def check_pool(features, log_ref, name_features="features", name_log_ref="log_ref"):
    """Check a padded pool: ``features`` ``[m, K, d]``, ``log_ref`` ``[m, K]``.

    ``log_ref`` holds ``log pi0(y|x)``; ``-inf`` marks an absent completion. Every
    prompt needs at least one completion, and the present ones must be finite.
    Returns ``(m, K, d)``.
    """
    fs, ls = _shape(features), _shape(log_ref)
    if len(fs) != 3:
        raise ValueError(f"{name_features} must have shape [m, K, d], got shape {fs}")
    if len(ls) != 2 or ls != fs[:2]:
        raise ValueError(
            f"{name_log_ref} must have shape [m, K] = {list(fs[:2])} to match "
            f"{name_features} {list(fs)}, got shape {list(ls)}"
        )
    m, k, d = fs
    if m == 0 or k == 0 or d == 0:
        raise ValueError(f"{name_features} must have m, K, d >= 1, got shape {fs}")
    if is_concrete(features, log_ref):
        f = np.asarray(features)
        lr = np.asarray(log_ref)
        if not np.all(np.isfinite(f)):
            raise ValueError(f"{name_features} must be finite (no NaN or inf)")
        check_log_ref_values(lr, name_log_ref)
    return m, k, d


def check_log_ref_values(lr, name="log_ref") -> None:
    """Values of a concrete ``log_ref``: finite or ``-inf`` (absent), each row with a finite entry."""
    lr = np.asarray(lr)
    if np.any(np.isnan(lr)) or np.any(lr == np.inf):
        raise ValueError(
            f"{name} must be finite log-probabilities or -inf for an "
            "absent completion (no NaN, no +inf)"
        )
    present = np.isfinite(lr)
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{name}: prompts {empty[:10].tolist()} have no completion "
            "(every entry is -inf); each prompt needs at least one"
        )


def check_prompt_weights(prompt_weights, m, name="prompt_weights") -> None:
    """``None`` (uniform) or a probability vector of shape ``[m]``."""
    if prompt_weights is None:
        return
    check_probability_vector(prompt_weights, m, name)


def check_probability_vector(w, size, name) -> None:
    if _shape(w) != (size,):
        raise ValueError(f"{name} must have shape [{size}], got shape {list(_shape(w))}")
    if is_concrete(w):
        check_probability_values(w, name)


def check_probability_values(w, name) -> None:
    """Values of a concrete probability vector: finite, ``>= 0``, summing to 1."""
    a = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative; min is {a.min():.3g}")
    s = a.sum()
    if abs(s - 1.0) > _SUM_TOL:
        raise ValueError(f"{name} must sum to 1 (a probability vector); sums to {s:.6g}")


def check_theta(theta, d, name="theta") -> None:
    if _shape(theta) != (d,):
        raise ValueError(f"{name} must have shape [d] = [{d}], got shape {list(_shape(theta))}")
    if is_concrete(theta) and not np.all(np.isfinite(np.asarray(theta))):
        raise ValueError(f"{name} must be finite (no NaN or inf)")


def check_diffs(diffs, name="diffs") -> tuple[int, int]:
    """Edge differences ``[E, d]`` with ``E >= 1``. Returns ``(E, d)``."""
    s = _shape(diffs)
    if len(s) != 2:
        raise ValueError(f"{name} must have shape [E, d], got shape {list(s)}")
    if s[0] == 0:
        raise ValueError(f"{name} is empty: there are no edges (E = 0); a design needs at least one edge")
    if is_concrete(diffs) and not np.all(np.isfinite(np.asarray(diffs))):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return s


def check_theta_diffs(theta, diffs, name_theta="theta", name_diffs="diffs") -> tuple[int, int]:
    """``theta`` ``[d]`` and edge differences ``diffs`` ``[E, d]`` of the same ``d``.

    A width mismatch names ``diffs`` (the parameter vector fixes ``d``). Returns ``(E, d)``.
    """
    ts, ds = _shape(theta), _shape(diffs)
    if len(ts) == 1 and len(ds) == 2 and ds[1] != ts[0]:
        raise ValueError(f"{name_diffs} must have shape [E, d] with d = {ts[0]} columns to match {name_theta} "
                         f"(shape {list(ts)}), got shape {list(ds)}")
    e, d = check_diffs(diffs, name_diffs)
    check_theta(theta, d, name_theta)
    return e, d


def check_design_weights(weights, num_edges, name="weights") -> None:
    """Design weights: a probability vector over the ``num_edges`` candidate edges."""
    check_probability_vector(weights, num_edges, name)


def check_curvature(curvature, d, name="curvature") -> None:
    if _shape(curvature) != (d, d):
        raise ValueError(f"{name} must have shape [d, d] = [{d}, {d}], got shape {list(_shape(curvature))}")
    if is_concrete(curvature):
        check_psd_values(curvature, name)


def check_psd_values(c, name) -> None:
    """Values of a concrete square matrix: finite, symmetric, and positive semi-definite up to its
    precision (no eigenvalue below ``-(1e-6 + 10 eps) d lambda_max``, the tolerance of the
    symmetry test; ``eps`` of its dtype). A curvature with a negative direction had been taken
    for its positive part by the design solver (a value of 11.0 for tr(I Sigma^-1) = 1.66)."""
    check_symmetric_values(c, name)
    a = np.asarray(c)
    if a.size == 0:
        return
    lam = np.linalg.eigvalsh(0.5 * (a.astype(np.float64) + a.astype(np.float64).T))
    eps = float(np.finfo(a.dtype).eps) if np.issubdtype(a.dtype, np.floating) else float(np.finfo(np.float64).eps)
    top = max(float(np.abs(lam).max()), 1e-300)
    if lam[0] < -(1e-6 + 10 * eps) * a.shape[0] * top:
        raise ValueError(f"{name} must be positive semi-definite; its smallest eigenvalue is {lam[0]:.3g} "
                         f"(largest {lam[-1]:.3g})")


def check_symmetric_values(c, name) -> None:
    """Values of a concrete square matrix: finite and symmetric (to ``1e-6`` of its largest entry)."""
    c = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    scale = max(np.abs(c).max(), 1e-300)
    if np.abs(c - c.T).max() > 1e-6 * scale:
        raise ValueError(f"{name} must be symmetric")


def check_nonnegative(x, name) -> None:
    if _shape(x) != ():
        raise ValueError(f"{name} must be a scalar, got shape {_shape(x)}")
    if is_concrete(x):
        v = float(x)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v}")


def check_budget(n, name="n") -> None:
    if _shape(n) != ():
        raise ValueError(f"{name} must be a scalar, got shape {_shape(n)}")
    if is_concrete(n):
        v = float(n)
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a number of labels > 0, got {v}")


def check_design_instance(weights, theta_star, features, log_ref, diffs, beta, prompt_weights) -> tuple[int, int, int]:
    """A design on candidate edges with a target pool: shapes agree, values are valid.

    Returns ``(m, E, d)``.
    """
    m, _, d = check_pool(features, log_ref)
    e, d2 = check_diffs(diffs)
    if d2 != d:
        raise ValueError(f"diffs must have d = {d} columns to match features, got {d2}")
    check_design_weights(weights, e)
    check_theta(theta_star, d, "theta_star")
    check_beta(beta)
    check_prompt_weights(prompt_weights, m)
    return m, e, d
