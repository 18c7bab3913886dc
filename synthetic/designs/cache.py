"""Solved optimal designs on disk, shared by every process that points at one directory.

The in-process memo of :func:`synthetic.designs.optimal._solve` does nothing when a
sweep's cells run in separate processes (the joblib, Ray or Slurm launchers of
Hydra, or two sweeps one after the other): each process solved the same oracle,
plug-in, A- or D-optimal design again. This store keeps each solved design in one
file, keyed by

* the solve's inputs (the memo's key, :func:`synthetic.designs.optimal._solve_key`),
* the source of the solver (:func:`solver_code_hash`: every file of the ``theory``
  package, this module, ``optimal.py`` and ``problem.py`` of this package), and
* the runtime (:func:`runtime`: JAX, jaxlib and NumPy versions, whether JAX computes
  in float64, the backend and the machine),

so changed code or another runtime never serves an old answer. A file holds every
field of :class:`theory.design.DesignSolution` (its :class:`SolverHistory` included)
bit for bit, as one ``.npz`` with a JSON ``meta`` entry that repeats the key. Writes
are atomic (temporary file in the same directory, then ``os.replace``), so processes
that solve the same design at once each write a complete file and the last one
stays; files get the mode the umask gives (other users of a shared directory can
read them). A file that cannot be read, is truncated, or whose stored key is not the
one looked up is ignored with a logged warning, recomputed and overwritten: the
cache is never trusted over the solver.

The store is off unless a directory is set: :func:`set_design_cache` (which wins) or
the environment variable ``WHICHPAIRS_DESIGN_CACHE`` (empty: off). The sweep sets it
from its ``design_cache`` key (:mod:`experiments.cell`). Nothing is ever deleted;
remove the directory to empty it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from synthetic.files import write_atomic
from theory.design.output import DesignSolution, SolverHistory

__all__ = [
    "ENV_VAR",
    "FROM_ENVIRONMENT",
    "set_design_cache",
    "using_design_cache",
    "design_cache_dir",
    "solver_code_hash",
    "runtime",
    "entry_key",
    "entry_path",
    "load",
    "store",
]

log = logging.getLogger(__name__)

#: Environment variable naming the cache directory when :func:`set_design_cache` was not called.
ENV_VAR = "WHICHPAIRS_DESIGN_CACHE"
#: Layout of a file; a file of another layout is ignored.
FORMAT = 1


class _FromEnvironment:
    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


#: Setting of :func:`set_design_cache` that defers to :data:`ENV_VAR` (the initial one).
FROM_ENVIRONMENT = _FromEnvironment()

_setting: "Path | None | _FromEnvironment" = FROM_ENVIRONMENT

# The nested NamedTuples a solution may hold, by class name (rebuilt on load).
_NESTED = {"SolverHistory": SolverHistory}


# ---------------------------------------------------------------- configuration


def _as_setting(path):
    if path is None or path is FROM_ENVIRONMENT:
        return path
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"design_cache must be null (off) or a directory path, got {path!r} ({type(path).__name__})")
    if str(path) == "":
        raise ValueError("design_cache must be null (off) or a directory path, got an empty string")
    return Path(path).expanduser()


def set_design_cache(path):
    """Cache solved designs in directory ``path`` (``None``: off, even if :data:`ENV_VAR` is set;
    :data:`FROM_ENVIRONMENT`: back to the environment variable). Returns the previous setting,
    which can be passed back to restore it. The directory is created at the first write."""
    global _setting
    previous, _setting = _setting, _as_setting(path)
    return previous


@contextlib.contextmanager
def using_design_cache(path):
    """``with using_design_cache(path):`` :func:`set_design_cache` for the block, then the previous setting."""
    previous = set_design_cache(path)
    try:
        yield design_cache_dir()
    finally:
        set_design_cache(previous)


def design_cache_dir() -> Path | None:
    """The cache directory in effect, or ``None`` when the cache is off."""
    if _setting is not FROM_ENVIRONMENT:
        return _setting
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else None


# ------------------------------------------------------------------------- keys


def _solver_files() -> list[tuple[str, Path]]:
    here = Path(__file__).resolve().parent
    spec = importlib.util.find_spec("theory")
    theory = Path(next(iter(spec.submodule_search_locations))).resolve()
    files = [(f"theory/{f.relative_to(theory).as_posix()}", f) for f in sorted(theory.rglob("*.py"))]
    # optimal.py calls the solver, problem.py computes the curvature it is given, this module serialises it
    files += [(f"synthetic/designs/{name}", here / name) for name in ("cache.py", "optimal.py", "problem.py")]
    return files


_CODE_HASH: str | None = None


def solver_code_hash() -> str:
    """sha256 of the solver's source as this process loaded it (taken once, at import)."""
    global _CODE_HASH
    if _CODE_HASH is None:
        h = hashlib.sha256()
        for label, f in _solver_files():
            h.update(label.encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


def _blas_threads() -> int:
    """Threads NumPy's BLAS (and jaxlib's CPU LAPACK, which calls SciPy's) may use now."""
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=1)


