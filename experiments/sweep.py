"""The sweep app: one Hydra job per (world, design, estimator, budget) cell.

A cell runs its design once, then ``num_replicates`` Monte-Carlo label sets in one
compiled ``vmap`` (labels -> DPO fit -> exact gap), and writes one tidy record per
replicate to ``<results_dir>/<cell id>.npz`` (columnar: one array per field). The
write is atomic (temporary file, then ``os.replace``), so an interrupted sweep leaves
either a complete cell file or none, and a rerun skips finished cells.

    python -m experiments.sweep                                   # one cell
    python -m experiments.sweep -m design=uniform,oracle budget=1000,10000
    python -m experiments.sweep -m experiment=figure1_contextual  # a figure's sweep
    python -m experiments.sweep summary_only=true                 # the table of results_dir

Config groups (``experiments/conf/``): ``world/``, ``design/`` (one file per
registered design), ``estimator/`` (newton, optax), ``experiment/`` (``@package
_global_``, one per figure). Every key is checked before any work starts.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.worlds import check_world_config, make_world
from synthetic.designs import DESIGNS, check_design_params, design_problem, run_design
from synthetic.monte_carlo import ESTIMATORS, mean_and_ci, replicate_gaps
from theory import asymptotic_gap

jax.config.update("jax_enable_x64", True)
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
log = logging.getLogger(__name__)

#: Replicates per compiled call: bounds memory and drives the progress bar; the
#: numbers do not depend on it.
REPLICATE_CHUNK = 50
RECORD_FIELDS = ["replicate", "gap", "valid", "predicted_gap"]


# ------------------------------------------------------------------ validation


def validate(cfg: DictConfig) -> None:
    """Check every key before any work; errors name the key and the allowed values."""
    for module in cfg.get("imports") or []:
        try:
            importlib.import_module(module)  # registers user designs (register_design)
        except ImportError as err:
            raise ValueError(f"imports: cannot import {module!r} ({err}); allowed: importable module names") from None
    check_world_config(cfg.world)
    if cfg.design.name not in DESIGNS:
        raise ValueError(f"design.name must be one of {sorted(DESIGNS)}, got {cfg.design.name!r}")
    check_design_params(cfg.design.name, dict(cfg.design.params))
    if cfg.estimator.name not in ESTIMATORS:
        raise ValueError(f"estimator.name must be one of {sorted(ESTIMATORS)}, got {cfg.estimator.name!r}")
    est_allowed = sorted(set(inspect.signature(ESTIMATORS[cfg.estimator.name]).parameters) - {"diffs", "counts", "wins", "beta"})
    for p in cfg.estimator.params:
        if p not in est_allowed:
            raise ValueError(f"estimator.params.{p} is not a parameter of {cfg.estimator.name}; allowed: {est_allowed}")
    if cfg.estimator.get("fit_dtype") not in (None, "float32", "float64"):
        raise ValueError(f"estimator.fit_dtype must be one of null, float32, float64, got {cfg.estimator.fit_dtype!r}")
    for key in ("budget", "num_replicates", "seed", "world_seed"):
        v = cfg[key]
        lo = {"budget": 1, "num_replicates": 2}.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
    if not isinstance(cfg.get("progress", False), bool):
        raise ValueError(f"progress must be true or false, got {cfg.progress!r}")
    if cfg.get("figure") is not None and not isinstance(cfg.figure, str):
        raise ValueError(f"figure must be null or a path prefix (a string), got {cfg.figure!r}")
    # World parameters (K >= 2, beta > 0, ...) are checked by the constructor, which
    # is cheap; the pool-size check needs the world.
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    problem = design_problem(world)
    num_edges = problem.num_edges
    params = {**DESIGNS[cfg.design.name].params, **cfg.design.params}
    if params.get("rounding") == "without_replacement" and cfg.budget > num_edges:
        raise ValueError(
            f"budget = {cfg.budget} exceeds the {num_edges} candidate edges of this world, which design.params.rounding = "
            "'without_replacement' cannot allocate; allowed: budget <= number of edges, or rounding in ['auto', 'efficient', 'with_replacement']"
        )
    if params.get("with_replacement") is False and cfg.budget > num_edges:
        raise ValueError(
            f"budget = {cfg.budget} exceeds the {num_edges} candidate edges of this world, and design {cfg.design.name!r} with "
            "design.params.with_replacement = false labels each edge at most once; allowed: budget <= number of edges, "
            "or design.params.with_replacement = true"
        )
    if cfg.design.name == "prompt_selection":
        prompts = int(np.sum(np.sum(np.isfinite(np.asarray(problem.pool.log_ref)), axis=1) >= 2))
        if cfg.budget > prompts:
            raise ValueError(f"budget = {cfg.budget} exceeds the {prompts} prompts of this world; prompt_selection labels "
                             "each prompt at most once; allowed: budget <= number of prompts")


# ------------------------------------------------------------------- the cell


def cell_id(cfg: DictConfig) -> str:
    """Stable id of a cell: readable prefix plus a hash of everything that changes its numbers."""
    ident = {
        "world": OmegaConf.to_container(cfg.world, resolve=True),
        "world_seed": cfg.world_seed,
        "design": OmegaConf.to_container(cfg.design, resolve=True),
        "estimator": OmegaConf.to_container(cfg.estimator, resolve=True),
        "budget": cfg.budget,
        "seed": cfg.seed,
        "num_replicates": cfg.num_replicates,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.world.name}_{cfg.design.name}_{cfg.estimator.name}_n{cfg.budget}_s{cfg.seed}_{digest}", ident


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_cell(cfg: DictConfig, progress: bool = False) -> dict:
    """Compute one cell's records (no file I/O)."""
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    problem = design_problem(world)
    name = cfg.design.name
    # Keys depend on the cell, not on the order jobs run in.
    salt = int(hashlib.sha256(f"{name}|{cfg.budget}".encode()).hexdigest()[:7], 16)
    k_design, k_labels = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), salt))
    out = run_design(name, k_design, problem, cfg.budget, **OmegaConf.to_container(cfg.design.params))
    counts = out.dense_counts(problem.num_edges).astype(np.float64)
    keys = jax.random.split(k_labels, cfg.num_replicates)
    with tqdm(total=cfg.num_replicates, desc=f"{name} n={cfg.budget}", unit="rep", leave=False, disable=not progress) as bar:
        res = replicate_gaps(
            keys, world.theta_star, problem.edges.diffs, counts, world.beta, world.eval,
            pilot=out.pilot,
            estimator=cfg.estimator.name, estimator_params=OmegaConf.to_container(cfg.estimator.params),
            fit_dtype=cfg.estimator.get("fit_dtype"),
            chunk_size=min(REPLICATE_CHUNK, cfg.num_replicates), progress=bar.update,
        )
    gaps, valid = res.gap, res.valid
    ev = world.eval
    w_hat = counts / counts.sum()
    predicted = float(asymptotic_gap(w_hat, world.theta_star, ev.features, ev.log_ref, problem.edges.diffs, world.beta, cfg.budget, ev.prompt_weights))
    r = cfg.num_replicates
    return {
        "replicate": np.arange(r),
        "gap": np.asarray(gaps, np.float64),
        "valid": np.asarray(valid, bool),
        "predicted_gap": np.full(r, predicted),
    }


