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
# # Exploring the bounds
#
# The gap of the DPO policy after `n` labels from a design `w` is
# `(beta / 2n) tr(I Sigma_w^+)` to first order (`theory/DERIVATIONS.md`). This notebook
# looks at the three things that quantity is made of:
#
# 1. how the policy curvature `I(theta*)` and the design's information `Sigma_w(theta*)`
#    align (the criterion is the sum of their generalised eigenvalues);
# 2. the criterion, the asymptotic gap and the rigorous bounds as the budget grows;
# 3. a two-edge design, where the criterion is a curve in one weight and its minimum is
#    the optimal design.
#
# Every number comes from a tested function of `theory/`.

# %% tags=["parameters"]
SEED = 0
NUM_TRAIN_PROMPTS = 30
BUDGETS = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10]
LOWER_GRID = 40  # (alpha, rho0) grid of the lower bound's optimisation

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

jax.config.update("jax_enable_x64", True)

from experiments.plotting import design_label, design_style, paper_style
from synthetic import contextual_world, design_problem, run_design
from theory import bounds as TB
from theory import design_criterion, information_matrix, optimal_design

paper_style()
world = contextual_world(jax.random.key(SEED), prompt_dim=2, action_dim=2, num_train_prompts=NUM_TRAIN_PROMPTS, num_completions=6)
problem = design_problem(world)
z, beta, theta = problem.edges.diffs, world.beta, world.theta_star
I = problem.curvature(theta)
print(f"d = {world.dim}, candidate edges E = {problem.num_edges}, ||theta*|| = {float(jnp.linalg.norm(theta)):.3f}")

# %% [markdown]
# ## 1. How `I` and `Sigma` align
#
# With `Sigma = Sigma_w(theta*)` of full rank on the identifiable subspace, the
# generalised eigenvalues `lambda_i` of the pencil `(I, Sigma)` satisfy
# `tr(I Sigma^+) = sum_i lambda_i`. A good design puts information where the policy
# has curvature: it flattens the largest `lambda_i`.

# %%
designs = {}
for name in ["uniform", "reference_weighted", "oracle"]:
    out = run_design(name, jax.random.key(1), problem, 10_000)
    designs[name] = jnp.asarray(out.weights)


def generalized_eigs(I, S):
    """Eigenvalues of S^{-1/2} I S^{-1/2} on the range of S."""
    lam, U = np.linalg.eigh(np.asarray(S))
    keep = lam > lam.max() * 1e-10
    W = U[:, keep] / np.sqrt(lam[keep])
    return np.sort(np.linalg.eigvalsh(W.T @ np.asarray(I) @ W))[::-1]


fig, ax = plt.subplots(figsize=(4.2, 2.8), constrained_layout=True)
for name, w in designs.items():
    S = information_matrix(theta, z, w, beta)
    ev = generalized_eigs(I, S)
    phi = float(design_criterion(w, theta, z, I, beta))
    assert np.isclose(ev.sum(), phi, rtol=1e-6), (ev.sum(), phi)
    color, marker = design_style(name)
    ax.plot(np.arange(1, ev.size + 1), ev, marker=marker, color=color, label=f"{design_label(name)}: sum = {phi:.2f}")
ax.set_yscale("log")
ax.set_xlabel("index $i$")
ax.set_ylabel(r"generalised eigenvalue $\lambda_i(I, \Sigma_w)$")
ax.legend(frameon=False)
ax.set_title(r"$\mathrm{tr}(I\Sigma^+) = \sum_i \lambda_i$")

# %% [markdown]
# ## 2. Criterion and bounds as the budget grows
#
# `theory.bounds.instance_constants` computes every constant of the theorems for an
# empirical design; the bounds are then cheap functions of `n`. Plotted as `n x gap`,
# the asymptotic line is flat at `(beta/2) tr(I Sigma^+)`; each upper bound exists from
# its `n0` on and the bounds approach the line as `n` grows. Theorems 1-2 are the first
# proofs (McDiarmid localisation, truncated van Trees); Theorems 4-5 are the sharp ones
# (a Bernstein net, the third-moment constants of Lemmas 9.3-9.4, a Bregman lower bound):
# here they start 10 to 100 times earlier and are within a factor of 1.2-1.4 of each
# other at `n = 1e6`, where Theorems 1-2 are far apart (`theory/DERIVATIONS.md`, sections 9-11).
# Theorem 4 holds for every tail `a` (the score leaves its ball with probability `n^-a`, charged
# `G_sup n^-a`); the dashed line takes the best `a` of a fixed grid at each `n` (section 9.6):
# it starts earlier and is smaller where the bounds are loose.

