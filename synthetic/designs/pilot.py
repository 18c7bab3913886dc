"""Pilots: a uniform pilot of ``fraction * budget`` labels and a DPO fit on them.

:class:`PilotConfig` is the one place the pilot's numbers live: its defaults
(:data:`PILOT`) are every design's ``pilot_fraction`` / ``pilot_ridge`` defaults, and
the designs that take no pilot parameters (``oracle``, ``plug_in``,
``prompt_selection``) pass :data:`PILOT` instead of numbers. The designs' Hydra
parameters stay flat (``design.params.pilot_fraction``, ``design.params.pilot_ridge``),
so configs and cell identities are those of before; a design builds
``PilotConfig(pilot_fraction, pilot_ridge)`` from them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.baselines import uniform_weights
from synthetic.designs.checks import PARAM_CHECKS, _check_choice, _check_fraction
from synthetic.estimators import fit_newton
from synthetic.rounding import round_design

__all__ = ["PilotConfig", "PILOT", "pilot_budget_check"]


@dataclasses.dataclass(frozen=True)
class PilotConfig:
    """A pilot: label ``floor(fraction * budget)`` edges drawn uniformly, fit DPO with ``ridge``.

    Built freely (no check at construction, so that designs not taking a pilot never
    fail on its numbers); :meth:`check` runs before any pilot label.
    """

    fraction: float = 0.2
    ridge: float = 1e-3

    def check(self) -> "PilotConfig":
        """``fraction`` in ``(0, 1)`` and ``ridge`` a finite number ``> 0``; errors name the design parameter."""
        _check_fraction("pilot_fraction", self.fraction)
        PARAM_CHECKS["pilot_ridge"]("pilot_ridge", self.ridge)
        return self

    def size(self, budget: int) -> int:
        """``floor(fraction * budget)`` pilot labels; at least one, and one label left to design."""
        self.check()
        n0 = int(np.floor(self.fraction * budget))
        if n0 < 1 or n0 >= budget:
            raise ValueError(
                f"pilot_fraction * budget must leave at least one pilot and one designed label; "
                f"got {self.fraction} * {budget} = {self.fraction * budget:g}"
            )
        return n0


#: The default pilot (``design.params.pilot_fraction = 0.2``, ``pilot_ridge = 1e-3``).
PILOT = PilotConfig()


def pilot_budget_check(name: str, problem, budget: int, params: dict) -> None:
    """A design that takes a pilot with these parameters (``at="pilot"``, ``reward="pilot"``, or
    two-stage, which always does) needs ``floor(pilot_fraction * budget)`` from 1 to ``budget - 1``
    (:meth:`PilotConfig.size`): checked with the design's budget checks, so a sweep refuses the cell
    before any job rather than when the job runs. Every design taking ``pilot_fraction`` gets it."""
    if params.get("at", params.get("reward", "pilot")) == "pilot":
        PilotConfig(params.get("pilot_fraction", PILOT.fraction), params.get("pilot_ridge", PILOT.ridge)).size(budget)


def _at_truth_or_pilot(params: dict) -> bool:
    """Designs evaluated ``at`` the truth, or at a pilot estimate (labels bought from the annotator)."""
    return params.get("at") in ("truth", "pilot")


def _pilot(key, problem, budget, pilot: PilotConfig = PILOT):
    """Label ``pilot.fraction * budget`` uniformly chosen edges and fit DPO on them."""
    n0 = pilot.size(budget)
    k_alloc, k_lab = jax.random.split(key)
    counts = round_design(k_alloc, uniform_weights(problem.edges), n0, "efficient").dense_counts(problem.num_edges)
    wins = problem.label(k_lab, counts)
    fit = fit_newton(
        problem.edges.diffs,
        jnp.asarray(counts, problem.edges.diffs.dtype),
        jnp.asarray(wins, problem.edges.diffs.dtype),
        problem.beta,
        ridge=pilot.ridge,
    )
    return (counts, wins), fit.theta


def _theta_at(at, key, problem, budget, pilot: PilotConfig = PILOT):
    """``theta`` at which a design is evaluated: the reference (0), the truth, or a pilot fit (with its labels)."""
    _check_choice("at", at, ("reference", "truth", "pilot"))
    if at == "reference":
        return jnp.zeros(problem.dim, problem.edges.diffs.dtype), None
    if at == "truth":
        return problem.theta_star, None
    labels, theta = _pilot(key, problem, budget, pilot)
    return theta, labels
