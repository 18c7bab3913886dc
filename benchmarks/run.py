"""Benchmark suite: every figure a ratio against a baseline measured in the same run.

    pip install -e '.[bench]' && python -m benchmarks.run            # about 25 minutes on 2 cores
    python -m benchmarks.run --quick                                  # small sizes, a couple of minutes

Writes ``benchmarks/results.json`` and the table ``BENCHMARKS.md`` (machine, versions,
date). Sections (``--only``):

* ``solver``: the L-optimal design solver (``theory.optimal_design``) at the paper's
  Anthropic-HH scale (160,800 Gaussian edges, d = 128) to certified relative gaps 1e-2
  and 1e-3, against a plain numpy Frank-Wolfe (``Sigma^-1`` recomputed every step) and
  cvxpy (Clarabel) on the same instances; growth with ``E`` and ``d``.
* ``capped``: the L-optimal design at HH scale with each comparison labelled at most
  once (``n = 80,400`` of the 160,800 edges: ``caps = 1 / 80,400``), beside the uncapped
  solve of the same instance, both to a certified 1e-3, in the same run; the capped
  certificate is recomputed from scratch (dense inverse, sorted fill).
* ``newton``: the solver with against without its matrix-free projected Newton polish
  (``newton_cg``) on interior optima (Figure 1's tabular world) and at HH scale.
* ``cvxpy``: cvxpy (Clarabel) on the growth-with-E instances.
* ``replicates``: 1,000 Monte-Carlo DPO fits at n = 10^4 labels (tabular d = 100,
  contextual d = 32) against a loop of scikit-learn ``LogisticRegression``.
* ``information``: ``Sigma_w(theta)`` at E = 10^6, d = 128, float32 and float64, against
  the machine's BLAS limit ``X^T diag(s) X`` (numpy, same size and dtype).
* ``bounds``: Theorem 4 at the best tail (``theory.bounds.upper_bound_bernstein_within``, the
  bounds table's ``2x from``) on the table's three worlds, against a scalar reimplementation of the loops
  it replaced (Lemma 9.1's radius over the net grid one parameter and one tail at a time, Lemma 9.1b's
  traces at every tail; the rest of each bound is shared code); values compared bit for bit.
* ``figures``: wall time of ``python -m experiments.figures`` from empty records, and
  per cell.

Timings are wall-clock medians of warm calls (JIT compilation reported separately).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _timeit(fn, repeat=3):
    ts = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), out


def _block(x):
    import jax

    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


# ----------------------------------------------------------------------------- solver


def gaussian_instance(e: int, d: int, seed: int = 0, dtype=np.float64):
    """Edge differences ``z ~ N(0, Id)``, ``theta ~ N(0, Id / d)``, curvature a Wishart ``W / d``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(e, d)).astype(dtype)
    theta = (rng.normal(size=d) / math.sqrt(d)).astype(dtype)
    a = rng.normal(size=(d, 2 * d))
    curv = (a @ a.T / (2 * d)).astype(dtype)
    return z, theta, curv


def hh_instance(dtype):
    """The HH-scale instance: a Gaussian world with 1,340 prompts x 16 completions
    (160,800 within-prompt edges), d = 128, curvature of its policy at theta*."""
    import jax
    import jax.numpy as jnp

    from synthetic import design_problem, gaussian_world

    w = gaussian_world(jax.random.key(0), num_prompts=1340, num_completions=16, dim=128, theta_scale=0.5)
    p = design_problem(w)
    curv = p.curvature(w.theta_star)
    return (np.asarray(p.edges.diffs, dtype), np.asarray(w.theta_star, dtype), np.asarray(curv, dtype))


def relative_certificate(w, z, theta, curv, beta=1.0):
    """``(max_e d_e - Phi) / Phi`` of the L-criterion, from scratch in numpy (float64)."""
    z = np.asarray(z, np.float64)
    u = beta * z @ np.asarray(theta, np.float64)
    s = beta**2 * np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u))
    sigma = (z * (w * s)[:, None]).T @ z
    sinv = np.linalg.inv(sigma)
    m = sinv @ np.asarray(curv, np.float64) @ sinv
    phi = float(np.trace(np.asarray(curv) @ sinv))
    de = s * ((z @ m) * z).sum(axis=1)
    return float((de.max() - phi) / phi), phi


def numpy_frank_wolfe(z, theta, curv, tols, time_limit, beta=1.0):
    """Baseline: vertex Frank-Wolfe on ``tr(I Sigma^-1)``, ``Sigma^-1`` recomputed from scratch every step
    (``O(E d^2 + d^3)``), exact line search along the vertex direction.

    Returns ``({tol: seconds to reach it or None}, certificate at stop)``.
    """
    tols = sorted(tols, reverse=True)
    e, d = z.shape
    u = beta * z @ theta
    s = beta**2 * np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u))
    a = z * np.sqrt(s)[:, None]
    w = np.full(e, 1.0 / e, z.dtype)
    reached = {t: None for t in tols}
    t0 = time.perf_counter()
    cert = math.inf
    gs = np.linspace(1e-6, 0.999, 2000)
    while time.perf_counter() - t0 < time_limit:
        sigma = (a * w[:, None]).T @ a
        sinv = np.linalg.inv(sigma)
        m = sinv @ curv @ sinv
        phi = float(np.trace(curv @ sinv))
        de = ((a @ m) * a).sum(axis=1)
        j = int(de.argmax())
        cert = float((de[j] - phi) / phi)
        for t in tols:
            if reached[t] is None and cert <= t:
                reached[t] = time.perf_counter() - t0
        if reached[tols[-1]] is not None:
            break
        uj = sinv @ a[j]
        q, r = float(a[j] @ uj), float(uj @ curv @ uj)
        # Phi((1-g) Sigma + g a a^T) = (Phi - c r) / (1 - g), c = g / ((1 - g) + g q)
        vals = (phi - gs / ((1 - gs) + gs * q) * r) / (1 - gs)
        g = float(gs[vals.argmin()])
        w *= 1 - g
        w[j] += g
    return reached, cert


