"""One sweep cell: what identifies it, which code made it, and how it is computed.

A *cell* is one (world, design, estimator, budget, seed) configuration and its
``num_replicates`` Monte-Carlo label sets, on ``allocation_draws`` draws of the design's
allocation (:func:`_run_cell`). Two runs are the same cell exactly when

* their **identity** is equal: every config value that changes the numbers, with
  each design's, estimator's and world's parameters completed by their defaults
  (so ``design=uniform`` and ``design=custom design.name=uniform`` are one cell,
  while ``design.params.pilot_fraction=0.5`` is another), and
* their **code version** is equal: a content hash of the code a cell's numbers come
  from (:data:`CELL_CODE`, the modules named in ``imports``, and the versions of
  JAX, jaxlib, NumPy, SciPy and optax). Unlike a git commit it sees uncommitted edits, and it
  does not change when plotting, the summary or documentation change.

This module is itself part of :data:`CELL_CODE`: editing it recomputes every cell.
Reading and writing records lives in :mod:`experiments.records`. A cell reads and
writes solved optimal designs in the directory of its ``design_cache`` key
(:func:`check_design_cache`, :mod:`synthetic.designs.cache`), so the cells of a sweep
share them whichever process runs them; the numbers do not depend on it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.compiled import emitters, other_flags, use_classic_emitters
from experiments.worlds import WORLDS, make_world
from synthetic.adaptive import run_adaptive
from synthetic.designs import DESIGNS, allocation_is_random, design_problem, run_design
from synthetic.designs.cache import using_design_cache
from synthetic.monte_carlo import ESTIMATORS, replicate_gaps
from theory import asymptotic_gap

__all__ = ["CELL_CODE", "REPLICATE_CHUNK", "cell_identity", "cell_id", "code_version", "record_code_version", "git_version", "run_cell", "forget_adaptive_runs", "allocation_draws", "float64", "one_blas_thread",
           "check_design_cache"]

#: Replicates per compiled call: bounds memory and drives the progress bar; the
#: numbers do not depend on it.
REPLICATE_CHUNK = 50

#: Packages and modules whose source a cell's numbers depend on (hashed into the
#: code version of every record). Plotting, records I/O and the summary are not here.
CELL_CODE = ("theory", "synthetic", "experiments.cell", "experiments.worlds")
# every package whose code computes a record's numbers: SciPy (the exact separation checks, the ridge-path
# limits, the bounds' searches) and optax (the gradient estimator) as well as JAX and NumPy
_VERSIONED = ("jax", "jaxlib", "numpy", "scipy", "optax")

#: An adaptive design's runs, per chunk of replicates, kept for the next cells of this process
#: (:func:`_adaptive_runs`): its labels do not depend on the estimator, and the figures fit the
#: same runs with several (MAP at every budget, the plain MLE at the largest).
_ADAPTIVE_RUNS: collections.OrderedDict = collections.OrderedDict()
_ADAPTIVE_RUNS_MAX = 8


def _defaults(fn, skip=()) -> dict:
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in skip}


def cell_identity(cfg: DictConfig) -> dict:
    """Every config value that changes a cell's numbers, parameters completed by their defaults."""
    world = OmegaConf.to_container(cfg.world, resolve=True)
    world["params"] = {**_defaults(WORLDS[world["name"]], ("key", "dtype")), **world.get("params", {})}
    world.setdefault("keep_completions", None)
    design = OmegaConf.to_container(cfg.design, resolve=True)
    design["params"] = {**DESIGNS[design["name"]].params, **design.get("params", {})}
    est = OmegaConf.to_container(cfg.estimator, resolve=True)
    est["params"] = {**_defaults(ESTIMATORS[est["name"]], ("diffs", "counts", "wins", "beta")), **est.get("params", {})}
    est.setdefault("fit_dtype", None)
    return {
        "world": world,
        "world_seed": cfg.world_seed,
        "design": design,
        "estimator": est,
        "budget": cfg.budget,
        "seed": cfg.seed,
        "num_replicates": cfg.num_replicates,
        # only where it is not the default, so cells of one draw keep the ids they had
        **({"allocation_draws": allocation_draws(cfg)} if allocation_draws(cfg) != 1 else {}),
    }


