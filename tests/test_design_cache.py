"""Solved designs cached on disk (issue 16, item 5): served bit for bit, across processes,
never trusted when damaged or made by other code, off unless set, and invisible to the
sweep's records and summary."""

import collections
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments import cell, sweep
from synthetic.designs import cache, design_problem, run_design
from synthetic.designs import optimal
from synthetic.worlds import tabular_world
from theory.design import DesignSolution, SolverHistory

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["world=tabular", "world.params.num_completions=5", "num_replicates=2", "hydra/job_logging=disabled"]
WORLD = dict(num_prompts=4, num_completions=6)  # tests/test_rounding_designs.py's tabular problem


@pytest.fixture(scope="module")
def prob():
    return design_problem(tabular_world(jax.random.PRNGKey(0), **WORLD))


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty in-process memo, the cache in ``tmp_path / "cache"``, and a count of real solves."""
    monkeypatch.setattr(optimal, "_SOLVED", collections.OrderedDict())
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    previous = cache.set_design_cache(tmp_path / "cache")
    calls = []
    real = optimal._solve_uncached

    def counted(*args, **kwargs):
        calls.append(args[2])  # the criterion
        return real(*args, **kwargs)

    monkeypatch.setattr(optimal, "_solve_uncached", counted)
    yield calls
    cache.set_design_cache(previous)


def _forget(monkeypatch):
    """A new in-process state: the memo is empty, as in another process."""
    monkeypatch.setattr(optimal, "_SOLVED", collections.OrderedDict())


def _no_solver(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the solver was called: the design was not served from the cache")

    monkeypatch.setattr(optimal, "_solve_uncached", refuse)


def _assert_bitwise_equal(a, b, where="solution"):
    """Same type, dtype, shape and bytes, field by field (nested histories included)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        assert a._fields == b._fields
        for name in a._fields:
            _assert_bitwise_equal(getattr(a, name), getattr(b, name), f"{where}.{name}")
        return
    x, y = np.asarray(a), np.asarray(b)
    assert x.dtype == y.dtype and x.shape == y.shape, f"{where}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
    assert x.tobytes() == y.tobytes(), f"{where}: the bits differ"


def _files(d):
    return sorted(Path(d).glob("*.npz"))


CASES = {
    "L at the truth": lambda p: dict(theta=p.theta_star, criterion="L"),
    "D at the reference": lambda p: dict(theta=np.zeros_like(p.theta_star), criterion="D"),
    "A with caps": lambda p: dict(theta=np.zeros_like(p.theta_star), criterion="A", caps=np.full(p.num_edges, 0.05)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stored_design_loads_bit_for_bit_without_the_solver(prob, fresh, monkeypatch, tmp_path, case):
    kw = CASES[case](prob)
    theta, criterion = kw.pop("theta"), kw.pop("criterion")
    solved = optimal._solve(prob, theta, criterion, 0.0, 1e-4, on_disk=True, **kw)
    assert fresh == [criterion] and len(_files(tmp_path / "cache")) == 1
    assert isinstance(solved, DesignSolution) and isinstance(solved.history, SolverHistory)
    _forget(monkeypatch)
    _no_solver(monkeypatch)
    loaded = optimal._solve(prob, theta, criterion, 0.0, 1e-4, on_disk=True, **kw)
    _assert_bitwise_equal(solved, loaded)
    assert loaded is optimal._SOLVED[next(iter(optimal._SOLVED))]  # the memo stays in front of the disk


def test_a_design_solved_in_another_process_is_served_here(prob, fresh, monkeypatch, tmp_path):
    """Item 5: the cache works across processes (the subprocess finds it through the environment variable)."""
    out = tmp_path / "theirs.npz"
    code = f"""
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from synthetic.designs import design_problem, run_design
from synthetic.worlds import tabular_world
prob = design_problem(tabular_world(jax.random.PRNGKey(0), **{WORLD!r}))
o = run_design("oracle", jax.random.PRNGKey(3), prob, 25)
np.savez({str(out)!r}, weights=np.asarray(o.weights), counts=o.dense_counts(prob.num_edges))
"""
    env = {**os.environ, cache.ENV_VAR: str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_files(tmp_path / "cache")) == 1
    _no_solver(monkeypatch)
    mine = run_design("oracle", jax.random.PRNGKey(3), prob, 25)
    with np.load(out) as theirs:
        assert np.asarray(mine.weights).tobytes() == theirs["weights"].tobytes()
        np.testing.assert_array_equal(mine.dense_counts(prob.num_edges), theirs["counts"])


def _damage_truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage_garbage(path):
    path.write_bytes(b"not a zip file at all")


def _damage_empty(path):
    path.write_bytes(b"")


def _damage_flip_a_weight(path):
    # One bit of the stored weights: the zip's CRC must catch it.
    with np.load(path) as z:
        w = z["weights"].tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(w)
    assert at > 0
    data[at + len(w) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_garbage, _damage_empty, _damage_flip_a_weight],
                         ids=["truncated", "garbage", "empty", "flipped bit"])
def test_a_damaged_file_is_ignored_recomputed_and_rewritten(prob, fresh, monkeypatch, tmp_path, caplog, damage):
    solved = optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    (path,) = _files(tmp_path / "cache")
    damage(path)
    _forget(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="synthetic.designs.cache"):
        again = optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    assert fresh == ["L", "L"]  # solved again, not served
    assert str(path) in caplog.text and "solved again" in caplog.text
    _assert_bitwise_equal(solved, again)
    # the recomputed design replaced the damaged file
    _forget(monkeypatch)
    _no_solver(monkeypatch)
    _assert_bitwise_equal(solved, optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True))


