r"""Certified optimal approximate designs over candidate comparison edges.

A design is a probability vector ``w`` over the ``E`` candidate edges. With
``v_e = beta sqrt(sigmoid'(beta theta.z_e)) z_e`` the information matrix is
``Sigma_w = sum_e w_e v_e v_e^T`` and, with ``T_w = ridge Id + Sigma_w``,

* ``"L"`` (the paper's criterion): ``Phi_L(w) = tr(I T_w^+)``, ``I`` the policy curvature;
* ``"A"``: ``Phi_A(w) = tr(T_w^+)`` (the L-criterion with ``I = Id``);
* ``"D"``: ``Phi_D(w) = -log det T_w`` (a pseudo-determinant when ``ridge = 0``).

When ``ridge = 0`` every inverse and determinant is taken on the identifiable
subspace ``U = span{z_e}`` (theory brief section 3): directions that no candidate edge
sees carry no information and, for ``"L"``, must carry no curvature, or every
design has ``Phi = +inf`` (an error here). With ``ridge > 0`` the criteria are the
full-space ones; the part outside ``U`` is a constant that does not depend on ``w``.

Optimality (theory brief F4, the equivalence theorem). Let
``d_e(w) = -dPhi/dw_e``: ``v_e^T T^+ I T^+ v_e`` for L, ``v_e^T T^{+2} v_e`` for A and
the leverage ``v_e^T T^+ v_e`` for D. ``Phi`` is convex, so for every feasible ``w'``

.. math::  \Phi(w) - \Phi(w') \le \max_e d_e(w) - \sum_e w_e d_e(w) =: \mathrm{cert}(w),

which is the Frank-Wolfe duality gap. It is a certificate at *every* iterate, and
``cert(w) = 0`` iff ``w`` is optimal (for L and A with ``ridge = 0`` the condition is
``max_e d_e = Phi``; for D it is Kiefer-Wolfowitz, ``max_e d_e = dim U``). With
groups (a product of simplices, each group ``g`` of mass ``m_g``) the maximum is
taken per group: ``cert = sum_g m_g max_{e in g} d_e - sum_e w_e d_e``.

Designs with caps (finite budgets). With budget ``n`` and at most ``c_e`` labels on
edge ``e`` the design satisfies ``0 <= w_e <= caps_e = c_e / n`` (HH: each comparison
at most once, ``caps = 1 / n``). Over this capped simplex the linear maximisation of
``<d, s>`` fills the edges of largest ``d_e`` up to their caps until the mass is placed
(per group with groups), and ``cert(w) = <d(w), s - w> >= Phi(w) - Phi*`` by convexity.
The equivalence theorem for bounded designs (Wynn 1982; Sahm and Schwabe 2001): ``w``
is optimal iff there is a threshold ``t`` (per group) with ``d_e >= t`` on edges at their
cap, ``d_e = t`` on free support edges (``0 < w_e < caps_e``) and ``d_e <= t`` off the
support. By LP duality ``max_s <d, s> = min_t m t + sum_e c_e (d_e - t)_+``, so every
threshold gives an upper bound of the certificate; the iterations use that O(E) bound
at the threshold of the last exact (sorted) LMO, and the reported certificate is the
exact one, recomputed from scratch.

Bayes criterion. A prior ``N(0, Id / lambda)`` on ``theta`` and ``n`` labels give a
posterior precision of about ``lambda Id + n Sigma_w``; the expected gap is then about
``(beta / 2n) tr(I (lambda / n Id + Sigma_w)^-1)``: the criterion above with
``ridge = lambda / n`` (``prior_precision`` and ``budget`` of :func:`optimal_design`).

Algorithm: pairwise Frank-Wolfe (the vertex-exchange method of optimal design),
interleaved with multiplicative re-weighting of the support (kept when it lowers the
criterion). Each
step moves mass ``alpha`` from the worst active edge ``a`` to the best edge ``j`` of
one group, with ``alpha`` chosen by an exact line search on the closed-form
rank-two update of ``T^{-1}``. The method keeps ``M = V T^{-1}`` (``[E, r]``) up to date
with rank-two (Woodbury) updates, so one step costs ``O(E r)``, not ``O(E r^2)``; the
ridge is untouched by a mass transfer, so the updates are exact for every ridge.
With caps each block starts with up to three Frank-Wolfe steps to the capped LMO
vertex (exact line search through one ``r x r`` generalised eigen-decomposition): a
capped optimum is nearly a vertex, and at HH scale these steps alone take the
certificate from 0.1 to 4e-4. A pairwise step is limited by ``min(w_a, c_j - w_j)``
(``j`` the best edge below its cap), the multiplicative step becomes ``w_e <- min(c_e, tau w_e d_e^p)`` and the Newton
steps hold edges at either bound and project their trials on the capped simplex.
Every ``refresh_every`` steps, and before convergence is declared, everything is
recomputed from the weights (``O(E r^2)``), so the reported value and certificate
never carry accumulated rounding. Problems whose optimum may need half the edges or more
(``r (r + 1) / 2`` plus the edges the caps need: a tabular pool) are solved on every edge
from the (capped) uniform design; the others on working sets, from a small spanning support
chosen by pivoted Gram-Schmidt (plus one edge per group without one), uniform within groups.

Layout (one concern a module):

* :mod:`~theory.design.problem`: :class:`ReducedProblem`, the instance reduced to the
  identifiable span (:func:`reduce_problem` checks and reduces it once);
* :mod:`~theory.design.state`: the iterate and its exact refresh, the criterion value;
* :mod:`~theory.design.certificate`: the duality-gap certificate (exact, and the
  threshold bound inside the step loop), the capped linear maximisation;
* :mod:`~theory.design.simplex`: projections on the (capped) simplices of the groups;
* :mod:`~theory.design.steps`: pairwise steps and their line search, multiplicative
  re-weighting, the Frank-Wolfe step to the capped vertex;
* :mod:`~theory.design.polish`: projected Newton (dense and matrix-free CG), one
  backtracking line search;
* :mod:`~theory.design.start`: the starting design;
* :mod:`~theory.design.working_set`: working sets and pricing (column generation);
* :mod:`~theory.design.solver`: :class:`DesignSolver`, configured once and called on
  a problem, and :func:`optimal_design`, which builds both;
* :mod:`~theory.design.output`: :class:`DesignSolution`, :class:`SolverHistory`,
  :class:`DesignNotConvergedWarning` (a solve that stopped before its tolerance says so).
"""

from theory.design.certificate import exact_certificate
from theory.design.output import DesignNotConvergedWarning, DesignSolution, SolverHistory
from theory.design.problem import CRITERIA, ReducedProblem, reduce_problem
from theory.design.solver import DesignSolver, optimal_design

# Kernels the tests check against autodiff, scipy and dense oracles, importable from
# theory.design as before the split.
from theory.design.polish import _hessian_vector, _project_groups, _support_hessian  # noqa: F401,E402
from theory.design.state import _reduced_value, _refresh  # noqa: F401,E402
from theory.design.steps import _line_search, _vertex_step  # noqa: F401,E402

__all__ = [
    "DesignNotConvergedWarning",
    "DesignSolution",
    "SolverHistory",
    "optimal_design",
    "CRITERIA",
    "DesignSolver",
    "ReducedProblem",
    "reduce_problem",
    "exact_certificate",
]