def allocation_draws(cfg) -> int:
    """The allocations a cell draws from its design: ``cfg.allocation_draws`` (1 where the config
    has no such key), and 1 for a design whose allocation is no draw with the cell's key: adaptive
    (each replicate runs the design) or keyless (one allocation whatever the key). So such a
    cell runs once and has one id whatever the draws asked."""
    spec = DESIGNS[cfg.design.name]
    return 1 if spec.adaptive or spec.keyless else int(cfg.get("allocation_draws", 1))


def cell_id(cfg: DictConfig) -> tuple[str, dict]:
    """``(id, identity)``: a readable prefix plus a hash of :func:`cell_identity`."""
    ident = cell_identity(cfg)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{cfg.world.name}_{cfg.design.name}_{cfg.estimator.name}_n{cfg.budget}_s{cfg.seed}_{digest}", ident


def _module_files(name: str) -> list[tuple[str, Path]]:
    """``(label, path)`` of a module's source, or of every source of a package."""
    path = Path(importlib.import_module(name).__file__)
    if path.name == "__init__.py":
        return [(f"{name}/{f.relative_to(path.parent).as_posix()}", f) for f in sorted(path.parent.rglob("*.py"))]
    return [(name, path)]


def _library_dirs() -> tuple[Path, ...]:
    """Where the interpreter's standard library and installed packages live (their code is
    versioned by :data:`_VERSIONED`, or not a record's concern)."""
    import sysconfig

    return tuple({Path(p).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_paths().get(k))})


def _user_module_file(module) -> Path | None:
    """The source file of a module a user wrote (outside the installed libraries and :data:`CELL_CODE`), else ``None``."""
    name = getattr(module, "__name__", "") or ""
    if name.split(".")[0] in _PROJECT:  # this project's: what computes a record is CELL_CODE, hashed on its own
        return None
    file = getattr(module, "__file__", None)
    if not file or not str(file).endswith(".py"):
        return None
    path = Path(file).resolve()
    if any(path.is_relative_to(d) for d in _library_dirs()):
        return None
    return path


_PROJECT = ("theory", "synthetic", "experiments", "benchmarks")
_PLAIN = (bool, int, float, complex, str, bytes, type(None))


def is_project_design(name: str) -> bool:
    """Whether the design ``name`` is registered by this project's code (tested there), not a user's."""
    module = getattr(DESIGNS[name].fn, "__module__", "") or ""
    return module.split(".")[0] in _PROJECT


def _value_bytes(value) -> bytes:
    """A value a design reads, as bytes that do not depend on the process: data by value (numbers,
    strings, NumPy and JAX arrays, and tuples, lists, sets and dicts of them), anything else by its
    type only (its repr may hold an address). A design's values are read once per registration
    (:func:`_design_source`), so a memo it fills as it runs moves no version."""
    if isinstance(value, _PLAIN):
        return repr(value).encode()
    if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
        a = np.asarray(value)
        return str(a.dtype).encode() + repr(a.shape).encode() + np.ascontiguousarray(a).tobytes()
    if isinstance(value, np.generic):
        return repr(value).encode()
    if isinstance(value, (tuple, list)):
        return (b"(" if isinstance(value, tuple) else b"[") + b",".join(_value_bytes(v) for v in value) + b")"
    if isinstance(value, (frozenset, set)):
        return b"{" + b",".join(sorted(_value_bytes(v) for v in value)) + b"}"
    if isinstance(value, dict):
        return b"{" + b",".join(sorted(_value_bytes(k) + b":" + _value_bytes(v) for k, v in value.items())) + b"}"
    return f"<{type(value).__module__}.{type(value).__qualname__}>".encode()


def _decorated(obj) -> bool:
    return not (inspect.ismodule(obj) or inspect.isclass(obj)) and callable(obj) and hasattr(obj, "__wrapped__")


