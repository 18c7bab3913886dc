"""Theory against simulation: lower bound, Monte-Carlo gap and upper bound, side by side.

Runs :func:`synthetic.bounds_check.check_design_bounds` (Theorems 1, 1', 2 and the
sharper Theorems 4-5 of issue 18) for six designs on a tabular
and a contextual world and on the regression world of issue 18 (labelled span larger
than ``range(I)``, :func:`synthetic.bounds_check.subspace_world`) over budgets 1e3 to
1e10, and the plug-in factor against the measured criterion ratio for random
``theta*``; writes ``figures/bounds_table.md`` and ``figures/bounds_table.csv``.
Each (world, design) is one cached item (:func:`table_items`, :mod:`experiments.figure_items`)
under ``--results``, so a rerun reuses them and the items app fills them through any Hydra
launcher (``python -m experiments.items -m items=fig2``); the function-level API is
:func:`compute_table` and :func:`write_table`.

    python -m experiments.bounds_table            # a few minutes on 2 cores from empty records
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import time
import typing
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DESIGNS = ["uniform", "reference_weighted", "plug_in", "oracle", "d_optimal", "a_optimal"]


def _world(name: str):
    """One of the table's worlds (:data:`WORLD_NAMES`), built from its fixed key."""
    from synthetic import contextual_world, tabular_world
    from synthetic.bounds_check import subspace_world

    makers = {"tabular (K = 20, d = 20)": lambda: tabular_world(jax.random.key(0), num_completions=20),
              "contextual (p = q = 3, d = 15)": lambda: contextual_world(jax.random.key(0)),
              "subspace (range I < labelled span, d = 3)": lambda: subspace_world(jax.random.key(0))}
    return makers[name]()


def _worlds(extra=True):
    return {name: _world(name) for name in (WORLD_NAMES if extra else WORLD_NAMES[:2])}


def _fmt(x):
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _plug_in_rows(world, num_draws, rng):
    from synthetic import design_problem
    from theory import bounds as TB
    from theory import design_criterion, optimal_design

    prob = design_problem(world)
    z = prob.edges.diffs
    ev = world.eval
    zero = jnp.zeros(world.dim)
    sol0 = optimal_design(z, zero, prob.curvature(zero), world.beta, tol=1e-6)
    out = []
    for r0 in [0.05, 0.2, 0.5, 1.0]:
        ratios, factors = [], []
        for _ in range(num_draws):
            v = rng.normal(size=world.dim)
            ts = jnp.asarray(r0 * v / np.linalg.norm(v))
            curv = prob.curvature(ts)
            sol = optimal_design(z, ts, curv, world.beta, tol=1e-6)
            ratios.append(float(design_criterion(sol0.weights, ts, z, curv, world.beta)) / float(sol.value))
            factors.append(TB.plug_in_factor(zero, ts, ev.features, ev.log_ref, z, world.beta, sol0.relative_certificate))
        out.append((r0, max(ratios), min(factors), all(a <= b for a, b in zip(ratios, factors))))
    return out


#: The table's worlds, in order (each built when one of its items is computed: :func:`_world`).
WORLD_NAMES = ("tabular (K = 20, d = 20)", "contextual (p = q = 3, d = 15)", "subspace (range I < labelled span, d = 3)")


@functools.lru_cache(maxsize=1)
def _last_world(name: str):
    return _world(name)


def budgets_to(max_budget: float) -> list[int]:
    """The table's budgets: every power of ten from 1e3 to ``max_budget`` (none above it)."""
    return [int(10**k) for k in range(3, math.floor(math.log10(max_budget) + 1e-12) + 1)]


def _design_columns(wname: str, design: str, budgets, replicates: int, key: int) -> dict:
    """One (world, design) of the table: :func:`check_design_bounds`'s rows as columns (one list per field)."""
    from synthetic import design_problem
    from synthetic.bounds_check import BoundRow, check_design_bounds

    t0 = time.time()
    world = _last_world(wname)
    rows = check_design_bounds(jax.random.key(key), world, design_problem(world), design, budgets, num_replicates=replicates)
    return {**{f: [getattr(r, f) for r in rows] for f in BoundRow._fields}, "seconds": time.time() - t0}


