"""Sweep records you can trust: one summary row per cell, no stale or corrupt record
reused, bad input refused before any job, records readable by other users.

Each test names the item of the records issue it guards; each failed on the code
before the fix (pooled rows, duplicate cells, git-only code versions, BadZipFile
crashes, late write errors, 0600 files, an empty table with exit status 0).
"""

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from experiments import records, sweep
from synthetic.monte_carlo import mean_and_ci

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["world=tabular", "world.params.num_completions=5", "num_replicates=10", "budget=300"]


def _rows_by_config(rows):
    return {(r["design"], r["config"]): r for r in rows}


def test_summary_has_one_row_per_config_and_never_pools_two(tmp_path):
    """Item 1: two two-stage configs (and two pool sizes) in one results_dir stay apart."""
    jobs = [[*SMALL, "design=two_stage"], [*SMALL, "design=two_stage", "design.params.pilot_fraction=0.5"],
            [*SMALL, "design=uniform"], [*SMALL, "design=uniform", "world.params.num_completions=6"]]
    paths = sweep.run_jobs(jobs, tmp_path, progress=False)
    assert len(set(paths)) == 4
    rows = sweep.aggregate(tmp_path)
    assert len(rows) == 4
    by = _rows_by_config(rows)
    assert set(by) == {("two_stage", "pilot_fraction=0.2"), ("two_stage", "pilot_fraction=0.5"),
                       ("uniform", "num_completions=5"), ("uniform", "num_completions=6")}
    for path in paths:  # every row is exactly its own record
        cols, meta = sweep.read_cell(path)
        (row,) = [r for r in rows if r["cell"] == meta["cell"]]
        ok = cols["gap"][cols["valid"]]
        assert row["replicates"] == 10 and row["mean_gap"] == pytest.approx(mean_and_ci(ok)[0], rel=1e-12)
        # the z-test against the asymptotic prediction, recomputed from the record
        pred = float(np.mean(cols["predicted_gap"]))
        assert row["z_to_prediction"] == pytest.approx((ok.mean() - pred) / (ok.std(ddof=1) / np.sqrt(ok.size)), rel=1e-9)
        from scipy import stats

        assert row["p_to_prediction"] == pytest.approx(2 * stats.t.sf(abs(row["z_to_prediction"]), ok.size - 1), rel=1e-9)
    # ratio to uniform: against the uniform cell of the same world (K = 5), not K = 6
    assert by[("two_stage", "pilot_fraction=0.5")]["ratio_to_uniform"] == pytest.approx(
        by[("two_stage", "pilot_fraction=0.5")]["mean_gap"] / by[("uniform", "num_completions=5")]["mean_gap"])
    table = sweep.format_summary(rows)
    assert "pilot_fraction=0.5" in table and "num_completions=6" in table


def test_an_override_that_reaches_another_design_is_refused_before_any_job(tmp_path):
    """Item 2: design=custom,uniform design.name=X would run X twice (once labelled uniform)."""
    with pytest.raises(ValueError, match="overrides the design chosen by design=uniform"):
        sweep.run_jobs([[*SMALL, "design=custom", "design.name=first_two"], [*SMALL, "design=uniform", "design.name=first_two"]],
                       tmp_path, progress=False)
    # The same cell written two ways is also refused (its replicates would count twice).
    with pytest.raises(ValueError, match="are the same cell"):
        sweep.run_jobs([[*SMALL, "design=uniform"], [*SMALL, "design=custom", "design.name=uniform"]], tmp_path, progress=False)
    assert not list(tmp_path.glob("*.npz"))
    # a config file may name a registered design with other parameters (a preset)
    sweep.check_jobs([sweep.compose_job([*SMALL, "design=adpo_greedy_repeat", f"results_dir={tmp_path}"], hydra_node=True)],
                     ["preset"], [[*SMALL, "design=adpo_greedy_repeat"]])


