"""From design weights to a labelled allocation of exactly ``budget`` comparisons.

Every rule returns an :class:`~synthetic.labels.Allocation` whose ``budget`` is exactly
the requested one. ``n`` is the budget, ``w`` the design (normalised), ``s`` the number
of edges with ``w_e > 0`` and ``c_e`` the most labels edge ``e`` may get
(``max_labels_per_edge``, or what is left of it after pilot labels).

Fixed-size rules with given expected counts (the finite-budget rules):

* ``"pivotal"``: expected counts ``m_e = min(c_e, lambda w_e)`` with ``lambda`` set so
  that ``sum m = n`` (:func:`capped_expected_counts`; edges whose ``n w_e`` exceeds the
  cap are taken to the cap with certainty and the rest rescaled). Each edge then gets
  ``floor(m_e)`` labels plus one more with probability ``frac(m_e)``, chosen by pivotal
  sampling (Deville and Tille 1998) on a random order (:func:`pivotal_sample`): the
  realised counts are exactly ``n`` in total and ``E[count_e] = m_e`` exactly. With
  ``c_e = 1`` (the default of this rule when no cap is given) it draws exactly ``n``
  distinct edges with inclusion probabilities ``min(1, lambda w_e)``, which is ``n w_e``
  whenever ``n w_e <= 1`` for every edge.
* ``"covering"``: pivotal sampling that never leaves a direction of the design's
  support uncovered when the budget allows it (:func:`covering_rounding`). First a
  basis of the span of the support's edge differences, chosen greedily in a random
  order that favours heavy edges (successive sampling proportional to ``w``, a Gumbel
  top-k order) and skipping edges that add no new direction (for one-hot features: a
  random spanning tree of each prompt's comparison graph, found as by Kruskal). Then
  the remaining ``n - r`` labels by pivotal sampling with expected counts proportional
  to what the design still owes each edge, ``max(n w_e - [e in basis], 0)``, under the
  caps. If ``n`` is below the rank ``r``, no ``n`` labels can cover the support's span:
  a :class:`CoverageWarning` says so and the ``n`` first basis edges are labelled (the
  most directions ``n`` labels can cover). Expected counts are then close to, not
  exactly, ``n w_e``: the basis pays one label to light edges the design would often
  skip.
* ``"auto"`` (the designs' default): ``"covering"`` whenever a cap is given or
  ``n <= s`` (each edge at most once when no cap is given); otherwise ``"efficient"``,
  which gives every support edge at least one label when ``n >= s`` and so covers too.

The earlier rules, kept for comparison:

* ``"without_replacement"``: the paper's rule. ``budget`` distinct edges drawn one at a
  time with probability proportional to the weights among those not yet drawn
  (successive sampling, done in one pass as a Gumbel top-k). Each edge gets one label,
  so the budget may not exceed the number of edges with positive weight. Its inclusion
  probabilities are not ``n w_e`` (light edges are included more often) and it may
  leave directions uncovered.
* ``"with_replacement"``: ``counts ~ Multinomial(budget, w)``.
* ``"efficient"``: Pukelsheim and Rieder's efficient apportionment (Biometrika 1992;
  Pukelsheim, *Optimal Design of Experiments*, ch. 12): ``n_e = ceil((n - s/2) w_e)``
  on the ``s`` support edges, then single-label corrections, each adding to an edge
  of smallest ``n_e / w_e`` or removing from one of largest ``(n_e - 1) / w_e``. It
  maximises ``min_e n_e / (n w_e)`` (the efficiency bound) over all allocations of
  ``n`` labels; ties are broken by a random priority drawn from the key, so uniform
  weights with ``n < E`` give ``n`` distinct edges chosen at random. When ``n`` is
  below the support size every edge gets at most one label and the weights only
  decide ties, so for ``n < s`` it carries no information from the design.

Caps. ``"pivotal"``, ``"covering"`` and ``"without_replacement"`` (one label an edge)
honour ``max_labels_per_edge`` exactly; ``"efficient"`` and ``"with_replacement"`` do
not know caps and refuse one that could bind (a cap below the budget).
"""

from __future__ import annotations

import heapq
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.labels import Allocation, allocation_from_counts
from theory.information import data_precision, rows_rank

