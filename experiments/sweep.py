"""The sweep app: one Hydra job per (world, design, estimator, budget) cell.

A cell runs its design once (``allocation_draws`` times, with as many keys, where asked),
then ``num_replicates`` Monte-Carlo label sets, split among the draws, in compiled
``vmap`` chunks (labels -> DPO fit -> exact gap), and writes one tidy record per
replicate to ``<results_dir>/<cell id>.npz`` (columnar: one array per field). The
write is atomic (temporary file, then ``os.replace``), so an interrupted sweep leaves
either a complete cell file or none. A rerun skips the cells whose record was made by
the current code; what makes two runs the same cell, and the code version, are
defined in :mod:`experiments.cell`; records and the summary in :mod:`experiments.records`.

    python -m experiments.sweep                                   # one cell
    python -m experiments.sweep -m design=uniform,oracle budget=1000,10000
    python -m experiments.sweep -m experiment=figure1_contextual  # a figure's sweep
    python -m experiments.sweep summary_only=true                 # the table of results_dir

Config groups (``experiments/conf/``): ``world/``, ``design/`` (one file per
registered design), ``estimator/`` (newton, map, optax), ``experiment/`` (``@package
_global_``, one per figure). Every key is checked before any work starts.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import re
from pathlib import Path

import hydra
import jax
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from experiments.cell import REPLICATE_CHUNK, check_design_cache, cell_id, cell_identity, code_version, float64, git_version, is_project_design, record_code_version, run_cell  # noqa: F401 - re-exported
from experiments.records import (  # noqa: F401 - re-exported
    RECORD_FIELDS,
    RecordError,
    SUMMARY_FIELDS,
    check_writable,
    format_summary,
    read_cell,
    write_atomic,
)
from experiments import records as _records
from experiments.compiled import classic_emitters_if_fresh, release_compiled, use_classic_emitters
from experiments.worlds import check_world_config, make_world
from synthetic.designs import DESIGNS, check_design_budget, check_design_params, check_reproducible, design_problem
from synthetic.designs.adaptive import ADAPTIVE_RULES
from synthetic.monte_carlo import check_estimator_params
from theory.checked import check_argument, one_of

logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ validation


#: The sweep's scalar settings and what each allows (specs of :mod:`theory.checked`).
_SETTINGS = {"budget": "int >= 1", "num_replicates": "int >= 2", "allocation_draws": "int >= 1", "seed": "int >= 0", "world_seed": "int >= 0",
             "progress": "bool", "reuse_stale_records": "bool", "summary_only": "bool"}
#: Every key a sweep's config may have (conf/sweep.yaml and its groups); any other is a
#: typo or a misplaced key (``+num_replicate=5``, ``+estimator.prior_precision=100`` for
#: ``estimator.params.prior_precision``) that would be recorded and never applied.
_TOP_KEYS = frozenset(_SETTINGS) | {"world", "design", "estimator", "results_dir", "design_cache", "imports", "figure", "hydra"}
_GROUP_KEYS = {"design": ("name", "params"), "estimator": ("name", "params", "fit_dtype")}


def _check_keys(cfg: DictConfig) -> None:
    """No key the sweep would ignore: at the top level and in ``design`` and ``estimator``."""
    extra = sorted(set(cfg.keys()) - _TOP_KEYS)
    if extra:
        raise ValueError(f"{extra[0]} is not a sweep setting (it would be recorded and never applied); allowed: "
                         f"{sorted(_TOP_KEYS - {'hydra'})}")
    for group, allowed in _GROUP_KEYS.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            raise ValueError(f"{group} must be a config group ({group}=<name>), got {node!r}")
        extra = sorted(set(node.keys()) - set(allowed))
        if extra:
            hint = f" (a parameter is {group}.params.{extra[0]})" if extra[0] not in allowed else ""
            raise ValueError(f"{group}.{extra[0]} is not a key of {group}{hint}; allowed: {list(allowed)}")


_REPRODUCIBLE: set = set()  # user designs' cells this process found reproducible (validate)


def validate(cfg: DictConfig) -> None:
    """Check every key before any work; errors name the key and the allowed values."""
    for module in cfg.get("imports") or []:
        try:
            importlib.import_module(module)  # registers user designs (register_design)
        except ImportError as err:
            raise ValueError(f"imports: cannot import {module!r} ({err}); allowed: importable module names") from None
    _check_keys(cfg)
    check_world_config(cfg.world)
    check_argument("design.name", cfg.design.name, one_of(sorted(DESIGNS)), config=True)
    params = OmegaConf.to_container(cfg.design.params, resolve=True)  # plain and resolved, as the cell passes them
    check_design_params(cfg.design.name, params)
    check_estimator_params(cfg.estimator.name, OmegaConf.to_container(cfg.estimator.params, resolve=True), config=True)
    check_argument("estimator.fit_dtype", cfg.estimator.get("fit_dtype"), "optional one of float32, float64", config=True)
    for key, spec in _SETTINGS.items():
        check_argument(key, cfg.get(key, False) if spec == "bool" else cfg[key], spec, config=True)
    if cfg.allocation_draws > cfg.num_replicates:
        raise ValueError(f"allocation_draws = {cfg.allocation_draws} exceeds num_replicates = {cfg.num_replicates}; "
                         "allowed: an integer from 1 to num_replicates (the replicates are split among the draws)")
    if cfg.get("figure") is not None and not isinstance(cfg.figure, str):
        raise ValueError(f"figure must be null or a path prefix (a string), got {cfg.figure!r}")
    check_design_cache(cfg, writable=False)  # its writability: check_jobs, after results_dir's
    # World parameters (K >= 2, beta > 0, ...) are checked by the constructor, which
    # is cheap; the pool-size check needs the world.
    with float64():
        world = make_world(cfg.world, jax.random.key(cfg.world_seed))
        problem = design_problem(world)
        # the design's own budget checks (caps, each edge or prompt labelled at most once,
        # rounding without replacement), as run_design makes them
        check_design_budget(cfg.design.name, problem, cfg.budget, **params)
        spec = DESIGNS[cfg.design.name]
        if spec.adaptive and (cfg.design.name not in ADAPTIVE_RULES or not is_project_design(cfg.design.name)):
            # (a user's function re-registered under a project rule's name would have run the project's rule)
            raise ValueError(f"design.name: {cfg.design.name!r} is registered adaptive=True, but a sweep runs adaptively only "
                             f"the project's adaptive rules ({', '.join(sorted(ADAPTIVE_RULES))}); allowed: register it "
                             "adaptive=False (needs_truth=True lets it buy labels: they are its pilot)")
        if not spec.adaptive and not is_project_design(cfg.design.name):
            # a design of the user's: its allocation a function of its key (twice; another key if keyless),
            # once per process and cell (the multirun's pre-flight pass and the job itself both validate)
            seen = json.dumps([OmegaConf.to_container(cfg.world, resolve=True), cfg.world_seed, cfg.design.name,
                               OmegaConf.to_container(cfg.design.params, resolve=True), cfg.budget, cfg.seed,
                               code_version(tuple(cfg.get("imports") or ()), cfg.design.name)], sort_keys=True, default=str)
            if seen not in _REPRODUCIBLE:
                check_reproducible(cfg.design.name, jax.random.key(cfg.seed), problem, cfg.budget, **params)
                _REPRODUCIBLE.add(seen)


# ------------------------------------------------------------------- the cell


def results_path(cfg: DictConfig) -> Path:
    return Path(hydra.utils.to_absolute_path(cfg.results_dir))


def check_design_choice(cfg: DictConfig, overrides=()) -> None:
    """A ``design.name=...`` override is only for ``design=custom``.

    A ``design.*`` override applies to every design of a multirun, so
    ``design=custom,uniform design.name=my_rule`` would run ``my_rule`` twice, once
    labelled uniform. Config files may name a registered design with other parameters
    (``design=adpo_greedy_repeat`` is ``adpo_greedy`` with repeats); only the command
    line's ``design.name`` is refused. Needs the Hydra node (``hydra.runtime.choices``).
    """
    choice = OmegaConf.select(cfg, "hydra.runtime.choices.design", default=None)
    named = any(str(o).lstrip("+~").split("=", 1)[0] == "design.name" for o in overrides)
    if choice is None or choice == "custom" or not named:
        return
    raise ValueError(
        f"design.name = {cfg.design.name!r} overrides the design chosen by design={choice}: a design.* override applies to "
        "every design of the sweep. To compare your design with registered ones in one sweep, sweep the name of the custom "
        f"design, e.g. design=custom 'design.name={cfg.design.name},{choice}'; allowed: design.name only with design=custom"
    )


def check_jobs(cfgs, labels, overrides=None) -> None:
    """Check every job, then the sweep as a whole, before any job runs.

    Each job: :func:`validate` and :func:`check_design_choice`. The sweep: no two jobs
    are the same cell (an override that reached a design it was not meant for makes
    duplicates, whose replicates would be counted twice), each ``results_dir`` can be
    written, then each ``design_cache``. Raises ``ValueError`` naming the job.
    """
    seen: dict = {}
    dirs = set()
    for i, (cfg, label) in enumerate(zip(cfgs, labels)):
        try:
            validate(cfg)
            check_design_choice(cfg, overrides[i] if overrides is not None else label.split())
        except ValueError as err:
            raise ValueError(f"job [{label}]: {err}") from None
        cid = cell_id(cfg)[0]
        if cid in seen:
            raise ValueError(
                f"jobs [{seen[cid]}] and [{label}] are the same cell ({cid}): their replicates would be counted twice. "
                "An override probably reached a design it was not meant for; give each design its own values, "
                "e.g. design=custom 'design.name=my_rule,uniform'"
            )
        seen[cid] = label
        dirs.add(results_path(cfg))
    for d in sorted(dirs):
        check_writable(d)
    for cfg, label in zip(cfgs, labels):
        try:
            check_design_cache(cfg)
        except ValueError as err:
            raise ValueError(f"job [{label}]: {err}") from None


def job(cfg: DictConfig) -> Path:
    """Run one cell unless a record of it, made by the current code, exists; return the file.

    A record made by other code (another code version, see :mod:`experiments.cell`)
    is recomputed, unless ``reuse_stale_records=true``. An unreadable record is moved
    aside to ``<file>.corrupt`` and recomputed; both are logged with the path.

    A process whose first computation this is (a launcher's worker) compiles with XLA's
    classic CPU emitters, as the app's main process does (:func:`use_classic_emitters`).
    """
    use_classic_emitters()
    validate(cfg)
    cid, ident = cell_id(cfg)
    code = record_code_version(cfg)
    path = results_path(cfg) / f"{cid}.npz"
    if path.exists():
        try:
            _, meta = read_cell(path)
        except RecordError as err:
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            log.warning("%s; moved to %s, recomputing the cell", err, aside)
        else:
            if meta["code_version"] == code:
                log.info("cell %s already done, skipped", cid)
                return path
            if cfg.get("reuse_stale_records", False):
                log.warning("cell %s: kept its record made by other code (%s; now %s) since reuse_stale_records=true",
                            cid, meta["code_version"], code)
                return path
            log.warning("cell %s: its record was made by other code (%s; now %s), recomputing", cid, meta["code_version"], code)
    cols = run_cell(cfg, progress=bool(cfg.get("progress", False)))
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    meta = {**ident, "cell": cid, "code_version": code, "git": git_version(), "config": config}
    _records.write_atomic(path, cols, meta)
    log.info("cell %s written", cid)
    release_compiled()  # a long sweep in one process stays under the kernel's memory-map limit
    return path


# ------------------------------------------------------------------ summary


def _current_code(meta):
    try:
        return record_code_version(meta)
    except (KeyError, ImportError):
        return None  # a design or module not available here: its records cannot be checked


def aggregate(results_dir, level: float = 0.95, problems: list | None = None) -> list[dict]:
    """One row per cell record of ``results_dir`` (see :func:`experiments.records.aggregate`).

    Rows never pool records; records made by other code than the current one are
    marked (``current_code`` false). Unreadable files go to ``problems``.

    The current code is the apps' (XLA's classic CPU emitters where jaxlib has them,
    :func:`use_classic_emitters`) when this process has not computed yet: a plain Python
    process or a fresh notebook had marked every record of the apps as made by other code
    (the emitters are part of a record's code version) and dropped their ratios to uniform.
    A process that has computed with XLA's default emitters keeps them, and so its own view;
    its environment, which the sweeps it launches inherit, is left as it was.
    """
    classic_emitters_if_fresh()
    return _records.aggregate(results_dir, level, problems, current_code=_current_code)


def aggregate_files(paths, level: float = 0.95, problems: list | None = None) -> list[dict]:
    """One row per given record file, in order (see :func:`experiments.records.aggregate_files`;
    the current code as in :func:`aggregate`)."""
    classic_emitters_if_fresh()
    return _records.aggregate_files(paths, level, problems, current_code=_current_code)


def sweep_job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job of a multirun, as Hydra's basic sweeper will expand them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    strings = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(strings)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_job(overrides, hydra_node: bool = False) -> DictConfig:
    """The composed config of one job, outside a Hydra app or inside one whose configs are
    ``experiments/conf`` (the sweep and items apps)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running app: its config search path
        return compose(config_name="sweep", overrides=list(overrides), return_hydra_config=hydra_node)
    with initialize_config_module(config_module="experiments.conf", version_base=None):
        return compose(config_name="sweep", overrides=list(overrides), return_hydra_config=hydra_node)


def grid(experiment: str, overrides=()) -> list[list[str]]:
    """Every job's overrides of ``experiment=<experiment>`` plus ``overrides`` (comma lists sweep)."""
    cfg = compose_job([f"experiment={experiment}"], hydra_node=True)
    cfg.hydra.overrides.task = [f"experiment={experiment}", *overrides]
    return sweep_job_overrides(cfg)


def run_jobs(jobs, results_dir, progress: bool = True, desc: str = "cells") -> list[Path]:
    """Run a list of jobs (override lists) in this process, like a multirun with the basic launcher.

    Every job is composed and checked (:func:`check_jobs`) before the first one runs;
    cells with a record made by the current code are skipped. Returns the record
    files, in the order of ``jobs``.
    """
    use_classic_emitters()  # before check_jobs, whose checks are this process's first computation
    cfgs = compose_jobs([[*o, f"results_dir={results_dir}", f"progress={str(progress).lower()}"] for o in jobs])
    check_jobs(cfgs, [" ".join(o) for o in jobs], jobs)
    for cfg in cfgs:
        with open_dict(cfg):
            del cfg["hydra"]
    return [job(cfg) for cfg in tqdm(cfgs, desc=desc, unit="cell", disable=not progress)]


#: Overrides :func:`compose_jobs` applies to an earlier job's composed config instead of composing
#: again: a plain integer for ``budget`` or ``seed``, top-level values that choose no config file.
_VALUE_OVERRIDE = re.compile(r"(budget|seed)=[0-9]+")


def compose_jobs(jobs) -> list[DictConfig]:
    """The composed config of every job (override lists), Hydra node included, as
    :func:`compose_job` gives it, composing once per set of overrides other than
    :data:`_VALUE_OVERRIDE` ones (Hydra composes in about 0.08 s; a sweep's jobs differ mostly
    in budget and seed): a job whose other overrides, and whose value overrides' keys in
    order, equal an earlier one's is a copy of that job's config with its own values set by
    Hydra's code for value overrides, the step that applies them after composition. Only the
    Hydra node's record of the command line (``hydra.overrides``, ``hydra.job``) then keeps the
    earlier job's values; its ``hydra.runtime.choices`` are the job's own. ``tests/test_sweep.py``
    checks the result against :func:`compose_job` job by job."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    first: dict = {}
    out = []
    for o in jobs:
        o = [str(x) for x in o]
        values = [x for x in o if _VALUE_OVERRIDE.fullmatch(x)]
        rest = tuple(x for x in o if not _VALUE_OVERRIDE.fullmatch(x))
        if any(x.lstrip("+~").split("=", 1)[0].split("@", 1)[0] in ("budget", "seed") for x in rest):
            out.append(compose_job(o, hydra_node=True))  # another form of override sets them too: Hydra's order decides
            continue
        key = (rest, tuple(x.split("=", 1)[0] for x in values))
        if key not in first:
            first[key] = compose_job(o, hydra_node=True)
            out.append(first[key])
            continue
        cfg = copy.deepcopy(first[key])
        ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides(values), cfg)
        out.append(cfg)
    return out


def compose_multirun(config: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """``(overrides, composed config)`` of every job of the running multirun, as its launcher
    will run them; a job that does not compose exits (status 1) naming it, before any job runs."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    out = []
    for overrides in sweep_job_overrides(config):
        try:
            out.append((overrides, loader.load_configuration(config_name=config.hydra.job.config_name, overrides=overrides,
                                                             run_mode=RunMode.MULTIRUN)))
        except Exception as err:  # noqa: BLE001 - every composition error stops the sweep
            raise SystemExit(f"invalid sweep, no job started. Job [{' '.join(overrides)}]: {err}") from None
    return out


class ValidateSweep(Callback):
    """Composes and checks every job of a multirun (:func:`check_jobs`) before the first one starts.

    Hydra turns exceptions raised in callbacks into warnings, so a failure exits the
    process with ``SystemExit`` (status 1), which Hydra does not catch.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        composed = compose_multirun(config)
        jobs, cfgs = [o for o, _ in composed], [c for _, c in composed]
        try:
            check_jobs(cfgs, [" ".join(o) for o in jobs], jobs)
        except ValueError as err:
            raise SystemExit(f"invalid sweep, no job started. {err}") from None
        log.info("validated %d jobs", len(jobs))


class _AboveBar:
    """A stream that writes through ``tqdm.write``, so log lines appear above the bars."""

    def write(self, text: str) -> None:
        if text.strip():
            tqdm.write(text.rstrip("\n"))

    def flush(self) -> None:
        pass


def _console_handlers():
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]:
        for h in getattr(logger, "handlers", []):
            if type(h) is logging.StreamHandler:
                yield h


class CellProgress(Callback):
    """A progress bar over the cells of a multirun (for launchers that run jobs in
    this process; with joblib, Ray or Slurm each worker logs its own cells). While it
    runs, console log lines are written above the bar instead of through it."""

    def __init__(self) -> None:
        self.bar = None
        self.streams: dict = {}

    def __getstate__(self) -> dict:
        # Launchers (joblib, Ray) pickle the callbacks into their workers; the bar stays here.
        return {"bar": None, "streams": {}}

    def _redirect(self) -> None:
        # Hydra configures logging anew for each job, so this runs at every job start.
        for h in _console_handlers():
            if not isinstance(h.stream, _AboveBar):
                self.streams[h] = h.setStream(_AboveBar())

    def _close(self) -> None:
        for h, stream in self.streams.items():
            if isinstance(h.stream, _AboveBar):
                h.setStream(stream)
        self.streams = {}
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.get("progress", False):
            self.bar = tqdm(total=len(sweep_job_overrides(config)), desc="cells", unit="cell")
            self._redirect()

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if self.bar is not None:
            self._redirect()

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if self.bar.n >= self.bar.total:  # before the summary prints (callbacks end in reverse order)
                self._close()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._close()


def write_summary(config: DictConfig) -> list[dict]:
    """Print the summary table of ``results_dir``; with ``figure`` set, also write
    ``<figure>.csv`` (the rows) and ``<figure>.png``/``.pdf`` (gap against budget).

    Raises ``ValueError`` naming the path when ``results_dir`` holds no record.
    """
    d = results_path(config)
    problems: list = []
    rows = aggregate(d, problems=problems)
    if not rows and not problems:
        raise ValueError(f"results_dir: no records in {d} (looked for *.npz); check results_dir")
    print(format_summary(rows, problems))
    stale = sum(not r["current_code"] for r in rows)
    if stale:
        print(f"{stale} record(s) were made by other code than the current one (code version column); "
              "rerun the sweep to recompute them, or start clean with a new results_dir")
    target = config.get("figure")
    if target and rows:
        import matplotlib

        from experiments.plotting import plot_gap_vs_budget, save_figure, write_csv

        matplotlib.use("Agg")  # the app only writes files

        out = Path(hydra.utils.to_absolute_path(str(target)))
        write_csv(rows, out.with_suffix(".csv"))
        worlds = sorted({r["world"] for r in rows})
        fig = plot_gap_vs_budget([r for r in rows if np.isfinite(r["mean_gap"])], title=f"{', '.join(worlds)} world: DPO gap by design")
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
        try:
            write_summary(cfg)
        except ValueError as err:
            raise SystemExit(f"summary_only: {err}") from None
        return
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        choices = HydraConfig.get().runtime.choices
        check_design_choice(OmegaConf.create({"design": cfg.design, "hydra": {"runtime": {"choices": dict(choices)}}}),
                            list(HydraConfig.get().overrides.task))
        check_writable(results_path(cfg))
    job(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        write_summary(cfg)


if __name__ == "__main__":
    use_classic_emitters()  # before the first computation: records are computed so by every app
    main()
