"""The registry: every design by name, its parameter checks, its own budget checks,
and :func:`run_design`, which checks the contract around a run."""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.designs.checks import PARAM_CHECKS
from synthetic.designs.pilot import pilot_budget_check
from synthetic.designs.problem import DesignOutput, DesignProblem
from synthetic.labels import check_pilot
from synthetic.rounding import CoverageWarning, check_budget, check_max_labels_per_edge, resolve_max_labels_per_edge
from theory.information import data_precision, rows_rank

__all__ = ["DesignSpec", "DESIGNS", "register_design", "get_design", "check_design_params", "check_design_budget",
           "run_design", "allocation_is_random", "resolve_params", "preflight", "BudgetCheck"]

#: ``check(name, problem, budget, params) -> None``: a design's own budget check, run
#: before any label with ``params`` completed by the design's defaults; raises
#: ``ValueError`` naming the parameter and the allowed budgets.
BudgetCheck = Callable[[str, DesignProblem, int, dict], None]


def _is_project_fn(fn) -> bool:
    """A design function of this project (whose ``pilot_fraction`` means :class:`PilotConfig`'s), not a user's."""
    return (getattr(fn, "__module__", "") or "").split(".")[0] == "synthetic"


def rounding_budget_check(name: str, problem: DesignProblem, budget: int, params: dict) -> None:
    """``rounding="without_replacement"`` labels each edge at most once (every design taking ``rounding``)."""
    if params.get("rounding") == "without_replacement" and budget > problem.num_edges:
        raise ValueError(
            f"budget = {budget} exceeds the {problem.num_edges} candidate edges of this world, which design.params.rounding = "
            "'without_replacement' cannot allocate (it labels each edge with positive weight at most once); allowed: "
            "budget <= number of edges, or rounding in ['auto', 'efficient', 'with_replacement']"
        )


@dataclasses.dataclass(frozen=True)
class DesignSpec:
    name: str
    fn: Callable
    summary: str
    source: str
    params: dict  # parameter name -> default
    checks: dict = dataclasses.field(default_factory=dict)  # parameter name -> check(name, value)
    # its selections depend on the labels it buys: an evaluation runs it once per
    # replicate and trains on exactly its labels (synthetic.adaptive.run_adaptive)
    adaptive: bool = False
    # reads the simulated truth (theta* or the annotator's labels): a bool, or a
    # function of the parameters (completed with their defaults)
    needs_truth: Union[bool, Callable[[dict], bool]] = False
    # its own budget checks (BudgetCheck), run by check_design_budget before any label
    budget_checks: tuple = ()
    # support(params, problem) -> int or None: how many distinct comparisons the design
    # can label with these parameters (None: every candidate edge)
    support: Optional[Callable[[DesignProblem, dict], Optional[int]]] = None
    # its output does not depend on its key (a deterministic rule: greedy selections,
    # no rounding draw, no pilot), so one run stands for every draw of its allocation
    keyless: bool = False

    def support_size(self, problem: DesignProblem, params: dict) -> int:
        """Distinct comparisons the design can label (every candidate edge unless it registered ``support``)."""
        s = self.support({**self.params, **params}, problem) if self.support else None
        return problem.num_edges if s is None else int(min(s, problem.num_edges))

    def __call__(self, key, problem, budget, **params):
        return self.fn(key, problem, budget, **params)

    def reads_truth(self, params: dict) -> bool:
        """Whether the design, run with ``params``, is handed the annotator."""
        if callable(self.needs_truth):
            return bool(self.needs_truth({**self.params, **params}))
        return bool(self.needs_truth)


DESIGNS: dict[str, DesignSpec] = {}