__all__ = [
    "ROUNDINGS",
    "CoverageWarning",
    "round_design",
    "resolve_rounding",
    "efficient_rounding",
    "sample_without_replacement",
    "sample_with_replacement",
    "capped_expected_counts",
    "pivotal_sample",
    "pivotal_rounding",
    "covering_rounding",
    "spanning_edges",
    "check_max_labels_per_edge",
    "resolve_max_labels_per_edge",
]

ROUNDINGS = ("auto", "covering", "pivotal", "efficient", "without_replacement", "with_replacement")
#: Rules that honour a per-edge cap (``"without_replacement"``: one label an edge).
CAPPED_ROUNDINGS = ("auto", "covering", "pivotal", "without_replacement")


class CoverageWarning(UserWarning):
    """The budget is too small for any allocation to cover the directions that matter."""


def check_budget(budget) -> int:
    """A label budget is an integer ``>= 1``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be an integer number of labels >= 1, got {budget!r}")
    return int(budget)


def _check(weights, budget):
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must have shape [E] with E >= 1, got shape {list(w.shape)}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero")
    return w / w.sum(), check_budget(budget)


def sample_without_replacement(key, weights, budget) -> Allocation:
    """``budget`` distinct edges by successive sampling proportional to ``weights``."""
    w, n = _check(weights, budget)
    support = int(np.sum(w > 0))
    if n > support:
        raise ValueError(
            f"budget {n} is larger than the {support} edges with positive weight: sampling without "
            "replacement labels each edge at most once; use rounding='efficient' or 'with_replacement'"
        )
    gumbel = np.asarray(jax.random.gumbel(key, (w.size,), dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
    with np.errstate(divide="ignore"):
        score = np.where(w > 0, np.log(w) + gumbel, -np.inf)
    top = np.argpartition(-score, n - 1)[:n]
    counts = np.zeros(w.size, dtype=np.int64)
    counts[top] = 1
    return allocation_from_counts(counts)


def sample_with_replacement(key, weights, budget) -> Allocation:
    """``counts ~ Multinomial(budget, weights)``."""
    w, n = _check(weights, budget)
    idx = np.asarray(jax.random.choice(key, w.size, shape=(n,), replace=True, p=jnp.asarray(w)))
    return allocation_from_counts(np.bincount(idx, minlength=w.size))


def efficient_rounding(weights, budget, key=None) -> Allocation:
    """Pukelsheim-Rieder efficient apportionment of ``budget`` labels to ``weights``.

    Args:
      weights: ``[E]`` non-negative design weights.
      budget: ``n >= 1``.
      key: JAX key for random tie-breaking; ``None`` breaks ties by edge index.
    """
    w, n = _check(weights, budget)
    sup = np.flatnonzero(w > 0)
    s = sup.size
    ws = w[sup]
    if key is None:
        prio = np.arange(s)
    else:
        prio = np.asarray(jax.random.permutation(key, s))
    counts = np.ceil(np.maximum(n - 0.5 * s, 0.0) * ws).astype(np.int64)
    total = int(counts.sum())
    if total < n:
        heap = [(counts[i] / ws[i], prio[i], i) for i in range(s)]
        heapq.heapify(heap)
        for _ in range(n - total):
            _, p, i = heapq.heappop(heap)
            counts[i] += 1
            heapq.heappush(heap, (counts[i] / ws[i], p, i))
    elif total > n:
        heap = [(-(counts[i] - 1) / ws[i], prio[i], i) for i in range(s) if counts[i] > 0]
        heapq.heapify(heap)
        for _ in range(total - n):
            _, p, i = heapq.heappop(heap)
            counts[i] -= 1
            if counts[i] > 0:
                heapq.heappush(heap, (-(counts[i] - 1) / ws[i], p, i))
    full = np.zeros(w.size, dtype=np.int64)
    full[sup] = counts
    return allocation_from_counts(full)


def check_max_labels_per_edge(value, name: str = "max_labels_per_edge"):
    """``None`` (unlimited) or an integer ``>= 1``; returns it as ``int`` or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be null (unlimited) or an integer >= 1, got {value!r}")
    return int(value)