# %%
radius = 2 * float(jnp.linalg.norm(theta)) + 1
ev_pool = world.eval
fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.8), constrained_layout=True, sharey=True)
table = []
for ax, name in zip(axes, ["uniform", "oracle"]):
    c = TB.instance_constants(designs[name], theta, ev_pool.features, ev_pool.log_ref, z, beta, radius, ev_pool.prompt_weights)
    n = np.asarray(BUDGETS)
    asym = np.array([TB.asymptotic_prediction(c, k) for k in n])
    up = np.array([TB.upper_bound(c, k).value for k in n])
    lo = np.array([TB.lower_bound(c, k, grid=LOWER_GRID).value for k in n])
    up4 = np.array([TB.upper_bound_bernstein(c, k).value for k in n])
    up4t = np.array([TB.upper_bound_bernstein_tuned(c, k).value for k in n])
    lo5 = np.array([TB.lower_bound_jensen(c, k).value for k in n])
    n0, n04 = TB.upper_bound_valid_from(c), TB.upper_bound_bernstein_valid_from(c)
    table.append((name, c, n0, n04, TB.upper_bound_bernstein(c, 1e6).value / TB.lower_bound_jensen(c, 1e6).value,
                  TB.upper_bound_bernstein_within(c, 2.0)))
    ax.plot(n, n * asym, "--", color="k", label=r"$\frac{\beta}{2}\mathrm{tr}(I\Sigma^+)$")
    ax.plot(n[np.isfinite(up)], (n * up)[np.isfinite(up)], ":", color="#D55E00", label="upper (Thm 1)")
    ax.plot(n, n * lo, ":", color="#009E73", label="lower (Thm 2)")
    ax.plot(n[np.isfinite(up4)], (n * up4)[np.isfinite(up4)], "-", color="#D55E00", label="upper (Thm 4, $a = 2$)")
    ax.plot(n[np.isfinite(up4t)], (n * up4t)[np.isfinite(up4t)], "--", color="#D55E00", lw=0.8, label="upper (Thm 4, best $a$)")
    ax.plot(n, n * lo5, "-", color="#009E73", label="lower (Thm 5)")
    ax.axvline(n04, color="0.6", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{design_label(name)} ($n_0$ = {n04:.1e}; Thm 1: {n0:.1e})")
    ax.set_xlabel("budget $n$")
axes[0].set_ylabel(r"$n \times$ gap (nats)")
axes[0].legend(frameon=False, fontsize=6)
for name, c, n0, n04, ratio, within2 in table:
    print(f"{name:>10}: Phi = {c.criterion:.3f}; upper bound from n0 = {n04:.3g} (Theorem 4; Theorem 1: {n0:.3g}); "
          f"at the best tail within 2x of the prediction from n = {within2:.3g}; "
          f"upper/lower at 1e6 = {ratio:.2f}; second-order constants tau_Am = {c.tau_am:.2f} (Lemma 9.4) "
          f"against sqrt(kappa) tau = {np.sqrt(c.kappa) * c.tau:.2f} (Lemma 9.3)")

# %% [markdown]
# ## 3. A two-edge design
#
# Take one prompt with three completions and two edges that share a completion:
# `w = (t, 1 - t)`. Both edges are needed to identify the two directions with
# curvature, so `Phi(t)` is finite on `(0, 1)`, convex, and blows up at both ends. The
# solver's optimum over the same two edges sits at the bottom of the curve.

# %%
from synthetic import tabular_world
from theory import enumerate_edges, policy_curvature

tw = tabular_world(jax.random.key(SEED + 1), num_completions=3, theta_scale=1.0)
edges = enumerate_edges(tw.train.features, tw.train.log_ref)
z2 = edges.diffs[:2]  # (0, 1) and (0, 2)
I2 = policy_curvature(tw.theta_star, tw.train.features, tw.train.log_ref)
ts = np.linspace(0.02, 0.98, 97)
curve = np.array([float(design_criterion(jnp.array([t, 1 - t]), tw.theta_star, z2, I2, tw.beta)) for t in ts])
sol = optimal_design(z2, tw.theta_star, I2, tw.beta, tol=1e-10)
t_star = float(sol.weights[0])
assert curve.min() >= sol.value * (1 - 1e-9), "the solver's optimum must lie below the whole curve"
fig, ax = plt.subplots(figsize=(4.0, 2.6), constrained_layout=True)
ax.plot(ts, curve, color="k")
ax.plot([t_star], [sol.value], "o", color=design_style("oracle")[0], label=f"optimal design: t = {t_star:.3f}")
ax.set_xlabel("weight $t$ on edge (0, 1)")
ax.set_ylabel(r"$\Phi(t) = \mathrm{tr}(I\Sigma_{(t, 1-t)}^+)$")
ax.set_yscale("log")
ax.legend(frameon=False)
print(f"t* = {t_star:.4f}, Phi(t*) = {sol.value:.4f}, grid minimum {curve.min():.4f} at t = {ts[curve.argmin()]:.2f}")