def register_design(name: str, *, summary: str, source: str, replace: bool = False, checks: Optional[dict] = None,
                    adaptive: bool = False, needs_truth: Union[bool, Callable[[dict], bool]] = False,
                    check_budget: Optional[BudgetCheck] = None, support: Optional[Callable] = None, keyless: bool = False):
    """Decorator registering ``fn(key, problem, budget, **params)`` under ``name``.

    ``adaptive=True`` flags a design whose selections depend on the labels it buys
    (:mod:`synthetic.adaptive`): an evaluation runs it once per replicate.

    ``needs_truth``: whether the design reads the simulation's truth
    (``problem.theta_star``, ``problem.label``, a reward-model proxy); a bool or a
    function of its parameters (with defaults filled in). Designs without it are run on
    ``problem.without_truth()``: reading the truth there raises
    :class:`TruthHiddenError`.

    ``checks`` maps parameter names to ``check(name, value)`` functions that raise
    ``ValueError``; parameters without one use :data:`PARAM_CHECKS` by name (a
    parameter in neither is not checked before the run).

    ``check_budget``: the design's own budget check (:data:`BudgetCheck`), run by
    :func:`check_design_budget` before any label (and so by a sweep's pre-flight
    pass); a design taking ``rounding`` also gets :func:`rounding_budget_check`, one of this
    project's taking ``pilot_fraction`` :func:`~synthetic.designs.pilot.pilot_budget_check` (a user's
    ``pilot_fraction`` may mean something else: its own ``check_budget`` checks it).

    ``support(params, problem) -> int | None``: how many distinct comparisons the
    design can label with these parameters (e.g. one pair per prompt), where that is
    fewer than the candidate edges. With ``max_labels_per_edge = c`` a budget above
    ``c`` times it is refused before any label, and ``max_labels_per_edge="auto"``
    labels each comparison at most once only where the budget fits it.

    ``keyless=True`` declares that the design's output does not depend on ``key`` (a
    deterministic rule: no rounding draw, no pilot, no random tie-break). A sweep cell then
    runs it once however many ``allocation_draws`` it has, and its interval is complete
    with one draw. The declaration is tested (two keys, capped and uncapped budgets); a
    design left without it is drawn as if random, which is never wrong, only slower.
    """

    def deco(fn):
        if name in DESIGNS and not replace:
            raise ValueError(f"design {name!r} is already registered (pass replace=True to override)")
        sig = inspect.signature(fn)
        names = list(sig.parameters)
        if names[:3] != ["key", "problem", "budget"]:
            raise ValueError(f"design {name!r}: the signature must start with (key, problem, budget), got {names[:3]}")
        params = {p.name: p.default for p in list(sig.parameters.values())[3:]}
        for q in list(sig.parameters.values())[3:]:  # defaults enter the cell's identity and its record's JSON metadata
            if q.default is inspect.Parameter.empty or q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
                continue  # a required parameter (or **kwargs): the value comes from the config
            p, default = q.name, q.default
            try:
                json.dumps(default, allow_nan=True)
            except (TypeError, ValueError):
                raise ValueError(f"design {name!r}: the default of parameter {p!r} must be a JSON value (null, a bool, a "
                                 f"number, a string, or a list or dict of them), got {type(default).__name__}; a record "
                                 "could not be written after its cell had been computed") from None
        extra = sorted(set(checks or {}) - set(params))
        if extra:
            raise ValueError(f"design {name!r}: checks for parameter(s) {extra} it does not take")
        own = {p: (checks or {}).get(p, PARAM_CHECKS.get(p)) for p in params}
        if not (isinstance(needs_truth, bool) or callable(needs_truth)):
            raise ValueError(f"design {name!r}: needs_truth must be a bool or a function of the parameters, got {needs_truth!r}")
        if check_budget is not None and not callable(check_budget):
            raise ValueError(f"design {name!r}: check_budget must be a function (name, problem, budget, params), got {check_budget!r}")
        hooks = (((rounding_budget_check,) if "rounding" in params else ()) + ((pilot_budget_check,) if "pilot_fraction" in params and _is_project_fn(fn) else ())
                 + ((check_budget,) if check_budget else ()))
        DESIGNS[name] = DesignSpec(name, fn, summary, source, params, {p: c for p, c in own.items() if c is not None},
                                   bool(adaptive), needs_truth, hooks, support, bool(keyless))
        return fn

    return deco


def get_design(name: str) -> DesignSpec:
    if name not in DESIGNS:
        raise ValueError(f"design must be one of {sorted(DESIGNS)}, got {name!r}")
    return DESIGNS[name]


def check_design_params(name: str, params: dict) -> None:
    """Check a design's parameters before any work.

    Unknown names fail listing the allowed ones; each given value is checked by the
    design's own check for that parameter, whose error names ``design.params.<name>``
    and the allowed values.
    """
    spec = get_design(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"design {name!r} has no parameter(s) {unknown}; allowed: {sorted(spec.params)}")
    for p, value in params.items():
        check = spec.checks.get(p)
        if check is not None:
            check(p, value)


def _curvature_rank(problem) -> int:
    """Rank of ``I`` on the target pool, from its features alone: ``I(theta) = sum_x rho_x
    Cov_{pi_theta(.|x)}(phi)`` and ``pi_theta > 0`` on the present completions, so its range is
    the span of the within-prompt differences ``phi(x, y) - phi(x, y')`` of the prompts with
    ``rho_x > 0``, whatever ``theta``. Read from the unit differences in float64 (well scaled):
    the curvature's own eigenvalues mix rounding with the softmax's small probabilities (a float32
    curvature's null direction read as one at float64's threshold; genuine directions at 6e-6 of
    the top dropped at float32's), and either way a budget was warned or not wrongly."""
    t = problem.target
    feats = np.asarray(t.features, np.float64)
    present = np.isfinite(np.asarray(t.log_ref, np.float64))
    rho = np.asarray(t.prompt_weights, np.float64) if t.prompt_weights is not None else np.ones(feats.shape[0])
    rows = []
    for x in np.flatnonzero(rho > 0):
        f = feats[x][present[x]]
        if f.shape[0] >= 2:
            rows.append(f[1:] - f[0])
    if not rows:
        return 0
    return rows_rank(np.concatenate(rows), data_precision(t.features))