def resolve_max_labels_per_edge(value, budget: int, num_edges: int):
    """``"auto"`` becomes ``1`` when ``budget <= num_edges`` (each comparison labelled at
    most once: the finite-budget regime, the paper's HH setting) and ``None`` (unlimited)
    above; any other value is checked by :func:`check_max_labels_per_edge` and returned."""
    if isinstance(value, str) and value == "auto":
        return 1 if int(budget) <= int(num_edges) else None
    return check_max_labels_per_edge(value)


def _caps_array(caps, size: int) -> np.ndarray:
    """Per-edge caps ``[E]`` (whole numbers ``>= 0``) from a scalar or an ``[E]`` array."""
    c = np.asarray(caps)
    if c.ndim == 0:
        c = np.full(size, c)
    if c.shape != (size,):
        raise ValueError(f"caps must be a scalar or have shape [{size}] (one per edge), got shape {list(c.shape)}")
    if c.dtype == bool or not np.all(np.isfinite(c.astype(np.float64))) or np.any(c != np.round(c)) or np.any(c < 0):
        raise ValueError("caps must be whole numbers of labels >= 0")
    return c.astype(np.int64)


def _room_error(n, room, live):
    return ValueError(
        f"budget {n} exceeds the {int(room)} labels that max_labels_per_edge allows on the {int(live)} edges "
        "with positive weight (and room left); allowed: budget <= cap * number of such edges"
    )


def capped_expected_counts(weights, budget, caps=None) -> np.ndarray:
    """Expected label counts ``m_e = min(c_e, lambda w_e)`` with ``sum m = n``.

    The usual rule of unequal-probability sampling for units whose ``n w_e`` exceeds
    what they can take: they get their cap with certainty and the others share the
    rest in proportion to ``w``. ``lambda = n`` when no cap binds. Edges with
    ``w_e = 0`` or ``c_e = 0`` get 0.

    Args:
      weights: ``[E]`` non-negative design weights (normalised here).
      budget: ``n >= 1``.
      caps: ``None`` (no cap: ``m = n w``), a scalar or ``[E]`` whole numbers ``>= 0``.

    Raises:
      ValueError: when the caps of the edges with positive weight sum to less than ``n``.
    """
    w, n = _check(weights, budget)
    if caps is None:
        return n * w
    c = _caps_array(caps, w.size).astype(np.float64)
    live = (w > 0) & (c > 0)
    room = float(c[live].sum())
    if n > room:
        raise _room_error(n, room, live.sum())
    m = np.zeros(w.size)
    if n == room:
        m[live] = c[live]
        return m
    ws, cs = w[live], c[live]
    order = np.argsort(cs / ws, kind="stable")  # edges in the order they saturate as lambda grows
    ws, cs = ws[order], cs[order]
    ratio = cs / ws
    capped_before = np.concatenate([[0.0], np.cumsum(cs)[:-1]])  # caps of the k first edges
    weight_after = np.cumsum(ws[::-1])[::-1]  # weight of edges k, k+1, ...
    lam = (n - capped_before) / weight_after  # lambda if exactly the k first edges saturate
    k = int(np.argmax(lam <= ratio))  # the first consistent k (k = L is excluded: n < room)
    ms = np.where(np.arange(ws.size) < k, cs, np.minimum(lam[k] * ws, cs))
    out = np.zeros(ws.size)
    out[order] = ms
    m[live] = out
    return m


@jax.jit
def _pivot_step(a, b):
    """One duel of pivotal sampling between the carried residual ``a`` and the next unit's ``b``.

    Returns ``(p, value, residual)``: with probability ``p`` the carried unit settles
    at ``value`` and the new unit carries ``residual``; otherwise the new unit settles at
    ``value`` and the carried one keeps ``residual``. If ``a + b <= 1`` one of them drops
    to 0 and the other takes ``a + b`` (each keeps its expectation:
    ``P(carried drops) = b / (a + b)``); otherwise one rises to 1 and the other keeps
    ``a + b - 1`` (``P(carried rises) = (1 - b) / (2 - a - b)``). Deville and Tille (1998).
    """
    s = a + b
    low = s <= 1
    p_low = jnp.where(s > 0, b / jnp.where(s > 0, s, 1), 0.0)
    p_high = jnp.where(s < 2, (1 - b) / jnp.where(s < 2, 2 - s, 1), 0.5)
    return jnp.where(low, p_low, p_high), jnp.where(low, 0.0, 1.0).astype(s.dtype), jnp.where(low, s, s - 1)