def _code_like(obj) -> bool:
    """Modules, functions, classes, methods and decorated callables: followed by their code, not hashed as values."""
    return inspect.ismodule(obj) or inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or _decorated(obj)


def _code_bytes(code) -> bytes:
    """A code object as bytes that depend on its code only (``marshal.dumps`` also writes whether a
    constant is shared, i.e. reference counts, and changed with them)."""
    parts = [code.co_code, repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode()]
    for c in code.co_consts:  # a frozenset of strings prints in hash-seed order: its bytes are sorted
        parts.append(_code_bytes(c) if hasattr(c, "co_code") else _value_bytes(c))
    return b"\0".join(parts)


def _closure_data(fn) -> bytes:
    """The data a function closes over (its closure cells that are no code), by value."""
    try:
        cells = inspect.getclosurevars(fn).nonlocals
    except (TypeError, ValueError):
        return b""
    return b"".join(name.encode() + b"=" + _value_bytes(v) for name, v in sorted(cells.items()) if not _code_like(v))


def _dependency_digest(roots, root_data: bool = True) -> bytes:
    """A hash of what the functions and modules ``roots`` reach that a user wrote: the source
    files of user modules they import (transitively), and for functions defined outside them
    (a notebook, a script, a factory's closure) their code, the values of their closure cells
    and of the globals they name. A design that reads a helper module, a data constant or a
    closure variable then gets a new version when any of those changes (the record of the old
    one was reused as current)."""
    h = hashlib.sha256()
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if _decorated(obj):  # jax.jit, functools.lru_cache, functools.wraps: the function they wrap
            try:
                obj = inspect.unwrap(obj)
            except ValueError:
                continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.ismodule(obj):
            path = _user_module_file(obj)
            if path is None:
                continue
            h.update(f"module {obj.__name__}\0".encode() + path.read_bytes())
            todo.extend(v for v in vars(obj).values() if _code_like(v))
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
            module = sys.modules.get(getattr(obj, "__module__", "") or "")
            if module is not None and (_user_module_file(module) is not None):
                todo.append(module)  # its file covers the object's code
                if not inspect.isfunction(obj):
                    continue
            elif module is None or module.__name__ != "__main__" and getattr(module, "__file__", None) and _user_module_file(module) is None:
                continue  # a library's or CELL_CODE's
            fn = obj.__func__ if inspect.ismethod(obj) else obj
            if inspect.isclass(fn):
                try:
                    h.update(inspect.getsource(fn).encode())
                except (OSError, TypeError):
                    h.update(fn.__qualname__.encode())
                continue
            h.update(_code_bytes(fn.__code__))
            try:
                cv = inspect.getclosurevars(fn)
            except (TypeError, ValueError):
                continue
            named = {**cv.nonlocals, **cv.globals}
            if not root_data and any(fn is r for r in roots):  # its closure's data: the caller's snapshot
                named = {k: v for k, v in named.items() if k in cv.globals or _code_like(v)}
            for name, value in sorted(named.items()):
                h.update(name.encode() + b"=")
                if _code_like(value):
                    h.update(getattr(value, "__qualname__", getattr(value, "__name__", "")).encode())
                    todo.append(value)
                else:
                    h.update(_value_bytes(value))
    return h.digest()


@functools.lru_cache(maxsize=None)
def _files_version(imports: tuple) -> str:
    # Cached per process: a process runs the code it imported, so the hash is taken
    # once (at import of this module for CELL_CODE, see the end of the module).
    h = hashlib.sha256()
    for name in (*CELL_CODE, *sorted(imports)):
        for label, f in _module_files(name):
            h.update(label.encode() + b"\0" + f.read_bytes() + b"\0")
    for pkg in _VERSIONED:
        h.update(f"{pkg}=={importlib.import_module(pkg).__version__}".encode())
    if imports:  # the user modules they import, transitively (a helper module a design reads)
        h.update(_dependency_digest([importlib.import_module(m) for m in sorted(imports)]))
    return h.hexdigest()


