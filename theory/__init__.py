"""Mathematics of comparison design for DPO in the log-linear Bradley-Terry model.

Every object of the theory brief is a function here; see README "Where each object
lives" for the map.
"""

from theory.design import CRITERIA, DesignSolution, DesignSolver, ReducedProblem, SolverHistory, optimal_design, reduce_problem
from theory.edges import Edges, enumerate_edges
from theory.information import asymptotic_gap, design_criterion, information_matrix, trace_criterion
from theory.policy import log_partition, optimality_gap, policy_curvature, policy_log_probs
from theory.second_order import second_order_coefficients, second_order_gap

__all__ = [
    "Edges",
    "enumerate_edges",
    "log_partition",
    "policy_log_probs",
    "optimality_gap",
    "policy_curvature",
    "information_matrix",
    "design_criterion",
    "trace_criterion",
    "asymptotic_gap",
    "second_order_gap",
    "second_order_coefficients",
    "optimal_design",
    "DesignSolver",
    "ReducedProblem",
    "reduce_problem",
    "DesignSolution",
    "SolverHistory",
    "CRITERIA",
]