@jax.jit
def _pivotal_ordered(probs, u):
    """Pivotal sampling of ``probs`` ``[L]`` in the given order with uniforms ``u`` ``[L]``."""
    length = probs.shape[0]

    def body(carry, x):
        i, a = carry
        j, b, uj = x
        p, value, residual = _pivot_step(a, b)
        settle_carried = uj < p
        settled = jnp.where(settle_carried, i, j)
        carried = jnp.where(settle_carried, j, i)
        return (carried, residual), (settled, value)

    idx = jnp.arange(length)
    (last, residual), (settled, values) = jax.lax.scan(body, (idx[0], probs[0]), (idx[1:], probs[1:], u[1:]))
    out = jnp.zeros(length, probs.dtype).at[settled].set(values).at[last].set(jnp.round(residual))
    return out, residual


@jax.jit
def _pivotal_random(key, probs):
    """Pivotal sampling of ``probs`` ``[L]`` in a uniformly random order drawn from ``key``."""
    k_order, k_u = jax.random.split(key)
    order = jax.random.permutation(k_order, probs.shape[0])
    u = jax.random.uniform(k_u, probs.shape, probs.dtype)
    sel, residual = _pivotal_ordered(probs[order], u)
    return jnp.zeros_like(sel).at[order].set(sel), residual