def _design_source(name: str, imports: tuple) -> bytes:
    """Source of a design registered outside the hashed modules (e.g. in a notebook), else ``b""``."""
    spec = DESIGNS.get(name)
    if spec is None:
        raise KeyError(name)
    module = getattr(spec.fn, "__module__", "") or ""
    covered = (*CELL_CODE, *imports)
    if any(module == c or module.startswith(c + ".") for c in covered):
        return b""
    try:
        source = inspect.getsource(spec.fn).encode()
    except (OSError, TypeError):
        source = _code_bytes(spec.fn.__code__)
    # what it reads: the data its closure holds, taken once per registration (the spec) before the
    # design runs, so a memo it fills moves nothing while a factory's make(sharp) registered again with
    # another sharp gets its own version; and, read on every call, the globals it names, the helpers it
    # calls and the user modules those come from (a notebook's edited SCALE or redefined helper)
    frozen = getattr(spec, "_closure_data", None)
    if frozen is None:
        frozen = _closure_data(spec.fn)
        object.__setattr__(spec, "_closure_data", frozen)  # DesignSpec is frozen: one snapshot per spec
    return source + frozen + _dependency_digest([spec.fn], root_data=False)


def code_version(imports: tuple = (), design: str | None = None) -> str:
    """Content hash (12 hex digits) of the code that a cell's numbers depend on.

    Covers :data:`CELL_CODE`, the user modules in ``imports`` (where a custom design
    is registered), the source of ``design`` when it is registered anywhere else (a
    notebook, an interactive session), the JAX, jaxlib, NumPy, SciPy and optax versions, and the CPU
    emitters XLA compiles with in this process (:func:`experiments.compiled.emitters`:
    the apps use XLA's classic ones, a process that computed with JAX before asking keeps
    the default ones, and the two can differ at a capped design's near ties) and any other
    setting in ``XLA_FLAGS`` (:func:`experiments.compiled.other_flags`: the test suite's
    ``--xla_backend_optimization_level=0``, for one, so its records never pass for the
    apps'). Any edit to
    these, committed or not, gives a new version. Raises ``KeyError`` if ``design`` is
    given but not registered in this process.
    """
    imports = tuple(imports)
    h = hashlib.sha256(_files_version(imports).encode())
    h.update(f"xla cpu emitters: {emitters()}".encode())
    flags = other_flags()
    if flags:  # none in the apps' default runs, whose versions this leaves as they were
        h.update(f"xla flags: {' '.join(flags)}".encode())
    if design is not None:
        h.update(_design_source(design, imports))
    return h.hexdigest()[:12]


def record_code_version(cfg_or_meta) -> str:
    """The code version of a cell, from its config (or a record's metadata)."""
    config = cfg_or_meta.get("config", cfg_or_meta) if isinstance(cfg_or_meta, dict) else cfg_or_meta
    return code_version(tuple(config.get("imports") or ()), config["design"]["name"])


def git_version() -> str:
    """``git rev-parse --short HEAD`` (plus ``-dirty``) for people reading a record; not used to match records."""
    where = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=where)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=where)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def float64():
    """A context in which JAX computes in float64 (cells need it; importing this
    package does not switch the whole process, as a global flag would)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # JAX before 0.6
        from jax.experimental import enable_x64 as enable
    return enable(True)


def one_blas_thread():
    """A context in which NumPy's BLAS and LAPACK (OpenBLAS, MKL) run on one thread.

    Every record (sweep cell, figure item) is computed in it, so its numbers do not depend on
    how many BLAS threads the process has: a multithreaded GEMM or eigensolver sums in
    another order, which moved the last digits of solved designs (and, through the rounded
    allocation, Monte-Carlo gaps) between a run in one process (two threads on two cores)
    and the same run in joblib's or the figures command's worker processes (one thread each).
    jaxlib's CPU LAPACK calls (``eigh``, Cholesky) use SciPy's OpenBLAS and are limited too;
    the kernels XLA generates (its products through Eigen) are not.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _absolute(path) -> Path:
    """``path`` against the directory the app was started in (like ``results_dir``)."""
    try:
        from hydra.utils import to_absolute_path
    except ImportError:  # pragma: no cover - hydra is a dependency of the sweep
        return Path(path).expanduser().absolute()
    return Path(to_absolute_path(str(Path(path).expanduser())))


