"""The sweep app: validation before any job, atomic resumable cells, same numbers after a kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from experiments import sweep
from experiments.compiled import _supported
from synthetic.designs import DESIGNS

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "world=tabular",
    "world.params.num_completions=5",
    "num_replicates=20",
    "hydra.sweep.dir=${results_dir}/_hydra",
    "hydra/job_logging=disabled",
]


def _run(args, wait=True):
    cmd = [sys.executable, "-m", "experiments.sweep", "-m", *SMALL, *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _records(d):
    out = {}
    for p in sorted(Path(d).glob("*.npz")):
        cols, meta = sweep.read_cell(p)
        out[p.name] = (cols["gap"], cols["valid"], meta["budget"], meta["design"]["name"])
    return out


@pytest.mark.slow
def test_killed_and_restarted_sweep_gives_the_same_records_as_an_uninterrupted_one(tmp_path):
    grid = ["design=uniform,oracle,two_stage", "budget=100,300,1000"]
    a, b = tmp_path / "a", tmp_path / "b"
    res = _run([f"results_dir={a}", *grid])
    assert res.returncode == 0, res.stderr[-2000:]
    full = _records(a)
    assert len(full) == 9
    # Kill the second sweep (SIGKILL: no clean-up) once some cells are written.
    proc = _run([f"results_dir={b}", *grid], wait=False)
    t0 = time.time()
    while len(list(Path(b).glob("*.npz"))) < 3 and time.time() - t0 < 240:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in Path(b).glob("*.npz")}
    assert 3 <= len(done_before) < 9
    # A half-written temporary file and a corrupt cell file must not be trusted.
    (b / ".stale.tmp").write_bytes(b"partial")
    victim = sorted(done_before)[0]
    (b / victim).write_bytes(b"not a zip file")
    res = _run([f"results_dir={b}", *grid])
    assert res.returncode == 0, res.stderr[-2000:]
    again = _records(b)
    assert again.keys() == full.keys()
    for name, (gap, valid, n, design) in full.items():
        np.testing.assert_array_equal(again[name][0], gap)
        np.testing.assert_array_equal(again[name][1], valid)
    # Finished cells were skipped, not recomputed (the corrupt one was).
    for name, mtime in done_before.items():
        if name != victim:
            assert (b / name).stat().st_mtime_ns == mtime
    assert "uniform" in res.stdout and "/uniform" in res.stdout  # the summary table


def test_an_invalid_job_anywhere_in_a_sweep_stops_it_before_the_first_job(tmp_path):
    res = _run([f"results_dir={tmp_path}", "design=uniform,first_two", "budget=100,-1"])
    assert res.returncode != 0
    assert "invalid sweep, no job started" in res.stderr and "budget must be an integer >= 1" in res.stderr
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget=-1"], "budget must be an integer >= 1"),
        (["num_replicates=1"], "num_replicates must be an integer >= 2"),
        (["world.params.num_completions=1"], "num_completions must be an integer >= 2"),
        (["world.params.beta=0"], "beta must be a finite number > 0"),
        (["design=first_two", "design.params.rounding=without_replacement", "budget=100000"], "exceeds the 10 candidate edges"),
        (["+design.params.nope=1"], "allowed: ['max_labels_per_edge', 'rounding']"),
        (["design=adpo_greedy", "budget=11"], "design.params.with_replacement = false labels each edge at most once"),
        (["design=prompt_selection", "budget=2"], "prompt_selection labels each prompt at most once"),
        (["+world.params.nope=1"], "allowed: ["),
        (["design_cache=false"], "design_cache must be null or a directory path"),
        (["estimator=optax", "+estimator.params.nope=1"], "allowed: ["),
        # keys the sweep never reads were recorded in the cell's config column and ignored: the
        # summary said prior_precision=100 beside the default prior's numbers
        (["estimator=map", "+estimator.prior_precision=100"],
         "estimator.prior_precision is not a key of estimator (a parameter is estimator.params.prior_precision)"),
        (["design=two_stage", "+design.pilot_fraction=0.5"], "design.pilot_fraction is not a key of design"),
        (["+num_replicate=5"], "num_replicate is not a sweep setting (it would be recorded and never applied)"),
    ],
)
def test_invalid_configs_name_the_key_and_the_allowed_values(overrides, message):
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=["world=tabular", "world.params.num_completions=5", *overrides])
        with pytest.raises(ValueError) as err:
            sweep.validate(cfg)
        assert message in str(err.value)


def test_sweep_expands_experiment_grids_and_command_line_lists():
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        cfg = compose(config_name="sweep", overrides=["experiment=figure1_contextual"], return_hydra_config=True)
        cfg.hydra.overrides.task = ["experiment=figure1_contextual", "seed=0,1"]
        grid = cfg.hydra.sweeper.params
        designs, budgets = str(grid.design).split(","), str(grid.budget).split(",")
        jobs = sweep.sweep_job_overrides(cfg)
    assert len(designs) >= 10 and len(budgets) >= 4
    assert len(jobs) == len(designs) * len(budgets) * 2  # the experiment's grid times the command line's seed=0,1
    assert {(j.count("design="), j.count("budget="), j.count("seed=")) for j in map(" ".join, jobs)} == {(1, 1, 1)}
    assert len({tuple(sorted(j)) for j in jobs}) == len(jobs)  # no job twice


def test_jobs_composed_once_per_group_equal_jobs_composed_one_by_one():
    """run_jobs composes a job that differs from an earlier one only in budget= and seed= values
    as a copy with those values set; each config must equal Hydra's own composition of the job."""
    from omegaconf import OmegaConf

    jobs = [["design=uniform", "budget=100", "seed=0"], ["design=uniform", "budget=300", "seed=0"],
            ["design=uniform", "budget=300", "seed=2"], ["design=oracle", "budget=300"], ["design=oracle", "budget=1000"],
            ["design=uniform", "seed=1", "budget=100"], ["design=uniform", "budget=100"], ["design=uniform", "budget=100", "estimator=map"],
            ["design=uniform", "budget=30", "estimator=map", "world=tabular"], ["design=uniform", "budget=60", "estimator=map", "world=tabular"],
            ["experiment=figure1_tabular", "design=first_two", "budget=3000", "seed=5"],
            ["experiment=figure1_tabular", "design=first_two", "budget=100", "seed=0"],
            ["experiment=figure1_tabular", "design=first_two", "budget=300"],
            ["design=uniform", "++budget=7", "budget=9"], ["design=uniform", "budget=5", "++budget=7"]]
    fast = sweep.compose_jobs(jobs)
    assert sum(1 for i, c in enumerate(fast) if any(c is f for f in fast[:i])) == 0  # no config shared
    for job, got in zip(jobs, fast):
        want = sweep.compose_job(job, hydra_node=True)
        a, b = OmegaConf.to_container(got), OmegaConf.to_container(want)
        ha, hb = a.pop("hydra"), b.pop("hydra")
        assert a == b, job
        assert ha["runtime"]["choices"] == hb["runtime"]["choices"], job
        assert OmegaConf.is_struct(got) == OmegaConf.is_struct(want) and OmegaConf.is_readonly(got) == OmegaConf.is_readonly(want), job
        assert [type(got[k]) for k in ("budget", "seed")] == [int, int]
    assert [c.budget for c in fast] == [100, 300, 300, 300, 1000, 100, 100, 100, 30, 60, 3000, 100, 300, 9, 7]
    assert [c.seed for c in fast[:3]] == [0, 0, 2] and fast[5].seed == 1 and [c.seed for c in fast[10:13]] == [5, 0, 0]


