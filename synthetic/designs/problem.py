"""The problem a design solves and what it returns: candidate comparisons, pools,
the simulated annotator (the truth, handed only to designs that need it) and
:class:`DesignOutput`."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.labels import Allocation, simulate_wins
from synthetic.worlds import Pool, World
from theory.edges import Edges, enumerate_edges
from theory.policy import policy_curvature

__all__ = ["TruthHiddenError", "Annotator", "DesignProblem", "design_problem", "DesignOutput"]


class TruthHiddenError(RuntimeError):
    """A design read the simulated truth without being registered as needing it."""


class Annotator(NamedTuple):
    """The simulated annotator: the true parameter and Bradley-Terry labels on the candidate edges.

    :func:`run_design` hands it only to designs registered as reading the truth
    (``register_design(..., needs_truth=...)``); every other design sees
    ``problem.annotator = None``.
    """

    theta_star: jax.Array
    diffs: jax.Array  # [E, d] the candidate edges' feature differences
    beta: float

    def label(self, key, counts) -> np.ndarray:
        """Bradley-Terry wins ``[E]`` for ``counts`` ``[E]`` labels per edge."""
        c = jnp.asarray(counts, dtype=self.diffs.dtype)
        return np.asarray(simulate_wins(key, self.theta_star, self.diffs, c, self.beta)).astype(np.int64)


class DesignProblem(NamedTuple):
    """Everything a design may use (see the module docstring for what reads what).

    ``annotator`` is the simulation's truth; :func:`run_design` replaces it by ``None``
    for designs not registered as needing it, so that reading ``theta_star`` or calling
    ``label`` there is an error, not a silent use of the truth.
    """

    edges: Edges
    pool: Pool
    target: Pool
    beta: float
    annotator: Optional[Annotator] = None

    def _truth(self) -> Annotator:
        if self.annotator is None:
            raise TruthHiddenError(
                "this design read the simulated truth (problem.theta_star or problem.label) but was not handed the "
                "annotator: register it with register_design(..., needs_truth=True), or a function of its parameters "
                "saying when it needs it"
            )
        return self.annotator

    @property
    def theta_star(self) -> jax.Array:
        """The true parameter (only for designs registered as needing the truth)."""
        return self._truth().theta_star

    @property
    def num_edges(self) -> int:
        return self.edges.num_edges

    @property
    def dim(self) -> int:
        return int(self.pool.features.shape[-1])

    def curvature(self, theta) -> jax.Array:
        """``I(theta)`` on the target pool."""
        t = self.target
        return policy_curvature(jnp.asarray(theta), t.features, t.log_ref, t.prompt_weights)

    def label(self, key, counts) -> np.ndarray:
        """Simulated annotator: Bradley-Terry wins ``[E]`` for ``counts`` ``[E]`` labels per edge."""
        return self._truth().label(key, counts)

    def without_truth(self) -> "DesignProblem":
        return self._replace(annotator=None)

    def edge_id(self, prompt: int, i: int, j: int) -> int:
        """The id of the edge ``(prompt, i, j)`` (either order; ``-1`` where none), in ``O(log E)``:
        three binary searches on the edges' order (prompt, then first, then second), no ``[E]`` array
        built (:meth:`edge_ids` builds one per call; use it for many queries at once)."""
        m, k = self.pool.log_ref.shape
        prompt, a, b = int(prompt), min(int(i), int(j)), max(int(i), int(j))
        if not (0 <= prompt < m and 0 <= a and b < k):
            return -1
        e = self.edges
        lo, hi = np.searchsorted(e.prompt, prompt, "left"), np.searchsorted(e.prompt, prompt, "right")
        lo, hi = lo + np.searchsorted(e.first[lo:hi], a, "left"), lo + np.searchsorted(e.first[lo:hi], a, "right")
        at = lo + int(np.searchsorted(e.second[lo:hi], b, "left"))
        return int(at) if at < hi and int(e.second[at]) == b else -1

    def edge_ids(self, prompt, i, j) -> np.ndarray:
        """The ids of the edges ``(prompt[q], i[q], j[q])`` (arrays of one shape, or scalars; either order
        of ``i`` and ``j``; ``-1`` where the pool has no such edge), by one binary search on the edges'
        order (prompt, then first, then second: ``theory.enumerate_edges``), each edge read as the integer
        ``(prompt K + first) K + second``, which that order sorts; no ``[m, K, K]`` map is built."""
        m, k = self.pool.log_ref.shape
        e = self.edges
        keys = (np.asarray(e.prompt, np.int64) * k + np.asarray(e.first, np.int64)) * k + np.asarray(e.second, np.int64)
        prompt, i, j = np.broadcast_arrays(*(np.asarray(a, np.int64) for a in (prompt, i, j)))
        a, b = np.minimum(i, j), np.maximum(i, j)
        query = (prompt * k + a) * k + b
        at = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        inside = (prompt >= 0) & (prompt < m) & (a >= 0) & (b < k)
        return np.where(inside & (keys[at] == query), at, -1)


def design_problem(world: World) -> DesignProblem:
    """Candidate edges are all within-prompt pairs of the world's training pool."""
    edges = enumerate_edges(world.train.features, world.train.log_ref)
    beta = float(world.beta)
    return DesignProblem(edges, world.train, world.eval, beta, Annotator(world.theta_star, edges.diffs, beta))


class DesignOutput(NamedTuple):
    """What a design returns.

    Attributes:
      allocation: distinct edge ids with label counts (pilot labels included).
      weights: ``[E]`` the approximate design it rounded, or ``None``.
      pilot: ``(counts, wins)`` ``[E]`` labels already observed while designing, or ``None``.
      info: extra diagnostics (certificate of a solved design, pilot estimate, ...).
    """

    allocation: Allocation
    weights: Optional[np.ndarray]
    pilot: Optional[tuple]
    info: dict

    def dense_counts(self, num_edges: int) -> np.ndarray:
        return self.allocation.dense_counts(num_edges)