def check_design_cache(cfg: DictConfig, writable: bool = True) -> Path | None:
    """The directory that ``cfg.design_cache`` names (absolute), or ``None`` when it is
    null or absent. Raises ``ValueError`` naming ``design_cache`` and the allowed values for a
    value that is not null or a path, for ``results_dir`` itself (the summary reads every
    ``*.npz`` there as a record) and, with ``writable``, for a directory that cannot be
    written (a sweep checks that after ``results_dir``, in which the default lives)."""
    value = cfg.get("design_cache") if "design_cache" in cfg else None
    if value is None:
        return None
    allowed = "allowed: null (off) or a writable directory path other than results_dir, e.g. ${results_dir}/design_cache"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"design_cache must be null or a directory path, got {value!r}; {allowed}")
    d = _absolute(value)
    if cfg.get("results_dir") is not None and os.path.normpath(d) == os.path.normpath(_absolute(cfg.results_dir)):
        raise ValueError(f"design_cache = {value!r} is results_dir itself, whose every *.npz the summary reads as a cell record; {allowed}")
    if not writable:
        return d
    # Checked without writing anything: the directory is made at the first solved design.
    there = d
    while not there.exists() and there != there.parent:
        there = there.parent
    why = (f"{there} is not a directory" if not there.is_dir()
           else f"{there} is not writable" if not os.access(there, os.W_OK | os.X_OK) else None)
    if why:
        raise ValueError(f"design_cache = {value!r}: cannot write to {d} ({why}); {allowed}")
    return d


def _design_cache(cfg: DictConfig):
    """The cell's solved-design cache for the duration of the cell; without a ``design_cache``
    key the process's setting (:mod:`synthetic.designs.cache`) is left as it is."""
    if "design_cache" not in cfg:
        return contextlib.nullcontext()
    return using_design_cache(check_design_cache(cfg))


def run_cell(cfg: DictConfig, progress: bool = False) -> dict:
    """Compute one cell's records in float64 (see :func:`_run_cell`), with solved designs
    read from and written to ``cfg.design_cache`` (checked first, before any work), with
    one BLAS thread (:func:`one_blas_thread`), and with XLA's classic CPU emitters where this
    process has not computed yet (:func:`experiments.compiled.use_classic_emitters`; the apps
    set them before their first computation)."""
    use_classic_emitters()
    with _design_cache(cfg), float64(), one_blas_thread():
        return _run_cell(cfg, progress)