def test_every_registered_design_has_a_config_with_its_defaults():
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        for name, spec in DESIGNS.items():
            cfg = compose(config_name="sweep", overrides=[f"design={name}"])
            assert cfg.design.name == name
            assert dict(cfg.design.params) == spec.params


def test_cell_id_changes_with_what_changes_the_numbers():
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        base = compose(config_name="sweep")
        ids = {sweep.cell_id(compose(config_name="sweep", overrides=o))[0] for o in [[], ["budget=2000"], ["seed=1"], ["world_seed=1"], ["design=oracle"], ["estimator=optax"], ["results_dir=elsewhere"]]}
        assert len(ids) == 6  # results_dir does not change the numbers
        assert sweep.cell_id(base)[0] == sweep.cell_id(compose(config_name="sweep"))[0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom(Exception):
        pass

    class Bad:
        def __array__(self, *a, **k):
            raise Boom()

    with pytest.raises(Boom):
        sweep.write_atomic(tmp_path / "c.npz", {"gap": Bad()}, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_joblib", "ray_local"])
def test_launchers_give_the_same_records_as_the_basic_launcher(tmp_path, launcher):
    """Scale-out through Hydra launchers (joblib processes; a local Ray instance with two CPUs)."""
    grid = ["design=uniform,oracle", "budget=100,300"]
    base, other = tmp_path / "basic", tmp_path / launcher
    res = _run([f"results_dir={base}", *grid])
    assert res.returncode == 0, res.stderr[-2000:]
    res = _run([f"results_dir={other}", *grid, f"hydra/launcher={launcher}"])
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _records(base), _records(other)
    assert len(a) == 4 and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
    assert "oracle" in res.stdout  # the summary of the multirun


def test_a_design_registered_by_user_code_runs_through_imports(tmp_path):
    module = tmp_path / "my_designs_for_test.py"
    module.write_text(
        "from synthetic.designs import register_design, weighted_output\n"
        "from synthetic import uniform_weights\n"
        "@register_design('everything_once', summary='uniform', source='test', replace=True)\n"
        "def everything_once(key, problem, budget, rounding='auto'):\n"
        "    return weighted_output(key, problem, budget, uniform_weights(problem.edges), rounding)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "experiments.sweep", "-m", *SMALL, f"results_dir={tmp_path / 'r'}",
           "imports=[my_designs_for_test]", "design=custom", "design.name=everything_once", "budget=100,200"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "r").glob("*everything_once*.npz"))) == 2
    bad = _run([f"results_dir={tmp_path / 'r'}", "imports=[no_such_module_xyz]", "budget=100"])
    assert bad.returncode != 0 and "imports: cannot import 'no_such_module_xyz'" in bad.stderr


