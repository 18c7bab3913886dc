"""Reward-position heuristics: per prompt, a pair chosen by the completions' places
under a reward model (the true reward with noise, ``reward="proxy"``, or a pilot DPO
fit, ``reward="pilot"``): best against worst, and Finding the Sweet Spot's positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.designs.checks import _check_choice, choice_check
from synthetic.designs.outputs import _present, _prompt_masses, _prompts_with_pairs, weighted_output
from synthetic.designs.pilot import PILOT, PilotConfig, _pilot
from synthetic.designs.registry import register_design
from theory.checked import check_argument

__all__ = ["REWARD_POSITIONS", "reward_model", "best_vs_worst", "sweet_spot", "sweet_spot_pm2sigma", "sweet_spot_scalable"]

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
    check_argument("correlation", correlation, "number in [-1, 1]")
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
        pilot, theta = _pilot(k_pilot, problem, budget, PilotConfig(pilot_fraction, pilot_ridge))
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


def _per_prompt_pairs(problem, pick):
    """One edge per prompt with >= 2 completions: ``pick(prompt) -> (i, j)``."""
    present = _present(problem)
    prompts = np.flatnonzero(present.sum(axis=1) >= 2)
    pairs = np.asarray([pick(x) for x in prompts], np.int64).reshape(-1, 2)
    sel = problem.edge_ids(prompts, pairs[:, 0], pairs[:, 1])
    if np.any(sel < 0):  # a rule that picked one completion twice, or an absent one (not an assert: python -O skips those)
        x = int(np.flatnonzero(sel < 0)[0])
        raise ValueError(f"prompt {int(prompts[x])}: the rule picked completions {tuple(int(v) for v in pairs[x])}, "
                         "which are no edge of the pool (two distinct present completions are needed)")
    return prompts, sel


def _pair_rule_support(params, problem):
    """Support of a one-pair-per-prompt rule: the prompts with two completions and positive
    weight (their pair's weight is the prompt's; with a pilot reward, every edge, which the
    pilot may label)."""
    if params.get("reward") == "pilot":
        return None
    return _prompts_with_pairs(problem)


def _per_prompt_output(key, problem, budget, prompts, sel, rounding, pilot, info=None, max_labels_per_edge=None):
    w = np.zeros(problem.num_edges)
    w[sel] = _prompt_masses(problem, prompts)
    return weighted_output(key, problem, budget, w, rounding, pilot, info, max_labels_per_edge)


@register_design(
    "best_vs_worst",
    needs_truth=True,
    support=_pair_rule_support,
    summary="Per prompt, the highest- against the lowest-reward completion under a reward model.",
    source="common practice in iterative DPO (e.g. the baseline of Finding the Sweet Spot, 2025)",
)
def best_vs_worst(key, problem, budget, reward="proxy", correlation=1.0, pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, rounding="auto", max_labels_per_edge=None):
    k_r, k_round = jax.random.split(key)
    scores, pilot = _rewards(k_r, problem, budget, reward, correlation, pilot_fraction, pilot_ridge)
    prompts, sel = _per_prompt_pairs(problem, lambda x: (int(np.argmax(scores[x])), int(np.argmin(np.where(np.isfinite(scores[x]), scores[x], np.inf)))))
    return _per_prompt_output(k_round, problem, budget, prompts, sel, rounding, pilot, max_labels_per_edge=max_labels_per_edge)


@register_design(
    "sweet_spot",
    needs_truth=True,
    support=_pair_rule_support,
    summary="Chosen at one reward position, rejected nearest another (default max vs mu - 2 sigma); 7 positions, 21 pairs.",
    source="Finding the Sweet Spot (2025, seed 003): rejected at mu - 2 sigma beats the minimum",
    checks={"chosen": choice_check(*REWARD_POSITIONS), "rejected": choice_check(*REWARD_POSITIONS)},
)
def sweet_spot(
    key, problem, budget, chosen="max", rejected="mu-2sigma", reward="proxy", correlation=1.0, pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, rounding="auto",
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
    support=_pair_rule_support,
    summary="Chosen nearest mu + 2 sigma, rejected nearest mu - 2 sigma of the prompt's rewards.",
    source="Finding the Sweet Spot (2025, seed 003): the (mu + 2 sigma, mu - 2 sigma) pair, best in most of its settings",
)
def sweet_spot_pm2sigma(key, problem, budget, reward="proxy", correlation=1.0, pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, rounding="auto",
                        max_labels_per_edge=None):
    return sweet_spot(key, problem, budget, "mu+2sigma", "mu-2sigma", reward, correlation, pilot_fraction, pilot_ridge, rounding,
                      max_labels_per_edge)


@register_design(
    "sweet_spot_scalable",
    needs_truth=True,
    support=_pair_rule_support,
    summary="Chosen = highest reward; rejected = lowest of num_samples (default 5) completions drawn at random from the pool.",
    source="Finding the Sweet Spot (2025, seed 003), the scalable construction",
)
def sweet_spot_scalable(
    key, problem, budget, num_samples=5, reward="proxy", correlation=1.0, pilot_fraction=PILOT.fraction, pilot_ridge=PILOT.ridge, rounding="auto",
    max_labels_per_edge=None,
):
    check_argument("num_samples", num_samples, "int >= 1")
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