def resolve_params(name: str, problem: DesignProblem, budget, params: dict) -> dict:
    """``params`` with ``max_labels_per_edge="auto"`` made concrete for this budget:
    ``1`` (each comparison labelled at most once) when the budget is at most the number
    of comparisons the design can label (``E``, or its registered ``support``), ``None``
    (unlimited) above. The parameters are checked first (:func:`check_design_params`)."""
    spec = get_design(name)
    check_design_params(name, params)
    cap = params.get("max_labels_per_edge", spec.params.get("max_labels_per_edge"))
    if isinstance(cap, str) and "max_labels_per_edge" in spec.params:
        size = spec.support_size(problem, params)
        params = {**params, "max_labels_per_edge": resolve_max_labels_per_edge(cap, check_budget(budget), size)}
    return params


def check_design_budget(name: str, problem: DesignProblem, budget, **params) -> int:
    """The checks :func:`run_design` makes before a design runs (a sweep's pre-flight pass can call it).
    Returns the budget as ``int`` (:func:`preflight` also returns the resolved parameters)."""
    return preflight(name, problem, budget, params)[0]


def preflight(name: str, problem: DesignProblem, budget, params: dict) -> tuple[int, dict]:
    """Everything checked before a design runs; returns ``(budget, params)`` with the budget
    as ``int`` and ``max_labels_per_edge="auto"`` resolved (:func:`resolve_params`).

    Parameters by :func:`check_design_params`; ``budget`` an integer ``>= 1``;
    ``budget > max_labels_per_edge * E`` is a ``ValueError``; then the design's own
    budget checks (``register_design(..., check_budget=...)``); a budget below the rank
    of the curvature ``I`` gives a :class:`~synthetic.rounding.CoverageWarning` (no
    allocation of that many labels covers ``I``'s range, so every realised criterion
    is infinite).
    """
    spec = get_design(name)
    params = resolve_params(name, problem, budget, params)
    budget = check_budget(budget)
    cap = check_max_labels_per_edge(params.get("max_labels_per_edge", spec.params.get("max_labels_per_edge")))
    if cap is not None and budget > cap * problem.num_edges:
        raise ValueError(
            f"budget {budget} exceeds design.params.max_labels_per_edge = {cap} times the {problem.num_edges} candidate "
            f"edges; allowed: budget <= {cap * problem.num_edges}, or a larger max_labels_per_edge"
        )
    if cap is not None and spec.support is not None:
        size = spec.support_size(problem, params)
        if budget > cap * size:
            raise ValueError(
                f"budget {budget} exceeds design.params.max_labels_per_edge = {cap} times the {size} comparisons design "
                f"{name!r} can label with these parameters; allowed: budget <= {cap * size}, a larger max_labels_per_edge, "
                "or max_labels_per_edge = 'auto' (at most once where the budget fits, else unlimited)"
            )
    full = {**spec.params, **params}
    for hook in spec.budget_checks:
        hook(name, problem, budget, full)
    if budget < problem.dim and problem.num_edges:
        rank = _curvature_rank(problem)
        if budget < rank:
            warnings.warn(
                CoverageWarning(
                    f"budget {budget} is below {rank}, the rank of the curvature I: no allocation of {budget} labels "
                    "covers I's range, so every design's realised criterion is infinite (a prior, prior_precision > 0, "
                    "keeps the Bayes criterion finite)"
                ),
                stacklevel=3,
            )
    return budget, params


