"""Synthetic worlds: pools of completions, a reference policy and the truth ``theta*``.

Three families (theory brief section 7, issue "Core"):

* :func:`tabular_world` -- one-hot features, ``d = m K`` items, strongly non-uniform
  ``pi0``, true reward of small variance.
* :func:`contextual_world` -- linear contextual ``phi(x, y) = [x; a; x (x) a]`` with
  training prompts (whose completions can be labelled) and held-out prompts (on which
  the gap is measured).
* :func:`gaussian_world` -- i.i.d. Gaussian features, optionally with pools of
  different sizes (padded with ``log_ref = -inf``).

The truth is ``theta* ~ theta_scale / sqrt(d_eff) N(0, Id)`` so that reward
differences ``beta theta*.z`` have a standard deviation of order
``beta theta_scale`` in every family. ``pi0(.|x) = softmax(ref_concentration g_x)``
with ``g_x ~ N(0, Id)``: 0 gives a uniform reference, 2 to 3 a strongly peaked one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from theory.policy import optimality_gap, policy_curvature
from theory.checked import check_argument

__all__ = [
    "Pool",
    "World",
    "tabular_world",
    "contextual_world",
    "gaussian_world",
    "first_completions",
    "world_gap",
    "world_curvature",
]


class Pool(NamedTuple):
    """A padded pool of prompts and completions.

    Attributes:
      features: ``[m, K, d]`` ``phi(x, y)``.
      log_ref: ``[m, K]`` ``log pi0(y|x)``; ``-inf`` marks an absent completion.
      prompt_weights: ``[m]`` ``rho(x)``.
    """

    features: jax.Array
    log_ref: jax.Array
    prompt_weights: jax.Array


class World(NamedTuple):
    """A synthetic instance.

    Attributes:
      train: pool whose edges can be labelled.
      eval: pool on which the optimality gap is measured (``train`` itself for the
        tabular and Gaussian worlds, held-out prompts for the contextual world).
      theta_star: ``[d]`` true parameter; the reward is ``beta theta* . phi``.
      beta: KL strength.
    """

    train: Pool
    eval: Pool
    theta_star: jax.Array
    beta: float

    @property
    def dim(self) -> int:
        return int(self.theta_star.shape[0])


def world_gap(world: World, theta) -> jax.Array:
    """Exact optimality gap of ``pi_theta`` on the world's evaluation pool."""
    e = world.eval
    return optimality_gap(theta, world.theta_star, e.features, e.log_ref, world.beta, e.prompt_weights)


def world_curvature(world: World, theta=None) -> jax.Array:
    """``I(theta)`` on the evaluation pool (``theta*`` by default)."""
    theta = world.theta_star if theta is None else theta
    e = world.eval
    return policy_curvature(theta, e.features, e.log_ref, e.prompt_weights)


# --------------------------------------------------------------------------- checks


def _check_int(name, value, minimum):
    check_argument(name, value, f"int >= {minimum}")


def _check_real(name, value, minimum, strict):
    check_argument(name, value, f"number {'>' if strict else '>='} {minimum}")


def _check_common(num_completions, beta, theta_scale, ref_concentration, dtype):
    _check_int("num_completions", num_completions, 2)
    _check_real("beta", beta, 0.0, strict=True)
    _check_real("theta_scale", theta_scale, 0.0, strict=False)
    _check_real("ref_concentration", ref_concentration, 0.0, strict=False)
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")