def test_a_design_stored_by_other_code_is_never_served(prob, fresh, monkeypatch, tmp_path, caplog):
    real = cache.solver_code_hash()
    monkeypatch.setattr(cache, "_CODE_HASH", "0" * 64)  # as if theory/ or optimal.py had been edited
    optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    (other,) = _files(tmp_path / "cache")
    assert json.loads(str(np.load(other)["meta"]))["code"] == "0" * 64
    monkeypatch.setattr(cache, "_CODE_HASH", real)
    _forget(monkeypatch)
    optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    assert fresh == ["L", "L"] and len(_files(tmp_path / "cache")) == 2  # a different key: a miss, not the old answer
    # The other code's file under this code's name: its stored key does not match.
    (mine,) = [p for p in _files(tmp_path / "cache") if p != other]
    shutil.copyfile(other, mine)
    _forget(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="synthetic.designs.cache"):
        optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    assert fresh == ["L", "L", "L"] and "holds key" in caplog.text and str(mine) in caplog.text
    # the file key depends on the inputs, the solver's source and the runtime
    base = cache.entry_key("inputs")
    assert cache.entry_key("other inputs") != base
    monkeypatch.setattr(cache, "_CODE_HASH", "1" * 64)
    assert cache.entry_key("inputs") != base
    monkeypatch.setattr(cache, "_CODE_HASH", real)
    real_runtime = cache.runtime
    for change in ({"jax": "0.0.0"}, {"numpy": "0.0.0"}, {"float": "float32"}, {"backend": "gpu"}, {"blas_threads": 64}, {"cpus": 64}):
        monkeypatch.setattr(cache, "runtime", lambda: {**real_runtime(), **change})
        assert cache.entry_key("inputs") != base, change
    monkeypatch.setattr(cache, "runtime", real_runtime)
    assert cache.entry_key("inputs") == base


def test_the_solver_hash_covers_theory_and_optimal_py():
    labels = [label for label, _ in cache._solver_files()]
    assert "synthetic/designs/optimal.py" in labels and "theory/design/solver.py" in labels
    assert "theory/design/output.py" in labels and all(Path(f).exists() for _, f in cache._solver_files())


def test_the_cache_is_off_unless_a_directory_is_set(prob, monkeypatch, tmp_path):
    monkeypatch.setattr(optimal, "_SOLVED", collections.OrderedDict())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    previous = cache.set_design_cache(cache.FROM_ENVIRONMENT)
    try:
        assert cache.design_cache_dir() is None
        assert cache.load("anything") is None and cache.store("anything", None) is None
        optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
        assert list(tmp_path.rglob("*")) == []  # nothing written anywhere here
        monkeypatch.setenv(cache.ENV_VAR, "")
        assert cache.design_cache_dir() is None  # empty: off
        monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "env"))
        assert cache.design_cache_dir() == tmp_path / "env"
        cache.set_design_cache(None)  # the function wins over the environment
        assert cache.design_cache_dir() is None
        with cache.using_design_cache(tmp_path / "fn") as d:
            assert d == tmp_path / "fn" == cache.design_cache_dir()
        assert cache.design_cache_dir() is None
        # a design at a pilot estimate is not written (other cells never ask for it again)
        cache.set_design_cache(tmp_path / "fn")
        optimal._solve(prob, prob.theta_star, "A", 0.0, 1e-4)
        assert not (tmp_path / "fn").exists()
        for bad in ("", 3, True):
            with pytest.raises((TypeError, ValueError), match="design_cache must be null .* or a directory path"):
                cache.set_design_cache(bad)
    finally:
        cache.set_design_cache(previous)


def test_cache_files_get_the_mode_of_the_umask(prob, fresh, tmp_path):
    old = os.umask(0o022)
    try:
        optimal._solve(prob, prob.theta_star, "L", 0.0, 1e-4, on_disk=True)
    finally:
        os.umask(old)
    (path,) = _files(tmp_path / "cache")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporary file left


def _cfg(tmp_path, *overrides):
    return sweep.compose_job([*SMALL, "design=oracle", f"results_dir={tmp_path / 'res'}", *overrides])


