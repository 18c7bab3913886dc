"""Criterion of every registered design on the two synthetic worlds at one budget.

``python -m experiments.design_table [--budget N] [--keys K] [--designs a,b] [--out figures/design_table.md]``

For each design and world: the criterion ``Phi(counts / n; theta*) = tr(I Sigma^+)``
of the realised allocation (so ``(beta / 2n) Phi`` is the asymptotic gap), averaged
over ``K`` design keys, and its ratio to uniform. Solved designs stop at a relative
certificate of ``--tol``. ``inf`` means the allocation
leaves a direction with curvature unidentified; ``n/a`` that the design cannot run
there (its error is given in a footnote). Adaptive designs (:mod:`synthetic.adaptive`,
marked *adaptive*) buy their labels in rounds; each design key is one run, and Phi is
that run's realised allocation (its gap also carries the selection's dependence on the
labels: the Monte-Carlo gap is in ``python -m experiments.adaptive_table``).
"""

from __future__ import annotations

import argparse
import math
import pathlib

import jax
import numpy as np

from synthetic.designs import DESIGNS, allocation_criterion, design_problem, run_design
from synthetic.worlds import contextual_world, tabular_world


def worlds(seed: int = 0):
    key = jax.random.PRNGKey(seed)
    return {
        "tabular (1 prompt, K = 100, d = 100)": tabular_world(key, num_prompts=1, num_completions=100),
        "contextual (50 train prompts, K = 8, d = 15)": contextual_world(key),
    }


def table(budget: int = 1000, num_keys: int = 2, seed: int = 0, tol: float = 1e-3, designs=None, world_names=None):
    """``designs`` (default: every registered one) and ``world_names`` (prefixes of the
    world labels, e.g. ``["contextual"]``; default both) restrict the table. Computed in
    float64 whatever the process's default (called without x64 it built float32 worlds, and
    only JAX's dtype warning said so)."""
    from experiments.cell import float64

    with float64():
        return _table(budget, num_keys, seed, tol, designs, world_names)


def _table(budget, num_keys, seed, tol, designs, world_names):
    rows, notes = {}, []
    names = list(DESIGNS) if designs is None else list(designs)
    if "uniform" not in names:
        names.insert(0, "uniform")  # the ratio column's reference
    unknown = sorted(set(names) - set(DESIGNS))
    if unknown:
        raise ValueError(f"designs {unknown} are not registered; allowed: {sorted(DESIGNS)}")
    all_worlds = worlds(seed)
    if world_names is not None:
        allowed = sorted({w.split(" ")[0] for w in all_worlds})
        unknown = [p for p in world_names if not any(w.startswith(p) for w in all_worlds) or not p.strip()]
        if unknown:  # an unmatched prefix gave an empty table, written over the output file
            raise ValueError(f"worlds {unknown} match no world of the table; allowed prefixes: {allowed}")
        all_worlds = {w: v for w, v in all_worlds.items() if any(w.startswith(p) for p in world_names)}
    for wname, world in all_worlds.items():
        prob = design_problem(world)
        for name in names:
            vals = []
            try:
                params = {"tol": tol} if "tol" in DESIGNS[name].params else {}
                for k in range(num_keys):
                    out = run_design(name, jax.random.PRNGKey(1000 + k), prob, budget, **params)
                    vals.append(allocation_criterion(prob, out.dense_counts(prob.num_edges)))
                rows.setdefault(name, {})[wname] = float(np.mean(vals))
            except ValueError as err:
                rows.setdefault(name, {})[wname] = None
                notes.append(f"{name} on {wname.split(' ')[0]}: {err}")
    return rows, notes, list(all_worlds)


def markdown(rows, notes, wnames, budget):
    head = "| design | " + " | ".join(f"{w}: Phi | / uniform" for w in wnames) + " |"
    sep = "|---|" + "---:|---:|" * len(wnames)
    lines = [head, sep]
    for name, vals in rows.items():
        cells = []
        for w in wnames:
            v, u = vals.get(w), rows["uniform"][w]
            if v is None:
                cells += ["n/a", ""]
            elif math.isinf(v):
                cells += ["inf", ""]
            else:
                cells += [f"{v:.4g}", f"{v / u:.2f}"]
        label = f"`{name}`" + (" (adaptive)" if DESIGNS[name].adaptive else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out = "\n".join(lines) + f"\n\nBudget n = {budget}; Phi of the realised allocation at theta*, mean over design keys.\n"
    if notes:
        out += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--keys", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-3, help="relative certificate of solved designs")
    p.add_argument("--designs", default=None, help="comma-separated design names (default: all registered)")
    p.add_argument("--worlds", default=None, help="comma-separated world prefixes: tabular, contextual (default: both)")
    p.add_argument("--out", default="figures/design_table.md")
    a = p.parse_args(argv)
    if a.budget < 1 or a.keys < 1:
        raise SystemExit("--budget and --keys must be >= 1")
    jax.config.update("jax_enable_x64", True)
    rows, notes, wnames = table(a.budget, a.keys, tol=a.tol, designs=None if a.designs is None else a.designs.split(","),
                                world_names=None if a.worlds is None else a.worlds.split(","))
    md = markdown(rows, notes, wnames, a.budget)
    path = pathlib.Path(a.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(md)
    tmp.replace(path)
    print(md)


if __name__ == "__main__":
    main()
