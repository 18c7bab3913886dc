"""The solver: configured once (:class:`DesignSolver`), called on a reduced problem
(:class:`~theory.design.problem.ReducedProblem`) with an optional starting design,
returning a :class:`~theory.design.output.DesignSolution`.

One call is column generation (:mod:`theory.design.working_set`) around blocks on a
working set: up to three Frank-Wolfe steps to the capped LMO vertex (with caps), up to
``refresh_every`` pairwise steps (:func:`~theory.design.steps._run_steps`), an exact
refresh, multiplicative re-weighting, and a Newton polish. Every decision to stop reads
the exact certificate (:func:`~theory.design.certificate.exact_certificate`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int

from theory.checked import check_argument, checked
from theory.information import check_saturation
from theory.design.certificate import _capped_lmo_np, exact_certificate
from theory.design.output import DesignNotConvergedWarning, DesignSolution, SolverHistory
from theory.design.polish import _polish, _polish_cg
from theory.design.problem import INSTANCE, ReducedProblem, check_curvature_for, reduce_problem, warn_if_saturated
from theory.design.start import start_weights
from theory.design.steps import _multiplicative, _run_steps, _vertex_step
from theory.design.working_set import _Restricted, first_working_set, next_working_set, price_round, uses_working_sets
from theory.shapes import Diffs, EdgeWeights, Scalar, Vector


def _check_int(value, name, least):
    check_argument(name, value, f"int >= {least}")


class _CGSchedule(NamedTuple):
    """When the matrix-free Newton polish is next tried: at block ``next``; ``gap``
    blocks apart, doubled each time it does not halve the certificate."""

    next: int = 0
    gap: int = 1


class _Trace:
    """The history as it grows: one entry per pairwise step, one row per pricing round."""

    def __init__(self):
        self.value, self.certificate, self.pricing = [], [], []

    def record(self, hist_value, hist_cert, it, value, cert):
        """A round's steps, then its exact value and certificate (which replace the last step's)."""
        self.value.extend(hist_value)
        self.certificate.extend(hist_cert)
        self.pricing.append((it, cert))
        if self.certificate:
            self.value[-1], self.certificate[-1] = value, cert
        else:
            self.value.append(value)
            self.certificate.append(cert)

    def history(self, constant) -> SolverHistory:
        return SolverHistory(value=np.asarray(self.value) + constant, certificate=np.asarray(self.certificate),
                             pricing=np.asarray(self.pricing).reshape(-1, 2))


def _singular_iterate():
    """The steps emptied the only edges along a direction of the edges' span, which the criterion
    allows where the curvature does not weigh it (an L criterion with ``I`` rank-deficient there):
    the infimum is then on the boundary, where ``Sigma`` is singular on the span. (This had been
    reported as a singular ``init`` the caller never gave.)"""
    raise ValueError(
        "the design solver's iterate became singular on the span of the edges: it emptied the only edges "
        "along a direction that the curvature I does not weigh (their scores are 0); use ridge > 0 or "
        "prior_precision > 0, or drop the edges that see only directions outside I's range")


@dataclasses.dataclass(frozen=True)
class DesignSolver:
    """Pairwise Frank-Wolfe with working sets and Newton polish, configured once.

    ``solver = DesignSolver(tol=1e-6)`` then ``solver(problem, init=None)`` for each
    :class:`~theory.design.problem.ReducedProblem` (see :func:`reduce_problem`);
    :func:`optimal_design` is ``DesignSolver(...)(reduce_problem(...), init)``.

    Attributes:
      tol: stop when the relative certificate is ``<= tol``.
      max_iter: maximum number of pairwise steps.
      refresh_every: pairwise steps between exact recomputations (one block).
      working_set: when ``E > 2 working_set`` and ``E`` is more than twice the support an
        optimum may need (:func:`~theory.design.working_set.uses_working_sets`), the steps
        run on a working set that grows by this many of the most violating edges after each
        pricing pass.
      polish_max: largest support that the dense Newton polish factors.
      newton_cg: matrix-free Newton polish (projected CG) on larger supports.
      vertex_steps: Frank-Wolfe steps to the capped LMO vertex at the start of a block
        (with caps).
      multiplicative_steps: multiplicative re-weighting steps after each block.
    """

    tol: float = 1e-3
    max_iter: int = 100_000
    refresh_every: int = 200
    working_set: int = 2048
    polish_max: int = 512
    newton_cg: bool = True
    vertex_steps: int = 3
    multiplicative_steps: int = 5

    def __post_init__(self):
        check_argument("tol", self.tol, "number > 0")
        _check_int(self.max_iter, "max_iter", 0)
        _check_int(self.refresh_every, "refresh_every", 1)
        _check_int(self.working_set, "working_set", 1)
        _check_int(self.vertex_steps, "vertex_steps", 0)
        _check_int(self.multiplicative_steps, "multiplicative_steps", 0)

    def __call__(self, problem: ReducedProblem, init=None) -> DesignSolution:
        """Solve ``problem`` from ``init`` (an ``[E]`` design satisfying the group masses and
        caps) or from the default start."""
        on_sets = uses_working_sets(problem, self.working_set)  # the path, decided once
        w_full = np.asarray(start_weights(problem, on_sets, init), dtype=np.float64)
        ws = first_working_set(problem, w_full, int(self.working_set), on_sets)
        tol_inner = self._inner_tol(problem, ws)
        trace, it = _Trace(), 0
        while True:
            st, n_done, hv, hc = self.solve_restricted(problem, ws, w_full, tol_inner, self.max_iter - it, first=it == 0)
            it += n_done
            w_full, d_full = price_round(problem, ws, st)
            val = float(st.value)
            cert, _ = exact_certificate(d_full, w_full, problem.groups, problem.masses, problem.num_groups, problem.caps)
            trace.record(hv, hc, it, val, cert)
            if self.converged(problem, cert, val) or it >= self.max_iter:
                break
            ws, tol_inner = self._next_round(problem, ws, w_full, d_full, tol_inner)
            if ws is None:
                break
        return self._output(problem, w_full, val, cert, it, trace)

    def converged(self, problem: ReducedProblem, cert, value) -> bool:
        """The convergence test: the certificate relative to the problem's scale is ``<= tol``."""
        return cert / problem.scale(value) <= self.tol

    def _inner_tol(self, problem, ws):
        """On a working set, solve to half the tolerance (the full certificate is larger)."""
        return self.tol if ws.size == problem.num_edges else 0.5 * self.tol

    def _next_round(self, problem, ws, w_full, d_full, tol_inner):
        """A grown working set, or the same one with a tighter inner tolerance; ``(None, _)``
        when that tolerance is at rounding level."""
        grown = next_working_set(problem, ws, w_full, d_full, int(self.working_set))
        if grown is not None:
            return grown, self._inner_tol(problem, grown)
        tol_inner = 0.25 * tol_inner
        if tol_inner < 1e3 * np.finfo(problem.dtype).eps:
            return None, tol_inner
        return ws, tol_inner

    def _output(self, problem, w_full, val, cert, it, trace) -> DesignSolution:
        value = val + problem.constant
        rel = cert / (problem.rank if problem.kind == "D" else value)
        return DesignSolution(
            weights=jnp.asarray(w_full, dtype=problem.dtype), value=value, certificate=cert, relative_certificate=rel,
            converged=bool(rel <= self.tol), num_iter=it, rank=problem.rank, history=trace.history(problem.constant),
        )

    def solve_restricted(self, p: ReducedProblem, ws, w_full, tol, max_steps, first: bool = True):
        """Blocks on the edges ``ws`` until the working set's relative certificate is ``<= tol``
        or ``max_steps`` pairwise steps: ``(state, steps, step values, step certificates)``.
        ``first``: ``w_full`` is the start (the caller's ``init`` or the default), else an iterate."""
        sub = _Restricted.build(p, ws, w_full)
        state = sub.refresh(sub.w0)
        if not bool(jnp.isfinite(state.value)):
            if first:
                raise ValueError("init: the starting design is singular on the span of the edges; use ridge > 0")
            _singular_iterate()
        hist_v, hist_c, done, blocks, cg = [], [], 0, 0, _CGSchedule()
        tol_j, const_j = jnp.asarray(tol, p.x.dtype), jnp.asarray(p.scale_constant, p.x.dtype)
        state = self._reweight(sub, state)
        while done < max_steps:
            cert, thr = sub.exact(state)
            if sub.relative(cert, state) <= tol:
                break
            if p.caps is not None:
                state = self._vertex_steps(sub, state, cert, tol)
                cert, thr = sub.exact(state)
                if sub.relative(cert, state) <= tol:
                    break
            steps = int(min(self.refresh_every, max_steps - done))
            thr_j = None if thr is None else jnp.asarray(thr, p.x.dtype)
            state, n_done, hv, hc = _run_steps(state, sub.x, p.b, sub.groups_j, sub.masses_j, tol_j, const_j, p.kind,
                                               p.num_groups, steps, caps=sub.caps_j, thr=thr_j)
            n_done = int(n_done)
            hist_v.extend(np.asarray(hv[:n_done]).tolist())
            hist_c.extend(np.asarray(hc[:n_done]).tolist())
            done += n_done
            state = sub.refresh(state.w)
            if not bool(jnp.isfinite(state.value)):
                _singular_iterate()
            state = self._reweight(sub, state)
            state, cg = self._polish(sub, state, tol, blocks, cg)
            blocks += 1
            if n_done == 0:
                break
        return state, done, hist_v, hist_c

    def _reweight(self, sub, state):
        p = sub.problem
        return _multiplicative(state, sub.x, p.offset, p.b, sub.groups_j, sub.masses_j, p.kind, p.num_groups,
                               self.multiplicative_steps, caps=sub.caps_j)

    def _vertex_steps(self, sub, state, cert, tol):
        """Frank-Wolfe steps to the capped LMO vertex, each kept only if it lowers the criterion.

        A capped optimum is close to a vertex (edges at 0 or at their cap, few free), and
        one such step moves all the edges that pairwise steps would move one at a time (at
        HH scale, tens of thousands); the pairwise steps then settle the free edges."""
        p = sub.problem
        for _ in range(self.vertex_steps):
            if sub.relative(cert, state) <= tol:
                break
            dd = np.asarray(state.dd, dtype=np.float64)
            _, _, vertex = _capped_lmo_np(dd, sub.caps, sub.groups, p.masses, p.num_groups, True)
            new, _ = _vertex_step(state, sub.x, p.offset, p.b, sub.caps_j, jnp.asarray(vertex, p.x.dtype), p.kind)
            if not (bool(jnp.isfinite(new.value)) and float(new.value) < float(state.value)):
                break
            state = new
            cert, _ = sub.exact(state)
        return state

    def _polish(self, sub, state, tol, blocks, cg: _CGSchedule):
        """A Newton step on the support when the block has not converged: dense on supports of
        at most ``polish_max`` edges (pairwise steps zig-zag between nearly collinear support
        points; Newton settles the weights and drops the redundant ones), matrix-free on
        larger ones (an interior optimum has every edge in it), tried on the schedule ``cg``."""
        p = sub.problem
        cert, _ = sub.exact(state)
        rel = sub.relative(cert, state)
        support = int(jnp.sum(state.w > 0))
        if rel > tol and 0 < support <= self.polish_max:
            wp = _polish(state.w, sub.x, p.offset, p.b, p.kind, sub.groups, p.num_groups, caps=sub.caps)
            polished = sub.refresh(jnp.asarray(wp, p.x.dtype))
            if float(polished.value) < float(state.value):
                state = polished
        elif rel > tol and support > self.polish_max and self.newton_cg and blocks >= cg.next:
            state = _polish_cg(state, sub.x, p.offset, p.b, p.kind, sub.groups_j, p.num_groups, sub.level, caps=sub.caps)
            after, _ = sub.exact(state)
            gap = 1 if after <= 0.5 * cert else 2 * cg.gap
            cg = _CGSchedule(blocks + gap, gap)
        return state, cg


