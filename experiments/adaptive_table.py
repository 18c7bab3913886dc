"""Monte-Carlo gap and cost of the adaptive designs beside the paper's designs.

``python -m experiments.adaptive_table [--budgets 300 1000] [--replicates R] [--estimator map]
[--designs a,b] [--world design_table|conf] [--allocation-draws D] [--out path.md]``

Each (design, budget) is one sweep cell (:func:`experiments.cell.run_cell`, so an
adaptive design runs once per replicate and trains on exactly the labels it bought;
the others run once and draw ``R`` label sets). ``--world design_table`` is the design
table's contextual world (50 training prompts, K = 8, d = 15, E = 1,400);
``--world conf`` is ``experiments/conf/world/contextual.yaml`` (30 prompts, K = 6,
d = 8, E = 450). Reported: the mean gap (x 1000) with its Monte-Carlo standard
error, its ratio to uniform's, and the seconds a replicate cost (the cell's wall time
over ``R``; with ``--time`` each cell runs twice and the second run is timed, so that
compilation is not counted). Each replicate of a design whose allocation is random (a
pilot, a rounding its key decides) is labelled on its own draw of the allocation
(``--allocation-draws``, default one per replicate), so that the standard error holds the
design's own randomness and two designs' gaps can be compared by a z-test (with one draw
it is the error given that draw, too small for such a test: the table says so).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
from hydra import compose, initialize_config_module

from experiments.cell import forget_adaptive_runs, run_cell
from experiments.records import draws_mean_and_ci
from synthetic.designs import DESIGNS

DEFAULT_DESIGNS = ("uniform", "plug_in", "two_stage", "oracle", "adpo_adaptive", "uncertainty_adaptive", "most_certain_adaptive",
                   "sequential_plug_in")

WORLD_OVERRIDES = {
    # experiments/design_table.py's contextual world: contextual_world(key 0) with its defaults
    "design_table": ["world.params.prompt_dim=3", "world.params.action_dim=3", "world.params.num_train_prompts=50",
                     "world.params.num_completions=8", "world.params.num_eval_prompts=200"],
    "conf": [],
}


def measure(designs, budgets, replicates, estimator="map", world="design_table", seed=0, timed=False, allocation_draws=None):
    """``{(design, budget): {"gap", "se", "mle", "sec_per_rep", "draws", "given_one_draw"}}`` (gap and se x 1000).

    ``allocation_draws`` (default ``replicates``: each replicate its own draw) draws of each
    design's allocation (adaptive designs: one a replicate whatever it is); the standard error
    is :func:`experiments.records.draws_mean_and_ci`'s, over the draws where there are several.
    ``given_one_draw``: the allocation is random but all replicates share one draw, so the
    standard error leaves the design's randomness out."""
    draws = replicates if allocation_draws is None else allocation_draws
    out = {}
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        for n in budgets:
            for d in designs:
                cfg = compose(config_name="sweep", overrides=[f"design={d}", f"budget={n}", f"num_replicates={replicates}",
                                                              f"estimator={estimator}", f"seed={seed}", f"allocation_draws={draws}",
                                                              # no solved-design cache: a later run would time a cached solve
                                                              # (and the default wrote it into ./results/default)
                                                              "design_cache=null",
                                                              *WORLD_OVERRIDES[world]])
                try:
                    if timed:
                        run_cell(cfg)  # compile
                        # the first run's adaptive label-buying is kept in memory for cells that differ only in
                        # the estimator: the timed run would reuse it and time the fits alone (0.0076 against
                        # 0.030 s a replicate for adpo_adaptive at n = 200)
                        forget_adaptive_runs()
                    t = time.perf_counter()
                    rec = run_cell(cfg)
                    sec = (time.perf_counter() - t) / replicates
                except ValueError as err:
                    out[(d, n)] = {"error": str(err)}
                    continue
                random = bool(np.any(rec["allocation_random"]))
                mean, se, _, _, made = draws_mean_and_ci(rec["gap"], rec["valid"], rec["allocation"] if random else None)
                out[(d, n)] = {"gap": 1000 * mean, "se": 1000 * se, "mle": float(np.mean(rec["mle_exists"])), "sec_per_rep": sec,
                               "draws": int(np.unique(rec["allocation"]).size), "given_one_draw": random and np.unique(rec["allocation"]).size == 1}
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
            mark = "*" if r.get("given_one_draw") else ""
            cells += [f"{r['gap']:.3f} ({r['se']:.3f}){mark}", ratio, f"{r['sec_per_rep']:.3f}"]
        label = f"`{d}`" + (" (adaptive)" if DESIGNS[d].adaptive else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = [f"- {d} at n = {n}: {r['error']}" for (d, n), r in res.items() if "error" in r]
    if any(r.get("given_one_draw") for r in res.values()):
        notes.append("- *: the standard error is given one draw of the design's allocation, which is random (a pilot, a rounding "
                     "its key decides): the design's own randomness is not in it, so do not compare designs by it "
                     "(--allocation-draws >= 2 puts it in)")
    return ("\n".join(lines) + f"\n\nWorld: {world}; estimator {estimator}; {replicates} replicates a cell; the gap of every replicate "
            "(mean and Monte-Carlo standard error, x 1000; over the draws of a design's allocation where it is random).\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--replicates", type=int, default=100)
    p.add_argument("--estimator", default="map", choices=["map", "newton", "optax"])
    p.add_argument("--designs", default=",".join(DEFAULT_DESIGNS))
    p.add_argument("--world", default="design_table", choices=sorted(WORLD_OVERRIDES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time", action="store_true", help="run each cell twice and time the second run")
    p.add_argument("--allocation-draws", type=int, default=None,
                   help="draws of each design's allocation (default: one per replicate, so the se holds the design's randomness)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    designs = a.designs.split(",")
    unknown = sorted(set(designs) - set(DESIGNS))
    if unknown:
        raise SystemExit(f"--designs: {unknown} are not registered; allowed: {sorted(DESIGNS)}")
    if a.replicates < 2 or any(n < 1 for n in a.budgets):
        raise SystemExit("--replicates must be >= 2 and --budgets >= 1")
    if a.allocation_draws is not None and not 1 <= a.allocation_draws <= a.replicates:
        raise SystemExit(f"--allocation-draws must be an integer in [1, {a.replicates}] (--replicates), got {a.allocation_draws}")
    res = measure(designs, a.budgets, a.replicates, a.estimator, a.world, a.seed, a.time, a.allocation_draws)
    md = markdown(res, designs, a.budgets, a.replicates, a.estimator, a.world)
    if a.out:
        path = pathlib.Path(a.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