def _cvxpy_worker(z, theta, curv, queue):
    import cvxpy as cp

    e, d = z.shape
    u = z @ theta
    s = np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u))
    a = z * np.sqrt(s)[:, None]
    lam, vec = np.linalg.eigh(curv)
    root = vec * np.sqrt(np.maximum(lam, 0))
    w = cp.Variable(e, nonneg=True)
    # Sigma(w) = sum_e w_e a_e a_e^T as one sparse linear map R^E -> R^{d x d} (no E x E diag(w))
    cols = np.einsum("ei,ej->ije", a, a).reshape(d * d, e)
    sigma = cp.reshape(cols @ w, (d, d), order="C")
    prob = cp.Problem(cp.Minimize(cp.matrix_frac(root, sigma)), [cp.sum(w) == 1])
    t0 = time.perf_counter()
    prob.solve(solver=cp.CLARABEL)
    queue.put((time.perf_counter() - t0, np.clip(np.asarray(w.value), 0, None)))


def cvxpy_solve(z, theta, curv, time_limit):
    """cvxpy (Clarabel) in a subprocess, killed after ``time_limit`` s.

    Returns ``(seconds or None, certificate, status)``; status is ``"solved"``,
    ``"timeout"`` or ``"failed (exit code c)"`` (e.g. out of memory).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_cvxpy_worker, args=(z, theta, curv, q))
    p.start()
    t0 = time.perf_counter()
    while p.is_alive() and q.empty() and time.perf_counter() - t0 < time_limit:
        time.sleep(0.2)
    if q.empty():
        alive = p.is_alive()
        if alive:
            p.kill()
        p.join()
        return None, math.nan, "timeout" if alive else f"failed (exit code {p.exitcode})"
    secs, w = q.get()
    p.join()
    cert, _ = relative_certificate(w / w.sum(), z, theta, curv)
    return secs, cert, "solved"


def bench_hh_float32(quick: bool, res: dict) -> None:
    """Re-measure only the float32 HH rows of the solver section (e.g. after a float32 fix)."""
    import jax

    jax.config.update("jax_enable_x64", False)
    z, theta, curv = hh_instance(np.float32)
    rows = []
    for tol in (1e-2, 1e-3):
        cold, warm, sol = ours(z, theta, curv, tol)
        w = np.asarray(sol.weights, np.float64)
        cert, _ = relative_certificate(w / w.sum(), z, theta, curv)
        rows.append({"dtype": "float32", "E": z.shape[0], "d": z.shape[1], "tol": tol, "ours_cold_s": cold, "ours_s": warm,
                     "ours_certificate_float64": cert, "weights_sum": float(w.sum())})
        print("solver hh float32", rows[-1], flush=True)
    jax.config.update("jax_enable_x64", True)
    res["solver"]["hh"] = [r for r in res["solver"]["hh"] if r["dtype"] != "float32"] + rows


def bench_cvxpy(quick: bool) -> list:
    """cvxpy on the growth-with-E instances (same generator and seeds), until the first size it does not solve."""
    rows = []
    for e in ([1000, 10_000] if quick else [1000, 4000, 10_000, 30_000, 100_000]):
        z, theta, curv = gaussian_instance(e, 32)
        secs, cert, status = cvxpy_solve(z, theta, curv, 60 if quick else 300)
        _, ours_s, sol = ours(z, theta, curv, 1e-3)
        rows.append({"E": e, "d": 32, "cvxpy_s": secs, "cvxpy_certificate": cert, "status": status, "limit_s": 60 if quick else 300,
                     "ours_s": ours_s, "ours_certificate": float(sol.relative_certificate)})
        print("cvxpy", rows[-1], flush=True)
        if secs is None:
            break
    return rows


def ours(z, theta, curv, tol):
    import jax.numpy as jnp

    from theory import optimal_design

    def run():
        return optimal_design(jnp.asarray(z), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=tol)

    t0 = time.perf_counter()
    sol = run()
    cold = time.perf_counter() - t0
    warm, sol = _timeit(run, repeat=2)
    return cold, warm, sol


def bench_solver(quick: bool) -> dict:
    import jax

    out = {"hh": [], "scaling_E": [], "scaling_d": []}
    fw_limit = 60 if quick else 300
    # HH scale
    if not quick:
        for dtype in (np.float64, np.float32):
            if dtype == np.float32:
                jax.config.update("jax_enable_x64", False)
            z, theta, curv = hh_instance(dtype)
            if dtype == np.float64:
                fw_reached, fw_cert = numpy_frank_wolfe(z, theta, curv, (1e-2, 1e-3), fw_limit)
            for tol in (1e-2, 1e-3):
                cold, warm, sol = ours(z, theta, curv, tol)
                w = np.asarray(sol.weights, np.float64)
                cert, _ = relative_certificate(w / w.sum(), z, theta, curv)
                row = {"dtype": np.dtype(dtype).name, "E": z.shape[0], "d": z.shape[1], "tol": tol, "ours_cold_s": cold,
                       "ours_s": warm, "ours_certificate_float64": cert}
                if dtype == np.float64:
                    row.update(numpy_fw_s=fw_reached[tol], numpy_fw_certificate=fw_cert, numpy_fw_limit_s=fw_limit)
                out["hh"].append(row)
                print("solver hh", row, flush=True)
            jax.config.update("jax_enable_x64", True)
    # growth with E (d = 32) and with d (E = 10^5)
    es = [1000, 10_000, 100_000] if quick else [1000, 10_000, 100_000, 1_000_000]
    ds = [8, 32] if quick else [8, 32, 128, 256]
    for e in es:
        z, theta, curv = gaussian_instance(e, 32)
        cold, warm, sol = ours(z, theta, curv, 1e-3)
        row = {"E": e, "d": 32, "ours_cold_s": cold, "ours_s": warm, "ours_certificate": float(sol.relative_certificate)}
        if e <= 100_000:
            fw_reached, fw_cert = numpy_frank_wolfe(z, theta, curv, (1e-3,), fw_limit / 5)
            row.update(numpy_fw_s=fw_reached[1e-3], numpy_fw_certificate=fw_cert, numpy_fw_limit_s=fw_limit / 5)
        out["scaling_E"].append(row)
        print("solver E", row, flush=True)
    for d in ds:
        z, theta, curv = gaussian_instance(100_000 if not quick else 10_000, d)
        cold, warm, sol = ours(z, theta, curv, 1e-3)
        row = {"E": z.shape[0], "d": d, "ours_cold_s": cold, "ours_s": warm, "ours_certificate": float(sol.relative_certificate)}
        out["scaling_d"].append(row)
        print("solver d", row, flush=True)
    return out


# ------------------------------------------------------------------- capped designs


def capped_relative_certificate(w, z, theta, curv, caps, beta=1.0):
    """Relative duality gap of the L-criterion over the capped simplex ``{sum w = 1, 0 <= w <= caps}``,
    from scratch in numpy (float64): ``<d, s - w> / Phi`` with ``s`` the edges of largest ``d_e``
    filled to their caps."""
    z = np.asarray(z, np.float64)
    u = beta * z @ np.asarray(theta, np.float64)
    s = beta**2 * np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u))
    sigma = (z * (w * s)[:, None]).T @ z
    sinv = np.linalg.inv(sigma)
    phi = float(np.trace(np.asarray(curv) @ sinv))
    de = s * ((z @ (sinv @ np.asarray(curv, np.float64) @ sinv)) * z).sum(axis=1)
    caps = np.broadcast_to(np.asarray(caps, np.float64), de.shape)
    order = np.argsort(-de)
    before = np.cumsum(caps[order]) - caps[order]
    vertex = np.zeros_like(de)
    vertex[order] = np.clip(1.0 - before, 0.0, caps[order])
    return float(de @ (vertex - w) / phi), phi


def bench_capped(quick: bool) -> list:
    """The HH-scale L-optimal design with and without ``caps = 1 / n`` (each of the E edges
    labelled at most once, n = E / 2), in one run: a compiling solve at tolerance 0.1, then
    one timed solve at 1e-3 each."""
    import jax
    import jax.numpy as jnp

    from synthetic import design_problem, gaussian_world
    from theory import optimal_design

    if quick:
        w = gaussian_world(jax.random.key(0), num_prompts=100, num_completions=16, dim=32, theta_scale=0.5)
        p = design_problem(w)
        z, theta, curv = np.asarray(p.edges.diffs), np.asarray(w.theta_star), np.asarray(p.curvature(w.theta_star))
    else:
        z, theta, curv = hh_instance(np.float64)
    e = z.shape[0]
    n = e // 2
    rows = []
    for label, caps in (("uncapped", None), (f"caps = 1/{n:,}", 1.0 / n)):
        def run(t):
            return optimal_design(jnp.asarray(z), jnp.asarray(theta), jnp.asarray(curv), 1.0, tol=t, caps=caps)
        t0 = time.perf_counter()
        run(1e-1)
        compile_s = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        sol = run(1e-3)
        secs = time.perf_counter() - t0
        load_after = os.getloadavg()[0]
        wt = np.asarray(sol.weights, np.float64)
        if caps is None:
            cert, phi = relative_certificate(wt, z, theta, curv)
        else:
            cert, phi = capped_relative_certificate(wt, z, theta, curv, caps)
        cap = caps if caps is not None else np.inf
        row = {"design": label, "E": e, "d": int(z.shape[1]), "n": n if caps else None, "caps": caps, "tol": 1e-3,
               "ours_s": secs, "first_solve_at_0.1_s": compile_s, "steps": int(sol.num_iter),
               "pricing_rounds": int(len(sol.history.pricing)), "value": float(sol.value), "value_numpy": phi,
               "certificate_reported": float(sol.relative_certificate), "certificate_numpy": cert, "converged": bool(sol.converged),
               "support": int((wt > 0).sum()), "at_cap": int((wt >= cap).sum()), "weights_sum": float(wt.sum()),
               "max_w_over_cap": float(wt.max() / cap) if caps else None, "load_before": load_before, "load_after": load_after}
        rows.append(row)
        print("capped", row, flush=True)
    return rows


# ------------------------------------------------------------------ interior optima


def bench_newton(quick: bool) -> list:
    """The solver with its matrix-free projected Newton polish (the default) against the
    same solver with ``newton_cg=False`` (pairwise steps, multiplicative and dense
    polish only: the solver before that polish existed), on the same instances: the
    tabular world of Figure 1 (K = 100, 4,950 edges, peaked ``pi0``: an interior optimum)
    for the L-criterion at the reference and at theta*, A and D at the reference, and
    the HH-scale instance (a sparse optimum) as a check that nothing got slower there.
    One timed solve each, after a loose-tolerance solve that compiles."""
    import jax
    import jax.numpy as jnp

    from synthetic import design_problem, tabular_world
    from theory import optimal_design

    cases = []
    world = tabular_world(jax.random.key(0), num_completions=30 if quick else 100, theta_scale=0.2)
    prob = design_problem(world)
    zero = jnp.zeros(prob.dim)
    tab = (prob.edges.diffs, prob.beta)
    cases += [("tabular", "L", "reference", tab, zero, prob.curvature(zero), 1e-4),
              ("tabular", "L", "truth", tab, world.theta_star, prob.curvature(world.theta_star), 1e-4),
              ("tabular", "A", "reference", tab, zero, None, 1e-4),
              ("tabular", "D", "reference", tab, zero, None, 1e-4)]
    if not quick:
        z, theta, curv = hh_instance(np.float64)
        cases.append(("HH (Gaussian)", "L", "truth", (jnp.asarray(z), 1.0), jnp.asarray(theta), jnp.asarray(curv), 1e-3))
    rows = []
    for world_name, crit, at, (diffs, beta), theta, curv, tol in cases:
        row = {"world": world_name, "E": int(diffs.shape[0]), "d": int(diffs.shape[1]), "criterion": crit, "at": at, "tol": tol}
        for label, ncg in (("ours", True), ("pairwise", False)):
            def run(t):
                return optimal_design(diffs, theta, curv, beta, criterion=crit, tol=t, newton_cg=ncg)
            run(1e-1)
            t0 = time.perf_counter()
            sol = run(tol)
            row[f"{label}_s"] = time.perf_counter() - t0
            row[f"{label}_steps"] = int(sol.num_iter)
            row[f"{label}_certificate"] = float(sol.relative_certificate)
            row[f"{label}_value"] = float(sol.value)
        row["ratio"] = row["pairwise_s"] / row["ours_s"]
        rows.append(row)
        print("newton", row, flush=True)
    return rows


# ------------------------------------------------------------------------ replicates


def _replicate_world(name):
    import jax

    from synthetic import contextual_world, design_problem, tabular_world

    if name == "tabular":
        w = tabular_world(jax.random.key(0), num_completions=100, theta_scale=0.2)
    else:
        w = contextual_world(jax.random.key(0), prompt_dim=2, action_dim=10, num_train_prompts=50, num_completions=8)
    return w, design_problem(w)


def bench_replicates(quick: bool) -> list:
    import jax

    from sklearn.linear_model import LogisticRegression

    from synthetic import uniform_weights
    from synthetic.labels import simulate_wins
    from synthetic.monte_carlo import replicate_gaps
    from synthetic.rounding import round_design

    reps = 200 if quick else 1000
    base_reps = 20 if quick else 100
    n = 10_000
    rows = []
    for name in ("tabular", "contextual"):
        world, prob = _replicate_world(name)
        counts = round_design(jax.random.key(1), uniform_weights(prob.edges), n, "efficient").dense_counts(prob.num_edges)
        keys = jax.random.split(jax.random.key(2), reps)

        def run(fit_dtype=None):
            return _block(replicate_gaps(keys, world.theta_star, prob.edges.diffs, counts, world.beta, world.eval,
                                         fit_dtype=fit_dtype))

        t0 = time.perf_counter()
        res = run()
        cold = time.perf_counter() - t0
        warm, res = _timeit(run, repeat=2)
        # the same replicates (same labels) with the fit in float32, gap in float64
        run("float32")
        warm32, res32 = _timeit(lambda: run("float32"), repeat=2)
        gap64, gap32 = np.asarray(res.gap), np.asarray(res32.gap)
        rel_se = float(gap64.std(ddof=1) / np.sqrt(gap64.size) / gap64.mean())
        # baseline: the same labels, one weighted logistic regression per replicate
        z = np.asarray(prob.edges.diffs)
        sup = counts > 0
        x = np.concatenate([z[sup], z[sup]])  # each labelled edge twice: y = 1 weighted by wins, y = 0 by losses
        y = np.concatenate([np.ones(sup.sum()), np.zeros(sup.sum())])
        diffs_j = prob.edges.diffs
        cnt = counts[sup].astype(np.int64)
        x_label = np.repeat(z[sup], cnt, axis=0)  # one row per label, as a per-label DPO loop would see the data
        t_base, t_label, max_diff = 0.0, 0.0, 0.0
        for i in range(base_reps):
            k_labels = jax.random.split(keys[i])[1]  # the key replicate_gaps uses for the labels
            wins = np.asarray(simulate_wins(k_labels, world.theta_star, diffs_j, jax.numpy.asarray(counts, diffs_j.dtype), world.beta))
            sw = np.concatenate([wins[sup], counts[sup] - wins[sup]])
            t0 = time.perf_counter()
            clf = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=10_000).fit(x, y, sample_weight=sw)
            t_base += time.perf_counter() - t0
            win_e = wins[sup].astype(np.int64)
            y_label = np.concatenate([np.r_[np.ones(k), np.zeros(c - k)] for k, c in zip(win_e, cnt)])
            t0 = time.perf_counter()
            LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=10_000).fit(x_label, y_label)
            t_label += time.perf_counter() - t0
            theta_sk = clf.coef_[0] / world.beta
            # compare on the identifiable directions (predicted margins of the labelled edges)
            max_diff = max(max_diff, float(np.abs(z[sup] @ (theta_sk - np.asarray(res.theta_hat[i]))).max()))
        base_total = t_base / base_reps * reps
        label_total = t_label / base_reps * reps
        row = {"world": name, "d": int(z.shape[1]), "edges": int(z.shape[0]), "labelled_edges": int(sup.sum()), "n": n,
               "replicates": reps, "ours_cold_s": cold, "ours_s": warm, "sklearn_reps_timed": base_reps,
               "sklearn_s_extrapolated": base_total, "ratio": base_total / warm, "max_margin_difference": max_diff,
               "sklearn_per_label_s_extrapolated": label_total, "ratio_per_label": label_total / warm,
               "ours_float32_fit_s": warm32, "ratio_per_label_float32": label_total / warm32, "ratio_float32": base_total / warm32,
               "float32_max_rel_gap_difference": float(np.max(np.abs(gap32 - gap64) / gap64)),
               "float32_mean_gap_rel_difference": float(abs(gap32.mean() - gap64.mean()) / gap64.mean()),
               "mean_gap_rel_se": rel_se}
        rows.append(row)
        print("replicates", row, flush=True)
    return rows


# ----------------------------------------------------------------------- information


def bench_information(quick: bool) -> list:
    import jax
    import jax.numpy as jnp

    from theory.information import _information_matrix, information_matrix

    e, d = (100_000, 128) if quick else (1_000_000, 128)
    rows = []
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(e, d)).astype(dtype)
        theta = (rng.normal(size=d) / math.sqrt(d)).astype(dtype)
        w = np.full(e, 1.0 / e, dtype)
        xj, tj, wj = jax.device_put(x), jnp.asarray(theta), jnp.asarray(w)
        _block(_information_matrix(tj, xj, wj, 1.0))
        core, s_ours = _timeit(lambda: _block(_information_matrix(tj, xj, wj, 1.0)), repeat=5)
        public, _ = _timeit(lambda: _block(information_matrix(tj, xj, wj, 1.0)), repeat=3)
        u = x @ theta
        s = (np.exp(-np.logaddexp(0, u) - np.logaddexp(0, -u)) * w).astype(dtype)
        xs = x * s[:, None]
        blas, ref = _timeit(lambda: x.T @ xs, repeat=5)  # the GEMM alone: the machine's limit
        full, _ = _timeit(lambda: x.T @ (x * s[:, None]), repeat=3)
        err = float(np.abs(np.asarray(s_ours, np.float64) - ref).max() / np.abs(ref).max())
        row = {"dtype": np.dtype(dtype).name, "E": e, "d": d, "ours_core_s": core, "ours_public_s": public,
               "blas_gemm_s": blas, "numpy_scale_and_gemm_s": full, "ratio_core_to_blas": core / blas,
               "relative_difference": err}
        rows.append(row)
        print("information", row, flush=True)
    return rows


# ---------------------------------------------------------------------------- bounds


def _scalar_tuned(c, n, tails):
    """The baseline: :func:`theory.bounds.upper_bound_bernstein_tuned` as it was computed before the
    array form, each tail on its own, Lemma 9.1's radius by a scalar loop over the net grid (the
    first parameter of a tie) and Lemma 9.1b's traces recomputed at every tail."""
    from theory import bounds as TB

    bounds = []
    for a in sorted(tails):
        radii = []
        for e in TB._NET_GRID:
            y = a * math.log(n) + c.dim * math.log1p(2.0 / e)
            radii.append(((math.sqrt(2.0 * y / n) + c.zeta * y / (3.0 * n)) / (1.0 - 0.5 * e * e), e))
        r, eps = min(radii)
        bounds.append(TB._upper_bernstein(c, n, a, (r, eps, TB.score_radius_subgaussian(c, n, a))))
    return min(bounds, key=lambda b: b.value)


