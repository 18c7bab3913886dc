"""Cached items: the records of Figures 2, 4 and 5 that are not sweep cells.

An *item* is one unit of a figure's computation (one (world, design) of the bounds table,
a design solved at a perturbed ``theta`` with its Monte Carlo, one pool size, one
coincidence count). Its record is one file,
``<results>/<cache>/<prefix><sha256 of its parameters, 12 hex>.npz``, written atomically
and reused only if made by the current code (:func:`item_code`). The figures command
(:mod:`experiments.figures`) and the items app (:mod:`experiments.items`, one Hydra job
per item, any launcher) compute and read the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from experiments.compiled import release_compiled

#: Modules whose source the items' numbers depend on, beyond the cells' code (hashed into
#: the code version of every item).
ITEM_CODE = ("experiments.figure_items", "experiments.figures", "experiments.bounds_table")


class FigureItem(NamedTuple):
    """One cached item: where its record lives and how it is computed.

    ``compute()`` returns a dict of values (a number, boolean or string) or arrays of them;
    each comes back as the Python value (numbers as floats) or array it was stored as.
    """

    cache: str
    prefix: str
    ident: dict
    compute: Callable[[], dict]


def in_float64(fn):
    """``fn`` run in float64 (:func:`experiments.cell.float64`) with one BLAS thread
    (:func:`experiments.cell.one_blas_thread`): every item computes so, whatever precision the
    caller has on (a world built in float32 is another world) and however many BLAS threads
    its process has (so ``item.compute()`` called directly gives its record's numbers)."""

    def run():
        from experiments.cell import float64, one_blas_thread

        with float64(), one_blas_thread():
            return fn()

    return run


def item_code() -> str:
    """The code version of every item (:func:`experiments.cell.code_version` with :data:`ITEM_CODE`)."""
    from experiments.cell import code_version

    return code_version(ITEM_CODE)


def item_file(cache, prefix: str, ident: dict) -> Path:
    return Path(cache) / f"{prefix}{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]}.npz"


def _value(a: np.ndarray):
    if a.ndim:
        return a
    v = a.item()
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def read_item(path: Path, code: str):
    """A cached item made by the code of version ``code``, else ``None`` (recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])).get("code_version") != code:
                return None
            return {k: _value(z[k]) for k in z.files if k != "meta"}
    except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed and overwritten
        return None


def cached_item(cache, prefix: str, ident: dict, code: str, compute) -> dict:
    """The item ``ident`` (a JSON-able dict of its parameters) from ``cache``, else ``compute()``
    (with one BLAS thread, :func:`experiments.cell.one_blas_thread`) written there atomically,
    reused only if made by the code of version ``code``."""
    from experiments.records import write_atomic

    path = item_file(cache, prefix, ident)
    got = read_item(path, code)
    if got is None:
        from experiments.cell import one_blas_thread
        from experiments.compiled import use_classic_emitters

        use_classic_emitters()  # as the apps: before this process's first computation, else a no-op
        with one_blas_thread():  # numbers independent of the process's BLAS threads, as the cells'
            got = compute()
        write_atomic(path, {k: np.asarray(v) for k, v in got.items()}, {**ident, "code_version": code})
        release_compiled()
        got = read_item(path, code)  # what a later run reads back, so both runs give the same values
        if got is None:
            raise ValueError(f"item {ident}: its record {path} cannot be read back (values must be numbers, booleans, "
                             "strings or arrays of them)")
    return got


def run_item(item: FigureItem, results) -> dict:
    """The item's record under ``results`` if made by the current code, else computed and written."""
    return cached_item(Path(results) / item.cache, item.prefix, item.ident, item_code(), item.compute)


def item_done(item: FigureItem, results) -> bool:
    """Whether ``item`` has a readable record under ``results`` made by the current code."""
    return read_item(item_file(Path(results) / item.cache, item.prefix, item.ident), item_code()) is not None
