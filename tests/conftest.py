"""Shared fixtures. Tests run in float64 (derivative and oracle comparisons need it)."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng():
    """A seeded numpy generator for building test instances (not for model randomness)."""
    return np.random.default_rng(20261123)


def random_pool(rng, m=4, k=5, d=3, pad=True, concentration=1.0):
    """A random padded pool: features [m,K,d], log_ref [m,K] (normalised), rho [m]."""
    feats = rng.normal(size=(m, k, d))
    logits = concentration * rng.normal(size=(m, k))
    if pad:
        sizes = rng.integers(2, k + 1, size=m)
        present = np.arange(k)[None, :] < sizes[:, None]
        logits = np.where(present, logits, -np.inf)
        feats = np.where(present[..., None], feats, 0.0)
    log_ref = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    rho = rng.dirichlet(np.ones(m))
    return feats, log_ref, rho