def pivotal_sample(key, probs) -> np.ndarray:
    """A fixed-size sample with inclusion probabilities exactly ``probs``: pivotal sampling on a random order.

    Units with ``0 < p < 1`` are put in a uniformly random order (from ``key``) and
    dueled in turn (:func:`_pivot_step`, Deville and Tille 1998): every duel keeps each
    unit's expectation and settles one of the two at 0 or 1, so
    ``P(unit e selected) = p_e`` exactly for every order, and exactly ``sum p`` units are
    selected (``sum p`` must be a whole number). Units with ``p = 1`` are always taken.
    Randomising the order makes every pair's joint inclusion probability depend on the
    whole vector rather than on neighbours in a fixed list.

    Args:
      key: JAX PRNG key.
      probs: ``[N]`` inclusion probabilities in ``[0, 1]`` summing to a whole number.

    Returns:
      ``[N]`` int64 0/1 indicators summing to ``round(sum probs)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probs must have shape [N], got shape {list(p.shape)}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("probs must be inclusion probabilities in [0, 1]; an edge with n w_e > 1 needs a cap (capped_expected_counts)")
    total = p.sum()
    size = int(round(total))
    if abs(total - size) > 1e-6:
        raise ValueError(f"probs must sum to a whole number of units (the sample size), got {total!r}")
    out = (p >= 1).astype(np.int64)
    frac = np.flatnonzero((p > 0) & (p < 1))
    if frac.size:
        dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        length = max(8, 1 << int(np.ceil(np.log2(frac.size))))  # power-of-two buckets: few compilations
        padded = np.zeros(length)
        padded[: frac.size] = p[frac]  # zero padding settles at 0 wherever it falls and changes nothing
        sel, residual = _pivotal_random(key, jnp.asarray(padded, dtype))
        residual = float(residual)
        if abs(residual - round(residual)) > (1e-6 if dtype == jnp.float64 else 1e-3):
            raise RuntimeError(f"pivotal sampling ended with a fractional residual {residual}: the probabilities do not sum to a whole number")
        out[frac] = np.asarray(sel[: frac.size]).round().astype(np.int64)
    if out.sum() != size:
        raise RuntimeError(f"pivotal sampling selected {out.sum()} units instead of {size}")
    return out


def _round_expected(key, m) -> np.ndarray:
    """Counts with ``E[count] = m`` exactly and ``sum = sum m``: ``floor(m)`` plus pivotal on the fractions."""
    base = np.floor(m)
    return base.astype(np.int64) + pivotal_sample(key, m - base)


def pivotal_rounding(key, weights, budget, caps=None) -> Allocation:
    """Exactly ``budget`` labels with expected counts :func:`capped_expected_counts` (caps default 1).

    With the default cap of one label an edge this is ``budget`` distinct edges drawn
    with inclusion probabilities ``min(1, lambda w_e)`` (``= n w_e`` when no edge has
    ``n w_e > 1``); with larger caps each edge gets ``floor(m_e)`` or ``ceil(m_e)`` labels.
    """
    w, n = _check(weights, budget)
    m = capped_expected_counts(w, n, 1 if caps is None else caps)
    return allocation_from_counts(_round_expected(key, m))


def _orthonormal_add(q, k, v, tol):
    """Add ``v`` to the orthonormal rows ``q[:k]`` if it leaves their span (two Gram-Schmidt passes)."""
    norm = np.linalg.norm(v)
    if norm == 0:
        return False
    r = v / norm
    for _ in range(2):
        if k:
            r = r - q[:k].T @ (q[:k] @ r)
    rn = np.linalg.norm(r)
    if rn <= tol:
        return False
    q[k] = r / rn
    return True


def spanning_edges(key, weights, diffs, covered=None) -> tuple[np.ndarray, int]:
    """A basis of the span of the weighted edges' differences, beyond what ``covered`` edges span.

    Edges with ``w_e > 0`` are visited in successive-sampling order proportional to
    ``w`` (a Gumbel top-k order from ``key``), and each is kept when its difference
    leaves the span of those kept (and of the ``covered`` edges) until that span is the
    whole span of ``{z_e : w_e > 0 or covered_e}``. For one-hot features this is
    Kruskal's algorithm on random weights: a random spanning forest of each prompt's
    comparison graph that favours heavy edges.

    Args:
      key: JAX PRNG key.
      weights: ``[E]`` non-negative weights; only ``w_e > 0`` edges are candidates.
      diffs: ``[E, d]`` edge differences.
      covered: optional ``[E]`` counts of labels already given (pilot labels).

    Returns:
      ``(edges, rank)``: the kept edge ids in the order found, and the number of new
      directions needed (``len(edges) == rank`` unless numerical rank disagrees).
    """
    w = np.asarray(weights, dtype=np.float64)
    z = np.asarray(diffs, dtype=np.float64)
    data = data_precision(diffs)
    if z.ndim != 2 or z.shape[0] != w.size:
        raise ValueError(f"diffs must have shape [E, d] with E = {w.size}, got shape {list(z.shape)}")
    done = np.zeros(w.size, bool) if covered is None else np.asarray(covered) > 0
    d = z.shape[1]
    base_rank = rows_rank(z[done], data)
    need = rows_rank(z[done | (w > 0)], data) - base_rank
    q = np.zeros((d, d))
    k = 0
    tol = max(1e-8, 100.0 * float(np.finfo(data).eps))  # a new direction is above the data's rounding
    for v in z[done]:  # the span already labelled
        if k == base_rank:
            break
        k += _orthonormal_add(q, k, v, tol)
    if need <= 0:
        return np.zeros(0, np.int64), 0
    cand = np.flatnonzero(w > 0)
    g = np.asarray(jax.random.gumbel(key, (cand.size,), dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
    order = cand[np.argsort(-(np.log(w[cand]) + g), kind="stable")]
    kept = []
    target = k + need
    for e in order:
        if _orthonormal_add(q, k, z[e], tol):
            kept.append(e)
            k += 1
            if k >= min(target, d):
                break
    return np.asarray(kept, dtype=np.int64), int(need)


def covering_rounding(key, weights, budget, diffs, caps=None, covered=None) -> Allocation:
    """Exactly ``budget`` labels that cover the span of the design's support whenever ``budget`` allows.

    A spanning set first (:func:`spanning_edges`, one label each), then the other
    ``n - r`` labels by pivotal sampling (:func:`pivotal_sample`) with expected counts
    proportional to ``max(n w_e - [e in spanning set], 0)`` under the caps (default one
    label an edge); when those edges cannot take the rest, the remaining labels go to
    the other support edges in proportion to ``w``. If ``n < r`` a :class:`CoverageWarning`
    is issued and ``n`` edges of the spanning set are labelled.

    Args:
      key: JAX PRNG key.
      weights: ``[E]`` non-negative design weights.
      budget: ``n >= 1``.
      diffs: ``[E, d]`` edge differences.
      caps: ``None`` (one label an edge), a scalar or ``[E]`` whole numbers ``>= 0``.
      covered: optional ``[E]`` counts already labelled (pilot); their span counts as
        covered (their caps should already be reduced by them).
    """
    w, n = _check(weights, budget)
    c = _caps_array(1 if caps is None else caps, w.size)
    live = (w > 0) & (c > 0)
    room = int(c[live].sum())
    if n > room:
        raise _room_error(n, room, live.sum())
    k_basis, k_rest = jax.random.split(key)
    basis, need = spanning_edges(k_basis, np.where(live, w, 0.0), diffs, covered)
    counts = np.zeros(w.size, dtype=np.int64)
    if n < basis.size or n < need:
        warnings.warn(
            CoverageWarning(
                f"budget {n} is below {need}, the number of directions the design's support spans beyond those "
                f"already labelled: no {n} labels cover them, so the realised criterion is infinite; "
                f"labelling {min(n, basis.size)} edges of a spanning set"
            ),
            stacklevel=2,
        )
        counts[basis[:n]] = 1
        if n > basis.size:  # numerical rank above the edges found: fill by pivotal sampling
            counts += _round_expected(k_rest, capped_expected_counts(np.where(counts == 0, w, 0.0), n - basis.size, c - counts))
        return allocation_from_counts(counts)
    counts[basis] = 1
    rest = n - basis.size
    if rest:
        left = c - counts
        owed = np.where(live & (left > 0), np.maximum(n * w - counts, 0.0), 0.0)
        m = np.zeros(w.size)
        if owed.sum() > 0 and left[owed > 0].sum() >= rest:
            m = capped_expected_counts(owed, rest, left)
        else:
            if owed.sum() > 0:
                m = np.where(owed > 0, left, 0).astype(np.float64)
            more = rest - int(round(m.sum()))
            if more > 0:
                others = np.where(live & (owed == 0) & (left > 0), w, 0.0)
                m = m + capped_expected_counts(others, more, left)
        counts += _round_expected(k_rest, m)
    return allocation_from_counts(counts)


def resolve_rounding(weights, budget, rule: str, caps=None) -> str:
    """The concrete rule ``"auto"`` stands for (other rules are returned unchanged).

    Also refuses ``"efficient"`` and ``"with_replacement"`` with a cap that could bind
    (they cannot honour it).
    """
    if rule not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {list(ROUNDINGS)}, got {rule!r}")
    w, n = _check(weights, budget)
    if caps is not None and rule not in CAPPED_ROUNDINGS:
        c = _caps_array(caps, w.size)
        if np.any(c[w > 0] < n):
            raise ValueError(
                f"rounding {rule!r} cannot honour max_labels_per_edge (a cap below the budget {n}); "
                f"allowed with a cap: {list(CAPPED_ROUNDINGS)}"
            )
    if rule != "auto":
        return rule
    if caps is not None:
        return "covering"
    return "covering" if n <= int(np.sum(w > 0)) else "efficient"


def round_design(key, weights, budget, rule: str = "auto", *, diffs=None, caps=None, covered=None) -> Allocation:
    """Turn design ``weights`` into exactly ``budget`` labels by ``rule`` (see module doc).

    Args:
      key: JAX PRNG key.
      weights: ``[E]`` non-negative design weights.
      budget: ``n >= 1``.
      rule: one of :data:`ROUNDINGS`.
      diffs: ``[E, d]`` edge differences; needed by ``"covering"`` (and ``"auto"``
        when it resolves to it).
      caps: ``None`` or the most labels each edge may get (scalar or ``[E]``).
      covered: ``[E]`` labels already given (pilot), whose span counts as covered.
    """
    rule = resolve_rounding(weights, budget, rule, caps)
    if rule == "covering":
        if diffs is None:
            raise ValueError("rounding 'covering' (what 'auto' means here) needs the edge differences: pass diffs=[E, d]")
        return covering_rounding(key, weights, budget, diffs, caps, covered)
    if rule == "pivotal":
        return pivotal_rounding(key, weights, budget, caps)
    if rule == "efficient":
        return efficient_rounding(weights, budget, key)
    if rule == "without_replacement":
        if caps is not None:
            weights = np.where(_caps_array(caps, np.size(weights)) > 0, np.asarray(weights, np.float64), 0.0)
        return sample_without_replacement(key, weights, budget)
    return sample_with_replacement(key, weights, budget)