def _plug_in_columns(draws: int) -> dict:
    t0 = time.time()
    rng = np.random.default_rng(0)  # one stream through both worlds, in order
    cols = {"world": [], "r0": [], "ratio": [], "factor": [], "ok": []}
    for wname, world in _worlds(extra=False).items():
        for row in _plug_in_rows(world, draws, rng):
            for k, v in zip(cols, (wname, *row)):
                cols[k].append(v)
    return {**cols, "seconds": time.time() - t0}


def table_items(replicates: int, max_budget: float, plug_in_draws: int) -> list:
    """The table's items (:mod:`experiments.figure_items`): one per (world, design), then the
    plug-in factor rows (if ``plug_in_draws > 0``); each a record under ``<results>/bounds_table``."""
    from experiments.figure_items import FigureItem, in_float64

    budgets = budgets_to(max_budget)
    items = []
    for wi, wname in enumerate(WORLD_NAMES):
        for di, design in enumerate(DESIGNS):
            key = 100 * wi + di
            ident = {"table": "bounds", "world": wname, "design": design, "budgets": budgets, "replicates": replicates, "key": key}
            items.append(FigureItem("bounds_table", "bounds_", ident,
                                    in_float64(functools.partial(_design_columns, wname, design, budgets, replicates, key))))
    if plug_in_draws > 0:
        items.append(FigureItem("bounds_table", "bounds_", {"table": "plug_in_factor", "draws": plug_in_draws, "seed": 0},
                                in_float64(functools.partial(_plug_in_columns, plug_in_draws))))
    return items


def _rows_back(cols: dict) -> list:
    """Columns of a (world, design) item back to :class:`BoundRow` s, each field of its own type."""
    from synthetic.bounds_check import BoundRow

    types = typing.get_type_hints(BoundRow)
    return [BoundRow(**{f: types[f](cols[f][i].item() if isinstance(cols[f][i], np.generic) else cols[f][i]) for f in BoundRow._fields})
            for i in range(len(cols["n"]))]


class Table(NamedTuple):
    """The bounds table: ``records`` (one dict per (world, design, n): ``world`` and the
    :class:`BoundRow` fields, as the CSV holds them), ``text`` (the Markdown) and ``fails``
    (rows with a failed check)."""

    records: list
    text: str
    fails: int


_LEGEND = [
    "Plain DPO, {replicates} replicates per cell, one-sided z-tests at level 1e-3. ",
    "`MC` is the risk at theta* of plain DPO, charged G_sup where the MLE does not exist (the worst DPO variant);",
    "`upper` (Theorem 1) bounds it. `lower` (Theorem 2) bounds the Bayes risk under the van Trees prior (`bayes`,",
    "estimator: the MLE, else theta = 0). `hp upper`: Theorem 1', exceeded with probability <= n^-2 (`>hp`: replicates",
    "above it). `ratio` = n MC / ((beta/2) tr(I S^+)). `inf`: n < n0. `no MLE`: share of replicates without an MLE.",
    "`lower 5`, `upper 4`, `n0 4`, `u/l new`: Theorems 5 and 4 (theory/DERIVATIONS.md sections 9-10); `bayes 5` is the",
    "Bayes risk under Theorem 5's own prior (`prior 5`: a box or an ellipsoid, whichever gave `lower 5`), which `lower 5` bounds.",
    "`2nd order / MC`: the second-order prediction",
    "(theory/SECOND_ORDER.md) over MC. `no MLE >=`: the separation floor, a lower bound on the no-MLE probability",
    "(theory/DERIVATIONS.md section 11.3). `upper 4*` (`a*`): Theorem 4 at the tail a of a fixed grid (0.05-4) that gives",
    "the smallest bound at that n (section 9.6), `u/l*` it over `lower 5`.",
    "`tests`: every test of the row (Theorems 1, 1', 2, 4 at a = 2 and at a*, 5, ratio, floor).\n",
]