def run_design(name: str, key, problem: DesignProblem, budget: int, **params) -> DesignOutput:
    """Run a registered design and check its contract.

    Before the design runs (before any pilot label): :func:`check_design_budget`
    (parameters, ``budget > max_labels_per_edge * E``, the design's own budget checks, a
    :class:`~synthetic.rounding.CoverageWarning` when the budget is below the rank of
    ``I``). The design sees the annotator only if it is registered as needing the truth
    (``needs_truth``). After: exactly ``budget`` labels on valid edges, at most
    ``max_labels_per_edge`` on each.
    """
    spec = get_design(name)
    budget, params = preflight(name, problem, budget, params)
    cap = check_max_labels_per_edge(params.get("max_labels_per_edge", spec.params.get("max_labels_per_edge")))
    if not spec.reads_truth(params):
        problem = problem.without_truth()
    out = spec.fn(key, problem, int(budget), **params)
    if not isinstance(out, DesignOutput):
        raise TypeError(f"design {name!r} must return a DesignOutput, got {type(out).__name__}")
    counts = np.asarray(out.allocation.counts)
    try:  # one count per edge (counts [budget] over E edges had broadcast to budget labels on each), ids in range, distinct
        dense = out.allocation.dense_counts(problem.num_edges)
    except ValueError as err:
        raise RuntimeError(f"design {name!r} returned an invalid allocation: {err}") from None
    if np.any(counts <= 0):
        raise RuntimeError(f"design {name!r} returned an invalid allocation: a listed edge has {counts.min()} labels "
                           "(allocation.counts must be >= 1; leave unlabelled edges out)")
    if not np.all(np.isfinite(counts)) or np.any(counts != np.round(counts)):  # int(sum) passed, and dense_counts truncated
        raise RuntimeError(f"design {name!r} returned fractional label counts (allocation.counts must be whole numbers)")
    if out.pilot is not None:
        try:
            check_pilot(out.pilot, dense)
        except ValueError as err:
            raise RuntimeError(f"design {name!r} returned an invalid pilot: {err}") from None
    if out.weights is not None:
        w = np.asarray(out.weights, np.float64)
        if w.shape != (problem.num_edges,) or not np.all(np.isfinite(w)) or np.any(w < 0) or abs(w.sum() - 1.0) > 1e-6:
            raise RuntimeError(f"design {name!r} returned weights that are not a design: shape {list(w.shape)} (want "
                               f"[{problem.num_edges}]), finite and >= 0: {bool(np.all(np.isfinite(w)) and np.all(w >= 0))}, "
                               f"sum {w.sum():.6g} (want 1)")
    if out.allocation.budget != int(budget):
        raise RuntimeError(f"design {name!r} returned {out.allocation.budget} labels for a budget of {budget}")
    if cap is not None and counts.max() > cap:
        raise RuntimeError(f"design {name!r} put {counts.max()} labels on an edge with max_labels_per_edge = {cap}")
    return out



def check_reproducible(name: str, key, problem: DesignProblem, budget: int, **params) -> None:
    """Raise ``ValueError`` unless the design is a function of its key: ``run_design`` twice with
    ``key`` gives one allocation and one pilot (counts and wins), and a design registered ``keyless``
    gives them with another key too.

    A design that draws outside its JAX key (``np.random``, Python's ``random``, the clock) makes
    records that the same config and seed do not reproduce; one falsely declared ``keyless`` is
    run once for all of a cell's allocation draws, so the cell's interval leaves its randomness
    out. The sweep checks the designs registered outside this project before any job.
    """
    spec = get_design(name)

    def draw(k):  # the allocation and the pilot's labels (a pilot drawn with np.random had passed the check)
        out = run_design(name, k, problem, budget, **params)
        pilot = () if out.pilot is None else tuple(np.asarray(a, np.float64) for a in out.pilot)
        return out.dense_counts(problem.num_edges), pilot

    def same(a, b):
        return np.array_equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))

    one, two = draw(key), draw(key)
    if not same(one, two):
        raise ValueError(
            f"design {name!r} gave two allocations for one key (label counts or pilot labels): it draws randomness outside its key (np.random, "
            "random, time), so its records cannot be reproduced from the config and seed; allowed: randomness only "
            "through the key argument (jax.random)")
    if spec.keyless:
        if not same(one, draw(jax.random.fold_in(key, 1))):
            raise ValueError(
                f"design {name!r} is registered keyless=True but another key gave another allocation: a cell would "
                "run it once for all its allocation draws and its interval would leave that randomness out; "
                "allowed: keyless=True only for a design whose output does not depend on the key")


def allocation_is_random(name: str, key, problem: DesignProblem, budget: int, first: DesignOutput, tries: int = 3,
                         **params) -> bool:
    """Whether the allocation ``first`` (``run_design(name, key, ...)``'s) is a draw of the design:
    it has a pilot (its labels are random), or one of ``tries`` more keys (``fold_in(key, i)``)
    draws another allocation. Several keys: a rounding with few fractional edges can repeat an
    allocation by chance. A design registered ``keyless`` is not random (no other key is run)."""
    if first.pilot is not None:
        return True
    if get_design(name).keyless:
        return False
    counts = first.dense_counts(problem.num_edges)
    return any(not np.array_equal(counts, run_design(name, jax.random.fold_in(key, i), problem, budget, **params).dense_counts(problem.num_edges))
               for i in range(1, tries + 1))
