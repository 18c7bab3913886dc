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

from experiments.worlds import check_world_config, make_world
from synthetic.designs import DESIGNS, check_design_params, design_problem, run_design
from synthetic.estimators import fit_dpo_optax, fit_newton
from synthetic.labels import simulate_wins
from synthetic.monte_carlo import mean_and_ci
from theory import asymptotic_gap
from theory.policy import _optimality_gap

jax.config.update("jax_enable_x64", True)
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

ESTIMATORS = {"newton": fit_newton, "optax": fit_dpo_optax}
RECORD_FIELDS = ["replicate", "gap", "valid", "predicted_gap"]


# ------------------------------------------------------------------ validation


def validate(cfg: DictConfig) -> None:
    """Check every key before any work; errors name the key and the allowed values."""
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
    for key in ("budget", "num_replicates", "seed", "world_seed"):
        v = cfg[key]
        lo = {"budget": 1, "num_replicates": 2}.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")
    # World parameters (K >= 2, beta > 0, ...) are checked by the constructor, which
    # is cheap; the pool-size check needs the world.
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    num_edges = design_problem(world).num_edges
    rounding = cfg.design.params.get("rounding", DESIGNS[cfg.design.name].params.get("rounding"))
    if rounding == "without_replacement" and cfg.budget > num_edges:
        raise ValueError(
            f"budget = {cfg.budget} exceeds the {num_edges} candidate edges of this world, which design.params.rounding = "
            "'without_replacement' cannot allocate; allowed: budget <= number of edges, or rounding in ['auto', 'efficient', 'with_replacement']"
        )


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


def _replicates_fn(estimator: str, params: dict):
    fit = ESTIMATORS[estimator]

    @jax.jit
    def run(keys, theta_star, diffs, counts, pilot_counts, pilot_wins, beta, features, log_ref, rho):
        def one(key):
            fresh = simulate_wins(key, theta_star, diffs, counts - pilot_counts, beta)
            wins = fresh + pilot_wins
            res = fit(diffs, counts, wins, beta, **params)
            theta = res.theta
            valid = res.mle_exists if estimator == "newton" else jnp.isfinite(res.loss)
            return _optimality_gap(theta, theta_star, features, log_ref, beta, rho), valid

        return jax.vmap(one)(keys)

    return run


_COMPILED: dict = {}


def run_cell(cfg: DictConfig) -> dict:
    """Compute one cell's records (no file I/O)."""
    world = make_world(cfg.world, jax.random.key(cfg.world_seed))
    problem = design_problem(world)
    name = cfg.design.name
    # Keys depend on the cell, not on the order jobs run in.
    salt = int(hashlib.sha256(f"{name}|{cfg.budget}".encode()).hexdigest()[:7], 16)
    k_design, k_labels = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), salt))
    out = run_design(name, k_design, problem, cfg.budget, **OmegaConf.to_container(cfg.design.params))
    e = problem.num_edges
    dtype = problem.edges.diffs.dtype
    counts = out.dense_counts(e).astype(np.float64)
    if out.pilot is not None:
        pilot_counts, pilot_wins = (np.asarray(a, np.float64) for a in out.pilot)
    else:
        pilot_counts, pilot_wins = np.zeros(e), np.zeros(e)
    params = OmegaConf.to_container(cfg.estimator.params)
    sig = (cfg.estimator.name, json.dumps(params, sort_keys=True))
    if sig not in _COMPILED:
        _COMPILED[sig] = _replicates_fn(cfg.estimator.name, params)
    ev = world.eval
    rho = ev.prompt_weights / jnp.sum(ev.prompt_weights)
    keys = jax.random.split(k_labels, cfg.num_replicates)
    gaps, valid = _COMPILED[sig](
        keys, world.theta_star, problem.edges.diffs, jnp.asarray(counts, dtype), jnp.asarray(pilot_counts, dtype),
        jnp.asarray(pilot_wins, dtype), world.beta, ev.features, ev.log_ref, rho,
    )
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
    cols = run_cell(cfg)
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
    """Means and confidence intervals per (world, design, estimator, budget) over all cell files."""
    groups: dict = {}
    for p in sorted(Path(results_dir).glob("*.npz")):
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


class SummaryCallback(Callback):
    """Prints the summary table of ``results_dir`` after a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        print(format_summary(aggregate(results_path(config))))


@hydra.main(version_base=None, config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> None:
    if cfg.summary_only:
        print(format_summary(aggregate(results_path(cfg))))
        return
    job(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        print(format_summary(aggregate(results_path(cfg))))


if __name__ == "__main__":
    main()