def _run_cell(cfg: DictConfig, progress: bool = False) -> dict:
    """Compute one cell's records (no record I/O; solved designs may come from the design cache): columns ``replicate``, ``gap``, ``valid``, ``mle_exists``, ``predicted_gap``, ``labels_spent``,
    ``allocation`` (the draw of the design's allocation the replicate was labelled on: the
    replicates are split evenly among ``allocation_draws`` draws, each with its own key split
    from the cell's design key; one draw uses that key itself; a design that observes every label
    it allocates runs once per replicate, each with its own key) and ``allocation_random`` (the
    allocation is a draw: a pilot, or draws that differ; with one draw, the allocations of
    up to three more keys are compared with it)."""
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    problem = design_problem(world)
    name = cfg.design.name
    # Keys depend on the cell, not on the order jobs run in.
    salt = int(hashlib.sha256(f"{name}|{cfg.budget}".encode()).hexdigest()[:7], 16)
    k_design, k_labels = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), salt))
    # resolved, as the cell's identity is: an interpolation (${oc.env:...}, ${budget}) had reached the design
    # as its unresolved string while the record was filed under the resolved value
    params = OmegaConf.to_container(cfg.design.params, resolve=True)
    keys = jax.random.split(k_labels, cfg.num_replicates)
    est = dict(estimator=cfg.estimator.name, estimator_params=OmegaConf.to_container(cfg.estimator.params, resolve=True),
               fit_dtype=cfg.estimator.get("fit_dtype"))
    if DESIGNS[name].adaptive:
        return _run_adaptive_cell(cfg, world, problem, name, params, keys, est, progress)
    draws = allocation_draws(cfg)
    if draws == 1:  # the design's one allocation, drawn with the cell's design key
        groups, design_keys = [np.arange(cfg.num_replicates)], [k_design]
    else:
        groups, design_keys = np.array_split(np.arange(cfg.num_replicates), draws), list(jax.random.split(k_design, draws))
    ev = world.eval
    r = cfg.num_replicates
    first = run_design(name, design_keys[0], problem, cfg.budget, **params)
    if _all_observed(first, problem) and len(groups) < r:
        # every label was observed while designing (a pilot of the whole budget, as seed 004's filter of an
        # already labelled set): the replicates of one run are copies of one gap and their interval has width 0.
        # Each replicate runs the design with its own key, as an adaptive design's do.
        groups, design_keys, first = [np.array([i]) for i in range(r)], list(jax.random.split(k_design, r)), None
    cols = {"gap": np.zeros(r), "valid": np.zeros(r, bool), "mle_exists": np.zeros(r, bool), "predicted_gap": np.zeros(r),
            "labels_spent": np.zeros(r, np.int64), "allocation": np.zeros(r, np.int64)}
    drawn, piloted = [], False  # each draw's counts; whether any came with a pilot's (random) labels
    with tqdm(total=r, desc=f"{name} n={cfg.budget}", unit="rep", leave=False, disable=not progress) as bar:
        for a, (group, kd) in enumerate(zip(groups, design_keys)):
            out = first if (a == 0 and first is not None) else run_design(name, kd, problem, cfg.budget, **params)
            counts = out.dense_counts(problem.num_edges).astype(np.float64)
            res = replicate_gaps(
                keys[group], world.theta_star, problem.edges.diffs, counts, world.beta, world.eval,
                pilot=out.pilot, **est,
                chunk_size=min(REPLICATE_CHUNK, group.size), progress=bar.update,
            )
            w_hat = counts / counts.sum()
            cols["gap"][group] = np.asarray(res.gap, np.float64)
            cols["valid"][group] = np.asarray(res.valid, bool)
            # the unpenalised MLE exists (no separation); reported, never used to drop replicates
            cols["mle_exists"][group] = np.asarray(getattr(res, "mle_exists", res.valid), bool)
            cols["predicted_gap"][group] = float(asymptotic_gap(w_hat, world.theta_star, ev.features, ev.log_ref, problem.edges.diffs,
                                                                world.beta, cfg.budget, ev.prompt_weights))
            # labels the design paid for: the budget, or more for designs that label a
            # larger set and train on part of it (seed 004's protocol)
            cols["labels_spent"][group] = int((out.info or {}).get("labels_spent", cfg.budget))
            cols["allocation"][group] = a
            drawn.append(counts)
            piloted |= out.pilot is not None
    # Is the allocation itself a draw (a pilot's labels; a rounding the key decides)? With one
    # draw the summary then says that its interval leaves the design's own randomness out.
    random = piloted or any(not np.array_equal(drawn[0], c) for c in drawn[1:])
    if draws == 1 and not random:
        random = allocation_is_random(name, k_design, problem, cfg.budget, out, **params)
    return {"replicate": np.arange(r), **cols, "allocation_random": np.full(r, random)}


def _all_observed(out, problem) -> bool:
    """Whether a design's output observed every label of its allocation (nothing left to draw)."""
    if out.pilot is None:
        return False
    return float(np.sum(out.pilot[0])) >= float(out.dense_counts(problem.num_edges).sum())


def forget_adaptive_runs() -> None:
    """Drop the adaptive designs' outputs this process keeps for later cells (:func:`_adaptive_runs`):
    the next cell buys its labels afresh (a timed run must, or it times the fits alone)."""
    _ADAPTIVE_RUNS.clear()


