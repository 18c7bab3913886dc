"""What the solver returns: the design, its value, its certificate and its history."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class DesignNotConvergedWarning(UserWarning):
    """:func:`~theory.design.optimal_design` stopped at its iteration limit before its tolerance;
    the design it returns is this far from optimal (``relative_certificate``)."""


class DesignSolution(NamedTuple):
    """Result of a :class:`DesignSolver` (and of :func:`optimal_design`).

    Attributes:
      weights: ``[E]`` the design (non-negative, sums to one; to each group's mass;
        at most ``caps`` when given).
      value: criterion at ``weights`` (full definition, ridge constant included).
      certificate: duality gap ``cert(w) >= value - optimum`` (absolute), computed
        from scratch at ``weights`` (with caps: the gap over the capped simplex).
      relative_certificate: ``certificate / value`` for L and A; ``certificate / r``
        for D (then the D-efficiency is at least ``exp(-relative_certificate)``).
      converged: ``relative_certificate <= tol``.
      num_iter: pairwise steps taken.
      rank: ``r``, the dimension of the identifiable subspace ``span{z_e}``.
      history: :class:`SolverHistory`.
    """

    weights: jnp.ndarray
    value: float
    certificate: float
    relative_certificate: float
    converged: bool
    num_iter: int
    rank: int
    history: "SolverHistory"


class SolverHistory(NamedTuple):
    """What the solver tracked while it iterated.

    Attributes:
      value: ``[max(num_iter, 1)]`` criterion after each pairwise step (full
        definition, ridge constant included); the last entry is recomputed from
        scratch at the returned weights.
      certificate: ``[max(num_iter, 1)]`` the duality-gap certificate after each step
        (valid upper bounds on ``value - optimum``); the last entry is the returned
        certificate. Within a working set it is the working set's certificate.
      pricing: ``[rounds, 2]`` one row per pricing round of the working-set
        (column-generation) loop: pairwise steps taken so far, and the certificate
        over all ``E`` edges then.
    """

    value: np.ndarray
    certificate: np.ndarray
    pricing: np.ndarray
