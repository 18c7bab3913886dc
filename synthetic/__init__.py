"""Synthetic worlds, Bradley-Terry labels, DPO estimators and Monte-Carlo replicates."""

from synthetic.designs import DESIGNS, DesignOutput, DesignProblem, design_problem, register_design, run_design
from synthetic.adaptive import run_adaptive  # registers the adaptive designs
from synthetic.rounding import ROUNDINGS, round_design
from synthetic.baselines import first_two_weights, reference_weights, uniform_weights
from synthetic.estimators import DPOResult, NewtonResult, dpo_loss, fit_dpo_optax, fit_newton
from synthetic.labels import Allocation, allocation_from_counts, sample_allocation, simulate_wins
from synthetic.monte_carlo import ReplicateResult, mean_and_ci, replicate_gaps, simulate_gaps
from synthetic.worlds import (
    Pool,
    World,
    contextual_world,
    first_completions,
    gaussian_world,
    tabular_world,
    world_curvature,
    world_gap,
)

__all__ = [
    "Pool",
    "World",
    "tabular_world",
    "contextual_world",
    "first_completions",
    "gaussian_world",
    "world_gap",
    "world_curvature",
    "Allocation",
    "allocation_from_counts",
    "sample_allocation",
    "simulate_wins",
    "NewtonResult",
    "DPOResult",
    "dpo_loss",
    "fit_newton",
    "fit_dpo_optax",
    "ReplicateResult",
    "replicate_gaps",
    "simulate_gaps",
    "mean_and_ci",
    "uniform_weights",
    "reference_weights",
    "first_two_weights",
    "DESIGNS",
    "DesignOutput",
    "DesignProblem",
    "design_problem",
    "register_design",
    "run_design",
    "run_adaptive",
    "ROUNDINGS",
    "round_design",
]
