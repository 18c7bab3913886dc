# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Validating a new design against the theory
#
# A design is a function `fn(key, problem, budget, **params) -> DesignOutput`,
# registered by name. Once registered it runs everywhere a built-in design runs: the
# sweep app, the figures, the bounds checks. This notebook
#
# 1. writes a design (edges weighted by their leverage in the curvature metric at the
#    reference, a cheap stand-in for the L-optimal design),
# 2. registers it and checks the contract with `run_design`,
# 3. runs a small sweep against uniform and the oracle, and tests that its Monte-Carlo
#    gap matches the asymptotic prediction `(beta / 2n) tr(I Sigma^+)` (a z-test).
#
# From the command line the same sweep is one command once the design lives in an
# importable module `my_designs.py`:
#
# ```bash
# python -m experiments.sweep -m 'imports=[my_designs]' design=custom design.name=leverage budget=300,1000,3000
# ```

# %% tags=["parameters"]
BUDGETS = [300, 1000, 3000]
REPLICATES = 200
RESULTS = "results/notebook_validate_design"

# %%
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from experiments import sweep
from experiments.plotting import plot_gap_vs_budget
from synthetic.designs import DESIGNS, register_design, run_design, weighted_output
from theory import policy_curvature

# %% [markdown]
# ## 1-2. Write and register the design
#
# `problem` carries the candidate edges, the training pool and the target pool. The
# simulated truth (`problem.theta_star`, `problem.label`) is handed only to designs
# registered with `needs_truth=True` (oracles, designs that buy pilot labels); any
# other design that reads it stops with a `TruthHiddenError`. Here the weight
# of edge `e` is `s'(0) z_e^T I(0)^+ z_e`: large for pairs that differ along
# directions where the reference policy has little curvature.

# %%
if "leverage" in DESIGNS:  # re-running the notebook
    DESIGNS.pop("leverage")


@register_design("leverage", summary="edges weighted by their I(0)^+ leverage at the reference", source="this notebook")
def leverage(key, problem, budget, rounding="auto"):
    t = problem.target
    curv = policy_curvature(jnp.zeros(problem.dim), t.features, t.log_ref, t.prompt_weights)
    z = np.asarray(problem.edges.diffs)
    lev = np.einsum("ed,df,ef->e", z, np.linalg.pinv(np.asarray(curv)), z)
    return weighted_output(key, problem, budget, lev / lev.sum(), rounding)


cfg = sweep.compose_job(["world=contextual"])
from experiments.worlds import make_world  # noqa: E402
from synthetic import design_problem  # noqa: E402

problem = design_problem(make_world(cfg.world, jax.random.key(cfg.world_seed)))
out = run_design("leverage", jax.random.key(0), problem, 1000)  # checks budget, weights, counts
print(f"{out.allocation.edges.size} distinct edges, {int(out.allocation.counts.sum())} labels")

# %% [markdown]
# ## 3. A small sweep, and the test against the theory
#
# `sweep.run_jobs` runs cells exactly as `python -m experiments.sweep -m ...` does (the
# same ids, records and resumability); `design=custom design.name=leverage` selects a
# design that has no config file of its own.

# %%
jobs = [["world=contextual", f"budget={n}", f"num_replicates={REPLICATES}", *d]
        for d in (["design=custom", "design.name=leverage"], ["design=uniform"], ["design=oracle"]) for n in BUDGETS]
paths = sweep.run_jobs(jobs, RESULTS, progress=False)
rows = sweep.aggregate_files(paths)
print(sweep.format_summary(rows))

# %%
z_crit = NormalDist().inv_cdf(1 - 1e-3 / 2)
for r in rows:
    if r["design"] != "leverage":
        continue
    z = (r["mean_gap"] - r["predicted_gap"]) / r["se"]
    verdict = "agrees" if abs(z) < z_crit else "DISAGREES"
    print(f"n = {r['budget']:>6}: gap / prediction = {r['ratio_to_prediction']:.3f}, z = {z:+.2f} -> {verdict} at level 1e-3")
plot_gap_vs_budget(rows, title="a new design against uniform and the oracle");