def test_release_compiled_frees_the_memory_maps_of_compiled_code_past_its_threshold():
    """In a fresh process: 150 compiled shapes map thousands of regions (LLVM's JIT, about
    15 per executable); below the threshold nothing happens, above it JAX's caches are
    cleared and the regions are unmapped, and the same function still gives the same numbers."""
    code = """
import jax, jax.numpy as jnp
from experiments.compiled import mapped_regions, max_map_count, release_compiled
f = jax.jit(lambda x: jnp.sin(x) @ x.T + jnp.cos(x).sum())
first = f(jnp.ones((3, 3)))
for n in range(4, 154):
    f(jnp.ones((n, 3))).block_until_ready()
used = mapped_regions()
assert used > 1500, used
assert not release_compiled(fraction=1.0) and mapped_regions() >= used - 50
assert release_compiled(fraction=(used - 500) / max_map_count())
after = mapped_regions()
assert after < used - 1500, (used, after)
assert (f(jnp.ones((3, 3))) == first).all()
print("ok", used, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_release_compiled_refuses_a_fraction_outside_zero_one():
    from experiments.compiled import release_compiled

    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction must be in"):
            release_compiled(bad)


def test_each_computed_cell_releases_compiled_code_when_needed(tmp_path, monkeypatch):
    """The sweep asks release_compiled after every cell it computes (not after a reused one)."""
    calls = []
    monkeypatch.setattr(sweep, "release_compiled", lambda: calls.append(1) or False)
    small = ["world=tabular", "world.params.num_completions=5", "num_replicates=2", "hydra/job_logging=disabled"]
    jobs = [[*small, "design=uniform", "budget=20"], [*small, "design=uniform", "budget=40"]]
    sweep.run_jobs(jobs, tmp_path, progress=False)
    assert len(calls) == 2
    sweep.run_jobs(jobs, tmp_path, progress=False)
    assert len(calls) == 2


def test_other_xla_flags_are_each_flags_last_setting_without_the_emitters(monkeypatch):
    from experiments.cell import code_version
    from experiments.compiled import other_flags

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert other_flags() == ()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    assert other_flags() == ()
    base = code_version()
    monkeypatch.setenv("XLA_FLAGS", " --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false "
                       "--xla_backend_optimization_level=0 --xla_backend_optimization_level=3")
    assert other_flags() == ("--xla_backend_optimization_level=3", "--xla_llvm_disable_expensive_passes=true")
    changed = code_version()
    assert changed != base
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=3 --xla_llvm_disable_expensive_passes=true "
                       "--xla_cpu_use_fusion_emitters=false")
    assert code_version() == changed  # the same settings in another order: the same compiled code


@pytest.mark.skipif(not _supported(), reason="this jaxlib does not accept XLA's classic-emitter flag")
def test_classic_emitters_are_set_before_the_first_computation_and_only_then():
    """``use_classic_emitters`` in fresh processes (the suite's own setting removed): it adds the
    flag to ``XLA_FLAGS`` for this process and its children and says so; a process whose JAX
    backend has started keeps XLA's defaults and sets them explicitly for its children (one run
    never mixes the two); a setting already in ``XLA_FLAGS`` (the user's) is left alone; a kept
    probe answer of this jaxlib is used, another jaxlib's is not. The probe's premise: XLA
    aborts a process on a flag it does not know."""
    import jaxlib

    from experiments.compiled import CLASSIC_EMITTERS, accepts_flags

    code = """
import os, subprocess, sys
from experiments.compiled import emitters, use_classic_emitters
case = sys.argv[1]
if case == "late":
    import jax.numpy as jnp
    float(jnp.ones(2).sum())  # the backend exists now
on = use_classic_emitters()
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('XLA_FLAGS', ''))"], capture_output=True, text=True).stdout.strip()
print(on, emitters(), repr(os.environ.get("XLA_FLAGS", "")), repr(child), os.environ.get("WHICHPAIRS_XLA_CLASSIC_EMITTERS"))
"""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WHICHPAIRS_XLA_CLASSIC_EMITTERS")}

    def run(case, **env):
        out = subprocess.run([sys.executable, "-c", code, case], capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**base, **env})
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    flag, probed = repr(CLASSIC_EMITTERS), f"{jaxlib.__version__}:1"
    assert run("fresh") == f"True classic {flag} {flag} {probed}"
    other = "--xla_cpu_enable_fast_math=false"
    assert run("fresh", XLA_FLAGS=other) == f"True classic '{other} {CLASSIC_EMITTERS}' '{other} {CLASSIC_EMITTERS}' {probed}"
    default = "'--xla_cpu_use_fusion_emitters=true'"
    assert run("late") == f"False default {default} {default} {probed}"
    assert run("late", XLA_FLAGS=CLASSIC_EMITTERS) == f"True classic {flag} {flag} None"
    for user, setting in (("--xla_cpu_use_fusion_emitters=true", "default"), ("--xla_cpu_use_fusion_emitters=0", "classic"),
                          ("--xla_cpu_use_fusion_emitters=False", "classic"), ("--xla_cpu_use_fusion_emitters", "default")):
        assert run("fresh", XLA_FLAGS=user) == f"{setting == 'classic'} {setting} {user!r} {user!r} None"
    assert run("fresh", WHICHPAIRS_XLA_CLASSIC_EMITTERS=f"{jaxlib.__version__}:0") == f"False default '' '' {jaxlib.__version__}:0"
    assert run("fresh", WHICHPAIRS_XLA_CLASSIC_EMITTERS="0.0.0:0") == f"True classic {flag} {flag} {probed}"
    assert accepts_flags(CLASSIC_EMITTERS) and not accepts_flags("--xla_no_such_flag_whichpairs=1")


@pytest.mark.skipif(not _supported(), reason="this jaxlib does not accept XLA's classic-emitter flag")
def test_figure_6s_app_computes_with_classic_emitters_as_the_figures_command_does():
    """``python -m experiments.practical`` builds its worlds (a computation) before any cell: it
    sets the classic emitters first, so its records carry the figures command's code version
    (found: they carried the default emitters', and neither command reused the other's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WHICHPAIRS_XLA_CLASSIC_EMITTERS")}
    code = """
import sys
from experiments import practical
from experiments.compiled import emitters

def compute(*args, **kwargs):
    practical.jobs(small=True, panels=("hh_like",))  # what the real compute does first: build a world
    print("EMITTERS", emitters())
    sys.exit(0)

practical.compute = compute
practical.main(["--small", "--no-progress"])
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "EMITTERS classic" in res.stdout


@pytest.mark.skipif(not _supported(), reason="this jaxlib does not accept XLA's classic-emitter flag")
def test_the_sweep_app_computes_its_records_with_classic_emitters_and_keys_them_so(tmp_path, monkeypatch):
    """The sweep app, and ``run_jobs`` in a fresh process, started without any XLA setting compute
    with the classic emitters: each record's code version is the one this process (the suite: classic emitters) computes, and a
    process with XLA's default emitters would not reuse it (its code version differs)."""
    from experiments.cell import record_code_version
    from experiments.records import read_cell

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WHICHPAIRS_XLA_CLASSIC_EMITTERS")}
    cmd = [sys.executable, "-m", "experiments.sweep", "world=tabular", "world.params.num_completions=4", "num_replicates=2",
           "design=uniform", "budget=20", f"results_dir={tmp_path}", "hydra/job_logging=disabled", f"hydra.run.dir={tmp_path / 'h'}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    # and in-process, through run_jobs (whose checks compute before any cell), in a fresh process
    code = (f"from experiments import sweep; sweep.run_jobs([['world=tabular', 'world.params.num_completions=4', 'num_replicates=2', "
            f"'design=uniform', 'budget=40', 'hydra/job_logging=disabled']], {str(tmp_path)!r}, progress=False)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    metas = [read_cell(path)[1] for path in sorted(tmp_path.glob("*.npz"))]
    assert len(metas) == 2
    assert "--xla_cpu_use_fusion_emitters=false" in os.environ.get("XLA_FLAGS", "")
    # the apps' setting: the classic emitters and no other XLA flag
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    assert all(meta["code_version"] == record_code_version(meta) for meta in metas)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert all(meta["code_version"] != record_code_version(meta) for meta in metas)
    # another XLA flag changes the compiled code, so the version too (the suite's LLVM -O0 among them)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0")
    assert all(meta["code_version"] != record_code_version(meta) for meta in metas)


def test_a_users_design_that_is_no_function_of_its_key_is_refused_before_any_job(tmp_path):
    """A design drawing with np.random gave records the same config and seed do not reproduce,
    and one falsely registered keyless ran once for all of a cell's draws, its interval leaving
    its randomness out; both went unnoticed. The sweep now runs a user's design twice with one
    key (and with another key if it says keyless) before any job; project designs are tested
    for the same in tests/test_rounding_designs.py and tests/test_allocation_draws.py."""
    from synthetic import uniform_weights
    from synthetic.designs import register_design, weighted_output

    def drifting(key, problem, budget, rounding="auto"):
        w = np.asarray(uniform_weights(problem.edges)) * np.random.default_rng().uniform(0.5, 1.5, problem.num_edges)
        return weighted_output(key, problem, budget, w / w.sum(), rounding)

    def keyed(key, problem, budget, rounding="auto"):
        return weighted_output(key, problem, budget, uniform_weights(problem.edges), rounding)

    try:
        register_design("_drifting_probe", summary="t", source="t", replace=True)(drifting)
        register_design("_false_keyless_probe", summary="t", source="t", keyless=True, replace=True)(keyed)
        register_design("_keyed_probe", summary="t", source="t", replace=True)(keyed)
        base = [*SMALL, "design=custom", "budget=6", "num_replicates=2", "progress=false"]
        with pytest.raises(ValueError, match=r"gave two allocations for one key \(label counts or pilot labels\): it draws randomness outside its key"):
            sweep.run_jobs([[*base, "design.name=_drifting_probe"]], tmp_path, progress=False)
        with pytest.raises(ValueError, match="registered keyless=True but another key gave another allocation"):
            sweep.run_jobs([[*base, "design.name=_false_keyless_probe"]], tmp_path, progress=False)
        assert not list(tmp_path.glob("*.npz"))  # refused before any job
        (path,) = sweep.run_jobs([[*base, "design.name=_keyed_probe"]], tmp_path, progress=False)
        assert path.exists()
    finally:
        for name in ("_drifting_probe", "_false_keyless_probe", "_keyed_probe"):
            DESIGNS.pop(name, None)


@pytest.mark.skipif(not _supported(), reason="this jaxlib does not accept XLA's classic-emitter flag")
def test_a_fresh_process_summarises_the_apps_records_as_current(tmp_path):
    """``sweep.aggregate`` in a plain Python process (a notebook, a script) had marked every record the
    apps made as made by other code (the process's XLA default emitters are part of the code version) and
    blanked the rows' ratios to uniform; it now takes the apps' emitters before its first computation."""
    base = ["world=tabular", "world.params.num_completions=5", "num_replicates=10", "budget=40"]
    sweep.run_jobs([[*base, "design=uniform"], [*base, "design=oracle"]], tmp_path, progress=False)
    # this suite's XLA flags, less the emitters' setting: what a fresh process of this installation starts with
    flags = " ".join(tok for tok in os.environ.get("XLA_FLAGS", "").split() if not tok.startswith("--xla_cpu_use_fusion_emitters"))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WHICHPAIRS_XLA_CLASSIC_EMITTERS")}
    env["XLA_FLAGS"] = flags
    code = (f"from experiments import sweep; rows = sweep.aggregate({str(tmp_path)!r}); "
            "print('CURRENT', [r['current_code'] for r in rows], [r['ratio_to_uniform'] for r in rows])")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("CURRENT"))
    assert "CURRENT [True, True]" in line and "nan" not in line, line


def test_a_users_design_gets_resolved_parameters_and_its_pilot_is_checked_for_reproducibility(tmp_path, monkeypatch):
    """Three ways a user's design gave silently wrong records: a parameter given as an interpolation
    (``${oc.env:...}``) reached the design unresolved while the record was filed under the resolved value
    (mode=focused's cell held mode=uniform's gaps); pilot wins drawn with np.random passed the
    reproducibility check, which compared only the counts; and a design registered adaptive=True or with an
    array default failed only when its job ran (the latter after computing its cell)."""
    from synthetic import uniform_weights
    from synthetic.designs import register_design, weighted_output

    def moded(key, problem, budget, mode="uniform"):
        w = np.asarray(uniform_weights(problem.edges))
        if mode == "focused":
            w = np.where(np.arange(w.size) < 4, 1.0, 0.0)
        return weighted_output(key, problem, budget, w / w.sum())

    def np_pilot(key, problem, budget):
        counts = np.full(problem.num_edges, 2)
        counts[0] += budget - counts.sum()
        wins = np.random.default_rng().integers(0, 3, problem.num_edges).astype(np.float64)
        wins[0] = 0.0
        from synthetic.labels import allocation_from_counts
        from synthetic.designs import DesignOutput
        return DesignOutput(allocation_from_counts(counts), None, (counts.astype(np.float64), wins), None)

    try:
        register_design("_mode_probe", summary="t", source="t", replace=True)(moded)
        register_design("_np_pilot_probe", summary="t", source="t", needs_truth=True, replace=True)(np_pilot)
        base = [*SMALL, "design=custom", "budget=60", "num_replicates=4", "progress=false"]
        monkeypatch.setenv("WP_MODE_PROBE", "focused")
        (via_env,) = sweep.run_jobs([[*base, "design.name=_mode_probe", "+design.params.mode=${oc.env:WP_MODE_PROBE}"]],
                                    tmp_path / "env", progress=False)
        (direct,) = sweep.run_jobs([[*base, "design.name=_mode_probe", "+design.params.mode=focused"]], tmp_path / "direct",
                                   progress=False)
        assert via_env.name == direct.name
        np.testing.assert_array_equal(sweep.read_cell(via_env)[0]["gap"], sweep.read_cell(direct)[0]["gap"])
        with pytest.raises(ValueError, match=r"gave two allocations for one key \(label counts or pilot labels\)"):
            sweep.run_jobs([[*base, "budget=80", "design.name=_np_pilot_probe"]], tmp_path / "pilot", progress=False)
        register_design("_adaptive_probe", summary="t", source="t", adaptive=True, replace=True)(moded)
        with pytest.raises(ValueError, match="is registered adaptive=True, but a sweep runs adaptively only the project's"):
            sweep.run_jobs([[*base, "design.name=_adaptive_probe"]], tmp_path / "adaptive", progress=False)
        # a user's function registered under a project rule's name would have run the project's rule
        project = DESIGNS["adpo_adaptive"]
        try:
            register_design("adpo_adaptive", summary="t", source="t", adaptive=True, replace=True)(moded)
            with pytest.raises(ValueError, match="is registered adaptive=True, but a sweep runs adaptively only the project's"):
                sweep.run_jobs([[*base, "design.name=adpo_adaptive"]], tmp_path / "adaptive", progress=False)
        finally:
            DESIGNS["adpo_adaptive"] = project
        assert not list((tmp_path / "pilot").glob("*.npz")) and not list((tmp_path / "adaptive").glob("*.npz"))
        with pytest.raises(ValueError, match="the default of parameter 'table' must be a JSON value"):
            register_design("_array_default_probe", summary="t", source="t", replace=True)(
                lambda key, problem, budget, table=np.ones(3): None)
        # a required parameter (no default) and **kwargs register as before
        register_design("_array_default_probe", summary="t", source="t", replace=True)(
            lambda key, problem, budget, alpha, *, beta_=(1, 2), **kw: None)
    finally:
        for name in ("_mode_probe", "_np_pilot_probe", "_adaptive_probe", "_array_default_probe"):
            DESIGNS.pop(name, None)


def test_a_summary_read_after_computing_leaves_the_environment_of_later_processes_alone(tmp_path):
    """In a process that has computed (a notebook), sweep.aggregate had set XLA_FLAGS to XLA's default
    emitters for every process started afterwards, so a sweep launched from it judged the apps' records
    stale and wrote records the apps would not take as current."""
    code = f"""
import os, jax.numpy as jnp
float(jnp.ones(2).sum())  # the backend has started
before = os.environ.get("XLA_FLAGS")
from experiments import sweep
sweep.aggregate({str(tmp_path)!r})
print("SAME", os.environ.get("XLA_FLAGS") == before)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "WHICHPAIRS_XLA_CLASSIC_EMITTERS")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "SAME True" in res.stdout


def test_world_parameters_given_as_interpolations_are_resolved():
    """``world.params.num_train_prompts=${...}`` was refused by the world's constructor, which got the
    unresolved string, though the cell's identity resolves it (design parameters are resolved too)."""
    cfg = sweep.compose_job(["world=contextual", "num_replicates=7", "world.params.num_train_prompts=${num_replicates}", "budget=50"])
    sweep.validate(cfg)
    from experiments.worlds import make_world
    import jax

    assert make_world(cfg.world, jax.random.key(0)).train.features.shape[0] == 7
