"""Fill the records of a figure set in worker processes: the figures command's ``--jobs N``.

The figures are records first (sweep cells and cached items, each one file made by the
current code), plots second. :func:`fill` computes the records of the chosen figures in
``N`` fresh processes, longest first; the figures command then finds every record done and
only pools and draws. The numbers are those of a run in one process, bit for bit: a record
depends on its inputs and the code version only (cells and items are computed with one BLAS
thread, :func:`experiments.cell.one_blas_thread`), not on which process made it.

* A task is the cells of one (experiment, design) run one after the other in one worker, so
  that they share that design's solves (the cell's in-process memo and the on-disk design
  cache), or one item of Figures 2, 4 or 5 (:func:`experiments.figures.figure_items`).
* The workers and the calling process share a persistent XLA compilation cache (a
  temporary folder, removed at the end, unless ``JAX_COMPILATION_CACHE_DIR`` is set), so a
  program compiled by one is loaded by the others. It is keyed by the computation and
  the JAX version and changes no number.
* Tasks of one *group* (the cells of one experiment, the items of one figure on one world)
  compile the same programs. A group's first task runs alone; the others start once it has
  finished and left its programs in the cache, and until then the workers take other groups'
  tasks (:func:`next_task`). Bounds-table items of one world took 35-45 s each when two
  started together, 3-7 s once one had finished (``BENCHMARKS.md``, section 4j). Only the
  order changes.
* An interrupted run keeps every record already written; the next run computes the rest.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import NamedTuple

__all__ = ["Task", "tasks", "fill", "run_tasks", "run_task", "compile_cache", "next_task"]

#: Relative cost of one cell of each experiment and of one item of each figure, to start the
#: longest first (measured on the full figure set, 2026-11-28; only the order depends on it,
#: never a number).
_CELL_COST = {"figure1_tabular": 30.0, "figure1_contextual_adaptive": 10.0, "practical": 8.0, "figure1_contextual": 6.0}
_ITEM_COST = {"fig2": 14.0, "fig5": 2.0, "fig4": 1.0}


class Task(NamedTuple):
    """One unit of work for a worker.

    ``kind`` is ``"cells"`` (``jobs``: sweep override lists run in order into ``results``) or
    ``"item"`` (item ``index`` of figure ``figure``'s list for ``small``, cached under ``results``).
    ``label`` names it in messages; ``cost`` orders the tasks (largest first); tasks of one
    ``group`` share compiled programs (``""``: none), see :func:`next_task`.
    """

    kind: str
    label: str
    results: str
    cost: float
    jobs: tuple = ()
    figure: str = ""
    small: bool = False
    index: int = -1
    group: str = ""


def _cell_tasks(label: str, jobs, results: Path, cost: float) -> list[Task]:
    """One task per design of ``jobs``: its cells one after the other, so that they share its solves."""
    groups: dict = {}
    for job in jobs:
        design = next((o.split("=", 1)[1] for o in job if o.startswith("design=")), "")
        groups.setdefault(design, []).append(tuple(job))
    return [Task("cells", f"{label} {design} ({len(js)} cells)", str(results), cost * len(js), tuple(js), group=label)
            for design, js in groups.items()]


def tasks(names, results: Path, small: bool) -> list[Task]:
    """Every task of the figures ``names`` whose records go under ``results``, largest first."""
    from experiments.figures import FIG1_WORLDS, fig1_grids

    out: list[Task] = []
    if "fig1" in names or "fig3" in names:
        for world in FIG1_WORLDS:
            for exp, jobs in fig1_grids(world, small):
                out += _cell_tasks(exp, jobs, results / exp, _CELL_COST.get(exp, 1.0))
    if "fig6" in names:
        from experiments import practical

        for panel, p in practical.jobs(small).items():
            out += _cell_tasks(f"practical {panel}", [j for _, j in p["jobs"]], results / "practical" / panel, _CELL_COST["practical"])
    for name in ("fig2", "fig4", "fig5"):
        if name in names:
            out += [Task("item", f"{name} item {i}", str(results), _ITEM_COST[name], figure=name, small=small, index=i,
                         group=_item_group(name, it.ident)) for i, it in enumerate(_items(name, small))]
    return sorted(out, key=lambda t: -t.cost)


def _item_group(figure: str, ident: dict) -> str:
    """The items of one figure on one world (or of one kind where they have no world) share programs; ``""``: neither."""
    world = ident.get("world", ident.get("item"))
    return "" if world is None else f"{figure} {json.dumps(world, sort_keys=True, default=str)}"


def next_task(queue: list, started: set, finished: set) -> int:
    """Index in ``queue`` (in order of preference) of the task a free worker starts: the first whose
    group has no task started yet, or has one finished (its programs are in the compilation cache),
    or has no group; failing that the first (one more compile at once rather than an idle worker)."""
    for i, t in enumerate(queue):
        if not t.group or t.group not in started or t.group in finished:
            return i
    return 0


@functools.lru_cache(maxsize=4)
def _items(figure: str, small: bool):
    from experiments.figures import figure_items

    return figure_items(figure, small)


def _start_worker(cache_dir: str | None) -> None:
    from experiments.compiled import use_classic_emitters

    use_classic_emitters()  # inherited from the figures command; set here too for any other caller
    import jax

    jax.config.update("jax_enable_x64", True)  # as the figures command computes
    if cache_dir:
        _use_compile_cache(cache_dir)


def _use_compile_cache(cache_dir: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_task(task: Task) -> tuple[str, float]:
    """Compute ``task``'s records that are not done yet; returns its label and seconds."""
    t0 = time.time()
    if task.kind == "cells":
        from experiments import sweep

        sweep.run_jobs([list(j) for j in task.jobs], Path(task.results), progress=False)
    else:
        from experiments.figure_items import run_item

        run_item(_items(task.figure, task.small)[task.index], Path(task.results))
    return task.label, time.time() - t0


@contextlib.contextmanager
def compile_cache():
    """A persistent XLA compilation cache for this process and the workers it starts: a
    temporary folder (every compiled program kept), removed on exit with JAX's settings put
    back. Yields its path, or ``None`` where ``JAX_COMPILATION_CACHE_DIR`` is set: JAX then
    uses that folder with its own settings, here and in the workers (they inherit it)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        yield None
        return
    import jax

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    path = tempfile.mkdtemp(prefix="whichpairs-xla-")
    _use_compile_cache(path)
    try:
        yield path
    finally:
        for n, v in before.items():
            jax.config.update(n, v)
        shutil.rmtree(path, ignore_errors=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the tasks not started and end the workers now (every record is written atomically,
    so a task cut short leaves no partial file; its record is computed by the next run)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # private, and emptied by shutdown: taken first
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:  # ended before the caller removes the compilation cache they write to
        proc.join(timeout=10)


def fill(names, results: Path, small: bool, jobs: int, progress: bool = True, cache_dir: str | None = None) -> list[tuple[str, float]]:
    """Compute the records of the figures ``names`` in ``jobs`` worker processes (:func:`tasks`,
    largest first, items already done left out: :func:`run_tasks`); returns ``(label, seconds)``
    per task in the order they finished."""
    return run_tasks([t for t in tasks(names, Path(results), small) if not _item_done(t)], jobs, progress, cache_dir)


def run_tasks(todo, jobs: int, progress: bool = True, cache_dir: str | None = None) -> list[tuple[str, float]]:
    """Run ``todo`` (:class:`Task`) in ``jobs`` spawned worker processes, each free worker taking
    the next task by :func:`next_task`; returns ``(label, seconds)`` per task in the order they finished.

    ``cache_dir``: a persistent XLA compilation cache the workers share (:func:`compile_cache`).
    A failing task (its error is raised here) or an interrupt stops the run at once: tasks
    not started are cancelled and the workers ended. Every record already written is kept.
    """
    from tqdm.auto import tqdm

    done: list[tuple[str, float]] = []
    if not todo:
        return done
    ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    workers = min(jobs, len(todo))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker, initargs=(cache_dir,))
    queue, running, started, ended = list(todo), {}, set(), set()
    try:
        with tqdm(total=len(queue), desc=f"records ({jobs} workers)", unit="task", disable=not progress) as bar:
            while queue or running:
                while queue and len(running) < workers:  # one task a free worker, chosen when it frees
                    task = queue.pop(next_task(queue, started, ended))
                    started.add(task.group)
                    running[pool.submit(run_task, task)] = task
                finished, _ = wait(set(running), return_when=FIRST_COMPLETED)
                for f in finished:
                    done.append(f.result())  # a task's error is raised here
                    ended.add(running.pop(f).group)
                    bar.update()
    except BaseException:  # a failed task or Ctrl-C: stop now, keep what is written
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return done


def _item_done(task: Task) -> bool:
    if task.kind != "item":
        return False  # a cell's check composes its config: the worker does it
    from experiments.figure_items import item_done

    return item_done(_items(task.figure, task.small)[task.index], Path(task.results))