def _reference(key, shape, ref_concentration, dtype, present=None, rewards=None, correlation=0.0):
    """``log pi0 = log_softmax(ref_concentration g)``; ``g`` is standard normal noise, or
    with ``correlation = r != 0``, ``r s + sqrt(1 - r^2) noise`` where ``s`` is the true
    reward standardised within the prompt (so ``g`` has correlation ``r`` with it):
    the premise of seed 004, a reference whose probabilities carry traces of the
    preference. ``r = 0`` is the noise alone, number for number."""
    noise = jax.random.normal(key, shape, dtype)
    if correlation == 0.0:
        g = noise
    else:
        ok = jnp.ones(shape, bool) if present is None else present
        cnt = jnp.sum(ok, axis=-1, keepdims=True)
        mu = jnp.sum(jnp.where(ok, rewards, 0.0), axis=-1, keepdims=True) / cnt
        var = jnp.sum(jnp.where(ok, (rewards - mu) ** 2, 0.0), axis=-1, keepdims=True) / cnt
        sd = jnp.sqrt(var)
        s = jnp.where(sd > 0, (rewards - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)
        g = correlation * s + math.sqrt(1.0 - correlation**2) * noise
    logits = ref_concentration * g
    if present is not None:
        logits = jnp.where(present, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def _check_correlation(value):
    try:
        check_argument("ref_reward_correlation", value, "number in [-1, 1]")
    except ValueError:
        raise ValueError(f"ref_reward_correlation must be a number in [-1, 1], got {value!r}") from None


def _uniform(m, dtype):
    return jnp.full((m,), 1.0 / m, dtype)


# --------------------------------------------------------------------------- worlds


def tabular_world(
    key,
    num_prompts: int = 1,
    num_completions: int = 100,
    beta: float = 1.0,
    theta_scale: float = 0.5,
    ref_concentration: float = 2.0,
    ref_reward_correlation: float = 0.0,
    dtype=jnp.float64,
) -> World:
    """Tabular world: one-hot features over ``d = num_prompts * num_completions`` items.

    ``phi(x, y) = e_{x K + y}``; ``theta*_i ~ theta_scale N(0, 1)``, so the true reward
    ``beta theta*_i`` has standard deviation ``beta theta_scale`` (keep it small, as
    in the paper). Within each prompt the all-ones direction is not identifiable.

    Args:
      key: JAX PRNG key.
      num_prompts: ``m >= 1``.
      num_completions: ``K >= 2``.
      beta: ``> 0``.
      theta_scale: ``>= 0``.
      ref_concentration: ``>= 0``; ``pi0 = softmax(ref_concentration N(0, 1))``.
      ref_reward_correlation: ``r in [-1, 1]``: the reference logits' correlation with
        the true reward within each prompt (0: independent, as in the paper's worlds).
      dtype: float32 or float64.
    """
    _check_int("num_prompts", num_prompts, 1)
    _check_common(num_completions, beta, theta_scale, ref_concentration, dtype)
    _check_correlation(ref_reward_correlation)
    m, k = num_prompts, num_completions
    d = m * k
    k_ref, k_theta = jax.random.split(key)
    features = jnp.eye(d, dtype=dtype).reshape(m, k, d)
    theta_star = theta_scale * jax.random.normal(k_theta, (d,), dtype)
    log_ref = _reference(k_ref, (m, k), ref_concentration, dtype, rewards=features @ theta_star, correlation=ref_reward_correlation)
    pool = Pool(features, log_ref, _uniform(m, dtype))
    return World(pool, pool, theta_star, float(beta))


def contextual_world(
    key,
    prompt_dim: int = 3,
    action_dim: int = 3,
    num_train_prompts: int = 50,
    num_eval_prompts: int = 200,
    num_completions: int = 8,
    beta: float = 1.0,
    theta_scale: float = 1.0,
    ref_concentration: float = 2.0,
    ref_reward_correlation: float = 0.0,
    dtype=jnp.float64,
) -> World:
    """Linear contextual world ``phi(x, y) = [x; a_y; x (x) a_y]``, ``d = p + q + p q``.

    Prompts ``x ~ N(0, Id_p)``; each prompt has its own ``K`` completions with actions
    ``a ~ N(0, Id_q)``. The first ``p`` coordinates are constant within a prompt, so
    they are never identifiable. The gap is measured on ``num_eval_prompts`` held-out
    prompts drawn from the same distribution.

    Args:
      key: JAX PRNG key.
      prompt_dim: ``p >= 1``.
      action_dim: ``q >= 1``.
      num_train_prompts: ``>= 1``.
      num_eval_prompts: ``>= 1``.
      num_completions: ``K >= 2``.
      beta, theta_scale, ref_concentration, ref_reward_correlation, dtype: as in :func:`tabular_world`.
    """
    _check_int("prompt_dim", prompt_dim, 1)
    _check_int("action_dim", action_dim, 1)
    _check_int("num_train_prompts", num_train_prompts, 1)
    _check_int("num_eval_prompts", num_eval_prompts, 1)
    _check_common(num_completions, beta, theta_scale, ref_concentration, dtype)
    _check_correlation(ref_reward_correlation)
    p, q, k = prompt_dim, action_dim, num_completions
    d = p + q + p * q
    k_train, k_eval, k_theta = jax.random.split(key, 3)

    def make_pool(pool_key, m):
        kx, ka, kr = jax.random.split(pool_key, 3)
        x = jax.random.normal(kx, (m, p), dtype)
        a = jax.random.normal(ka, (m, k, q), dtype)
        xa = (x[:, None, :, None] * a[:, :, None, :]).reshape(m, k, p * q)
        feats = jnp.concatenate([jnp.broadcast_to(x[:, None, :], (m, k, p)), a, xa], axis=-1)
        log_ref = _reference(kr, (m, k), ref_concentration, dtype, rewards=feats @ theta_star, correlation=ref_reward_correlation)
        return Pool(feats, log_ref, _uniform(m, dtype))

    # Reward differences: (a - a').(theta_a + theta_xa x): scale by the q + p q coordinates.
    theta_star = theta_scale / math.sqrt(q + p * q) * jax.random.normal(k_theta, (d,), dtype)
    return World(make_pool(k_train, num_train_prompts), make_pool(k_eval, num_eval_prompts), theta_star, float(beta))


def gaussian_world(
    key,
    num_prompts: int = 20,
    num_completions: int = 6,
    dim: int = 4,
    beta: float = 1.0,
    theta_scale: float = 1.0,
    ref_concentration: float = 1.0,
    min_completions: int | None = None,
    ref_reward_correlation: float = 0.0,
    dtype=jnp.float64,
) -> World:
    """Generic world with ``phi(x, y) ~ N(0, Id_d)`` i.i.d.

    With ``min_completions < num_completions`` each prompt keeps a random number of
    completions in ``[min_completions, num_completions]`` and the rest are padding
    (``log_ref = -inf``, features 0).

    Args:
      key: JAX PRNG key.
      num_prompts: ``m >= 1``.
      num_completions: ``K >= 2`` (the padded pool size).
      dim: ``d >= 1``.
      min_completions: ``2 <= min_completions <= num_completions``, or ``None`` for
        full pools.
      beta, theta_scale, ref_concentration, ref_reward_correlation, dtype: as in :func:`tabular_world`.
    """
    _check_int("num_prompts", num_prompts, 1)
    _check_int("dim", dim, 1)
    _check_common(num_completions, beta, theta_scale, ref_concentration, dtype)
    _check_correlation(ref_reward_correlation)
    if min_completions is not None:
        _check_int("min_completions", min_completions, 2)
        if min_completions > num_completions:
            raise ValueError(
                f"min_completions must be <= num_completions = {num_completions}, got {min_completions}"
            )
    m, k, d = num_prompts, num_completions, dim
    k_f, k_r, k_t, k_size = jax.random.split(key, 4)
    features = jax.random.normal(k_f, (m, k, d), dtype)
    present = None
    if min_completions is not None and min_completions < k:
        sizes = jax.random.randint(k_size, (m,), min_completions, k + 1)
        present = jnp.arange(k)[None, :] < sizes[:, None]
        features = jnp.where(present[..., None], features, 0.0)
    theta_star = theta_scale / math.sqrt(d) * jax.random.normal(k_t, (d,), dtype)
    log_ref = _reference(k_r, (m, k), ref_concentration, dtype, present, features @ theta_star, ref_reward_correlation)
    pool = Pool(features, log_ref, _uniform(m, dtype))
    return World(pool, pool, theta_star, float(beta))


def first_completions(world: World, k: int) -> World:
    """The same world with each prompt's pool cut to its first ``k`` completions.

    ``pi0`` is renormalised over the kept completions (``pi0(y | y in first k)``);
    features, ``theta*`` and prompts are unchanged, so worlds with growing ``k`` are
    nested: the pool-size experiment varies ``K`` without drawing a new instance.
    """
    _check_int("k", k, 2)
    kmax = world.train.features.shape[1]
    if k > kmax:
        raise ValueError(f"k must be <= the pool size {kmax}, got {k}")

    def cut(pool: Pool) -> Pool:
        lr = pool.log_ref[:, :k]
        present = jnp.isfinite(lr)
        if not bool(jnp.all(jnp.sum(present, axis=1) >= 1)):
            raise ValueError(f"k = {k} leaves a prompt with no completion")
        norm = jax.scipy.special.logsumexp(jnp.where(present, lr, -jnp.inf), axis=1, keepdims=True)
        return Pool(pool.features[:, :k], jnp.where(present, lr - norm, -jnp.inf), pool.prompt_weights)

    return World(cut(world.train), cut(world.eval), world.theta_star, world.beta)
