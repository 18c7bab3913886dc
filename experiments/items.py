"""The items app: one Hydra job per cached item of Figure 2, 4 or 5.

Figures 2, 4 and 5 are made of *items* (one (world, design) of the bounds table; a design
solved at a perturbed ``theta`` and its Monte Carlo; one pool size; one coincidence
count), each cached as one record file keyed by its parameters and the code version
(:mod:`experiments.figure_items`, :func:`experiments.figures.figure_items`). This app
computes items as jobs, so any Hydra launcher (joblib, Ray, Slurm) fills a figure's
records; ``python -m experiments.figures`` then finds them and computes nothing::

    python -m experiments.items -m items=fig2                                # the bounds table's 19 items
    python -m experiments.items -m items=fig5 hydra/launcher=local_joblib    # Figure 5's, in parallel
    python -m experiments.items figure=fig4 index=3                          # one item
    python -m experiments.figures --only fig2 fig4 fig5                      # draw them

An item whose record was made by the current code is skipped; the write is atomic, so an
interrupted multirun resumes where it stopped. Every job is checked before the first runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import jax
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.records import check_writable
from theory.checked import check_argument, one_of

log = logging.getLogger(__name__)


def results_dir(cfg: DictConfig) -> Path:
    """Where the figures command reads the items: ``results``, plus ``small`` for the small lists."""
    base = Path(hydra.utils.to_absolute_path(str(cfg.results)))
    return base / "small" if cfg.small else base


def check_item(cfg: DictConfig) -> list:
    """Check every key before any work; returns the figure's items (:func:`experiments.figures.figure_items`)."""
    from experiments.figures import ITEM_FIGURES, figure_items

    check_argument("figure", cfg.figure, one_of(ITEM_FIGURES), config=True)
    check_argument("small", cfg.small, "bool", config=True)
    if not isinstance(cfg.results, str) or not cfg.results.strip():
        raise ValueError(f"results must be a directory path (a non-empty string), got {cfg.results!r}")
    grid = cfg.get("grid")
    if grid is not None and grid != cfg.figure + ("_small" if cfg.small else ""):
        raise ValueError(f"figure = {cfg.figure!r} with small = {bool(cfg.small)} is not the grid items={grid}: its index range is "
                         f"another figure's; allowed: items=<figure>[_small] without figure= or small= overrides")
    from experiments.cell import float64

    with float64():
        items = figure_items(cfg.figure, bool(cfg.small))
    check_argument("index", cfg.index, f"int in [0, {len(items) - 1}]", config=True)
    return items


class ValidateItems(Callback):
    """Composes and checks every job of a multirun before the first one starts (a failure exits with status 1)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from experiments.sweep import compose_multirun

        composed = compose_multirun(config)
        dirs = set()
        for overrides, cfg in composed:
            try:
                check_item(cfg)
            except ValueError as err:
                raise SystemExit(f"invalid multirun, no job started. Job [{' '.join(overrides)}]: {err}") from None
            dirs.add(results_dir(cfg))
        try:
            for d in sorted(dirs):
                check_writable(d, "results")
        except ValueError as err:
            raise SystemExit(f"invalid multirun, no job started. {err}") from None
        log.info("validated %d item jobs", len(composed))


def job(cfg: DictConfig, items: list | None = None) -> dict:
    """Compute (or find) item ``cfg.index`` of ``cfg.figure``; returns its values. ``items``:
    :func:`check_item`'s result where the caller has already checked ``cfg``. A process whose
    first computation this is (a launcher's worker) compiles with XLA's classic CPU emitters,
    as the app's main process does."""
    from experiments.compiled import use_classic_emitters
    from experiments.figure_items import item_done, run_item

    use_classic_emitters()

    items = check_item(cfg) if items is None else items
    jax.config.update("jax_enable_x64", True)  # the figures compute in float64 (as their command does)
    out = check_writable(results_dir(cfg), "results")
    item, count = items[cfg.index], len(items)
    done = item_done(item, out)
    got = run_item(item, out)
    log.info("%s item %d of %d (%s): %s under %s", cfg.figure, cfg.index, count, ", ".join(f"{k}={v}" for k, v in item.ident.items()
                                                                                   if k not in ("world",)),
             "reused" if done else "computed", out / item.cache)
    return got


@hydra.main(version_base=None, config_path="conf", config_name="items")
def main(cfg: DictConfig) -> None:
    try:
        items = check_item(cfg)  # a bad key exits with its message; errors while computing keep their traceback
    except ValueError as err:
        raise SystemExit(str(err)) from None
    job(cfg, items)


if __name__ == "__main__":
    from experiments.compiled import use_classic_emitters

    use_classic_emitters()  # before the first computation: records are computed so by every app
    main()
