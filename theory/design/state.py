"""The iterate and its exact recomputation from the weights.

``T_w = offset + X^T diag(w) X`` is factored once by Cholesky; the criterion value
(:func:`_criterion_value`) is the same code for the state refresh and for the bare
value the Newton polish's line search needs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class _State(NamedTuple):
    w: jnp.ndarray  # [E]
    tinv: jnp.ndarray  # [r, r]
    m: jnp.ndarray  # [E, r]   X T^-1
    q: jnp.ndarray  # [E, k]   X T^-1 b (general L), else [E, 0]
    dd: jnp.ndarray  # [E]   d_e
    value: jnp.ndarray  # scalar, reduced criterion


def _scores(kind, x, m, q):
    """``d_e = -dPhi/dw_e`` from ``m = X T^-1`` (and ``q = m b`` for the general L form)."""
    if kind == "A":
        return jnp.sum(m * m, axis=1)
    if kind == "L":
        return jnp.sum(q * q, axis=1)
    return jnp.sum(m * x, axis=1)


def _gram(w, x, offset):
    """``T_w = offset + X^T diag(w) X``, symmetrised."""
    t = offset + (x.T * w) @ x
    return 0.5 * (t + t.T)


def _criterion_value(chol, inv, b, kind):
    """The reduced criterion from ``T = chol chol^T`` and ``inv = T^-1`` (unused for D)."""
    if kind == "D":
        return -2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    if kind == "A":
        return jnp.trace(inv)
    return jnp.trace(b.T @ inv @ b)


def _cho_inverse(chol):
    return jax.scipy.linalg.cho_solve((chol, True), jnp.eye(chol.shape[0], dtype=chol.dtype))


@functools.partial(jax.jit, static_argnames=("kind",))
def _refresh(w, x, offset, b, kind):
    """The state at ``w``, recomputed from scratch (``O(E r^2)``)."""
    chol = jnp.linalg.cholesky(_gram(w, x, offset))
    tinv = _cho_inverse(chol)
    tinv = 0.5 * (tinv + tinv.T)
    m = x @ tinv
    q = m @ b if kind == "L" else m[:, :0]
    return _State(w, tinv, m, q, _scores(kind, x, m, q), _criterion_value(chol, tinv, b, kind))


@functools.partial(jax.jit, static_argnames=("kind",))
def _reduced_value(w, xs, offset, b, kind):
    """The reduced criterion at ``w`` alone (no scores; ``+inf``/NaN where ``T`` is singular)."""
    chol = jnp.linalg.cholesky(_gram(w, xs, offset))
    return _criterion_value(chol, None if kind == "D" else _cho_inverse(chol), b, kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _price(x, tinv, b, kind):
    """``d_e`` for every edge from ``T^-1``: one ``O(E r^2)`` pass."""
    m = x @ tinv
    q = m @ b if kind == "L" else m[:, :0]
    return _scores(kind, x, m, q)


def _refresh_subset(idx, w_full, x, offset, b, kind):
    """The state of the sub-design on the edges ``idx``."""
    sub = jnp.asarray(idx)
    return _refresh(jnp.asarray(w_full[idx], dtype=x.dtype), x[sub], offset, b, kind)


def _power_of_two(n, floor):
    """The least ``floor * 2^k >= n``: padded sizes, so that a jitted function compiles
    once per size bucket rather than once per support or working-set size."""
    size = floor
    while size < n:
        size *= 2
    return size


def _pad_rows(idx, size):
    """``idx`` padded with zeros to ``size``, and the mask of its real entries."""
    idx = np.asarray(idx, dtype=np.int64)
    return np.concatenate([idx, np.zeros(size - idx.size, dtype=np.int64)]), np.arange(size) < idx.size
