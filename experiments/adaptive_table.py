"""Monte-Carlo gap and cost of the adaptive designs beside the paper's designs.

``python -m experiments.adaptive_table [--budgets 300 1000] [--replicates R] [--estimator map]
[--designs a,b] [--world design_table|conf] [--out path.md]``

Each (design, budget) is one sweep cell (:func:`experiments.cell.run_cell`, so an
adaptive design runs once per replicate and trains on exactly the labels it bought;
the others run once and draw ``R`` label sets). ``--world design_table`` is the design
table's contextual world (50 training prompts, K = 8, d = 15, E = 1,400);
``--world conf`` is ``experiments/conf/world/contextual.yaml`` (30 prompts, K = 6,
d = 8, E = 450). Reported: the mean gap (x 1000) with its Monte-Carlo standard
error, its ratio to uniform's, and the seconds a replicate cost (the cell's wall time
over ``R``; with ``--time`` each cell runs twice and the second run is timed, so that
compilation is not counted).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
from hydra import compose, initialize_config_module

from experiments.cell import run_cell
from synthetic.designs import DESIGNS

DEFAULT_DESIGNS = ("uniform", "plug_in", "two_stage", "oracle", "adpo_adaptive", "uncertainty_adaptive", "most_certain_adaptive",
                   "sequential_plug_in")

WORLD_OVERRIDES = {
    # experiments/design_table.py's contextual world: contextual_world(key 0) with its defaults
    "design_table": ["world.params.prompt_dim=3", "world.params.action_dim=3", "world.params.num_train_prompts=50",
                     "world.params.num_completions=8", "world.params.num_eval_prompts=200"],
    "conf": [],
}


def measure(designs, budgets, replicates, estimator="map", world="design_table", seed=0, timed=False):
    """``{(design, budget): {"gap", "se", "mle", "sec_per_rep"}}`` (gap and se x 1000)."""
    out = {}
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        for n in budgets:
            for d in designs:
                cfg = compose(config_name="sweep", overrides=[f"design={d}", f"budget={n}", f"num_replicates={replicates}",
                                                              f"estimator={estimator}", f"seed={seed}", *WORLD_OVERRIDES[world]])
                try:
                    if timed:
                        run_cell(cfg)  # compile
                    t = time.perf_counter()
                    rec = run_cell(cfg)
                    sec = (time.perf_counter() - t) / replicates
                except ValueError as err:
                    out[(d, n)] = {"error": str(err)}
                    continue
                g = np.asarray(rec["gap"])[np.asarray(rec["valid"])] * 1000
                out[(d, n)] = {"gap": float(g.mean()), "se": float(g.std(ddof=1) / np.sqrt(g.size)), "mle": float(np.mean(rec["mle_exists"])),
                               "sec_per_rep": sec}
                print(d, n, out[(d, n)], flush=True)
    return out


def markdown(res, designs, budgets, replicates, estimator, world):
    head = "| design | " + " | ".join(f"n = {n}: gap x 1e3 (se) | / uniform | s / replicate" for n in budgets) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(budgets)]
    for d in designs:
        cells = []
        for n in budgets:
            r, u = res[(d, n)], res.get(("uniform", n), {})
            if "error" in r:
                cells += ["n/a", "", ""]
                continue
            ratio = f"{r['gap'] / u['gap']:.2f}" if "gap" in u else ""
            cells += [f"{r['gap']:.3f} ({r['se']:.3f})", ratio, f"{r['sec_per_rep']:.3f}"]
        label = f"`{d}`" + (" (adaptive)" if DESIGNS[d].adaptive else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = [f"- {d} at n = {n}: {r['error']}" for (d, n), r in res.items() if "error" in r]
    return ("\n".join(lines) + f"\n\nWorld: {world}; estimator {estimator}; {replicates} replicates a cell; the gap of every replicate "
            "(mean and Monte-Carlo standard error, x 1000).\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--replicates", type=int, default=100)
    p.add_argument("--estimator", default="map", choices=["map", "newton", "optax"])
    p.add_argument("--designs", default=",".join(DEFAULT_DESIGNS))
    p.add_argument("--world", default="design_table", choices=sorted(WORLD_OVERRIDES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time", action="store_true", help="run each cell twice and time the second run")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    designs = a.designs.split(",")
    unknown = sorted(set(designs) - set(DESIGNS))
    if unknown:
        raise SystemExit(f"--designs: {unknown} are not registered; allowed: {sorted(DESIGNS)}")
    if a.replicates < 2 or any(n < 1 for n in a.budgets):
        raise SystemExit("--replicates must be >= 2 and --budgets >= 1")
    res = measure(designs, a.budgets, a.replicates, a.estimator, a.world, a.seed, a.time)
    md = markdown(res, designs, a.budgets, a.replicates, a.estimator, a.world)
    if a.out:
        path = pathlib.Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
