"""Cached items (experiments.figure_items) and the items app (experiments.items): Figures 2, 4 and 5 as Hydra jobs."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments import figure_items, figures

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "experiments.items", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_item_grids_cover_every_item_of_their_figure():
    """Each conf/items/<grid>.yaml sweeps index over exactly the figure's list (no item left out, none past its end)."""
    grids = sorted((ROOT / "experiments/conf/items").glob("*.yaml"))
    assert {g.stem for g in grids} == {"fig2", "fig2_small", "fig4", "fig4_small", "fig5", "fig5_small"}
    for g in grids:
        cfg = OmegaConf.load(g)
        assert g.stem == cfg.figure + ("_small" if cfg.small else "") == cfg.grid
        with jax.enable_x64(True):
            count = len(figures.figure_items(cfg.figure, cfg.small))
        assert cfg.hydra.sweeper.params.index == f"range(0,{count})", g.name


def test_figure_items_are_distinct_and_refuse_other_figures():
    with jax.enable_x64(True):
        for name in figures.ITEM_FIGURES:
            for small in (True, False):
                items = figures.figure_items(name, small)
                files = {figure_items.item_file(it.cache, it.prefix, it.ident) for it in items}
                assert len(files) == len(items)  # no two items share a record
    with pytest.raises(ValueError, match=r"name must be one of \['fig2', 'fig4', 'fig5'\], got 'fig1'"):
        figures.figure_items("fig1", True)


def test_items_app_refuses_a_bad_job_before_any_work(tmp_path):
    res = _run("-m", "figure=fig4", "small=true", "index=0,6", f"results={tmp_path / 'res'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
               cwd=tmp_path)
    assert res.returncode != 0
    assert "invalid multirun, no job started" in res.stderr + res.stdout and "index must be an integer in [0, 5], got 6" in res.stderr + res.stdout
    assert not list((tmp_path / "res").rglob("*.npz"))


