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
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import functools
import inspect
import math
import warnings
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.baselines import first_two_weights, reference_weights, uniform_weights
from synthetic.estimators import fit_newton
from synthetic.labels import Allocation, allocation_from_counts, simulate_wins
from synthetic.rounding import ROUNDINGS, CoverageWarning, check_budget, check_max_labels_per_edge, resolve_rounding, round_design
from synthetic.worlds import Pool, World
from theory.design import optimal_design
from theory.edges import Edges, enumerate_edges
from theory.information import design_criterion
from theory.information import rank_threshold
from theory.policy import policy_curvature

__all__ = [
    "Annotator",
    "TruthHiddenError",
    "DesignProblem",
    "DesignOutput",
    "DesignSpec",
    "DESIGNS",
    "PARAM_CHECKS",
    "REWARD_POSITIONS",
    "check_design_params",
    "check_design_budget",
    "design_problem",
    "register_design",
    "get_design",
    "run_design",
    "weighted_output",
    "allocation_criterion",
    "reward_model",
]


# ------------------------------------------------------------------------- problem


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

    def edge_index(self) -> np.ndarray:
        """``[m, K, K]`` map from ``(prompt, i, j)`` to the edge id (``-1`` where none)."""
        m, k = self.pool.log_ref.shape
        idx = -np.ones((m, k, k), dtype=np.int64)
        e = self.edges
        ids = np.arange(e.num_edges)
        idx[e.prompt, e.first, e.second] = ids
        idx[e.prompt, e.second, e.first] = ids
        return idx


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


# ------------------------------------------------------------ parameter checks


def _fail(name, allowed, value):
    raise ValueError(f"design.params.{name} must be {allowed}, got {value!r}")


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)


def choice_check(*allowed):
    """A check that the value is one of ``allowed``."""

    def check(name, value):
        if value not in allowed:
            _fail(name, f"one of {list(allowed)}", value)

    return check


def interval_check(lo, hi, lo_open=True, hi_open=True, optional=False):
    """A check that the value is a finite number in the interval (``None`` too if ``optional``)."""
    lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"in {lb}{lo:g}, {hi:g}{rb}" + (" or null" if optional else "")

    def check(name, value):
        if optional and value is None:
            return
        ok = _is_number(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok:
            _fail(name, text, value)

    return check


def integer_check(lo, optional=False, null_means=""):
    """A check that the value is an integer ``>= lo`` (``None`` too if ``optional``)."""
    text = (f"null ({null_means}) or " if optional else "") + f"an integer >= {lo}"

    def check(name, value):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            _fail(name, text, value)

    return check


def _bool_check(name, value):
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, "true or false", value)


#: The check of each parameter name the registered designs use. A design may
#: override one with ``register_design(..., checks={name: fn})`` (e.g. ``at``, whose
#: allowed values differ by design). ``fn(name, value)`` raises ``ValueError``.
PARAM_CHECKS: dict[str, Callable] = {
    "rounding": choice_check(*ROUNDINGS),
    "max_labels_per_edge": integer_check(1, optional=True, null_means="unlimited"),
    "prior_precision": interval_check(0.0, np.inf, lo_open=False, optional=True),
    "ridge": interval_check(0.0, np.inf, lo_open=False),
    "tol": interval_check(0.0, np.inf),
    "pilot_fraction": interval_check(0.0, 1.0),
    "pilot_ridge": interval_check(0.0, np.inf, lo_open=False),
    "gamma": interval_check(0.0, np.inf),
    "with_replacement": _bool_check,
    "num_pairs": integer_check(1, optional=True, null_means="min(budget, number of edges)"),
    "reward": choice_check("proxy", "pilot"),
    "correlation": interval_check(-1.0, 1.0, lo_open=False, hi_open=False),
    "num_samples": integer_check(1),
    "fraction": interval_check(0.0, 1.0, hi_open=False),
    "at": choice_check("reference", "truth", "pilot"),
}


# ------------------------------------------------------------------------ registry


def _at_truth_or_pilot(params: dict) -> bool:
    """Designs evaluated ``at`` the truth, or at a pilot estimate (labels bought from the annotator)."""
    return params.get("at") in ("truth", "pilot")


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

    def __call__(self, key, problem, budget, **params):
        return self.fn(key, problem, budget, **params)

    def reads_truth(self, params: dict) -> bool:
        """Whether the design, run with ``params``, is handed the annotator."""
        if callable(self.needs_truth):
            return bool(self.needs_truth({**self.params, **params}))
        return bool(self.needs_truth)


DESIGNS: dict[str, DesignSpec] = {}


