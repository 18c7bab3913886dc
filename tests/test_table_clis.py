"""The table commands (experiments.design_table, adaptive_table, second_order_table): what they compute is what they say."""

import json
import subprocess
import sys

import pytest

from experiments.design_table import table


def test_the_design_table_is_float64_in_a_process_without_x64():
    """Called directly in a process without x64 (a notebook's default), table() built float32
    worlds: uniform's Phi on the tabular world 389.1 against 349.96 (11% off; a float32 world draws
    other numbers), only JAX's dtype warning saying so; it now
    computes in float64 and equals this (x64) process's value to rounding."""
    code = ("import json, jax; assert not jax.config.jax_enable_x64\n"
            "from experiments.design_table import table\n"
            "rows, _, _ = table(budget=200, num_keys=1, designs=['uniform'], world_names=['tabular'])\n"
            "print(json.dumps(rows))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want, _, _ = table(budget=200, num_keys=1, designs=["uniform"], world_names=["tabular"])
    (world,) = want["uniform"]
    assert got["uniform"][world] == pytest.approx(want["uniform"][world], rel=1e-12)


def test_an_unknown_world_prefix_is_refused_not_an_empty_table():
    """--worlds contextul gave a header-only table, written over the output file, exit 0."""
    with pytest.raises(ValueError, match=r"worlds \['contextul'\] match no world of the table; allowed prefixes: \['contextual', 'tabular'\]"):
        table(budget=200, num_keys=1, designs=["uniform"], world_names=["contextul"])


def test_the_timed_adaptive_table_times_the_designs_own_label_buying(monkeypatch):
    """adaptive_table --time ran each cell twice and timed the second, which reused the first
    run's adaptive label-buying (kept in memory for cells that differ only in the estimator):
    adpo_adaptive at n = 200 reported 0.0076 s a replicate against 0.030. The timed run now
    runs the design again."""
    from experiments import adaptive_table, cell

    calls = []
    real = cell.run_adaptive
    monkeypatch.setattr(cell, "run_adaptive", lambda *a, **k: calls.append(1) or real(*a, **k))
    cell.forget_adaptive_runs()
    out = adaptive_table.measure(["adpo_adaptive"], [60], 2, timed=True)
    assert "error" not in out[("adpo_adaptive", 60)] and len(calls) == 2


def test_the_second_order_tables_simulation_keeps_a_pilots_labels_as_the_cell_does():
    """second_order_table rebuilt the cell's design and keys but redrew the pilot's labels (no
    pilot=), so its two-stage 'sim' was not the cell's gap (n E G 1.83 against 2.59 over four
    seeds): it now equals run_cell's replicates exactly."""
    import numpy as np

    from experiments import second_order_table, sweep
    from experiments.cell import run_cell

    got = second_order_table.row("contextual", "two_stage", 300, 3)
    cols = run_cell(sweep.compose_job(["world=contextual", "design=two_stage", "budget=300", "num_replicates=3",
                                       "design_cache=null", "progress=false"]))
    assert got["pilot"] and got["sim"] == pytest.approx(300 * np.mean(cols["gap"]), rel=1e-12)