def test_items_app_fills_the_records_the_figure_reads(tmp_path, monkeypatch):
    """A multirun of the app writes items 1 and 2 of the small Figure 4; the figure's own path finds them
    without computing, bit for bit what computing them in this process gives; a rerun reuses them."""
    res = _run("-m", "figure=fig4", "small=true", "index=1,2", f"results={tmp_path / 'res'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "res/small/fig4").glob("fig4_*.npz"))) == 2
    with jax.enable_x64(True):
        items = figures.figure_items("fig4", True)
        fresh = items[1].compute()  # computed here, not read

        def boom():
            raise AssertionError("recomputed an item the app wrote")

        for i in (1, 2):
            assert figure_items.item_done(items[i], tmp_path / "res/small")
            got = figure_items.run_item(items[i]._replace(compute=boom), tmp_path / "res/small")
            if i == 1:
                assert got.keys() == fresh.keys() and all(np.array_equal(got[k], fresh[k]) for k in got)
        assert not figure_items.item_done(items[0], tmp_path / "res/small")
    again = _run("figure=fig4", "small=true", "index=2", f"results={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert again.returncode == 0 and "reused under" in again.stderr + again.stdout


def _cfg(**kw):
    base = {"figure": "fig4", "index": 0, "small": True, "results": "results/figures", "grid": None}
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("bad, message", [
    ({"figure": "fig1"}, r"figure must be one of \['fig2', 'fig4', 'fig5'\], got 'fig1'"),
    ({"small": "yes"}, r"small must be true or false, got 'yes'"),
    ({"index": -1}, r"index must be an integer in \[0, 5\], got -1"),
    ({"index": 2.0}, r"index must be an integer in \[0, 5\], got 2.0"),
    ({"results": "  "}, r"results must be a directory path \(a non-empty string\)"),
    ({"grid": "fig4", "figure": "fig5"}, r"is not the grid items=fig4"),
])
def test_items_app_checks_every_key(bad, message):
    from experiments.items import check_item

    assert len(check_item(_cfg())) == 6
    with pytest.raises(ValueError, match=message):
        check_item(_cfg(**bad))


def test_cached_item_round_trips_values_and_recomputes_stale_or_unreadable_records(tmp_path):
    """Single values come back as the Python value they were (numbers as floats), arrays as arrays; a record
    made by other code or unreadable is recomputed; a value a record cannot hold is refused."""
    calls = []

    def compute():
        calls.append(1)
        return {"x": 1.5, "n": 3, "flag": True, "name": "ball", "col": np.array([1.0, 2.0]), "names": ["a", "bc"]}

    got = figure_items.cached_item(tmp_path, "t_", {"a": 1}, "v1", compute)
    assert got["x"] == 1.5 and got["n"] == 3.0 and type(got["n"]) is float and got["flag"] is True and got["name"] == "ball"
    assert np.array_equal(got["col"], [1.0, 2.0]) and list(got["names"]) == ["a", "bc"]
    assert figure_items.cached_item(tmp_path, "t_", {"a": 1}, "v1", compute)["name"] == "ball" and len(calls) == 1
    figure_items.cached_item(tmp_path, "t_", {"a": 1}, "v2", compute)  # another code version
    assert len(calls) == 2
    path = figure_items.item_file(tmp_path, "t_", {"a": 1})
    path.write_bytes(b"not a record")
    figure_items.cached_item(tmp_path, "t_", {"a": 1}, "v2", compute)  # unreadable: recomputed, overwritten
    assert len(calls) == 3 and figure_items.read_item(path, "v2") is not None
    with pytest.raises(ValueError, match="cannot be read back"):
        figure_items.cached_item(tmp_path, "t_", {"a": 2}, "v1", lambda: {"obj": object()})


def test_figure4_items_compute_in_float64_whatever_the_caller_has_on():
    """Figure 4's world is built in float64 even where the caller runs in float32 (a float32 world is another world)."""
    with jax.enable_x64(False):
        items = figures.figure_items("fig4", True)
        _, world, _, _ = figures._fig4_instance(2)
    assert world.theta_star.dtype == np.float64 and items[0].ident["radius"] == float(np.linalg.norm(world.theta_star))


def test_bounds_table_from_items_is_the_same_table_when_its_items_are_reused(tmp_path, monkeypatch):
    """compute_table assembles the table from its (world, design) items; a rerun reads them back (nothing
    computed) and gives the same text and records, each field of its BoundRow type; write_table writes both."""
    from experiments import bounds_table
    from synthetic.bounds_check import BoundRow

    def fake(wname, design, budgets, replicates, key):
        rows = [BoundRow(design=design, n=n, lower=1e-3 / n, bayes_mean=2e-3 / n, bayes_se=1e-4 / n, mc_mean=2.1e-3 / n,
                         mc_se=1e-4 / n, upper=3e-3 / n, upper_valid=True, hp_upper=1.0, hp_exceed=0, valid_from=10.0 * key + 1,
                         asymptotic=2e-3 / n, ratio=1.05, ratio_se=0.05, upper_over_lower=3.0, lower_ok=True, upper_ok=True,
                         ratio_ok=True, hp_ok=True, no_mle_rate=0.0, lower_new_shape="ball", second_order=2.05e-3 / n)
                for n in budgets]
        return {**{f: [getattr(r, f) for r in rows] for f in BoundRow._fields}, "seconds": 0.5}

    monkeypatch.setattr(bounds_table, "_design_columns", fake)
    first = bounds_table.compute_table(tmp_path, 2, 1e4, 0, progress=False)
    assert len(first.records) == 3 * len(bounds_table.DESIGNS) * 2 and first.fails == 0
    assert "Computing time 9 s" in first.text  # 18 items of 0.5 s, from their records
    monkeypatch.setattr(bounds_table, "_design_columns", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = bounds_table.compute_table(tmp_path, 2, 1e4, 0, progress=False)
    assert again.text == first.text and repr(again.records) == repr(first.records)  # repr: NaN fields, and types
    r = first.records[0]
    assert type(r["n"]) is int and type(r["lower_ok"]) is bool and r["lower_new_shape"] == "ball" and r["valid_from"] == 1.0
    md, csv_path = bounds_table.write_table(first, tmp_path / "out" / "bounds_table")
    assert md.read_text() == first.text
    assert repr(figures._bounds_table_rows(csv_path)) == repr([figures._bounds_row_types(dict(x)) for x in first.records])


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def test_cells_and_items_compute_with_one_blas_thread_whatever_the_process_has(tmp_path, monkeypatch):
    """A record's numbers must not depend on the process's BLAS threads (a threaded GEMM sums in
    another order): cells (run_cell) and items (cached_item) compute inside one_blas_thread."""
    from threadpoolctl import threadpool_limits

    import experiments.cell as cell

    monkeypatch.setattr(cell, "_run_cell", lambda cfg, progress=False: {"threads": _blas_threads()})
    with threadpool_limits(limits=2, user_api="blas"):
        outside = _blas_threads()
        in_cell = cell.run_cell(OmegaConf.create({}))["threads"]
        got = figure_items.cached_item(tmp_path, "t_", {"a": 1}, "code", lambda: {"threads": _blas_threads()})
    assert in_cell == 1 and got["threads"] == 1.0
    if (os.cpu_count() or 1) > 1:
        assert outside == 2  # the test would be vacuous if the limit outside were already one


def test_fill_tasks_cover_every_record_of_the_figures_and_keep_a_designs_cells_together(tmp_path):
    """experiments.fill: one task per (experiment, design) holding exactly the grid's cells, one per item, largest first.
    (That the figures then find every record is checked end to end by the small figure run in tests/test_figures.py,
    whose rerun after a --jobs 2 fill must write nothing.)"""
    from experiments import fill, practical, sweep

    tasks = fill.tasks(["fig3", "fig4", "fig6"], tmp_path, small=True)
    assert [t.cost for t in tasks] == sorted((t.cost for t in tasks), reverse=True)
    cells = [t for t in tasks if t.kind == "cells"]
    for t in cells:
        assert len({next(o for o in j if o.startswith("design=")) for j in t.jobs}) == 1, t.label
    want = {(str(tmp_path / exp), tuple(j)) for world in figures.FIG1_WORLDS for exp, jobs in figures.fig1_grids(world, True) for j in jobs}
    # Figure 1's grids: both panels and the contextual panel's adaptive designs, each into its experiment's folder
    assert {r for r, _ in want} == {str(tmp_path / e) for e in ("figure1_tabular", "figure1_contextual", "figure1_contextual_adaptive")}
    assert len(want) == sum(len(sweep.grid(e, figures.SMALL[k])) for e, k in (("figure1_tabular", "fig1_tabular"),
                                                                               ("figure1_contextual", "fig1_contextual"),
                                                                               ("figure1_contextual_adaptive", "figure1_contextual_adaptive")))
    want |= {(str(tmp_path / "practical" / panel), tuple(j)) for panel, p in practical.jobs(True).items() for _, j in p["jobs"]}
    got = [(t.results, j) for t in cells for j in t.jobs]
    assert len(got) == len(set(got)) and set(got) == want
    items = [t for t in tasks if t.kind == "item"]
    assert sorted(t.index for t in items) == list(range(len(figures.figure_items("fig4", True))))
    assert {t.figure for t in items} == {"fig4"} and all(t.small for t in items)

    # groups: the cells of one experiment; the items of one figure on one world (Figure 4's are all on one)
    assert {t.group for t in cells} == {t.label.rsplit(" ", 3)[0] for t in cells}
    assert all(t.results.endswith(t.group.replace("practical ", "practical/")) for t in cells)
    assert len({t.group for t in items}) == 1 and items[0].group.startswith("fig4 ")
    bounds = fill.tasks(["fig2"], tmp_path, small=True)  # the bounds table's items: six designs on each of three worlds
    worlds = {it.ident["world"] for it in figures.figure_items("fig2", True)}
    assert len(worlds) == 3 and sorted(Counter(t.group for t in bounds).values()) == [6, 6, 6]


def test_a_groups_first_task_runs_alone_while_the_workers_take_other_groups():
    """experiments.fill.next_task, two workers: a1 starts; a2 waits for it (its programs are
    not compiled yet) while b1 and the ungrouped n run; once only a2 is left it runs anyway,
    and once a1 has finished it is free to run."""
    from experiments import fill

    def task(label, group):
        return fill.Task("item", label, "", 1.0, group=group)

    queue = [task("a1", "A"), task("a2", "A"), task("a3", "A"), task("b1", "B"), task("n", ""), task("b2", "B")]
    started, order = set(), []
    for _ in range(3):
        t = queue.pop(fill.next_task(queue, started, set()))
        started.add(t.group)
        order.append(t.label)
    assert order == ["a1", "b1", "n"]
    assert queue[fill.next_task(queue, started, set())].label == "a2"  # only followers left: no idle worker
    assert queue[fill.next_task(queue, started, {"B"})].label == "b2"  # B's first task has finished
    assert queue[fill.next_task(queue, started, {"A"})].label == "a2"


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_figures_command_refuses_a_jobs_count_that_is_not_a_positive_integer(bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        figures.main(["--small", "--jobs", bad, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r")])
    assert err.value.code == 2
    assert f"--jobs: must be a positive integer (worker processes), got '{bad}'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_failing_task_stops_the_fill_with_its_error_and_keeps_what_is_written(tmp_path):
    """experiments.fill.run_tasks: the worker's error comes back here, the tasks behind it are not run."""
    from experiments import fill

    bad = fill.Task("item", "bad", str(tmp_path), 2.0, figure="fig9", small=True, index=0)
    never = fill.Task("item", "never", str(tmp_path), 1.0, figure="fig4", small=True, index=0)
    with pytest.raises(ValueError, match=r"name must be one of \['fig2', 'fig4', 'fig5'\], got 'fig9'"):
        fill.run_tasks([bad, never], jobs=1, progress=False)
    assert not list(tmp_path.rglob("*.npz"))
    assert fill.run_tasks([], jobs=2, progress=False) == []  # nothing to do starts no worker


def test_the_bounds_tables_budgets_stop_at_max_budget():
    """Every power of ten from 1e3 up to --max-budget and none above it (4e3 gave 1e3 and 1e4; 5e9 gave 1e10)."""
    from experiments.bounds_table import budgets_to

    assert budgets_to(1e3) == [1000] and budgets_to(4e3) == [1000] and budgets_to(9.99e3) == [1000]
    assert budgets_to(1e4) == [1000, 10000] and budgets_to(5e9) == [10**k for k in range(3, 10)]
    assert budgets_to(1e10) == [10**k for k in range(3, 11)]