def _scalar_within(c, factor=2.0, n_max=1e12, per_decade=20):
    """The baseline of :func:`theory.bounds.upper_bound_bernstein_within` (its loop, on :func:`_scalar_tuned`)."""
    from theory import bounds as TB

    first = math.inf
    for m in TB._budget_grid(n_max, per_decade)[::-1]:
        if _scalar_tuned(c, float(m), TB.TAIL_GRID).value > factor * TB.asymptotic_prediction(c, float(m)):
            break
        first = float(m)
    return first


def bench_bounds(quick: bool) -> list:
    from experiments import bounds_table
    from synthetic import design_problem
    from synthetic.bounds_check import _empirical_constants
    from theory import bounds as TB

    rows = []
    for name in bounds_table.WORLD_NAMES[: 1 if quick else None]:
        world = bounds_table._world(name)
        prob = design_problem(world)
        c = _empirical_constants(world, prob, np.ones(prob.num_edges))  # the uniform design
        ours, got = _timeit(lambda: TB.upper_bound_bernstein_within(c), repeat=3)
        base, want = _timeit(lambda: _scalar_within(c), repeat=1 if quick else 3)
        grid = np.logspace(2, 10, 17)
        same = got == want and all(tuple(TB.upper_bound_bernstein_tuned(c, n)) == tuple(_scalar_tuned(c, float(n), TB.TAIL_GRID))
                                   for n in grid)
        row = {"world": name, "edges": int(prob.num_edges), "within_from": got, "ours_s": ours, "scalar_s": base,
               "ratio": base / ours, "bit_for_bit": bool(same)}
        rows.append(row)
        print("bounds", row, flush=True)
    return rows