def register_design(name: str, *, summary: str, source: str, replace: bool = False, checks: Optional[dict] = None,
                    adaptive: bool = False, needs_truth: Union[bool, Callable[[dict], bool]] = False):
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
    """

    def deco(fn):
        if name in DESIGNS and not replace:
            raise ValueError(f"design {name!r} is already registered (pass replace=True to override)")
        sig = inspect.signature(fn)
        names = list(sig.parameters)
        if names[:3] != ["key", "problem", "budget"]:
            raise ValueError(f"design {name!r}: the signature must start with (key, problem, budget), got {names[:3]}")
        params = {p.name: p.default for p in list(sig.parameters.values())[3:]}
        extra = sorted(set(checks or {}) - set(params))
        if extra:
            raise ValueError(f"design {name!r}: checks for parameter(s) {extra} it does not take")
        own = {p: (checks or {}).get(p, PARAM_CHECKS.get(p)) for p in params}
        if not (isinstance(needs_truth, bool) or callable(needs_truth)):
            raise ValueError(f"design {name!r}: needs_truth must be a bool or a function of the parameters, got {needs_truth!r}")
        DESIGNS[name] = DesignSpec(name, fn, summary, source, params, {p: c for p, c in own.items() if c is not None},
                                   bool(adaptive), needs_truth)
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
    """Rank of ``I`` on the target pool (its range is the same at every ``theta``: ``pi_theta > 0``)."""
    curv = np.asarray(problem.curvature(jnp.zeros(problem.dim, problem.edges.diffs.dtype)), dtype=np.float64)
    lam = np.linalg.eigvalsh(0.5 * (curv + curv.T))
    return int(np.sum(lam > float(rank_threshold(max(lam.max(), 0.0), problem.dim, jnp.float64))))


def check_design_budget(name: str, problem: DesignProblem, budget, **params) -> int:
    """The checks :func:`run_design` makes before a design runs (a sweep's pre-flight pass can call it).

    Parameters by :func:`check_design_params`; ``budget`` an integer ``>= 1``;
    ``budget > max_labels_per_edge * E`` is a ``ValueError``; a budget below the rank
    of the curvature ``I`` gives a :class:`~synthetic.rounding.CoverageWarning` (no
    allocation of that many labels covers ``I``'s range, so every realised criterion
    is infinite). Returns the budget as ``int``.
    """
    spec = get_design(name)
    check_design_params(name, params)
    budget = check_budget(budget)
    cap = check_max_labels_per_edge(params.get("max_labels_per_edge", spec.params.get("max_labels_per_edge")))
    if cap is not None and budget > cap * problem.num_edges:
        raise ValueError(
            f"budget {budget} exceeds design.params.max_labels_per_edge = {cap} times the {problem.num_edges} candidate "
            f"edges; allowed: budget <= {cap * problem.num_edges}, or a larger max_labels_per_edge"
        )
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
    return budget


def run_design(name: str, key, problem: DesignProblem, budget: int, **params) -> DesignOutput:
    """Run a registered design and check its contract.

    Before the design runs (before any pilot label): :func:`check_design_budget`
    (parameters, ``budget > max_labels_per_edge * E``, a
    :class:`~synthetic.rounding.CoverageWarning` when the budget is below the rank of
    ``I``). The design sees the annotator only if it is registered as needing the truth
    (``needs_truth``). After: exactly ``budget`` labels on valid edges, at most
    ``max_labels_per_edge`` on each.
    """
    spec = get_design(name)
    budget = check_design_budget(name, problem, budget, **params)
    cap = check_max_labels_per_edge(params.get("max_labels_per_edge", spec.params.get("max_labels_per_edge")))
    if not spec.reads_truth(params):
        problem = problem.without_truth()
    out = spec.fn(key, problem, int(budget), **params)
    if not isinstance(out, DesignOutput):
        raise TypeError(f"design {name!r} must return a DesignOutput, got {type(out).__name__}")
    counts = out.allocation.counts
    if np.any(counts <= 0) or np.any(out.allocation.edges < 0) or np.any(out.allocation.edges >= problem.num_edges):
        raise RuntimeError(f"design {name!r} returned an invalid allocation")
    if out.allocation.budget != int(budget):
        raise RuntimeError(f"design {name!r} returned {out.allocation.budget} labels for a budget of {budget}")
    if cap is not None and counts.max() > cap:
        raise RuntimeError(f"design {name!r} put {counts.max()} labels on an edge with max_labels_per_edge = {cap}")
    return out


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_fraction(name, value, lo=0.0, hi=1.0, lo_open=True, hi_open=True):
    ok = isinstance(value, (int, float)) and np.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")


def allocation_criterion(problem: DesignProblem, counts, theta=None, ridge: float = 0.0) -> float:
    """``Phi(counts / n; theta)`` of a realised allocation (``theta*`` by default)."""
    c = np.asarray(counts, dtype=np.float64)
    theta = problem.theta_star if theta is None else jnp.asarray(theta)
    w = jnp.asarray(c / c.sum(), dtype=problem.edges.diffs.dtype)
    return float(design_criterion(w, theta, problem.edges.diffs, problem.curvature(theta), problem.beta, ridge))


def _rest_caps(cap, pilot):
    """Labels each edge may still take after the pilot: ``None`` (no cap), ``cap`` or ``cap - pilot counts``."""
    cap = check_max_labels_per_edge(cap)
    if cap is None or pilot is None:
        return cap
    return cap - np.asarray(pilot[0], dtype=np.int64)


def weighted_output(key, problem, budget, weights, rounding="auto", pilot=None, info=None, max_labels_per_edge=None) -> DesignOutput:
    """Round ``weights`` to ``budget`` labels (plus pilot counts, if any) by ``rounding``.

    At most ``max_labels_per_edge`` labels an edge, pilot labels included; the pilot
    edges' directions count as covered (:func:`synthetic.rounding.round_design`).
    """
    _check_choice("rounding", rounding, ROUNDINGS)
    w = np.asarray(weights, dtype=np.float64)
    info = dict(info or {})
    caps = _rest_caps(max_labels_per_edge, pilot)
    diffs = problem.edges.diffs
    if pilot is None:
        info["rounding"] = resolve_rounding(w, budget, rounding, caps)
        alloc = round_design(key, w, budget, info["rounding"], diffs=diffs, caps=caps)
    else:
        rest = budget - int(pilot[0].sum())
        counts = np.asarray(pilot[0], dtype=np.int64).copy()
        if rest > 0:
            info["rounding"] = resolve_rounding(w, rest, rounding, caps)
            counts += round_design(key, w, rest, info["rounding"], diffs=diffs, caps=caps, covered=pilot[0]).dense_counts(problem.num_edges)
        alloc = allocation_from_counts(counts)
    return DesignOutput(alloc, w / w.sum(), pilot, info)


def selection_output(key, problem, budget, selected, rounding="auto", pilot=None, info=None, max_labels_per_edge=None) -> DesignOutput:
    """Uniform weights over the ``selected`` edge ids, rounded."""
    sel = np.unique(np.asarray(selected, dtype=np.int64))
    if sel.size == 0:
        raise ValueError("the design selected no edge")
    w = np.zeros(problem.num_edges)
    w[sel] = 1.0
    return weighted_output(key, problem, budget, w, rounding, pilot, info, max_labels_per_edge)


# ------------------------------------------------------------------- shared pieces


def _present(problem):
    return np.isfinite(np.asarray(problem.pool.log_ref))


def _pilot(key, problem, budget, pilot_fraction, pilot_ridge):
    """Label ``pilot_fraction * budget`` uniformly chosen edges and fit DPO on them."""
    _check_fraction("pilot_fraction", pilot_fraction)
    n0 = int(np.floor(pilot_fraction * budget))
    if n0 < 1 or n0 >= budget:
        raise ValueError(
            f"pilot_fraction * budget must leave at least one pilot and one designed label; "
            f"got {pilot_fraction} * {budget} = {pilot_fraction * budget:g}"
        )
    k_alloc, k_lab = jax.random.split(key)
    counts = round_design(k_alloc, uniform_weights(problem.edges), n0, "efficient").dense_counts(problem.num_edges)
    wins = problem.label(k_lab, counts)
    fit = fit_newton(
        problem.edges.diffs,
        jnp.asarray(counts, problem.edges.diffs.dtype),
        jnp.asarray(wins, problem.edges.diffs.dtype),
        problem.beta,
        ridge=pilot_ridge,
    )
    return (counts, wins), fit.theta


def _theta_at(at, key, problem, budget, pilot_fraction, pilot_ridge):
    _check_choice("at", at, ("reference", "truth", "pilot"))
    if at == "reference":
        return jnp.zeros(problem.dim, problem.edges.diffs.dtype), None
    if at == "truth":
        return problem.theta_star, None
    pilot, theta = _pilot(key, problem, budget, pilot_fraction, pilot_ridge)
    return theta, pilot


_SOLVED: "collections.OrderedDict[str, object]" = collections.OrderedDict()
_SOLVED_MAX = 16


def _solve_key(*arrays_and_args) -> str:
    h = hashlib.sha256()
    for a in arrays_and_args:
        if a is None:
            h.update(b"none|")
        elif isinstance(a, (str, int, float)):
            h.update(f"{type(a).__name__}:{a!r}|".encode())
        else:
            arr = np.ascontiguousarray(np.asarray(a))
            h.update(f"{arr.dtype}{arr.shape}|".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _solve(problem, theta, criterion, ridge, tol, groups=None, group_weights=None, diffs=None, caps=None,
           prior_precision=None, budget=None):
    """Solve the optimal design, memoised on every input that changes the answer.

    A sweep asks for the same oracle, plug-in, A- or D-optimal design at every
    budget; without caps or a prior the solve does not depend on the budget, so it is
    done once per process (the last ``_SOLVED_MAX`` solves are kept). ``caps`` and
    ``prior_precision`` with ``budget`` go to :func:`theory.design.optimal_design`.
    """
    d = problem.edges.diffs if diffs is None else diffs
    if prior_precision is None:
        budget = None  # used only with the prior
    key = _solve_key(d, theta, problem.target.features, problem.target.log_ref, problem.target.prompt_weights,
                     problem.beta, criterion, float(ridge), float(tol), groups, group_weights, caps,
                     None if prior_precision is None else float(prior_precision), None if budget is None else int(budget))
    if key in _SOLVED:
        _SOLVED.move_to_end(key)
        return _SOLVED[key]
    sol = _solve_uncached(problem, theta, criterion, ridge, tol, groups, group_weights, d, caps, prior_precision, budget)
    _SOLVED[key] = sol
    while len(_SOLVED) > _SOLVED_MAX:
        _SOLVED.popitem(last=False)
    return sol


def _solve_uncached(problem, theta, criterion, ridge, tol, groups, group_weights, diffs, caps=None, prior_precision=None, budget=None):
    curv = problem.curvature(theta) if criterion == "L" else None
    extra = {}
    if caps is not None:
        extra["caps"] = caps
    if prior_precision is not None:
        extra.update(prior_precision=prior_precision, budget=budget)
    return optimal_design(
        diffs,
        theta,
        curv,
        problem.beta,
        criterion=criterion,
        ridge=ridge,
        tol=tol,
        groups=groups,
        group_weights=group_weights,
        **extra,
    )


def _sol_info(sol, theta):
    return {
        "criterion_value": sol.value,
        "relative_certificate": sol.relative_certificate,
        "converged": sol.converged,
        "theta": np.asarray(theta),
    }


def _prompt_masses(problem, prompts):
    rho = np.asarray(problem.pool.prompt_weights, dtype=np.float64)[prompts]
    return rho / rho.sum()


# ------------------------------------------------------------------ reward models

REWARD_POSITIONS = ("min", "mu-2sigma", "mu-sigma", "mu", "mu+sigma", "mu+2sigma", "max")


def reward_model(key, problem, reward="proxy", correlation=1.0, pilot_theta=None) -> np.ndarray:
    """Reward-model scores ``[m, K]`` of the pool's completions (``-inf`` where absent).

    ``"proxy"``: ``correlation * r~ + sqrt(1 - correlation^2) * eps`` with ``r~`` the
    true reward ``beta theta*.phi`` standardised over all present completions and
    ``eps ~ N(0, 1)``, so its correlation with the true reward is ``correlation``.
    ``"pilot"``: ``beta theta_pilot.phi`` from a pilot DPO fit.
    """
    _check_choice("reward", reward, ("proxy", "pilot"))
    present = _present(problem)
    feats = jnp.asarray(problem.pool.features)
    if reward == "pilot":
        scores = problem.beta * np.asarray(feats @ pilot_theta)
        return np.where(present, scores, -np.inf)
    if not isinstance(correlation, (int, float)) or not np.isfinite(correlation) or not -1.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [-1, 1], got {correlation!r}")
    true = problem.beta * np.asarray(feats @ problem.theta_star)
    vals = true[present]
    sd = vals.std()
    std = (true - vals.mean()) / sd if sd > 0 else np.zeros_like(true)
    eps = np.asarray(jax.random.normal(key, true.shape, dtype=feats.dtype))
    scores = correlation * std + np.sqrt(max(1.0 - correlation**2, 0.0)) * eps
    return np.where(present, scores, -np.inf)


def _rewards(key, problem, budget, reward, correlation, pilot_fraction, pilot_ridge):
    k_pilot, k_noise = jax.random.split(key)
    pilot, theta = None, None
    if reward == "pilot":
        pilot, theta = _pilot(k_pilot, problem, budget, pilot_fraction, pilot_ridge)
    return reward_model(k_noise, problem, reward, correlation, theta), pilot


def _position_target(scores_row, present_row, position):
    vals = scores_row[present_row]
    mu, sd = vals.mean(), vals.std()
    return {
        "min": vals.min(),
        "mu-2sigma": mu - 2 * sd,
        "mu-sigma": mu - sd,
        "mu": mu,
        "mu+sigma": mu + sd,
        "mu+2sigma": mu + 2 * sd,
        "max": vals.max(),
    }[position]


def _nearest(scores_row, present_row, target, exclude):
    dist = np.where(present_row, np.abs(scores_row - target), np.inf)
    if exclude is not None:
        dist[exclude] = np.inf
    return int(np.argmin(dist))


# ------------------------------------------------------------------------ designs


def _check_prior(ridge, prior_precision):
    if prior_precision is not None and ridge > 0:
        raise ValueError(
            f"design.params.ridge = {ridge} and design.params.prior_precision = {prior_precision}: give one of them "
            "(prior_precision is the Bayes criterion's ridge times the budget); allowed: ridge = 0 with a prior, or prior_precision = null"
        )


def _design_caps(cap, pilot, rest):
    """Caps on the weights of the design of the ``rest`` labels: ``(cap - pilot counts) / rest``."""
    left = _rest_caps(cap, pilot)
    return None if left is None else left / float(rest)


def _optimal(key, problem, budget, criterion, at, rounding, ridge, tol, pilot_fraction, pilot_ridge, max_labels_per_edge, prior_precision):
    _check_prior(ridge, prior_precision)
    k_pilot, k_round = jax.random.split(key)
    theta, pilot = _theta_at(at, k_pilot, problem, budget, pilot_fraction, pilot_ridge)
    rest = budget - (0 if pilot is None else int(pilot[0].sum()))
    caps = _design_caps(max_labels_per_edge, pilot, rest)
    sol = _solve(problem, theta, criterion, ridge, tol, caps=caps, prior_precision=prior_precision, budget=budget)
    return weighted_output(k_round, problem, budget, np.asarray(sol.weights), rounding, pilot, _sol_info(sol, theta), max_labels_per_edge)


@register_design(
    "oracle",
    needs_truth=True,
    summary="L-optimal design D*(theta*) at the true parameter: the unattainable benchmark.",
    source="Which Pairs to Compare (arXiv 2606.19607), the design minimising tr(I Sigma^+)",
)
def oracle(key, problem, budget, rounding="auto", ridge=0.0, tol=1e-4, max_labels_per_edge=None, prior_precision=None):
    return _optimal(key, problem, budget, "L", "truth", rounding, ridge, tol, 0.2, 1e-3, max_labels_per_edge, prior_precision)


@register_design(
    "plug_in",
    summary="L-optimal design D*(theta0) at the reference theta0 = 0: no labels needed.",
    source="Which Pairs to Compare (arXiv 2606.19607), plug-in design and its bound",
)
def plug_in(key, problem, budget, rounding="auto", ridge=0.0, tol=1e-4, max_labels_per_edge=None, prior_precision=None):
    return _optimal(key, problem, budget, "L", "reference", rounding, ridge, tol, 0.2, 1e-3, max_labels_per_edge, prior_precision)


@register_design(
    "two_stage",
    needs_truth=True,
    summary="Pilot fraction labelled uniformly, DPO fit, the rest L-optimal at the pilot estimate.",
    source="Which Pairs to Compare (arXiv 2606.19607), adaptive two-stage design",
)
def two_stage(key, problem, budget, pilot_fraction=0.2, pilot_ridge=1e-3, rounding="auto", ridge=0.0, tol=1e-4, max_labels_per_edge=None, prior_precision=None):
    return _optimal(key, problem, budget, "L", "pilot", rounding, ridge, tol, pilot_fraction, pilot_ridge, max_labels_per_edge, prior_precision)


@register_design(
    "d_optimal",
    needs_truth=_at_truth_or_pilot,
    summary="D-optimal design (maximise log det Sigma on the identifiable subspace).",
    source="Kiefer and Wolfowitz (1960); classical optimal design",
)
def d_optimal(key, problem, budget, at="reference", rounding="auto", ridge=0.0, tol=1e-4, pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None, prior_precision=None):
    return _optimal(key, problem, budget, "D", at, rounding, ridge, tol, pilot_fraction, pilot_ridge, max_labels_per_edge, prior_precision)


@register_design(
    "a_optimal",
    needs_truth=_at_truth_or_pilot,
    summary="A-optimal design (minimise tr Sigma^+): parameter error, not policy gap.",
    source="classical optimal design (Pukelsheim, Optimal Design of Experiments, ch. 6)",
)
def a_optimal(key, problem, budget, at="reference", rounding="auto", ridge=0.0, tol=1e-4, pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None, prior_precision=None):
    return _optimal(key, problem, budget, "A", at, rounding, ridge, tol, pilot_fraction, pilot_ridge, max_labels_per_edge, prior_precision)


@functools.partial(jax.jit, static_argnames=("budget",))
def _greedy_order(vecs, gamma, budget, caps):
    e, d = vecs.shape
    hinv0 = jnp.eye(d, dtype=vecs.dtype) / gamma
    scores0 = jnp.sum(vecs * vecs, axis=1) / gamma

    def body(t, carry):
        hinv, scores, taken, order = carry
        j = jnp.argmax(jnp.where(taken >= caps, -jnp.inf, scores))
        u = hinv @ vecs[j]
        denom = 1.0 + vecs[j] @ u
        proj = vecs @ u
        # Sherman-Morrison: v^T (H + u u^T)^-1 v = v^T H^-1 v - (v^T H^-1 u)^2 / (1 + u^T H^-1 u).
        scores = scores - proj**2 / denom
        hinv = hinv - jnp.outer(u, u) / denom
        taken = taken.at[j].add(1)
        return hinv, scores, taken, order.at[t].set(j.astype(order.dtype))

    init = (hinv0, scores0, jnp.zeros(e, jnp.int32), jnp.zeros(budget, jnp.int32))
    return jax.lax.fori_loop(0, budget, body, init)[3]


def _greedy(vecs, budget, gamma, with_replacement, max_labels_per_edge=None, pilot=None):
    """Repeatedly take the edge maximising ``v^T H^-1 v``; ``H = gamma Id + sum v v^T``.

    The greedy part gives an edge at most one label when ``with_replacement=False``,
    and no edge more than ``max_labels_per_edge`` labels with the pilot's included.
    """
    e = vecs.shape[0]
    if not with_replacement and budget > e:
        raise ValueError(
            f"budget {budget} is larger than the {e} candidate edges, and this greedy design labels each "
            "edge at most once (pass with_replacement=True to allow repeats)"
        )
    caps = np.full(e, budget if with_replacement else 1, dtype=np.int64)  # labels the greedy part may add
    left = _rest_caps(max_labels_per_edge, pilot)  # what the cap leaves after the pilot
    if left is not None:
        caps = np.minimum(caps, left)
    if budget > np.maximum(caps, 0).sum():
        raise ValueError(
            f"budget {budget} exceeds the {int(np.maximum(caps, 0).sum())} labels this greedy design may still put on the "
            f"{e} candidate edges (with_replacement={with_replacement}, max_labels_per_edge={max_labels_per_edge})"
        )
    order = _greedy_order(vecs, jnp.asarray(gamma, vecs.dtype), int(budget), jnp.asarray(caps, jnp.int32))
    return np.bincount(np.asarray(order), minlength=e)


def _check_positive(name, value):
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@register_design(
    "adpo_greedy",
    needs_truth=_at_truth_or_pilot,
    summary="Greedy offline D-optimal: take the edge maximising v^T H^-1 v, v = beta sqrt(mu(1-mu)) z; each once.",
    source="Kveton et al. (2025), Active Learning for DPO (ADPO+)",
)
def adpo_greedy(key, problem, budget, gamma=1.0, at="reference", with_replacement=False, pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    theta, pilot = _theta_at(at, key, problem, budget, pilot_fraction, pilot_ridge)
    z = problem.edges.diffs
    mu = jax.nn.sigmoid(problem.beta * (z @ theta))
    vecs = problem.beta * jnp.sqrt(mu * (1 - mu))[:, None] * z
    n = budget - (0 if pilot is None else int(pilot[0].sum()))
    counts = _greedy(vecs, n, float(gamma), bool(with_replacement), max_labels_per_edge, pilot)
    if pilot is not None:
        counts = counts + pilot[0]
    return DesignOutput(allocation_from_counts(counts), None, pilot, {"theta": np.asarray(theta)})


def _batch_greedy(vecs, budget, gamma, batch_size, with_replacement, max_labels_per_edge=None, rounds=None):
    """APO's rounds: take the ``batch_size`` edges of largest ``z^T V^-1 z`` with ``V``
    frozen, then add them all to ``V = gamma Id + sum z z^T``; repeat until ``budget``.

    Within a round the edges are distinct; with ``with_replacement`` a later round may
    take an edge again. The scores are recomputed from a Cholesky factor of ``V`` each
    round (``O(E d^2)`` a round: sweep-sized pools, not HH scale).
    Edges at their cap (1 without replacement, ``max_labels_per_edge``) are skipped; a
    round takes fewer edges when fewer are left. ``rounds``: a list that receives each
    round's edge ids (for tests).
    """
    z = np.asarray(vecs, dtype=np.float64)
    e, d = z.shape
    caps = np.full(e, budget if with_replacement else 1, dtype=np.int64)
    if max_labels_per_edge is not None:
        caps = np.minimum(caps, int(max_labels_per_edge))
    if budget > caps.sum():
        raise ValueError(f"budget {budget} exceeds the {int(caps.sum())} labels this design may put on the {e} candidate edges "
                         f"(with_replacement={with_replacement}, max_labels_per_edge={max_labels_per_edge})")
    v = gamma * np.eye(d)
    counts = np.zeros(e, dtype=np.int64)
    left = budget
    while left > 0:
        # Scores from a Cholesky factor of V each round: a rank-k Woodbury update of V^-1
        # loses the small scores of later rounds to cancellation (V starts at 1e-5 Id).
        w = np.linalg.solve(np.linalg.cholesky(v), z.T)
        scores = np.einsum("de,de->e", w, w)
        free = np.flatnonzero(counts < caps)
        k = min(batch_size, left, free.size)
        cand = np.where(counts < caps, scores, -np.inf)
        # the k largest scores (ties broken by the lower edge id, as a stable argsort would)
        pick = np.lexsort((np.arange(e), -cand))[:k]
        counts[pick] += 1
        left -= k
        if rounds is not None:
            rounds.append(pick)
        v = v + z[pick].T @ z[pick]
    return counts


@register_design(
    "apo_greedy",
    summary="APO as its code runs it: rounds of batch_size edges of largest ||z||_{V^-1} (V frozen in a round), V = gamma Id + sum z z^T, repeats allowed.",
    source="Das et al. (2024), Active Preference Optimization; nirjhar-das/active-preference-optimization, scripts/reward_learning.py (V = 1e-5 Id, top-K a round)",
    checks={"batch_size": integer_check(1)},
)
def apo_greedy(key, problem, budget, gamma=1e-5, batch_size=20, with_replacement=True, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    counts = _batch_greedy(problem.edges.diffs, int(budget), float(gamma), int(batch_size), bool(with_replacement), max_labels_per_edge)
    return DesignOutput(allocation_from_counts(counts), None, None, {})


@register_design(
    "apo_sequential",
    summary="Sequential variant of APO: one edge at a time, largest ||z||_{H^-1}, each edge at most once.",
    source="Das et al. (2024), APO's selection rule with batch size 1 and no repeats (this project's earlier apo_greedy)",
)
def apo_sequential(key, problem, budget, gamma=1.0, with_replacement=False, max_labels_per_edge=None):
    _check_positive("gamma", gamma)
    counts = _greedy(problem.edges.diffs, budget, float(gamma), bool(with_replacement), max_labels_per_edge)
    return DesignOutput(allocation_from_counts(counts), None, None, {})


@register_design(
    "uniform",
    summary="Uniform over all candidate edges (random pairs).",
    source="common practice; the paper's baseline",
)
def uniform(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, uniform_weights(problem.edges), rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "first_two",
    summary="The first two completions of each prompt, one pair per prompt.",
    source="common practice (sample two completions, label them)",
)
def first_two(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, first_two_weights(problem.edges), rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "first_n",
    summary="The first N comparisons in pool order (N = num_pairs, default min(budget, E)).",
    source="common practice (label what comes first)",
)
def first_n(key, problem, budget, num_pairs=None, rounding="auto", max_labels_per_edge=None):
    e = problem.num_edges
    n = min(budget, e) if num_pairs is None else num_pairs
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= e:
        raise ValueError(f"num_pairs must be an integer in [1, {e}] (the number of candidate edges), got {num_pairs!r}")
    return selection_output(key, problem, budget, np.arange(n), rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "reference_weighted",
    summary="Edge weight proportional to pi0(y|x) pi0(y'|x): pairs the reference model is likely to sample.",
    source="on-policy sampling heuristic; Which Pairs to Compare finds it poor and high-variance",
)
def reference_weighted(key, problem, budget, rounding="auto", max_labels_per_edge=None):
    return weighted_output(key, problem, budget, reference_weights(problem.edges, problem.pool.log_ref), rounding, max_labels_per_edge=max_labels_per_edge)


def _per_prompt_pairs(problem, pick):
    """One edge per prompt with >= 2 completions: ``pick(prompt) -> (i, j)``."""
    present = _present(problem)
    idx = problem.edge_index()
    prompts = np.flatnonzero(present.sum(axis=1) >= 2)
    sel = []
    for x in prompts:
        i, j = pick(x)
        sel.append(idx[x, i, j])
    sel = np.asarray(sel)
    assert np.all(sel >= 0)
    return prompts, sel


def _per_prompt_output(key, problem, budget, prompts, sel, rounding, pilot, info=None, max_labels_per_edge=None):
    w = np.zeros(problem.num_edges)
    w[sel] = _prompt_masses(problem, prompts)
    return weighted_output(key, problem, budget, w, rounding, pilot, info, max_labels_per_edge)


@register_design(
    "best_vs_worst",
    needs_truth=True,
    summary="Per prompt, the highest- against the lowest-reward completion under a reward model.",
    source="common practice in iterative DPO (e.g. the baseline of Finding the Sweet Spot, 2025)",
)
def best_vs_worst(key, problem, budget, reward="proxy", correlation=1.0, pilot_fraction=0.2, pilot_ridge=1e-3, rounding="auto", max_labels_per_edge=None):
    k_r, k_round = jax.random.split(key)
    scores, pilot = _rewards(k_r, problem, budget, reward, correlation, pilot_fraction, pilot_ridge)
    prompts, sel = _per_prompt_pairs(problem, lambda x: (int(np.argmax(scores[x])), int(np.argmin(np.where(np.isfinite(scores[x]), scores[x], np.inf)))))
    return _per_prompt_output(k_round, problem, budget, prompts, sel, rounding, pilot, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "sweet_spot",
    needs_truth=True,
    summary="Chosen at one reward position, rejected nearest another (default max vs mu - 2 sigma); 7 positions, 21 pairs.",
    source="Finding the Sweet Spot (2025, seed 003): rejected at mu - 2 sigma beats the minimum",
    checks={"chosen": choice_check(*REWARD_POSITIONS), "rejected": choice_check(*REWARD_POSITIONS)},
)
def sweet_spot(
    key, problem, budget, chosen="max", rejected="mu-2sigma", reward="proxy", correlation=1.0, pilot_fraction=0.2, pilot_ridge=1e-3, rounding="auto",
    max_labels_per_edge=None,
):
    _check_choice("chosen", chosen, REWARD_POSITIONS)
    _check_choice("rejected", rejected, REWARD_POSITIONS)
    if chosen == rejected:
        raise ValueError(f"chosen and rejected must be different positions, both are {chosen!r}")
    k_r, k_round = jax.random.split(key)
    scores, pilot = _rewards(k_r, problem, budget, reward, correlation, pilot_fraction, pilot_ridge)
    present = _present(problem)

    def pick(x):
        i = _nearest(scores[x], present[x], _position_target(scores[x], present[x], chosen), None)
        j = _nearest(scores[x], present[x], _position_target(scores[x], present[x], rejected), i)
        return i, j

    prompts, sel = _per_prompt_pairs(problem, pick)
    return _per_prompt_output(k_round, problem, budget, prompts, sel, rounding, pilot, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "sweet_spot_pm2sigma",
    needs_truth=True,
    summary="Chosen nearest mu + 2 sigma, rejected nearest mu - 2 sigma of the prompt's rewards.",
    source="Finding the Sweet Spot (2025, seed 003): the (mu + 2 sigma, mu - 2 sigma) pair, best in most of its settings",
)
def sweet_spot_pm2sigma(key, problem, budget, reward="proxy", correlation=1.0, pilot_fraction=0.2, pilot_ridge=1e-3, rounding="auto",
                        max_labels_per_edge=None):
    return sweet_spot(key, problem, budget, "mu+2sigma", "mu-2sigma", reward, correlation, pilot_fraction, pilot_ridge, rounding,
                      max_labels_per_edge)


@register_design(
    "sweet_spot_scalable",
    needs_truth=True,
    summary="Chosen = highest reward; rejected = lowest of num_samples (default 5) completions drawn at random from the pool.",
    source="Finding the Sweet Spot (2025, seed 003), the scalable construction",
)
def sweet_spot_scalable(
    key, problem, budget, num_samples=5, reward="proxy", correlation=1.0, pilot_fraction=0.2, pilot_ridge=1e-3, rounding="auto",
    max_labels_per_edge=None,
):
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    k_r, k_pick, k_round = jax.random.split(key, 3)
    scores, pilot = _rewards(k_r, problem, budget, reward, correlation, pilot_fraction, pilot_ridge)
    present = _present(problem)
    m, k = present.shape
    gumbel = np.asarray(jax.random.gumbel(k_pick, (m, k)))

    def pick(x):
        # Chosen: the highest reward. Rejected: the lowest of num_samples completions
        # drawn at random from the whole pool (the chosen one may be among them; it is
        # their minimum only on ties, and is then passed over).
        i = int(np.argmax(scores[x]))
        pool = np.flatnonzero(present[x])
        order = pool[np.argsort(-gumbel[x, pool])]  # a uniformly random order of the pool
        cand = order[:num_samples]
        cand = cand[cand != i]
        if cand.size == 0:  # drew only the chosen one (num_samples = 1): the next draw
            cand = order[order != i][:1]
        return i, int(cand[np.argmin(scores[x, cand])])

    prompts, sel = _per_prompt_pairs(problem, pick)
    return _per_prompt_output(k_round, problem, budget, prompts, sel, rounding, pilot, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "reference_filter",
    summary="Keep the fraction of pairs with the largest |log pi0(y|x) - log pi0(y'|x)|, uniform over them.",
    source="our reading of Clear Preferences Leave Traces (2025, seed 004); its exact rule is not in the abstract",
)
def reference_filter(key, problem, budget, fraction=0.4, rounding="auto", max_labels_per_edge=None):
    _check_fraction("fraction", fraction, hi_open=False)
    lr = np.asarray(problem.pool.log_ref, dtype=np.float64)
    e = problem.edges
    gap = np.abs(lr[e.prompt, e.first] - lr[e.prompt, e.second])
    keep = max(1, int(np.ceil(fraction * e.num_edges)))
    tie = np.asarray(jax.random.uniform(key, (e.num_edges,)))
    order = np.lexsort((tie, -gap))
    return selection_output(jax.random.fold_in(key, 1), problem, budget, order[:keep], rounding, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "reference_filter_labelled",
    needs_truth=True,
    summary="Seed 004's protocol: label ceil(budget / fraction) uniformly drawn comparisons, train on the budget labels the reference agrees with most (signed) or separates most (absolute).",
    source="Clear Preferences Leave Traces (2025, seed 004): filter an already labelled set by the reference model's log-probabilities, train on 30-50% of it",
    checks={"reading": choice_check("signed", "absolute"), "fraction": interval_check(0.0, 1.0, hi_open=False)},
)
def reference_filter_labelled(key, problem, budget, fraction=0.4, reading="signed", max_labels_per_edge=None):
    """``budget`` is the labels *used* (the training set); ``ceil(budget / fraction)``
    labels are *spent* (``info["labels_spent"]``). Each spent label is a (chosen,
    rejected) pair; its reading is ``log pi0(chosen) - log pi0(rejected)`` (signed: the
    reference agrees with the label) or its absolute value; the ``budget`` labels of
    largest reading are kept (ties at random). The kept labels are returned as observed
    (pilot) labels, so the evaluation trains on exactly them."""
    _check_fraction("fraction", fraction, hi_open=False)
    _check_choice("reading", reading, ("signed", "absolute"))
    spent = int(math.ceil(budget / fraction))
    k_alloc, k_lab, k_tie = jax.random.split(key, 3)
    cap = check_max_labels_per_edge(max_labels_per_edge)
    if cap is not None and spent > cap * problem.num_edges:
        raise ValueError(f"budget / fraction = {spent} labels to spend exceed max_labels_per_edge = {cap} times the "
                         f"{problem.num_edges} candidate edges; allowed: budget <= {int(fraction * cap * problem.num_edges)}")
    bought = weighted_output(k_alloc, problem, spent, uniform_weights(problem.edges), max_labels_per_edge=cap)
    counts = bought.dense_counts(problem.num_edges)
    wins = problem.label(k_lab, counts)
    e = problem.edges
    lr = np.asarray(problem.pool.log_ref, dtype=np.float64)
    delta = lr[e.prompt, e.first] - lr[e.prompt, e.second]  # reference's margin for the first completion
    # one entry per spent label: edge, whether the first completion won, its reading
    edge = np.repeat(np.arange(e.num_edges), counts)
    first_won = np.concatenate([np.arange(c) < w for c, w in zip(counts, wins)]) if counts.sum() else np.zeros(0, bool)
    signed = np.where(first_won, delta[edge], -delta[edge])
    score = signed if reading == "signed" else np.abs(signed)
    tie = np.asarray(jax.random.uniform(k_tie, (edge.size,)))
    keep = np.lexsort((tie, -score))[:budget]
    kept_counts = np.bincount(edge[keep], minlength=e.num_edges)
    kept_wins = np.bincount(edge[keep], weights=first_won[keep], minlength=e.num_edges).astype(np.int64)
    info = {"labels_spent": spent, "labels_used": int(budget), "reading": reading, "spent": (counts, wins)}
    return DesignOutput(allocation_from_counts(kept_counts), None, (kept_counts, kept_wins), info)


def _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, most_certain, max_labels_per_edge):
    _check_choice("at", at, ("reference", "pilot"))
    k_theta, k_tie, k_round = jax.random.split(key, 3)
    theta, pilot = _theta_at(at, k_theta, problem, budget, pilot_fraction, pilot_ridge)
    e = problem.num_edges
    n = min(budget, e) if num_pairs is None else num_pairs
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= e:
        raise ValueError(f"num_pairs must be an integer in [1, {e}] (the number of candidate edges), got {num_pairs!r}")
    p = np.asarray(jax.nn.sigmoid(problem.beta * (problem.edges.diffs @ theta)), dtype=np.float64)
    score = np.abs(p - 0.5)
    tie = np.asarray(jax.random.uniform(k_tie, (e,)))
    order = np.lexsort((tie, -score if most_certain else score))
    return selection_output(k_round, problem, budget, order[:n], rounding, pilot, {"theta": np.asarray(theta)}, max_labels_per_edge)


@register_design(
    "uncertainty",
    needs_truth=_at_truth_or_pilot,
    summary="The num_pairs edges whose predicted preference is nearest 1/2 (ties at random; at theta0 = 0 all tie).",
    source="uncertainty sampling (Lewis and Gale 1994); common in active preference learning",
    checks={"at": choice_check("reference", "pilot")},
)
def uncertainty(key, problem, budget, at="reference", num_pairs=None, rounding="auto", pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None):
    return _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, False, max_labels_per_edge)


@register_design(
    "most_certain",
    needs_truth=_at_truth_or_pilot,
    summary="The opposite of uncertainty sampling: the edges whose predicted preference is farthest from 1/2.",
    source="'clear preference' heuristics; the opposite of uncertainty sampling",
    checks={"at": choice_check("reference", "pilot")},
)
def most_certain(key, problem, budget, at="reference", num_pairs=None, rounding="auto", pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None):
    return _uncertainty(key, problem, budget, at, num_pairs, rounding, pilot_fraction, pilot_ridge, True, max_labels_per_edge)


@register_design(
    "response_selection",
    needs_truth=_at_truth_or_pilot,
    summary="Exactly one labelled pair per prompt, drawn from the L-optimal design normalised within each prompt.",
    source="Which Pairs to Compare (arXiv 2606.19607), IMDb response selection",
)
def response_selection(key, problem, budget, at="reference", ridge=0.0, tol=1e-4, pilot_fraction=0.2, pilot_ridge=1e-3, max_labels_per_edge=None, prior_precision=None):
    _check_prior(ridge, prior_precision)
    k_theta, k_pick, k_split = jax.random.split(key, 3)
    theta, pilot = _theta_at(at, k_theta, problem, budget, pilot_fraction, pilot_ridge)
    present = _present(problem)
    prompts = np.flatnonzero(present.sum(axis=1) >= 2)
    masses = np.zeros(present.shape[0])
    masses[prompts] = _prompt_masses(problem, prompts)
    groups = np.asarray(problem.edges.prompt, dtype=np.int64)
    # A prompt's edges only see that prompt's differences: with ridge = 0 the grouped
    # problem needs every prompt's block; the solver errors clearly if it is singular.
    sol = _solve(problem, theta, "L", ridge, tol, groups=groups, group_weights=masses, prior_precision=prior_precision, budget=budget)
    w = np.asarray(sol.weights, dtype=np.float64)
    # One pair per prompt, drawn from the within-prompt design; labels split over
    # prompts by efficient rounding of the prompt weights (with a cap: by pivotal
    # sampling of the prompt weights capped at what the prompt's pair may still take).
    rest = budget - (0 if pilot is None else int(pilot[0].sum()))
    keys = jax.random.split(k_pick, present.shape[0])
    pair = -np.ones(present.shape[0], dtype=np.int64)
    for x in prompts:
        members = np.flatnonzero(groups == x)
        pw = w[members] / w[members].sum()
        pair[x] = members[int(jax.random.choice(keys[x], members.size, p=jnp.asarray(pw)))]
    left = _rest_caps(max_labels_per_edge, pilot)
    if left is None:
        per_prompt = round_design(k_split, masses, rest, "efficient").dense_counts(masses.size)
    else:
        room = np.zeros(masses.size, dtype=np.int64)
        room[prompts] = left if np.ndim(left) == 0 else left[pair[prompts]]
        if rest > room[masses > 0].sum():
            raise ValueError(
                f"budget {budget} exceeds what response selection (one pair a prompt) can label with "
                f"max_labels_per_edge = {max_labels_per_edge}: {int(room[masses > 0].sum())} labels on {prompts.size} prompts"
            )
        per_prompt = round_design(k_split, masses, rest, "pivotal", caps=room).dense_counts(masses.size)
    counts = np.zeros(problem.num_edges, dtype=np.int64)
    for x in np.flatnonzero(per_prompt):
        counts[pair[x]] += per_prompt[x]
    if pilot is not None:
        counts += pilot[0]
    return DesignOutput(allocation_from_counts(counts), w, pilot, _sol_info(sol, theta))


@register_design(
    "prompt_selection",
    needs_truth=_at_truth_or_pilot,
    summary="Each prompt has one fixed pair (its first two completions); choose budget prompts without replacement by the L-optimal design.",
    source="Which Pairs to Compare (arXiv 2606.19607), IMDb prompt selection",
    checks={"at": choice_check("reference", "truth")},
)
def prompt_selection(key, problem, budget, at="reference", ridge=0.0, tol=1e-4, max_labels_per_edge=None, prior_precision=None):
    # Each prompt's one pair is labelled at most once, which honours any max_labels_per_edge >= 1.
    check_max_labels_per_edge(max_labels_per_edge)
    _check_prior(ridge, prior_precision)
    _check_choice("at", at, ("reference", "truth"))
    theta, _ = _theta_at(at, key, problem, budget, 0.2, 1e-3)
    mask = (problem.edges.first == 0) & (problem.edges.second == 1)
    fixed = np.flatnonzero(mask)
    if fixed.size == 0:
        raise ValueError("prompt_selection: no prompt has completions 0 and 1 present")
    if budget > fixed.size:
        raise ValueError(
            f"budget {budget} is larger than the {fixed.size} prompts with a fixed pair: prompt selection "
            "labels each prompt at most once"
        )
    diffs = problem.edges.diffs[jnp.asarray(fixed)]
    sol = _solve(problem, theta, "L", ridge if ridge > 0 else 0.0, tol, diffs=diffs, prior_precision=prior_precision, budget=budget)
    w = np.zeros(problem.num_edges)
    w[fixed] = np.asarray(sol.weights, dtype=np.float64)
    # Without replacement needs budget <= support; the optimal design is sparse, so
    # sample among the fixed pairs with a floor that keeps every prompt eligible.
    sampling = np.where(mask, np.maximum(w, 1e-12 * w.max()), 0.0)
    alloc = round_design(key, sampling, budget, "without_replacement")
    return DesignOutput(alloc, w, None, _sol_info(sol, theta))