def compute_table(results, replicates: int = 400, max_budget: float = 1e10, plug_in_draws: int = 5, progress: bool = True) -> Table:
    """The bounds table from its items under ``results`` (computed where missing or made by other code)."""
    from experiments.cell import float64
    from experiments.figure_items import run_item
    from synthetic.bounds_check import BoundRow
    from theory import bounds as TB

    t0 = time.time()
    items = table_items(replicates, max_budget, plug_in_draws)
    records, lines = [], [line.format(replicates=replicates) for line in _LEGEND]
    summary, header_end, item, seconds = {}, len(lines), iter(items), 0.0
    for wname in WORLD_NAMES:
        lines.append(f"\n### {wname}\n")
        lines.append(None)  # G_sup, once the world is built
        g_sup_at = len(lines) - 1
        lines.append("| design | n | lower | bayes (se) | MC (se) | upper | hp upper (>hp) | n0 | upper/lower | lower 5 | prior 5 | bayes 5 (se) | upper 4 | n0 4 | u/l new | upper 4* (a*) | u/l* | ratio (se) | 2nd order / MC | no MLE | no MLE >= | tests |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for design in DESIGNS:
            cols = run_item(next(item), results)
            seconds += cols["seconds"]
            rows = _rows_back(cols)
            for r in rows:
                ok = "ok" if r.all_ok else "FAIL"
                lines.append(
                    f"| {design} | {r.n:.0e} | {_fmt(r.lower)} | {_fmt(r.bayes_mean)} ({r.bayes_se:.1g}) | "
                    f"{_fmt(r.mc_mean)} ({r.mc_se:.1g}) | {_fmt(r.upper)} | {_fmt(r.hp_upper)} ({r.hp_exceed}) | {_fmt(r.valid_from)} | "
                    f"{_fmt(r.upper_over_lower)} | {_fmt(r.lower_new)} | {r.lower_new_shape} | {_fmt(r.bayes_new_mean)} ({r.bayes_new_se:.1g}) | "
                    f"{_fmt(r.upper_new)} | {_fmt(r.valid_from_new)} | {_fmt(r.upper_over_lower_new)} | "
                    f"{_fmt(r.upper_tuned)} ({r.tail_tuned:.2f}) | {_fmt(r.upper_over_lower_tuned)} | "
                    f"{r.ratio:.3f} ({r.ratio_se:.3f}) | {r.second_order / r.mc_mean:.3f} | {r.no_mle_rate:.3g} | {r.separation_floor:.3g} | {ok} |"
                )
                records.append({"world": wname, **r._asdict()})
                summary.setdefault((wname, design), {})[r.n] = r
            if progress:
                print(f"{wname} {design}: {time.time() - t0:.0f} s", flush=True)
        with float64():
            world = _last_world(wname)
            ev = world.eval
            g_sup = TB.gap_sup(world.theta_star, ev.features, ev.log_ref, world.beta, ev.prompt_weights)
        lines[g_sup_at] = f"G_sup = {g_sup:.3g} (no policy has a larger gap).\n"
    # Summary: n0 and upper/lower at 1e6 and 1e8, Theorems 1-2 (old) against Theorems 4-5 (new).
    head = ["", "### Summary: where the bounds hold and how far apart they are (old: Theorems 1-2; new: Theorems 4-5)", ""]
    # the summary's design: n = 1e6's empirical design, or the largest n of a table that stops below 1e6
    ref_n = min(10**6, max(n for by_n in summary.values() for n in by_n)) if summary else 10**6
    head.append(f"n0: the smallest n from which the upper bound holds (at n = 1e{round(math.log10(ref_n))}'s empirical design; tail a = 2). `n0 floor`: the")
    head.append("largest n (20 a decade from 1e2) at which the design leaves the MLE undefined with probability above n^-2 (a")
    head.append("completion winning or losing all its comparisons; section 11.3): no event of probability >= 1 - n^-2 keeps the")
    head.append("MLE finite there, so Theorem 1' fails there and Theorems 1 and 4 cannot start there (`-`: none on the grid).")
    head.append("`n0 a*`: where Theorem 4 at the best tail (section 9.6) starts to hold (the n0 of a = 0.05: valid, but vacuous")
    head.append("there); `2x from`: the smallest n (20 a decade) from which it is at most twice (beta/2n) tr(I S^+). `u/l*`: upper/lower")
    head.append("with Theorem 4 at the best tail.\n")
    head.append("| world | design | n0 floor | n0 old | n0 new | n0 a* | 2x from | upper/lower 1e6 old | new | u/l* | upper/lower 1e8 old | new | u/l* |")
    head.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (wname, design), by_n in summary.items():
        ref = by_n[ref_n]
        cells = [_fmt(ref.n0_floor) if ref.n0_floor > 0 else "-", _fmt(ref.valid_from), _fmt(ref.valid_from_new),
                 _fmt(ref.valid_from_tuned), _fmt(ref.within2_from)]
        for n in (10**6, 10**8):
            r = by_n.get(n)
            cells += [_fmt(r.upper_over_lower), _fmt(r.upper_over_lower_new), _fmt(r.upper_over_lower_tuned)] if r else ["-"] * 3
        head.append(f"| {wname.split(' (')[0]} | {design} | " + " | ".join(cells) + " |")
    lines[header_end:header_end] = head + [""]
    if plug_in_draws > 0:
        cols = run_item(next(item), results)
        seconds += cols["seconds"]
        lines.append(f"\n### Plug-in factor (theta0 = 0, {plug_in_draws} random theta* per distance)\n")
        lines.append("| world | r0 | largest measured Phi(w0; theta*) / Phi(w*; theta*) | smallest bound exp(2 (rho + m)) | all below |")
        lines.append("|---|---|---|---|---|")
        for wname, r0, ratio, factor, ok in zip(*(cols[k] for k in ("world", "r0", "ratio", "factor", "ok"))):
            lines.append(f"| {wname} | {float(r0)} | {float(ratio):.4f} | {float(factor):.4f} | {bool(ok)} |")
    lines.append(f"\nComputing time {seconds:.0f} s (`python -m experiments.bounds_table` from empty records: the sum of its items' "
                 "times, as their records hold them).")
    fails = sum(1 for r in records if not all(r[k] for k in BoundRow.TESTS))
    return Table(records, "\n".join(lines) + "\n", fails)


def write_table(table: Table, out) -> list[Path]:
    """``<out>.md`` (the text) and ``<out>.csv`` (the records)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table.text)
    with out.with_suffix(".csv").open("w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(table.records[0]))
        wr.writeheader()
        wr.writerows(table.records)
    return [out.with_suffix(".md"), out.with_suffix(".csv")]


def main(argv=None) -> Table:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=400)
    ap.add_argument("--out", default="figures/bounds_table")
    ap.add_argument("--results", default="results/figures", help="where its items are cached (the figures command's --results)")
    ap.add_argument("--max-budget", type=float, default=1e10)
    ap.add_argument("--plug-in-draws", type=int, default=5, help="random theta* per distance in the plug-in table (0: skip it)")
    args = ap.parse_args(argv)
    if args.replicates < 2:
        ap.error(f"--replicates must be >= 2, got {args.replicates}")
    if not (args.max_budget >= 1e3 and math.isfinite(args.max_budget)):
        ap.error(f"--max-budget must be a finite number >= 1e3, got {args.max_budget}")
    if args.plug_in_draws < 0:
        ap.error(f"--plug-in-draws must be >= 0, got {args.plug_in_draws}")
    jax.config.update("jax_enable_x64", True)
    table = compute_table(Path(args.results), args.replicates, args.max_budget, args.plug_in_draws)
    write_table(table, args.out)
    print(table.text)
    print(f"{table.fails} failed checks out of {len(table.records)}")
    return table


if __name__ == "__main__":
    from experiments.compiled import use_classic_emitters

    use_classic_emitters()  # before the first computation: records are computed so by every app
    main()