# --------------------------------------------------------------------------- figures


def bench_figures(quick: bool, out: str | None = None, jobs: int = 1) -> dict:
    """The figure script from empty records (a temporary directory) with ``--jobs jobs``; its
    figures go to ``out`` when given (``--figures-out figures`` regenerates the committed ones)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "experiments.figures", "--no-progress", "--out", out or f"{tmp}/fig", "--results", f"{tmp}/res",
               "--jobs", str(jobs)]
        if jobs > 1:
            cmd += ["--task-times", f"{tmp}/tasks.json"]
        if quick:
            cmd.append("--small")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        per = {}
        for line in res.stdout.splitlines():  # "fig1: 30 s", "records: 833 s (...)"
            m = re.match(r"(fig\d|records): (\d+) s", line)
            if m:
                per[m[1]] = float(m[2])
        cells = sum(1 for _ in Path(tmp, "res").rglob("*.npz"))
        done = json.loads(Path(tmp, "tasks.json").read_text()) if Path(tmp, "tasks.json").exists() else []
    longest = sorted(done, key=lambda t: -t[1])[:12]
    return {"wall_s": wall, "per_figure_s": per, "cells": cells, "s_per_cell": wall / max(cells, 1), "small": quick, "jobs": jobs,
            "task_sum_s": sum(t[1] for t in done), "tasks": len(done), "longest_tasks": longest,
            "task_groups_s": {g: round(sum(t[1] for t in done if t[0].split()[0] == g), 1) for g in sorted({t[0].split()[0] for t in done})}}


# ---------------------------------------------------------------------------- report


def machine() -> dict:
    import jax
    import jaxlib

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {"date": date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__, "devices": str(jax.devices())}


def _f(x, nd=3):
    if x is None:
        return "not reached"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:.{nd}g}"


def _section_machine(res: dict, name: str) -> dict:
    return (res.get("section_machines") or {}).get(name, res["machine"])


def _machine_line(m: dict) -> str:
    return f"{m['date']}, {m['cpu']} ({m['cores']} cores, CPU only), Python {m['python']}, jax {m['jax']}, numpy {m['numpy']}"


def markdown(res: dict) -> str:
    m = res["machine"]
    L = ["# Benchmarks", "",
         f"Command: `python -m benchmarks.run{' --quick' if res.get('quick') else ''}` (raw numbers: `benchmarks/results.json`). "
         "Times are medians of warm calls unless a section says otherwise; `cold` includes JIT compilation. Every ratio "
         "is baseline time / our time, both measured in the same run of its section, on the same machine. Sections "
         "can be rerun alone with `--only`, and each records where and when it ran:", ""]
    where: dict = {}
    for name in SECTIONS:
        if res.get(name):
            where.setdefault(_machine_line(_section_machine(res, name)), []).append(name)
    for line, names in where.items():
        L.append(f"- {', '.join(names)}: {line}")
    L.append("")
    L += targets(res)
    analysis = ROOT / "benchmarks" / "analysis.md"
    if analysis.exists() and not res.get("quick"):
        L += [analysis.read_text().strip(), ""]
    s = res.get("solver")
    if s:
        L += ["## 1. Design solver (L-criterion)", ""]
        if s["hh"]:
            L += ["HH scale: 160,800 edges of a Gaussian world (1,340 prompts x 16 completions), d = 128. "
                  "Certificate: relative Frank-Wolfe duality gap, recomputed in float64 for the float32 runs. "
                  "Baseline: numpy Frank-Wolfe recomputing `Sigma^-1` every step (time limit in the table).", "",
                  "| dtype | target | ours (s) | cold (s) | certificate reached | numpy FW (s) | FW certificate at stop | ratio |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
            for r in s["hh"]:
                fw = r.get("numpy_fw_s", "—")
                ratio = "—"
                if "numpy_fw_s" in r:
                    ratio = f"{r['numpy_fw_s'] / r['ours_s']:.1f}" if r["numpy_fw_s"] else f"> {r['numpy_fw_limit_s'] / r['ours_s']:.1f}"
                    fw = _f(r["numpy_fw_s"]) if r["numpy_fw_s"] else f"> {r['numpy_fw_limit_s']}"
                L.append(f"| {r['dtype']} | {r['tol']:g} | {r['ours_s']:.1f} | {r['ours_cold_s']:.1f} | {r['ours_certificate_float64']:.1e} | "
                         f"{fw} | {_f(r.get('numpy_fw_certificate', math.nan), 2)} | {ratio} |")
            L.append("")
        L += ["Growth with E (Gaussian instances `z ~ N(0, Id)`, d = 32, target 1e-3).", "",
              "| E | ours (s) | cold (s) | numpy FW (s) | ratio FW/ours | FW certificate at stop |",
              "|---:|---:|---:|---:|---:|---:|"]
        for r in s["scaling_E"]:
            fw, fw_ratio, fw_cert = "—", "—", "—"
            if "numpy_fw_s" in r:
                fw = _f(r["numpy_fw_s"]) if r["numpy_fw_s"] else f"> {r['numpy_fw_limit_s']:g}"
                fw_ratio = f"{r['numpy_fw_s'] / r['ours_s']:.1f}" if r["numpy_fw_s"] else f"> {r['numpy_fw_limit_s'] / r['ours_s']:.1f}"
                fw_cert = _f(r["numpy_fw_certificate"], 2)
            L.append(f"| {r['E']:,} | {r['ours_s']:.2f} | {r['ours_cold_s']:.2f} | {fw} | {fw_ratio} | {fw_cert} |")
        L += ["", f"Growth with d (E = {s['scaling_d'][0]['E']:,}, target 1e-3):", "", "| d | ours (s) | cold (s) |", "|---:|---:|---:|"]
        for r in s["scaling_d"]:
            L.append(f"| {r['d']} | {r['ours_s']:.2f} | {r['ours_cold_s']:.2f} |")
        L.append("")
    cv = res.get("cvxpy")
    if cv:
        L += ["cvxpy (Clarabel; the SDP form of `tr(I Sigma^-1)` through `matrix_frac`, `Sigma` a sparse linear map of `w`) on the "
              "same Gaussian instances (d = 32), growing E until the first size it does not solve within its limit. The certificate "
              "of its answer is recomputed with ours (relative duality gap).", "",
              "| E | cvxpy (s) | status | cvxpy certificate | ours to 1e-3 (s) | ratio cvxpy/ours |", "|---:|---:|---|---:|---:|---:|"]
        for r in cv:
            secs = _f(r["cvxpy_s"]) if r["cvxpy_s"] else f"> {r['limit_s']:g}" if r["status"] == "timeout" else "—"
            ratio = f"{r['cvxpy_s'] / r['ours_s']:.0f}" if r["cvxpy_s"] else "—"
            L.append(f"| {r['E']:,} | {secs} | {r['status']} | {_f(r['cvxpy_certificate'], 2)} | {r['ours_s']:.2f} | {ratio} |")
        L.append("")
    rp = res.get("replicates")
    nw = res.get("newton")
    if nw:
        L += ["## 1b. Design solver on interior optima: projected Newton polish", "",
              "The same solver with and without its matrix-free projected Newton polish (`newton_cg=False`: "
              "pairwise steps, multiplicative and dense support polish only, i.e. the solver before this polish). "
              "One timed solve each after a compiling solve at tolerance 0.1; `steps`: pairwise Frank-Wolfe steps.", "",
              "| world | E | d | criterion | at | target | ours (s) | steps | certificate | without (s) | steps | certificate | ratio |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in nw:
            L.append(f"| {r['world']} | {r['E']:,} | {r['d']} | {r['criterion']} | {r['at']} | {r['tol']:g} | {r['ours_s']:.1f} | "
                     f"{r['ours_steps']:,} | {r['ours_certificate']:.1e} | {r['pairwise_s']:.1f} | {r['pairwise_steps']:,} | "
                     f"{r['pairwise_certificate']:.1e} | {r['ratio']:.1f} |")
        L.append("")
    cp_ = res.get("capped")
    if cp_:
        r0 = cp_[0]
        L += ["## 1c. Designs with caps: each comparison at most once", "",
              f"The L-optimal design on the HH-scale instance of section 1 (E = {r0['E']:,}, d = {r0['d']}) without caps and "
              f"with `caps = 1/n`, n = E/2: each of the E candidate comparisons labelled at most once with n labels, the "
              "paper's HH regime. Same run, same instance; one timed solve each after a compiling solve at tolerance 0.1. "
              "`certificate`: relative duality gap of the problem solved (capped: over the capped simplex, its linear "
              "maximisation filling the largest `d_e` up to their caps), recomputed from scratch in numpy with a dense "
              "inverse; `at cap`: edges with `w_e = 1/n` exactly; `load`: the machine's 1-minute load average before and "
              "after the timed solve (other jobs shared these cores: compare the two rows, not other sections).", "",
              "| design | target | ours (s) | first solve at 0.1 (s) | steps | pricing rounds | Phi | certificate | support | at cap | max w_e n | load |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in cp_:
            mx = f"{r['max_w_over_cap']:.6f}" if r["max_w_over_cap"] is not None else "—"
            L.append(f"| {r['design']} | {r['tol']:g} | {r['ours_s']:.1f} | {r['first_solve_at_0.1_s']:.1f} | {r['steps']:,} | "
                     f"{r['pricing_rounds']} | {r['value_numpy']:.5g} | {r['certificate_numpy']:.1e} | {r['support']:,} | "
                     f"{format(r['at_cap'], ',') if r['caps'] else '—'} | {mx} | {r['load_before']:.1f} to {r['load_after']:.1f} |")
        L.append("")
    if rp:
        L += ["## 2. Replicate fitting", "",
              "Monte-Carlo replicates of the exact DPO MLE (`synthetic.replicate_gaps`: labels as per-edge win counts drawn by "
              "inverse CDF; the MLE by a chord iteration preconditioned with one shared curvature, two `[R, E] x [E, d]` "
              "products a step for all replicates, Newton for any replicate it cannot certify), uniform design, "
              "n = 10^4 labels; our time includes drawing the labels and the exact gaps. Baseline: a loop of scikit-learn "
              "`LogisticRegression(fit_intercept=False, C=inf)` (no penalty) on the same labels, in two forms: one row per label "
              "(n rows, what a per-label training loop sees) and the stronger per-edge form (each labelled edge twice, `y = 1` "
              "weighted by its wins and `y = 0` by its losses); the per-fit time on the first 100 replicates is multiplied up to "
              "the same count. "
              "`margin diff`: largest `|z_e . (theta_sklearn - theta_ours)|` over the compared replicates. "
              "The float32 rows fit the same labels in single precision (`fit_dtype=\"float32\"`; labels and gaps in float64); "
              "`gap diff` is the largest per-replicate relative difference of the gap from the float64 fit, against the "
              "relative standard error of the mean gap (`MC se`).", "",
              "| world | d | labelled edges | replicates | ours (s) | cold (s) | sklearn, one row per label (s) | ratio | sklearn, per-edge weights (s) | ratio | margin diff |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rp:
            L.append(f"| {r['world']} | {r['d']} | {r['labelled_edges']:,} | {r['replicates']} | {r['ours_s']:.2f} | {r['ours_cold_s']:.2f} | "
                     f"{r.get('sklearn_per_label_s_extrapolated', math.nan):.1f} | {r.get('ratio_per_label', math.nan):.1f} | "
                     f"{r['sklearn_s_extrapolated']:.1f} | {r['ratio']:.1f} | {r['max_margin_difference']:.1e} |")
        if any("ours_float32_fit_s" in r for r in rp):
            L += ["", "| world | fit dtype | ours (s) | ratio, one row per label | ratio, per-edge | gap diff (max) | mean gap diff | MC se |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
            for r in rp:
                L.append(f"| {r['world']} | float64 | {r['ours_s']:.2f} | {r['ratio_per_label']:.1f} | {r['ratio']:.1f} | — | — | "
                         f"{r['mean_gap_rel_se']:.1e} |")
                L.append(f"| {r['world']} | float32 | {r['ours_float32_fit_s']:.2f} | {r['ratio_per_label_float32']:.1f} | "
                         f"{r['ratio_float32']:.1f} | {r['float32_max_rel_gap_difference']:.1e} | "
                         f"{r['float32_mean_gap_rel_difference']:.1e} | {r['mean_gap_rel_se']:.1e} |")
        L.append("")
    inf = res.get("information")
    if inf:
        L += ["## 3. Information matrix", "",
              "`Sigma_w(theta) = beta^2 sum_e w_e s'(beta theta.z_e) z_e z_e^T` (jitted core; `public` adds argument checks). "
              "Limit: numpy's BLAS GEMM `X^T (diag(s) X)` with the scaled matrix precomputed.", "",
              "| dtype | E | d | ours core (s) | ours public (s) | BLAS GEMM (s) | numpy scale + GEMM (s) | ours / BLAS | rel. difference |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in inf:
            L.append(f"| {r['dtype']} | {r['E']:,} | {r['d']} | {r['ours_core_s']:.3f} | {r['ours_public_s']:.3f} | {r['blas_gemm_s']:.3f} | "
                     f"{r['numpy_scale_and_gemm_s']:.3f} | {r['ratio_core_to_blas']:.2f} | {r['relative_difference']:.1e} |")
        L.append("")
    bd = res.get("bounds")
    if bd:
        L += ["## 3b. Theorem 4 at the best tail", "",
              "`upper_bound_bernstein_within(c)` (the smallest budget of a grid, 20 a decade up to 1e12, from which Theorem 4 at "
              "the best of 80 tails is within 2x of the prediction: the bounds table's `2x from`) for the uniform design. "
              "Baseline: a scalar reimplementation of the loops it replaced (each tail on its own, Lemma 9.1's radius one net "
              "parameter at a time, Lemma 9.1b's traces at every tail; the rest of each bound is shared code). "
              "`bit for bit`: the result, and the tuned bound at 17 budgets from 1e2 to 1e10, equal to the baseline's in every field.", "",
              "| world | E | 2x from | ours (s) | scalar loops (s) | ratio | bit for bit |", "|---|---:|---:|---:|---:|---:|---|"]
        for r in bd:
            L.append(f"| {r['world']} | {r['edges']:,} | {r['within_from']:.3g} | {r['ours_s']:.3f} | {r['scalar_s']:.2f} | "
                     f"{r['ratio']:.1f} | {'yes' if r['bit_for_bit'] else 'NO'} |")
        L.append("")
    fg = res.get("figures")
    if fg:
        flags = (" --small" if fg["small"] else "") + (f" --jobs {fg['jobs']}" if fg.get("jobs", 1) > 1 else "")
        L += ["## 4. Figure sweep", "",
              f"`python -m experiments.figures{flags}` from empty records: {fg['wall_s']:.0f} s wall, "
              f"{fg['cells']} cells and cached items, {fg['s_per_cell']:.1f} s per cell on average.", "",
              "| figure | s |", "|---|---:|"]
        for k, v in fg["per_figure_s"].items():
            L.append(f"| {k} | {v:.0f} |")
        L.append("")
        if fg.get("longest_tasks"):
            L += [f"The records' {fg['tasks']} tasks took {fg['task_sum_s']:.0f} s in all ({fg['jobs']} workers sharing the machine's cores); the longest:", "",
                  "| task | s |", "|---|---:|"]
            L += [f"| {label} | {sec:.0f} |" for label, sec in fg["longest_tasks"]]
            L.append("")
            if fg.get("task_groups_s"):
                L += ["Task time by experiment or figure: " + ", ".join(f"{g} {v:.0f} s" for g, v in fg["task_groups_s"].items()) + ".", ""]
        # measured by hand around this section (before/after runs, the design cache): kept in a file of their own
        history = ROOT / "benchmarks" / "figures_history.md"
        if history.exists() and not res.get("quick"):
            L += [history.read_text().strip(), ""]
    # Sections measured by their own scripts (e.g. benchmarks/select_scale.py) keep their
    # text in a file of their own, so that regenerating this report does not drop them.
    extra = ROOT / "benchmarks" / "select_scale.md"
    if extra.exists() and not res.get("quick"):
        L += ["", extra.read_text().strip()]
    return "\n".join(L) + "\n"


def targets(res: dict) -> list[str]:
    """The issue's targets against what this run measured."""
    rows = []
    hh = [r for r in (res.get("solver") or {}).get("hh", []) if r["tol"] == 1e-3]
    for r in hh:
        rows.append((f"HH-scale design certified to 1e-3 ({r['dtype']})", "<= 30 s", f"{r['ours_s']:.1f} s", r["ours_s"] <= 30,
                     "hh_float32" if r["dtype"] == "float32" and "hh_float32" in (res.get("section_machines") or {}) else "solver"))
    for r in res.get("capped") or []:
        if r["caps"] and r["E"] > 100_000:
            rows.append((f"HH-scale capped design ({r['design']}) certified to 1e-3 (float64, section 1c)", "certified",
                         f"{r['certificate_numpy']:.1e} in {r['ours_s']:.1f} s", r["certificate_numpy"] <= 1e-3, "capped"))
    for r in res.get("newton") or []:
        if r["world"].startswith("HH"):
            rows.append((f"HH-scale design certified to 1e-3 (float64, section 1b)", "<= 30 s", f"{r['ours_s']:.1f} s",
                         r["ours_s"] <= 30, "newton"))
    for r in res.get("replicates") or []:
        best = r.get("ratio_per_label", r["ratio"])
        rows.append((f"replicate fitting vs scikit-learn loop, one row per label ({r['world']}, d = {r['d']}, float64)", ">= 50x", f"{best:.1f}x", best >= 50,
                     "replicates"))
        if "ratio_per_label_float32" in r:
            b32 = r["ratio_per_label_float32"]
            rows.append((f"replicate fitting vs scikit-learn loop, one row per label ({r['world']}, d = {r['d']}, float32 fit)", ">= 50x",
                         f"{b32:.1f}x", b32 >= 50, "replicates"))
    for r in res.get("information") or []:
        rows.append((f"information matrix vs BLAS ({r['dtype']}, E = {r['E']:,})", "<= 1.5x", f"{r['ratio_core_to_blas']:.2f}x",
                     r["ratio_core_to_blas"] <= 1.5, "information"))
    fg = res.get("figures")
    if fg:
        rows.append(("full figure set" + (" (--small)" if fg["small"] else ""), "<= 600 s", f"{fg['wall_s']:.0f} s", fg["wall_s"] <= 600,
                     "figures"))
    out = ["## Targets", "", "| target | goal | measured | met | measured on |", "|---|---|---|---|---|"]
    for a, b, c, ok, sec in rows:
        m = _section_machine(res, sec)
        out.append(f"| {a} | {b} | {c} | {'yes' if ok else '**no**'} | {m['cpu']}, {m['date']} |")
    return out + [""]


