"""Candidate comparison edges: all unordered within-prompt pairs of a padded pool."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from theory.checked import checked
from theory.policy import POOL
from theory.shapes import Features, LogRef

__all__ = ["Edges", "enumerate_edges"]


class Edges(NamedTuple):
    """Candidate edges ``e = (x, y_i, y_j)`` with ``i < j``.

    Attributes:
      prompt: ``[E]`` prompt index ``x``.
      first: ``[E]`` completion index ``i`` (the "chosen" side of the difference).
      second: ``[E]`` completion index ``j > i``.
      diffs: ``[E, d]`` ``z_e = phi(x, y_i) - phi(x, y_j)``.
    """

    prompt: np.ndarray
    first: np.ndarray
    second: np.ndarray
    diffs: jnp.ndarray

    @property
    def num_edges(self) -> int:
        return int(self.prompt.shape[0])


@checked(**POOL)
def enumerate_edges(features: Features, log_ref: LogRef) -> Edges:
    """All unordered pairs of present completions within each prompt.

    Edges are ordered by prompt, then ``i``, then ``j``. A prompt with ``K_x``
    completions contributes ``K_x (K_x - 1) / 2`` edges.

    Args:
      features: ``[m, K, d]``.
      log_ref: ``[m, K]`` (``-inf`` = absent).

    Returns:
      :class:`Edges`; raises ``ValueError`` when no prompt has two completions.

    Examples:
      >>> import jax.numpy as jnp
      >>> e = enumerate_edges(jnp.eye(3)[None], jnp.zeros((1, 3)))
      >>> e.num_edges, e.first.tolist(), e.second.tolist()
      (3, [0, 0, 1], [1, 2, 2])
    """
    k = np.shape(features)[1]
    present = np.isfinite(np.asarray(log_ref))
    ii, jj = np.triu_indices(k, 1)
    keep = present[:, ii] & present[:, jj]  # [m, K(K-1)/2]
    prompt, pair = np.nonzero(keep)
    if prompt.size == 0:
        raise ValueError(
            "log_ref: no prompt has two present completions, so the pool has no edges "
            "(each prompt needs K_x >= 2 finite entries)"
        )
    first, second = ii[pair], jj[pair]
    feats = jnp.asarray(features)
    diffs = feats[prompt, first] - feats[prompt, second]
    ids = [a.astype(np.int32) for a in (prompt, first, second)]
    for a in ids:  # read-only: a design that rewrote them in place changed every later design on the problem
        a.setflags(write=False)
    return Edges(*ids, diffs)
