r"""Every comparison-selection rule behind one interface, registered by name.

A design is a function ``design(key, problem, budget, **params) -> DesignOutput``:
it chooses which candidate comparisons of ``problem`` receive the ``budget`` labels.
Register a new one in a few lines::

    from synthetic.designs import register_design, weighted_output

    @register_design("my_rule", summary="what it does", source="where it comes from")
    def my_rule(key, problem, budget, rounding="auto", max_labels_per_edge=None):
        w = ...  # [E] non-negative weights over problem.edges
        return weighted_output(key, problem, budget, w, rounding, max_labels_per_edge=max_labels_per_edge)

and run it with :func:`run_design` (which checks the contract: exactly ``budget``
labels, non-negative counts, at most ``max_labels_per_edge`` labels an edge, the
design's own constraints) or through the Hydra sweep by its name.

Parameters are checked before any work by :func:`check_design_params`: each
registered design carries one check per parameter (:data:`PARAM_CHECKS` by name,
or its own passed as ``register_design(..., checks={name: fn})``), and errors name
``design.params.<name>`` and the allowed values.

Finite budgets. Every registered design takes ``max_labels_per_edge`` (``None``:
unlimited; ``1``: each comparison labelled at most once, the paper's HH setting) and
its allocation respects it exactly; the optimal designs solve with the matching caps
``w_e <= max_labels_per_edge / budget`` and take a Gaussian prior's
``prior_precision`` (the Bayes criterion ``tr(I (lambda / n Id + Sigma_w)^-1)``). The
rounding (``rounding="auto"``) labels a spanning set of the design's support first
whenever the budget allows (:mod:`synthetic.rounding`), and :func:`run_design` warns
(:class:`~synthetic.rounding.CoverageWarning`) before any label is spent when the
budget is below the rank of the curvature, where no allocation has a finite criterion.

What a design may read. ``problem.edges`` and ``problem.pool`` (the candidate
comparisons and their completions, as a practitioner has them), ``problem.target``
(the pool on which the gap is measured, for the curvature) and ``problem.beta``.
``problem.annotator`` (``theta_star`` and :meth:`DesignProblem.label`) is the
simulation's truth. :func:`run_design` hands it only to designs registered with
``needs_truth`` (the oracle, designs that buy pilot labels, the noisy reward-model
proxy whose correlation with the true reward is a parameter, adaptive designs); the
others run on ``problem.without_truth()``, where reading it raises
:class:`TruthHiddenError`.

Pilot labels. Adaptive designs (two-stage, pilot reward models, pilot uncertainty)
spend part of the budget on labels they observe; ``DesignOutput.pilot`` holds those
``(counts, wins)`` per edge and the allocation includes their counts. An evaluation
must reuse these wins rather than draw fresh ones for the pilot edges.

Layout (one module a concern, one a family; this package re-exports every name):

- :mod:`~synthetic.designs.problem`: :class:`DesignProblem`, :class:`Annotator`
  (the truth), :class:`DesignOutput`;
- :mod:`~synthetic.designs.checks`: parameter checks (:data:`PARAM_CHECKS`);
- :mod:`~synthetic.designs.registry`: :func:`register_design` (parameter checks and
  the design's own budget check, ``check_budget``), :func:`check_design_params`,
  :func:`check_design_budget` (a sweep's pre-flight pass), :func:`run_design`;
- :mod:`~synthetic.designs.outputs`: :func:`weighted_output`, :func:`selection_output`;
- :mod:`~synthetic.designs.pilot`: :class:`PilotConfig` (the pilot's numbers, in one
  place) and the pilot fit;
- the families (:data:`FAMILIES`): :mod:`~synthetic.designs.optimal`,
  :mod:`~synthetic.designs.greedy`, :mod:`~synthetic.designs.heuristics` (reward
  positions), :mod:`~synthetic.designs.reference`,
  :mod:`~synthetic.designs.uncertainty`, :mod:`~synthetic.designs.simple` (uniform,
  first_two, first_n) and :mod:`~synthetic.designs.adaptive` (also importable as
  :mod:`synthetic.adaptive`).
"""