def _cpus() -> int:
    """CPUs this process may run on: the size of XLA's CPU thread pool."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def runtime() -> dict:
    """What besides the code may change the bits of a solve: library versions, the float
    width JAX computes in now, the backend and the machine, and the thread counts of BLAS
    and of XLA's CPU kernels (a threaded product sums in another order: a solve made with
    two BLAS threads is not reused by a sweep cell, which solves with one), and ``XLA_FLAGS``
    (XLA's code generation: the apps compile with its classic CPU emitters, a process that
    computed with JAX before choosing keeps its defaults)."""
    import jaxlib

    return {
        "blas_threads": _blas_threads(),
        "cpus": _cpus(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "float": str(jnp.result_type(float)),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "machine": platform.machine(),
        "xla_flags": " ".join(os.environ.get("XLA_FLAGS", "").split()),
    }


def entry_key(input_key: str) -> str:
    """The file key of a solve: its input key, the solver's code hash and the runtime."""
    text = json.dumps({"format": FORMAT, "inputs": input_key, "code": solver_code_hash(), "runtime": runtime()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(directory, key: str) -> Path:
    return Path(directory) / f"{key}.npz"


# ----------------------------------------------------------------- (de)serialise


def _flatten(obj, prefix=""):
    """``(arrays, kinds)`` of a NamedTuple: every field as an array, its Python kind in ``kinds``."""
    arrays, kinds = {}, {}
    for name in obj._fields:
        v, key = getattr(obj, name), prefix + name
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            if type(v).__name__ not in _NESTED:
                raise TypeError(f"field {key}: cannot store a {type(v).__name__}")
            sub_arrays, sub_kinds = _flatten(v, key + "__")
            arrays.update(sub_arrays)
            kinds[name] = {"type": type(v).__name__, "fields": sub_kinds}
            continue
        if isinstance(v, jax.Array):
            kind = "jax"
        elif isinstance(v, np.ndarray):
            kind = "numpy"
        elif isinstance(v, np.generic):
            kind = "numpy_scalar"
        elif isinstance(v, (bool, int, float)):
            kind = type(v).__name__
        else:
            raise TypeError(f"field {key}: cannot store a {type(v).__name__}")
        arrays[key] = np.asarray(v)
        kinds[name] = kind
    return arrays, kinds


def _rebuild(cls, kinds: dict, arrays: dict, prefix=""):
    if set(kinds) != set(cls._fields):  # (the JSON meta keeps them sorted)
        raise ValueError(f"fields {sorted(kinds)} are not those of {cls.__name__} {list(cls._fields)}")
    values = {}
    for name, kind in kinds.items():
        key = prefix + name
        if isinstance(kind, dict):
            values[name] = _rebuild(_NESTED[kind["type"]], kind["fields"], arrays, key + "__")
            continue
        a = arrays[key]
        if kind == "jax":
            v = jnp.asarray(a)
            if v.dtype != a.dtype:
                raise ValueError(f"field {key}: stored as {a.dtype}, JAX would give {v.dtype}")
        elif kind == "numpy":
            v = a
        elif kind == "numpy_scalar":
            v = a[()]
        elif kind in ("bool", "int", "float"):
            v = {"bool": bool, "int": int, "float": float}[kind](a[()])
        else:
            raise ValueError(f"field {key}: unknown kind {kind!r}")
        values[name] = v
    return cls(**values)


# ---------------------------------------------------------------------- the store


def load(input_key: str) -> DesignSolution | None:
    """The stored solution of the solve with input key ``input_key``, or ``None`` (cache off,
    no file, or a file that cannot be trusted: then a warning names the file and why)."""
    d = design_cache_dir()
    if d is None:
        return None
    key = entry_key(input_key)
    path = entry_path(d, key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except Exception as err:  # noqa: BLE001 - zip, npy and JSON errors alike: the file is not trusted
        log.warning("design cache: %s is not readable (%s: %s); ignored, the design is solved again", path, type(err).__name__, err)
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != FORMAT:
        stored = meta.get("key") if isinstance(meta, dict) else None
        log.warning("design cache: %s holds key %s, not %s; ignored, the design is solved again", path, stored, key)
        return None
    try:
        return _rebuild(DesignSolution, meta["fields"], arrays)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("design cache: %s does not hold a design (%s: %s); ignored, the design is solved again", path, type(err).__name__, err)
        return None


def store(input_key: str, solution: DesignSolution) -> Path | None:
    """Write ``solution`` under ``input_key`` (atomically); returns the file, or ``None`` when
    the cache is off or the write failed (logged: the solution is still used, only not cached)."""
    d = design_cache_dir()
    if d is None:
        return None
    key = entry_key(input_key)
    path = entry_path(d, key)
    try:
        arrays, kinds = _flatten(solution)
        meta = {"format": FORMAT, "key": key, "inputs": input_key, "code": solver_code_hash(), "runtime": runtime(), "fields": kinds}
        write_atomic(path, arrays, meta)
    except (OSError, TypeError, ValueError) as err:
        log.warning("design cache: could not write %s (%s: %s); the design is used but not cached", path, type(err).__name__, err)
        return None
    return path


solver_code_hash()  # hash the solver as this process loaded it