def test_the_design_cache_key_is_checked_before_any_work(tmp_path, monkeypatch):
    assert cell.check_design_cache(_cfg(tmp_path)) == tmp_path / "res" / "design_cache"  # the default
    assert not (tmp_path / "res").exists()  # checked without writing: made at the first solved design
    assert cell.check_design_cache(_cfg(tmp_path, "design_cache=null")) is None
    assert cell.check_design_cache(_cfg(tmp_path, f"design_cache={tmp_path / 'shared'}")) == tmp_path / "shared"
    assert cell.check_design_cache(OmegaConf.create({"results_dir": str(tmp_path)})) is None  # absent: left alone
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = {
        "design_cache=false": "design_cache must be null or a directory path, got False",
        "design_cache=3": "design_cache must be null or a directory path, got 3",
        "design_cache=''": "design_cache must be null or a directory path, got ''",
        "design_cache=${results_dir}": "is results_dir itself",
        f"design_cache={blocker / 'sub'}": "a_file is not a directory",
    }
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        bad[f"design_cache={locked / 'sub'}"] = "locked is not writable"

    def no_work(*args, **kwargs):
        raise AssertionError("the cell started before its design_cache was checked")

    monkeypatch.setattr(cell, "make_world", no_work)
    for override, message in bad.items():
        cfg = _cfg(tmp_path, override)
        with pytest.raises(ValueError, match="allowed: null") as err:
            cell.check_design_cache(cfg)
        assert message in str(err.value)
        with pytest.raises(ValueError, match=re.escape(message)):
            cell.run_cell(cfg)
    # a sweep: results_dir checked first (the default cache lives in it), then design_cache, before any job
    monkeypatch.setattr(sweep, "run_cell", no_work)
    with pytest.raises(ValueError, match=r"job \[.*\]: design_cache = .*a_file is not a directory"):
        sweep.run_jobs([[*SMALL, "design=uniform", f"design_cache={blocker / 'sub'}"]], tmp_path / "res2", progress=False)
    with pytest.raises(ValueError, match="results_dir: cannot write records to"):
        sweep.run_jobs([[*SMALL, "design=uniform"]], blocker / "sub", progress=False)


@pytest.mark.slow  # two real cells: compiling the replicate fits takes ~10 s on a loaded 2-core machine
def test_the_cells_of_a_sweep_share_designs_and_the_summary_ignores_the_cache(tmp_path, monkeypatch):
    """Two cells in two fresh in-process states (as in two launcher processes): the second
    is served from disk; the cache is not part of a cell's identity, and the summary is the
    same with and without the cache files (it reads results_dir/*.npz only)."""
    monkeypatch.setattr(optimal, "_SOLVED", collections.OrderedDict())
    res = tmp_path / "res"
    sweep.run_jobs([[*SMALL, "design=oracle", "seed=0"]], res, progress=False)
    (stored,) = _files(res / "design_cache")
    _forget(monkeypatch)
    _no_solver(monkeypatch)
    sweep.run_jobs([[*SMALL, "design=oracle", "seed=1"]], res, progress=False)
    assert _files(res / "design_cache") == [stored]
    assert cell.cell_id(_cfg(tmp_path))[0] == cell.cell_id(_cfg(tmp_path, "design_cache=null"))[0]
    problems = []
    rows = sweep.aggregate(res, problems=problems)
    assert len(rows) == 2 and problems == [] and {r["design"] for r in rows} == {"oracle"}
    shutil.rmtree(res / "design_cache")
    assert sweep.aggregate(res, problems=problems) == rows and problems == []
    assert stored.suffix == ".npz"  # a file the summary would read, were it in results_dir


def test_a_solve_made_with_other_blas_threads_is_not_reused():
    """Sweep cells solve with one BLAS thread (experiments.cell.one_blas_thread); a design solved
    with more (a notebook, the old code) sums in another order and must have another file key."""
    from threadpoolctl import threadpool_limits

    from experiments.cell import one_blas_thread

    with one_blas_thread():
        one = cache.runtime()
        key_one = cache.entry_key("inputs")
    assert one["blas_threads"] == 1
    with threadpool_limits(limits=2, user_api="blas"):
        two = cache.runtime()
        key_two = cache.entry_key("inputs")
    if two["blas_threads"] > 1:  # a BLAS that runs one thread only has nothing to tell apart
        assert key_two != key_one



def test_a_design_that_stops_before_its_tolerance_is_announced_once(prob, fresh, monkeypatch):
    """A solver that stopped at its iteration limit gave its design to the cell without a word
    (only ``info['converged']``); now theory.design.optimal_design warns (DesignNotConvergedWarning,
    naming the certificate it reached) for every caller, once per solve: a memo hit says nothing
    again, and a converged solve says nothing."""
    import functools
    import warnings

    from theory.design import DesignNotConvergedWarning

    cache.set_design_cache(None)  # every solve from the solver (the fixture puts the previous cache back)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DesignNotConvergedWarning)
        run_design("oracle", jax.random.key(0), prob, 60)  # converged: silent
    _forget(monkeypatch)
    monkeypatch.setattr(optimal, "optimal_design", functools.partial(optimal.optimal_design, max_iter=0))
    with pytest.warns(DesignNotConvergedWarning, match="stopped at max_iter = 0 before its tolerance .*relative certificate"):
        out = run_design("oracle", jax.random.key(0), prob, 60)
    assert not out.info["converged"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DesignNotConvergedWarning)
        run_design("oracle", jax.random.key(0), prob, 60)  # the memo's: already announced