# The core, then the families (importing a family registers its designs).
from synthetic.designs.checks import (  # noqa: F401  (re-exported, private names included)
    PARAM_CHECKS,
    _bool_check,
    _check_choice,
    _check_fraction,
    _fail,
    choice_check,
    integer_check,
    interval_check,
    spec_check,
)
from synthetic.designs.outputs import (  # noqa: F401
    _present,
    _prompt_masses,
    _rest_caps,
    allocation_criterion,
    selection_output,
    weighted_output,
)
from synthetic.designs.pilot import PILOT, PilotConfig, _at_truth_or_pilot, _pilot, _theta_at  # noqa: F401
from synthetic.designs.problem import Annotator, DesignOutput, DesignProblem, TruthHiddenError, design_problem
from synthetic.designs.registry import (  # noqa: F401
    DESIGNS,
    BudgetCheck,
    allocation_is_random,
    check_reproducible,
    DesignSpec,
    _curvature_rank,
    check_design_budget,
    preflight,
    resolve_params,
    check_design_params,
    get_design,
    register_design,
    rounding_budget_check,
    run_design,
)
from synthetic.designs.optimal import (  # noqa: F401
    _SOLVED,
    _SOLVED_MAX,
    _check_prior,
    _design_caps,
    _optimal,
    _sol_info,
    _solve,
    _solve_key,
    _solve_uncached,
    a_optimal,
    d_optimal,
    oracle,
    plug_in,
    prompt_selection,
    response_selection,
    two_stage,
)
from synthetic.designs.greedy import (  # noqa: F401
    _batch_greedy,
    _check_positive,
    _greedy,
    _greedy_order,
    adpo_greedy,
    apo_greedy,
    apo_sequential,
)
from synthetic.designs.simple import first_n, first_two, uniform  # noqa: F401
from synthetic.designs.reference import reference_filter, reference_filter_labelled, reference_weighted  # noqa: F401
from synthetic.designs.heuristics import (  # noqa: F401
    REWARD_POSITIONS,
    _nearest,
    _per_prompt_output,
    _per_prompt_pairs,
    _position_target,
    _rewards,
    best_vs_worst,
    reward_model,
    sweet_spot,
    sweet_spot_pm2sigma,
    sweet_spot_scalable,
)
from synthetic.designs.uncertainty import _uncertainty, most_certain, uncertainty  # noqa: F401
from synthetic.designs import adaptive  # noqa: F401,E402  (registers the adaptive designs)

#: The designs each family module registers.
FAMILIES: dict[str, tuple] = {
    "optimal": ("oracle", "plug_in", "two_stage", "d_optimal", "a_optimal", "response_selection", "prompt_selection"),
    "greedy": ("adpo_greedy", "apo_greedy", "apo_sequential"),
    "simple": ("uniform", "first_two", "first_n"),
    "reference": ("reference_weighted", "reference_filter", "reference_filter_labelled"),
    "heuristics": ("best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable"),
    "uncertainty": ("uncertainty", "most_certain"),
    "adaptive": ("adpo_adaptive", "uncertainty_adaptive", "most_certain_adaptive", "sequential_plug_in"),
}

# Listings (``list(DESIGNS)``, e.g. the design table's rows) keep the order the designs
# had when they lived in one module; designs registered later follow in their order.
_LISTED = ("oracle", "plug_in", "two_stage", "d_optimal", "a_optimal", "adpo_greedy", "apo_greedy", "apo_sequential",
           "uniform", "first_two", "first_n", "reference_weighted", "best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma",
           "sweet_spot_scalable", "reference_filter", "reference_filter_labelled", "uncertainty", "most_certain",
           "response_selection", "prompt_selection")
_ordered = {n: DESIGNS[n] for n in _LISTED if n in DESIGNS}
_ordered.update((n, s) for n, s in DESIGNS.items() if n not in _ordered)
DESIGNS.clear()
DESIGNS.update(_ordered)
del _ordered

__all__ = [
    "Annotator",
    "TruthHiddenError",
    "DesignProblem",
    "DesignOutput",
    "DesignSpec",
    "DESIGNS",
    "FAMILIES",
    "PARAM_CHECKS",
    "PILOT",
    "PilotConfig",
    "REWARD_POSITIONS",
    "check_design_params",
    "check_design_budget",
    "preflight",
    "resolve_params",
    "design_problem",
    "register_design",
    "get_design",
    "run_design",
    "allocation_is_random",
    "check_reproducible",
    "weighted_output",
    "selection_output",
    "allocation_criterion",
    "reward_model",
]