@checked(**INSTANCE)
def optimal_design(
    diffs: Diffs,
    theta: Vector,
    curvature: Float[ArrayLike, "d d"] | None,
    beta: Scalar,
    criterion: str = "L",
    ridge: float = 0.0,
    tol: float = 1e-3,
    max_iter: int = 100_000,
    groups: Int[ArrayLike, " E"] | None = None,
    group_weights: Float[ArrayLike, " G"] | None = None,
    refresh_every: int = 200,
    init: Float[ArrayLike, " E"] | None = None,
    working_set: int = 2048,
    polish_max: int = 512,
    newton_cg: bool = True,
    caps: EdgeWeights | float | None = None,
    prior_precision: Optional[float] = None,
    budget: Optional[float] = None,
) -> DesignSolution:
    """Minimise an L-, A- or D-criterion over designs on the candidate edges.

    ``optimal_design(diffs, theta, curvature, beta, criterion="L", ridge=0.0, tol=1e-3,
    max_iter=100_000, groups=None, group_weights=None, refresh_every=200, init=None,
    working_set=2048, polish_max=512, newton_cg=True, caps=None, prior_precision=None,
    budget=None)``

    This is ``DesignSolver(tol, max_iter, refresh_every, working_set, polish_max,
    newton_cg)(reduce_problem(diffs, theta, curvature, beta, criterion, ridge, groups,
    group_weights, caps, prior_precision, budget), init)``: build those two once to solve
    several problems with one configuration, or one problem from several starts.

    Args:
      diffs: ``[E, d]`` edge differences ``z_e``.
      theta: ``[d]`` where the information is evaluated (``theta*``: oracle;
        ``0``: plug-in at the reference; a pilot estimate: two-stage).
      curvature: ``[d, d]`` ``I(theta)`` for ``"L"``; ignored (may be ``None``) for A, D.
      beta: ``> 0``.
      criterion: ``"L"`` (``tr(I Sigma^+)``, the paper's), ``"A"`` or ``"D"``.
      ridge: ``>= 0``; ``> 0`` gives the paper's ``tr(I (ridge Id + Sigma)^-1)``.
      tol: stop when the relative certificate is ``<= tol`` (see :class:`DesignSolution`).
      max_iter: maximum number of pairwise steps.
      groups: optional ``[E]`` integer group of each edge (e.g. its prompt): the design
        then puts mass ``group_weights[g]`` on group ``g`` (response selection).
      group_weights: ``[G]`` masses (normalised; default uniform over non-empty groups).
      refresh_every: exact recomputation period (steps).
      init: optional ``[E]`` starting design (must satisfy the group masses and give a
        non-singular ``Sigma`` on the span when ``ridge = 0``).
      working_set: when ``E > 2 working_set`` and ``E`` is more than twice the support an
        optimum may need (``r (r + 1) / 2`` plus the edges the caps need:
        :func:`~theory.design.working_set.uses_working_sets`), the steps run on a working set
        of edges that grows by this many of the most violating edges after each pricing pass
        over all edges (column generation); the certificate is always over all edges.
      polish_max: after each block of ``refresh_every`` steps that has not converged,
        a projected Newton step on the weighted edges is tried when there are at most
        this many (``O(s^2 r + s^3)``); it is kept only if it lowers the criterion.
      newton_cg: on larger supports, take the same Newton steps matrix-free (projected
        conjugate gradients, ``O(E r k)`` a Hessian-vector product). Interior optima
        (every edge weighted, e.g. a tabular pool with a peaked ``pi0``) need it: pairwise
        steps alone converge slowly there. ``False`` gives the pairwise steps alone.
      caps: ``None`` (no upper bounds: today's solver, number for number), a scalar or an
        ``[E]`` array of upper bounds, finite or ``inf``, ``>= 0``: the design must satisfy
        ``0 <= w_e <= caps_e``. With budget ``n`` and at most ``c_e`` labels on edge ``e``,
        ``caps_e = c_e / n`` (``caps = 1 / n``: each comparison labelled at most once).
        The steps then work on the capped simplex (with groups: each group's capped
        simplex), and the certificate is the duality gap of the capped problem: the
        linear maximisation fills the edges of largest ``d_e`` up to their caps
        (Wynn 1982; Sahm and Schwabe 2001). Caps whose sum is below 1 (below a group's
        mass with groups) admit no design: ``ValueError``.
      prior_precision: ``lambda >= 0`` of a Gaussian prior ``N(0, Id / lambda)`` on
        ``theta``; with ``budget`` (``n``) the criterion is the Bayes one,
        ``tr(I (lambda / n Id + Sigma_w)^-1)`` (A, D alike), i.e. ``ridge = lambda / n``.
        Not together with ``ridge > 0``.
      budget: ``n > 0`` labels; required with ``prior_precision`` and used only there.

    Returns:
      :class:`DesignSolution` (with caps, ``weights`` satisfy them exactly).

    Examples:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> sol = optimal_design(z, jnp.zeros(2), None, 1.0, criterion="D", tol=1e-6)
      >>> [round(float(v), 3) for v in sol.weights]   # D-optimal: equal weights
      [0.333, 0.333, 0.333]
    """
    check_curvature_for(criterion, curvature, np.shape(diffs)[1])
    solver = DesignSolver(tol=tol, max_iter=max_iter, refresh_every=refresh_every, working_set=working_set,
                          polish_max=polish_max, newton_cg=bool(newton_cg))
    problem = reduce_problem(diffs, theta, curvature, beta, criterion, ridge, groups, group_weights, caps,
                             prior_precision, budget)
    warn_if_saturated(diffs, theta, beta, problem.rank, stacklevel=4)  # directions the solver cannot see (at the caller)
    sol = solver(problem, init)
    # the design's own labelled directions: a weight far below the others' on an edge that alone sees a
    # direction puts it below Sigma's resolution, and the reported value leaves it out
    check_saturation(theta, diffs, sol.weights, beta, "optimal_design's design", stacklevel=4)
    if not sol.converged:  # every caller's design is used as it is: say so, once per solve
        warnings.warn(DesignNotConvergedWarning(
            f"the {criterion}-optimal design stopped at max_iter = {max_iter} before its tolerance {tol:g}: relative "
            f"certificate {float(sol.relative_certificate):.3g}; its allocation is that of a design this far from optimal"),
            # the caller of optimal_design, past the checked wrapper: one location per call site, so Python's
            # once-per-location filter does not hide a second caller's non-convergence behind the first's
            stacklevel=3)
    return sol
