"""One cell of the second-order table (theory/SECOND_ORDER.md section 8).

Rebuilds the world, design and counts exactly as :mod:`experiments.cell` does, then
prints one JSON line: the simulated ``n E G`` (with its standard error and the fraction
of replicates whose MLE exists), the first-order term ``(beta/2) Phi`` and the
second-order prediction ``(beta/2) Phi + c2 / n``::

    python -m experiments.second_order_table '{"world_name": "tabular", "design": "uniform", "budget": 3000, "reps": 600}'
    python -m experiments.second_order_table '{"world_name": "tabular", "design": "uniform", "budget": 1000, "reps": 600, "est": "map", "lam": 1.0}'
"""

from __future__ import annotations

import hashlib
import json
import sys

import jax
import numpy as np
from omegaconf import OmegaConf

from experiments.cell import float64
from experiments.worlds import make_world
from synthetic.designs import design_problem, run_design
from synthetic.monte_carlo import MAP_PRIOR_PRECISION, replicate_gaps
from theory.second_order import second_order_coefficients


def _world(name, **over):
    c = OmegaConf.load(f"experiments/conf/world/{name}.yaml")
    c.params.update(over)
    return OmegaConf.to_container(c)


WORLDS = {"tabular": lambda: _world("tabular", num_completions=100, theta_scale=0.2), "contextual": lambda: _world("contextual")}


def row(world_name, design, budget, reps, est="newton", lam=None, chunk=250, seed=0, world_seed=0) -> dict:
    """Simulated ``n E G`` against the first- and second-order predictions for one cell."""
    if world_name not in WORLDS:
        raise ValueError(f"world_name must be one of {sorted(WORLDS)}, got {world_name!r}")
    # the expansion and the simulation must be of one estimator: plain DPO, or MAP with one prior precision
    if est == "map" and lam is None:
        lam = MAP_PRIOR_PRECISION  # the map estimator's own default: the expansion needs it too
    elif est == "newton" and lam is not None:
        raise ValueError(f"lam = {lam} is the MAP prior precision: give est='map' with it, or lam=None for plain DPO (est='newton')")
    elif est not in ("newton", "map"):
        raise ValueError(f"est must be 'newton' (plain DPO) or 'map' (the expansion covers these two), got {est!r}")
    with float64():
        world = make_world(OmegaConf.create(WORLDS[world_name]()), jax.random.key(world_seed))
        problem = design_problem(world)
        salt = int(hashlib.sha256(f"{design}|{budget}".encode()).hexdigest()[:7], 16)
        k_design, k_labels = jax.random.split(jax.random.fold_in(jax.random.key(seed), salt))
        design_out = run_design(design, k_design, problem, budget)
        counts = design_out.dense_counts(problem.num_edges).astype(np.float64)
        ev = world.eval
        so = second_order_coefficients(counts / counts.sum(), world.theta_star, ev.features, ev.log_ref,
                                       problem.edges.diffs, world.beta, ev.prompt_weights, prior_precision=lam)
        out = dict(world=world_name, design=design, n=budget, estimator=est if lam is None else f"map(L={lam})",
                   first=float(so.first), c2=float(so.c2), second=float(so.first + so.c2 / budget), reps=reps,
                   # a pilot's labels are kept, as the cell keeps them (the expansions are of a fixed design)
                   pilot=design_out.pilot is not None)
        res = replicate_gaps(jax.random.split(k_labels, reps), world.theta_star, problem.edges.diffs, counts,
                             world.beta, ev, pilot=design_out.pilot, estimator=est,
                             estimator_params={} if lam is None else {"prior_precision": lam},
                             chunk_size=min(chunk, reps))
        g = budget * np.asarray(res.gap, np.float64)
        ex = np.asarray(res.mle_exists, bool)
        out.update(sim=float(g.mean()), se=float(g.std(ddof=1) / np.sqrt(reps)), mle_fraction=float(ex.mean()),
                   sim_exists=float(g[ex].mean()) if ex.sum() > 1 else float("nan"),
                   se_exists=float(g[ex].std(ddof=1) / np.sqrt(ex.sum())) if ex.sum() > 1 else float("nan"))
    return out


if __name__ == "__main__":
    print(json.dumps(row(**json.loads(sys.argv[1]))))