def write_atomic(path: Path, columns: dict, meta: dict) -> None:
    """Write ``columns`` and ``meta`` to ``path`` (npz) so that readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **columns, meta=np.asarray(json.dumps(meta, sort_keys=True)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_cell(path: Path):
    """``(columns, meta)`` of a finished cell, or ``None`` if the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            cols = {k: z[k] for k in RECORD_FIELDS}
        return cols, meta
    except (OSError, ValueError, KeyError, EOFError):
        return None


def results_path(cfg: DictConfig) -> Path:
    return Path(hydra.utils.to_absolute_path(cfg.results_dir))


def job(cfg: DictConfig) -> Path:
    """Run one cell unless its file already exists; return the file."""
    validate(cfg)
    cid, ident = cell_id(cfg)
    path = results_path(cfg) / f"{cid}.npz"
    if path.exists() and read_cell(path) is not None:
        log.info("cell %s already done, skipped", cid)
        return path
    cols = run_cell(cfg, progress=bool(cfg.get("progress", False)))
    meta = {
        **ident,
        "cell": cid,
        "code_version": code_version(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_atomic(path, cols, meta)
    log.info("cell %s written", cid)
    return path


# ------------------------------------------------------------------ summary


def aggregate(results_dir: Path, level: float = 0.95) -> list[dict]:
    """Means and confidence intervals per (world, design, estimator, budget) over all cell files of a directory."""
    return aggregate_files(sorted(Path(results_dir).glob("*.npz")), level)


def aggregate_files(paths, level: float = 0.95) -> list[dict]:
    """Means and confidence intervals per (world, design, estimator, budget) over the given cell files."""
    groups: dict = {}
    for p in paths:
        got = read_cell(p)
        if got is None:
            continue
        cols, meta = got
        key = (meta["world"]["name"], meta["design"]["name"], meta["estimator"]["name"], meta["budget"])
        g = groups.setdefault(key, {"gap": [], "valid": [], "pred": []})
        g["gap"].append(cols["gap"])
        g["valid"].append(cols["valid"])
        g["pred"].append(cols["predicted_gap"])
    rows = []
    for (world, design, est, n), g in sorted(groups.items()):
        gap = np.concatenate(g["gap"])
        valid = np.concatenate(g["valid"])
        pred = float(np.mean(np.concatenate(g["pred"])))
        ok = gap[valid]
        mean, se, lo, hi = mean_and_ci(ok, level) if ok.size >= 2 else (np.nan,) * 4
        rows.append({
            "world": world, "design": design, "estimator": est, "budget": n, "replicates": int(gap.size),
            "valid_fraction": float(valid.mean()), "mean_gap": mean, "se": se, "ci_low": lo, "ci_high": hi,
            "predicted_gap": pred, "ratio_to_prediction": mean / pred if pred > 0 else np.nan,
        })
    base = {(r["world"], r["estimator"], r["budget"]): r["mean_gap"] for r in rows if r["design"] == "uniform"}
    for r in rows:
        b = base.get((r["world"], r["estimator"], r["budget"]))
        r["ratio_to_uniform"] = r["mean_gap"] / b if b else np.nan
    return rows


def format_summary(rows: list[dict]) -> str:
    head = f"{'world':<11}{'design':<20}{'budget':>9}{'mean gap':>12}{'95% CI':>25}{'/uniform':>10}{'/predicted':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
        lines.append(
            f"{r['world']:<11}{r['design']:<20}{r['budget']:>9}{r['mean_gap']:>12.4g}{ci:>25}"
            f"{r['ratio_to_uniform']:>10.3f}{r['ratio_to_prediction']:>11.3f}"
        )
    return "\n".join(lines)


def sweep_job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job of a multirun, as Hydra's basic sweeper will expand them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    strings = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(strings)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_job(overrides, hydra_node: bool = False) -> DictConfig:
    """The composed config of one job (outside a running Hydra app)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="experiments.conf", version_base=None):
        return compose(config_name="sweep", overrides=list(overrides), return_hydra_config=hydra_node)


def grid(experiment: str, overrides=()) -> list[list[str]]:
    """Every job's overrides of ``experiment=<experiment>`` plus ``overrides`` (comma lists sweep)."""
    cfg = compose_job([f"experiment={experiment}"], hydra_node=True)
    cfg.hydra.overrides.task = [f"experiment={experiment}", *overrides]
    return sweep_job_overrides(cfg)


def run_jobs(jobs, results_dir, progress: bool = True, desc: str = "cells") -> list[Path]:
    """Run a list of jobs (override lists) in this process, like a multirun with the basic launcher.

    Every job is composed and validated before the first one runs; finished cells in
    ``results_dir`` are skipped. Returns the cell files, in the order of ``jobs``.
    """
    cfgs = []
    for overrides in jobs:
        cfg = compose_job([*overrides, f"results_dir={results_dir}", f"progress={str(progress).lower()}"])
        try:
            validate(cfg)
        except ValueError as err:
            raise ValueError(f"job [{' '.join(overrides)}]: {err}") from None
        cfgs.append(cfg)
    return [job(cfg) for cfg in tqdm(cfgs, desc=desc, unit="cell", disable=not progress)]


class ValidateSweep(Callback):
    """Composes and validates every job of a multirun before the first one starts.

    Hydra turns exceptions raised in callbacks into warnings, so a failure exits the
    process with ``SystemExit`` (status 1), which Hydra does not catch.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        jobs = sweep_job_overrides(config)
        for overrides in jobs:
            try:
                cfg = loader.load_configuration(config_name=config.hydra.job.config_name, overrides=overrides, run_mode=RunMode.MULTIRUN)
                validate(cfg)
            except Exception as err:  # noqa: BLE001 - every composition or validation error stops the sweep
                raise SystemExit(f"invalid sweep, no job started. Job [{' '.join(overrides)}]: {err}") from None
        log.info("validated %d jobs", len(jobs))


class CellProgress(Callback):
    """A progress bar over the cells of a multirun (for launchers that run jobs in
    this process; with joblib, Ray or Slurm each worker logs its own cells)."""

    def __init__(self) -> None:
        self.bar = None

    def __getstate__(self) -> dict:
        # Launchers (joblib, Ray) pickle the callbacks into their workers; the bar stays here.
        return {"bar": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.get("progress", False):
            self.bar = tqdm(total=len(sweep_job_overrides(config)), desc="cells", unit="cell")

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_summary(config: DictConfig) -> list[dict]:
    """Print the summary table of ``results_dir``; with ``figure`` set, also write
    ``<figure>.csv`` (the rows) and ``<figure>.png``/``.pdf`` (gap against budget)."""
    rows = aggregate(results_path(config))
    print(format_summary(rows))
    target = config.get("figure")
    if target and rows:
        from experiments.plotting import plot_gap_vs_budget, save_figure, write_csv

        out = Path(hydra.utils.to_absolute_path(str(target)))
        write_csv(rows, out.with_suffix(".csv"))
        worlds = sorted({r["world"] for r in rows})
        fig = plot_gap_vs_budget(rows, title=f"{', '.join(worlds)} world: DPO gap by design")
        for p in save_figure(fig, out):
            print(f"wrote {p}")
    return rows


class SummaryCallback(Callback):
    """Prints the summary table (and writes the figure, if configured) after a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        write_summary(config)


@hydra.main(version_base=None, config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> None:
    if cfg.summary_only:
        write_summary(cfg)
        return
    job(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        write_summary(cfg)


if __name__ == "__main__":
    main()