def test_the_cli_refuses_the_leaking_override_and_accepts_the_documented_form(tmp_path):
    base = [sys.executable, "-m", "experiments.sweep", "-m", *SMALL, f"results_dir={tmp_path}", "progress=false",
            f"hydra.sweep.dir={tmp_path}/_hydra", "hydra/job_logging=disabled"]
    bad = subprocess.run([*base, "design=custom,uniform", "design.name=first_two"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "invalid sweep, no job started" in bad.stderr
    assert "design=custom 'design.name=first_two,uniform'" in bad.stderr
    assert not list(tmp_path.glob("*.npz"))
    good = subprocess.run([*base, "design=custom", "design.name=first_two,uniform"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    rows = sweep.aggregate(tmp_path)
    assert sorted(r["design"] for r in rows) == ["first_two", "uniform"]
    # design=custom design.name=uniform is the same cell as design=uniform: reused, not recomputed
    (uni,) = [p for p in tmp_path.glob("*uniform*.npz")]
    mtime = uni.stat().st_mtime_ns
    again = subprocess.run([*base, "design=uniform"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and uni.stat().st_mtime_ns == mtime


def test_cell_identity_completes_parameters_with_their_defaults():
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        a = compose(config_name="sweep", overrides=[*SMALL, "design=uniform"])
        b = compose(config_name="sweep", overrides=[*SMALL, "design=custom", "design.name=uniform"])
        c = compose(config_name="sweep", overrides=[*SMALL, "design=uniform", "design.params.rounding=efficient"])
        d = compose(config_name="sweep", overrides=[*SMALL, "design=uniform", "world.params.theta_scale=0.5"])  # the default
    assert sweep.cell_id(a)[0] == sweep.cell_id(b)[0] == sweep.cell_id(d)[0] != sweep.cell_id(c)[0]


def _copy_project(dst: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "results", "outputs", "multirun", "*.egg-info", "__pycache__", ".pytest_cache", "figures", "notebooks")
    shutil.copytree(ROOT, dst, ignore=ignore)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


@pytest.mark.slow
def test_a_commit_that_changes_a_design_recomputes_its_records(tmp_path):
    """Item 3: records made by other code are recomputed (or, on request, kept and marked)."""
    proj = _copy_project(tmp_path / "proj")
    env = {**os.environ, "PYTHONPATH": str(proj)}
    cmd = [sys.executable, "-m", "experiments.sweep", "-m", *SMALL, "design=uniform", f"results_dir={tmp_path / 'res'}",
           "progress=false", f"hydra.sweep.dir={tmp_path}/_hydra"]

    def run(*extra):
        res = subprocess.run([*cmd, *extra], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        (path,) = (tmp_path / "res").glob("*.npz")
        cols, meta = sweep.read_cell(path)
        return res, cols["gap"], meta["code_version"]

    _, gap_before, code_before = run()
    res, gap_again, _ = run()
    assert "already done, skipped" in res.stdout + res.stderr and np.array_equal(gap_again, gap_before)
    # A commit makes the registered `uniform` design label only the first two completions.
    with open(proj / "synthetic" / "designs" / "simple.py", "a") as fh:
        fh.write(
            "\n\n@register_design('uniform', summary='changed', source='test', replace=True)\n"
            "def _changed_uniform(key, problem, budget, rounding='auto', max_labels_per_edge=None):\n"
            "    return weighted_output(key, problem, budget, first_two_weights(problem.edges), rounding,\n"
            "                           max_labels_per_edge=max_labels_per_edge)\n"
        )
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "change uniform"], cwd=proj, check=True)
    res, gap_kept, code_kept = run("reuse_stale_records=true")
    assert code_kept == code_before and np.array_equal(gap_kept, gap_before)  # kept on request ...
    assert "kept its record made by other code" in res.stdout + res.stderr and "made by other code: rerun" in res.stdout  # ... and marked in the summary
    res, gap_after, code_after = run()
    assert code_after != code_before and "recomputing" in res.stdout + res.stderr
    assert not np.array_equal(gap_after, gap_before)
    assert "made by other code: rerun" not in res.stdout


@pytest.mark.parametrize("package", ["jax", "jaxlib", "numpy", "scipy", "optax"])
def test_code_version_changes_with_each_package_that_computes_numbers(monkeypatch, package):
    """Records computed with another SciPy (separation checks, ridge-path limits) or optax (the
    gradient estimator) are other code: their version changed only with JAX, jaxlib and NumPy."""
    import importlib

    from experiments import cell

    base = cell.code_version()
    cell._files_version.cache_clear()
    monkeypatch.setattr(importlib.import_module(package), "__version__", "0.0.0-other")
    try:
        assert cell.code_version() != base
    finally:
        monkeypatch.undo()
        cell._files_version.cache_clear()
    assert cell.code_version() == base


def test_code_version_sees_uncommitted_edits_and_notebook_designs(tmp_path, monkeypatch):
    from experiments import cell
    from synthetic.designs import DESIGNS, register_design, weighted_output
    from synthetic import uniform_weights

    base = cell.code_version()
    assert base == cell.code_version() and len(base) == 12
    mod = tmp_path / "user_designs_for_version_test.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v1 = cell.code_version(("user_designs_for_version_test",))
    assert v1 != base

    def make(factor):
        @register_design("_version_probe", summary="t", source="t", replace=True)
        def probe(key, problem, budget, rounding="auto"):
            return weighted_output(key, problem, budget, factor * uniform_weights(problem.edges), rounding)
        return probe

    try:
        make(1.0)
        a = cell.code_version((), "_version_probe")
        exec_src = (  # the same name registered by different code (as when a notebook cell is edited)
            "from synthetic.designs import register_design, weighted_output\n"
            "from synthetic import first_two_weights\n"
            "@register_design('_version_probe', summary='t', source='t', replace=True)\n"
            "def probe(key, problem, budget, rounding='auto'):\n"
            "    return weighted_output(key, problem, budget, first_two_weights(problem.edges), rounding)\n"
        )
        exec(compile(exec_src, "<notebook cell>", "exec"), {"__name__": "__main__"})
        b = cell.code_version((), "_version_probe")
        assert a != b and a != base
        assert cell.code_version((), "uniform") == base  # registered in hashed code: nothing extra
    finally:
        DESIGNS.pop("_version_probe", None)


def _one_record(tmp_path):
    (path,) = sweep.run_jobs([[*SMALL, "design=uniform"]], tmp_path, progress=False)
    return path


@pytest.mark.parametrize("damage", ["truncate", "empty", "not_a_zip"])
def test_a_corrupt_record_is_reported_by_path_and_recomputed(tmp_path, damage, caplog):
    """Item 4: never trusted, never fatal to the summary, named by path, recomputed."""
    path = _one_record(tmp_path)
    good = sweep.read_cell(path)[0]["gap"]
    if damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(500)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not a zip file")
    with pytest.raises(records.RecordError, match=str(path)):
        sweep.read_cell(path)
    problems = []
    rows = sweep.aggregate(tmp_path, problems=problems)
    assert rows == [] and [p.path for p in problems] == [path]
    assert str(path) in sweep.format_summary(rows, problems)
    (again,) = sweep.run_jobs([[*SMALL, "design=uniform"]], tmp_path, progress=False)
    assert again == path and np.array_equal(sweep.read_cell(path)[0]["gap"], good)
    assert path.with_name(path.name + ".corrupt").exists()  # quarantined, for inspection
    assert any(str(path) in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)


def test_an_unwritable_results_dir_is_refused_before_any_job(tmp_path, monkeypatch):
    """Item 5."""
    calls = []
    monkeypatch.setattr(sweep, "run_cell", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"results_dir: cannot write records to /proc/res"):
        sweep.run_jobs([[*SMALL, "design=uniform"]], "/proc/res", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="results_dir: cannot write records to"):
        sweep.run_jobs([[*SMALL, "design=uniform"]], blocker / "sub", progress=False)
    assert calls == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["design=two_stage", "design.params.pilot_fraction=1.5"], "design.params.pilot_fraction"),
        (["design=uniform", "design.params.rounding=nope"], "design.params.rounding"),
        (["design=first_n", "design.params.num_pairs=-3"], "design.params.num_pairs"),
        (["design=oracle", "design.params.tol=-1"], "design.params.tol"),
        # estimator parameters by value: a negative ridge fitted a non-minimiser reported as converged (mean gap
        # 0.505 for 0.006), a negative final_lr_fraction ended Adam's schedule in gradient ascent (1.885), both in
        # normal-looking rows; a non-positive prior precision failed only when its job ran
        (["design=uniform", "+estimator.params.ridge=-0.05"], "estimator.params.ridge must be a finite number >= 0"),
        (["design=uniform", "estimator=optax", "+estimator.params.final_lr_fraction=-1"],
         r"estimator.params.final_lr_fraction must be in [0, 1]"),
        (["design=uniform", "estimator=optax", "+estimator.params.final_lr_fraction=50"],
         r"estimator.params.final_lr_fraction must be in [0, 1]"),
        (["design=uniform", "estimator=map", "estimator.params.prior_precision=-5"],
         "estimator.params.prior_precision must be a finite number > 0"),
        (["design=uniform", "+estimator.params.max_iter=-1"], "estimator.params.max_iter must be an integer >= 0"),
        # a pilot too small for the budget failed only when its job ran (after the cells before it)
        (["design=two_stage", "budget=1000", "design.params.pilot_fraction=1e-9"], "pilot_fraction * budget must leave"),
        (["design=best_vs_worst", "budget=1000", "design.params.reward=pilot", "design.params.pilot_fraction=1e-9"],
         "pilot_fraction * budget must leave"),
    ],
)
def test_design_parameter_values_are_checked_before_the_sweep(overrides, message):
    """Item 6: values, not only names, fail in the pre-flight pass with the key."""
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=["world=tabular", "world.params.num_completions=5", *overrides])
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.validate(cfg)


def test_a_small_pilot_fraction_is_refused_only_where_the_design_takes_a_pilot():
    """The pilot's budget check runs where the parameters take a pilot: at="reference" and reward="proxy" do not."""
    for overrides in (["design=a_optimal"], ["design=best_vs_worst"]):
        with initialize_config_module(config_module="experiments.conf", version_base=None):
            cfg = compose(config_name="sweep", overrides=["world=tabular", "world.params.num_completions=5", "budget=1000",
                                                          *overrides, "design.params.pilot_fraction=1e-9"])
        sweep.validate(cfg)


def test_a_second_file_of_a_cell_is_counted_once_and_named(tmp_path):
    """A record copied under another name had shown as two identical rows (and their ratios to uniform as nan)."""
    path = _one_record(tmp_path)
    copy = tmp_path / "copy_of_cell.npz"
    shutil.copy(path, copy)
    problems = []
    rows = sweep.aggregate(tmp_path, problems=problems)
    assert len(rows) == 1 and len(problems) == 1 and isinstance(problems[0], records.DuplicateRecord)
    assert {problems[0].path, problems[0].first} == {path, copy}
    text = sweep.format_summary(rows, problems)
    assert "second record of a cell" in text and problems[0].path.name in text
    # the same file given twice is one row too
    problems = []
    assert len(sweep.aggregate_files([path, path], problems=problems)) == 1 and len(problems) == 1


def test_a_row_says_why_it_has_no_number_or_how_its_mean_was_made(tmp_path):
    """Item 7: beta = 1e6 separates every label set. The row counts every replicate (each
    gap is the ridge-path limit's), says that no MLE exists, and why the prediction is
    inf; a row whose replicates have no defined gap says so instead of printing nan."""
    sweep.run_jobs([[*SMALL, "design=uniform", "world.params.beta=1e6"]], tmp_path, progress=False)
    (row,) = sweep.aggregate(tmp_path)
    assert row["replicates"] == 10 and row["mle_fraction"] == 0.0
    assert "MLE exists in 0 of 10 replicates" in row["note"] and "prediction inf" in row["note"]
    table = sweep.format_summary([row])
    for col in ("estimator", "reps", "valid", "MLE", "note"):
        assert col in table
    # a record whose gaps are undefined (valid all false): no number, and the reason
    meta = {"world": {"name": "w"}, "design": {"name": "d"}, "estimator": {"name": "e"}, "budget": 5, "code_version": "x"}
    cols = {"gap": np.full(4, np.nan), "valid": np.zeros(4, bool), "mle_exists": np.zeros(4, bool), "predicted_gap": np.ones(4)}
    r = records.summarise_cell(cols, meta)
    assert np.isnan(r["mean_gap"]) and "no number: no replicate of 4 has a defined gap" in r["note"]


def test_summary_only_on_a_missing_or_empty_results_dir_fails_with_the_path(tmp_path):
    """Item 8."""
    for d in (tmp_path / "typo", tmp_path):
        res = subprocess.run([sys.executable, "-m", "experiments.sweep", "summary_only=true", f"results_dir={d}",
                              f"hydra.run.dir={tmp_path}/_hydra"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and str(d) in res.stderr, res.stderr[-2000:]


def test_records_get_the_mode_of_the_umask(tmp_path):
    """Item 9: other users of a shared results_dir can read the records."""
    old = os.umask(0o022)
    try:
        records.write_atomic(tmp_path / "c.npz", {"gap": np.zeros(2)}, {"code_version": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.npz").stat().st_mode) == 0o644


def test_quickstart_writes_its_outputs_outside_tracked_files():
    """Item 13: the main job leaves the tree clean (its figure goes under results_dir)."""
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=["experiment=quickstart"])
    assert cfg.figure.startswith(cfg.results_dir + "/")
    tracked = subprocess.run(["git", "ls-files", cfg.results_dir], cwd=ROOT, capture_output=True, text=True)
    assert tracked.returncode != 0 or tracked.stdout == ""


def test_plots_label_designs_by_their_registered_names_and_tick_every_budget():
    """Item 14: one name per design; a tick at each budget run (n = 300 had none)."""
    import matplotlib

    matplotlib.use("Agg")
    from experiments.plotting import design_label, plot_gap_vs_budget
    from synthetic.designs import DESIGNS

    assert all(design_label(name) == name for name in DESIGNS)
    rows = [{"design": d, "config": "", "budget": n, "mean_gap": 1 / n, "ci_low": 0.9 / n, "ci_high": 1.1 / n, "predicted_gap": 1 / n}
            for d in ("uniform", "reference_filter") for n in (100, 300, 1000, 3000)]
    fig = plot_gap_vs_budget(rows)
    ax = fig.axes[0]
    assert sorted(ax.get_xticks()) == [100, 300, 1000, 3000]
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"uniform", "reference_filter"}


def test_importing_the_apps_leaves_jax_in_its_default_precision():
    """Cells run in float64 inside a context; importing experiments.* must not switch the
    whole process (a notebook or a user's code keeps float32 unless it asks)."""
    code = ("import jax, experiments.sweep, experiments.figures, experiments.select, experiments.example_pool\n"
            "assert not jax.config.jax_enable_x64, 'import switched to float64'\n"
            "from experiments.cell import float64\n"
            "import jax.numpy as jnp\n"
            "with float64():\n    assert jnp.zeros(1).dtype == jnp.float64\n"
            "assert jnp.zeros(1).dtype == jnp.float32\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_cell_progress_bar_ends_before_the_summary(tmp_path):
    """Item 14: the final 'cells' bar used to print again after the summary table, and
    log lines were written through it."""
    res = subprocess.run([sys.executable, "-m", "experiments.sweep", "-m", *SMALL, "design=uniform,first_two",
                          f"results_dir={tmp_path}", "progress=true", f"hydra.sweep.dir={tmp_path}/_hydra"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:]
    out = res.stdout
    head = out.index("world      design")
    assert "cells:" in out[:head] and "cells:" not in out[head:]


def _fake_record(d: Path, world: str, k: int, n: int, level: float, estimator: str = "newton", reps: int = 20, code: str = "x"):
    """A record of the uniform design whose gaps average ``level * 300 / n`` (no computation)."""
    g = np.full(reps, level * 300.0 / n) + np.linspace(-1e-4, 1e-4, reps)
    cols = {"replicate": np.arange(reps), "gap": g, "valid": np.ones(reps, bool), "predicted_gap": np.full(reps, 300.0 / n),
            "mle_exists": np.ones(reps, bool), "labels_spent": np.full(reps, n), "allocation": np.zeros(reps, np.int64),
            "allocation_random": np.zeros(reps, bool)}
    meta = {"world": {"name": world, "params": {"num_completions": k}}, "world_seed": 0, "design": {"name": "uniform", "params": {}},
            "estimator": {"name": estimator, "params": {}}, "budget": n, "seed": 0, "num_replicates": reps, "code_version": code,
            "cell": f"{world}_{k}_{n}_{estimator}_{reps}"}
    records.write_atomic(d / f"{meta['cell']}.npz", cols, meta)


def _curves(rows):
    import matplotlib.pyplot as plt

    from experiments.plotting import plot_gap_vs_budget

    fig = plot_gap_vs_budget(rows)
    got = {ln.get_label(): (ln.get_xdata().tolist(), np.round(ln.get_ydata(), 6).tolist())
           for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) and not ln.get_label().startswith("_")}
    plt.close(fig)
    return got


@pytest.mark.parametrize("case", ["worlds", "pool_sizes", "estimators", "code", "replicates"])
def test_a_summary_curve_joins_only_rows_of_one_quantity(tmp_path, case):
    """One curve of the summary figure is one world, estimator, design and config: rows of two
    world names, of one world at other sizes (at different budgets, so no budget is shared), of
    two estimators or of two code versions (records kept) in one results_dir are separate curves,
    labelled by what tells them apart;
    rows that differ only in their number of replicates are points of one curve."""
    if case == "worlds":
        for n in (300, 1000):
            _fake_record(tmp_path, "contextual", 6, n, 1.0)
            _fake_record(tmp_path, "tabular", 6, n, 10.0)
        want = {"uniform [contextual]": ([300, 1000], [1.0, 0.3]), "uniform [tabular]": ([300, 1000], [10.0, 3.0])}
    elif case == "pool_sizes":
        for n in (300, 1000):
            _fake_record(tmp_path, "contextual", 6, n, 1.0)
        _fake_record(tmp_path, "contextual", 50, 3000, 10.0)
        want = {"uniform [num_completions=6]": ([300, 1000], [1.0, 0.3]), "uniform [num_completions=50]": ([3000], [1.0])}
    elif case == "estimators":
        for n in (300, 1000):
            _fake_record(tmp_path, "contextual", 6, n, 1.0)
            _fake_record(tmp_path, "contextual", 6, n, 0.5, estimator="map")
        want = {"uniform [newton]": ([300, 1000], [1.0, 0.3]), "uniform [map]": ([300, 1000], [0.5, 0.15])}
    elif case == "code":
        _fake_record(tmp_path, "contextual", 6, 300, 1.0, code="old")
        _fake_record(tmp_path, "contextual", 6, 1000, 1.0, code="new")
        want = {"uniform [code=old]": ([300], [1.0]), "uniform [code=new]": ([1000], [0.3])}
    else:
        _fake_record(tmp_path, "contextual", 6, 300, 1.0, reps=20)
        _fake_record(tmp_path, "contextual", 6, 1000, 1.0, reps=40)
        want = {"uniform": ([300, 1000], [1.0, 0.3])}
    rows = records.aggregate(tmp_path)
    assert _curves(rows) == want
    if case == "pool_sizes":
        assert sorted(r["config"] for r in rows) == ["num_completions=50", "num_completions=6", "num_completions=6"]
    if case == "replicates":
        assert [r["config"] for r in rows] == ["", ""]


def test_code_version_sees_what_a_design_reads_helper_modules_and_closures(tmp_path, monkeypatch):
    """A design's version covered its own source and the files of ``imports`` only: a helper
    module the imported module reads, and the closure of a design made by a factory, could
    change while the version did not, and the sweep served the old record as current (mean
    gap 0.0200 for SHARPNESS 8, whose fresh value is 0.0151). Both are in the version now,
    which stays the same in one process and for the same values."""
    import importlib

    from experiments import cell
    from synthetic import uniform_weights
    from synthetic.designs import DESIGNS, register_design, weighted_output

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "ver_helper_probe.py").write_text("SHARPNESS = 0.0\n")
    (tmp_path / "ver_designs_probe.py").write_text("import ver_helper_probe\n\ndef weights(n):\n    return ver_helper_probe.SHARPNESS\n")
    importlib.invalidate_caches()
    cell._files_version.cache_clear()
    v0 = cell.code_version(("ver_designs_probe",))
    assert v0 == cell.code_version(("ver_designs_probe",))
    (tmp_path / "ver_helper_probe.py").write_text("SHARPNESS = 8.0\n")
    cell._files_version.cache_clear()  # a new process: the helper's file as it is now
    assert cell.code_version(("ver_designs_probe",)) != v0

    def make(sharp, table):
        def probe(key, problem, budget, rounding="auto"):
            return weighted_output(key, problem, budget, uniform_weights(problem.edges) ** sharp * table[0], rounding)
        return probe

    try:
        versions = []
        for sharp, table in ((1.0, np.ones(2)), (1.0, np.ones(2)), (2.0, np.ones(2)), (1.0, np.full(2, 3.0))):
            register_design("_closure_probe", summary="t", source="t", replace=True)(make(sharp, table))
            versions.append(cell.code_version((), "_closure_probe"))
        assert versions[0] == versions[1]  # the same values: the same version (records are reused)
        assert len(set(versions[1:])) == 3, versions  # a closure's number or array changed: a new version
    finally:
        DESIGNS.pop("_closure_probe", None)
        cell._files_version.cache_clear()


def test_a_user_designs_version_follows_jax_arrays_and_jitted_helpers_and_is_stable_across_processes():
    """Review of the dependency walk: a closure's jax array was hashed by type only, a jitted or
    lru_cached helper (not a plain function) was not followed, a memo list the design fills moved
    the version within one process, and marshal's bytes of a code object depend on reference
    counts. Now: jax arrays by value, decorated helpers through __wrapped__, mutable containers by
    type, code by its instructions and constants; two processes (other hash seeds) agree."""
    import os
    import subprocess
    import sys

    code = '''
import sys, jax, jax.numpy as jnp
from experiments import cell
from synthetic import uniform_weights
from synthetic.designs import register_design, weighted_output
memo = []
def make(table, helper, memo):
    def probe(key, problem, budget, rounding="auto"):
        memo.append(1)
        if problem.num_edges in {"a", "b"}:  # a frozenset of strings among its constants (hash-seed order)
            return None
        return weighted_output(key, problem, budget, uniform_weights(problem.edges) * float(table[0] * helper(1.0)), rounding)
    return probe
g = {"__name__": "__main__"}
exec("import jax\\n@jax.jit\\ndef helper(x):\\n    return x * %s\\n" % sys.argv[1], g)
register_design("_walk_probe", summary="t", source="t", replace=True)(make(jnp.array([float(sys.argv[2]), 2.0]), g["helper"], memo))
a = cell.code_version((), "_walk_probe")
memo.append(2)
assert cell.code_version((), "_walk_probe") == a
print(a)
'''

    def version(factor, first, seed="1"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, factor, first], capture_output=True, text=True, check=True, env=env)
        return out.stdout.strip().splitlines()[-1]

    base = version("2.0", "1.0")
    assert version("2.0", "1.0", seed="2") == base  # another process, another hash seed: the same version
    assert version("3.0", "1.0") != base  # the jitted helper's code changed
    assert version("2.0", "5.0") != base  # the closure's jax array changed


def test_a_user_designs_list_and_dict_values_are_in_its_version_read_once_per_registration():
    """Lists and dicts a design closes over were hashed by type only (a factory registered again
    over another list kept its version, and the sweep reused the old record). They are hashed by
    value now, once per registration: a list the design appends to as it runs moves nothing."""
    from experiments import cell
    from synthetic import uniform_weights
    from synthetic.designs import DESIGNS, register_design, weighted_output

    def make(table, memo):
        def probe(key, problem, budget, rounding="auto"):
            memo.append(len(memo))
            return weighted_output(key, problem, budget, uniform_weights(problem.edges) * table["scale"][0], rounding)
        return probe

    try:
        versions = []
        for table in ({"scale": [1.0]}, {"scale": [1.0]}, {"scale": [2.0]}):
            memo = []  # each registration's own, empty when it is registered
            register_design("_list_probe", summary="t", source="t", replace=True)(make(table, memo))
            versions.append(cell.code_version((), "_list_probe"))
            memo.extend(range(5))  # filled as the design runs: the registration's version stays
            assert cell.code_version((), "_list_probe") == versions[-1]
        assert versions[0] == versions[1] != versions[2]
    finally:
        DESIGNS.pop("_list_probe", None)


def test_a_user_designs_version_follows_the_globals_it_names_on_every_call():
    """The whole dependency walk was cached at its first call, so a notebook's edited global (SCALE
    1.0 -> 7.0) or redefined helper left the version unchanged and the sweep reused the old records.
    Only the closure's data is read once per registration; globals and helpers on every call."""
    from experiments import cell
    from synthetic import uniform_weights
    from synthetic.designs import DESIGNS, register_design, weighted_output

    g = {"__name__": "__main__", "uniform_weights": uniform_weights, "weighted_output": weighted_output}
    exec("SCALE = 1.0\ndef helper():\n    return SCALE\n"
         "def probe(key, problem, budget, rounding='auto'):\n"
         "    return weighted_output(key, problem, budget, uniform_weights(problem.edges) * helper(), rounding)\n", g)
    try:
        register_design("_global_probe", summary="t", source="t", replace=True)(g["probe"])
        a = cell.code_version((), "_global_probe")
        g["SCALE"] = 7.0
        b = cell.code_version((), "_global_probe")
        exec("def helper():\n    return 2 * SCALE\n", g)
        c = cell.code_version((), "_global_probe")
        assert len({a, b, c}) == 3
    finally:
        DESIGNS.pop("_global_probe", None)