def _adaptive_runs(cfg, start: int, run):
    """``run()`` (an adaptive design's outputs for the chunk of replicates from ``start``), or the
    outputs an earlier cell of this process got for the same chunk.

    The outputs depend on everything that sets the design's inputs in :func:`_run_cell`: the
    world and its seed, the design and its parameters completed by its defaults, the budget,
    the seed and the number of replicates (the keys), and not on the estimator, which only fits
    the labels bought. An entry also holds the registered design and world constructor it was
    made with, and serves only while both are still the registered ones (a design or world
    registered again, with other code, runs afresh). The last :data:`_ADAPTIVE_RUNS_MAX` chunks
    are kept, their arrays read-only."""
    spec, maker = DESIGNS[cfg.design.name], WORLDS[cfg.world.name]
    params = {**spec.params, **OmegaConf.to_container(cfg.design.params, resolve=True)}
    key = json.dumps({"world": OmegaConf.to_container(cfg.world, resolve=True), "world_seed": cfg.world_seed,
                      "design": cfg.design.name, "params": params, "budget": cfg.budget, "seed": cfg.seed,
                      "replicates": cfg.num_replicates, "start": start}, sort_keys=True, default=str)
    kept = _ADAPTIVE_RUNS.get(key)
    if kept is not None and kept[0] is spec and kept[1] is maker:
        _ADAPTIVE_RUNS.move_to_end(key)
        return kept[2]
    outs = run()
    for out in outs:
        for a in out.pilot or ():
            if isinstance(a, np.ndarray):
                a.setflags(write=False)
    _ADAPTIVE_RUNS[key] = (spec, maker, outs)
    _ADAPTIVE_RUNS.move_to_end(key)
    while len(_ADAPTIVE_RUNS) > _ADAPTIVE_RUNS_MAX:
        _ADAPTIVE_RUNS.popitem(last=False)
    return outs


def _run_adaptive_cell(cfg, world, problem, name, params, keys, est, progress) -> dict:
    """An adaptive design's records: the design runs once per replicate (its selections
    depend on the labels it buys), with the replicate's key, all replicates of a chunk in
    lock-step (:func:`synthetic.adaptive.run_adaptive`); each replicate trains on exactly
    the labels it bought (passed as its pilot, so nothing is redrawn); a chunk's runs are
    shared with the next cells of this process that differ only in the estimator
    (:func:`_adaptive_runs`). Same columns as the non-adaptive path; ``predicted_gap`` is the asymptotic gap of the mean allocation
    over replicates (one value for the cell)."""
    r, e = cfg.num_replicates, problem.num_edges
    chunk = min(REPLICATE_CHUNK, r)
    gap, valid, exists = np.zeros(r), np.zeros(r, bool), np.zeros(r, bool)
    mean_counts = np.zeros(e)
    with tqdm(total=r, desc=f"{name} n={cfg.budget}", unit="rep", leave=False, disable=not progress) as bar:
        for start in range(0, r, chunk):
            outs = _adaptive_runs(cfg, start, lambda: run_adaptive(name, keys[start : start + chunk], problem, cfg.budget, **params))
            for i, out in enumerate(outs):
                c, w = (np.asarray(a, np.float64) for a in out.pilot)
                mean_counts += c / r
                res = replicate_gaps(keys[start + i : start + i + 1], world.theta_star, problem.edges.diffs, c, world.beta, world.eval,
                                     pilot=(c, w), **est)
                gap[start + i] = float(res.gap[0])
                valid[start + i] = bool(res.valid[0])
                exists[start + i] = bool(getattr(res, "mle_exists", res.valid)[0])
            bar.update(len(outs))
    ev = world.eval
    predicted = float(asymptotic_gap(mean_counts / mean_counts.sum(), world.theta_star, ev.features, ev.log_ref, problem.edges.diffs,
                                     world.beta, cfg.budget, ev.prompt_weights))
    return {
        "replicate": np.arange(r),
        "gap": gap,
        "valid": valid,
        "mle_exists": exists,
        "predicted_gap": np.full(r, predicted),
        "labels_spent": np.full(r, int(cfg.budget)),
        "allocation": np.arange(r),  # each replicate's own run of the design
        "allocation_random": np.ones(r, bool),
    }


_files_version(())  # hash the code as this process loaded it