SECTIONS = ("solver", "capped", "newton", "cvxpy", "replicates", "information", "bounds", "figures")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Benchmarks against named baselines (see BENCHMARKS.md).")
    ap.add_argument("--only", nargs="+", choices=(*SECTIONS, "hh_float32"), default=list(SECTIONS),
                    help="sections to run (hh_float32: only the float32 rows of the HH solver benchmark)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run; not the reported numbers)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--report", action="store_true", help="only rebuild the markdown from the JSON")
    ap.add_argument("--figures-out", default=None, help="keep the figures of the figures section here (e.g. figures)")
    ap.add_argument("--figure-jobs", type=int, default=1, help="worker processes of the figures section (the command's --jobs)")
    args = ap.parse_args(argv)
    if args.report:
        Path(args.markdown).write_text(markdown(json.loads(Path(args.json).read_text())))
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    path = Path(args.json)
    res = json.loads(path.read_text()) if path.exists() else {}
    if res.get("quick") != args.quick:
        res = {}
    res.setdefault("machine", machine())  # the first full run's; sections run later record their own
    res["quick"] = args.quick
    fns = {"solver": bench_solver, "capped": bench_capped, "newton": bench_newton, "cvxpy": bench_cvxpy, "replicates": bench_replicates, "information": bench_information,
           "bounds": bench_bounds,
           "figures": functools.partial(bench_figures, out=args.figures_out, jobs=args.figure_jobs)}
    if args.only == ["hh_float32"]:
        bench_hh_float32(args.quick, res)
        res.setdefault("section_machines", {})["hh_float32"] = machine()
        path.write_text(json.dumps(res, indent=1, default=float))
        Path(args.markdown).write_text(markdown(res))
        return
    for name in SECTIONS:
        if name in args.only:
            t0 = time.time()
            res[name] = fns[name](args.quick)
            res.setdefault("section_machines", {})[name] = machine()
            print(f"== {name}: {time.time() - t0:.0f} s", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=1, default=float))  # after every section: nothing lost
    Path(args.markdown).write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
