"""Select pairs for your own pool: a table of completions in, a labelling queue out.

    python -m experiments.select pool=pool.parquet budget=2000 out=queue.jsonl
    python -m experiments.select pool=pool.jsonl budget=2000 out=queue.jsonl design=uniform pca=null
    python -m experiments.select convert=labelled.jsonl out=train.jsonl     # -> TRL's prompt/chosen/rejected

**Input** (Parquet or JSON Lines, read with pyarrow; ``pool=hf:<dataset>[:split]``
reads a Hugging Face dataset when ``datasets`` is installed): one row per completion
with ``prompt_id``, ``completion_id``, ``features`` (a list of floats, the same length
on every row) and optionally ``ref_logprob`` (``log pi0`` of the completion given its
prompt; absent: a uniform reference over the prompt's completions). Other columns
(prompt and completion texts) are carried into the output.

**What it does**, each stage timed on the console: checks the table (every error names
the column or option, before any solve); skips prompts with a single completion;
reduces the features by PCA (``pca``, default 128 as in the paper; the PCA is of the
features centred within each prompt, the span that edge differences live in, by a
randomized SVD); enumerates the within-prompt comparisons; solves the design at the
reference ``theta0 = 0`` (the plug-in design by default) with each comparison labelled
at most ``max_labels_per_edge`` times (caps ``c/n``) and, with ``prior_precision``, the
Bayes criterion ``tr(I (lambda/n Id + Sigma_w)^-1)``; draws exactly ``budget``
comparisons (fixed-size sampling with inclusion probabilities ``n w_e``).

**Output**: JSON Lines, one line per comparison to label, shuffled, with the a/b order
randomised: ``prompt_id``, ``completion_a``, ``completion_b`` and, for each extra input
column, its value (prompt-level columns once, completion-level ones as ``<col>_a`` and
``<col>_b``). Beside it ``<out>.report.json``, ``<out>.report.txt`` and
``<out>.report.png``: the criterion of the selection against uniform, first-two and
best-vs-worst by reference log-probability on the same pool and budget, the predicted
gap ratio, coverage, and the solver's certificate.

After labelling, add a ``preferred`` field (``"a"``, ``"b"``, or the preferred
completion's id) to each line and convert with ``convert=``: each line becomes
``{"prompt", "chosen", "rejected"}`` (texts from ``prompt_column`` and ``text_column``
where the input had them, ids otherwise), the format TRL's ``DPOTrainer`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from experiments.cell import float64  # noqa: E402
from synthetic.designs import DESIGNS, DesignProblem, run_design, weighted_output  # noqa: E402
from synthetic.estimators import fit_newton  # noqa: E402
from synthetic.worlds import Pool  # noqa: E402
from theory import enumerate_edges, policy_curvature  # noqa: E402
from theory.design import optimal_design  # noqa: E402
from theory.checked import check_argument  # noqa: E402
from theory.information import design_criterion  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

__all__ = ["PoolTable", "read_table", "load_pool", "pca_reduce", "select", "convert_to_trl", "NO_TRUTH_DESIGNS"]

REQUIRED = ("prompt_id", "completion_id", "features")
#: Registered designs that need no simulated truth (no theta*, no simulated annotator).
#: ``two_stage`` needs ``pilot=<file>`` here: its pilot labels come from your annotators.
NO_TRUTH_DESIGNS = ("plug_in", "two_stage", "uniform", "first_two", "first_n", "reference_weighted", "d_optimal",
                    "a_optimal", "apo_greedy", "apo_sequential", "adpo_greedy", "reference_filter", "uncertainty", "most_certain")
#: How far a prompt's ``logsumexp(ref_logprob)`` may be from 0 and still count as normalised.
NORMALISED_TOL = 1e-3


class _Stage:
    """Prints ``stage ... done in t s`` (the progress output of each stage)."""

    def __init__(self, name: str, quiet: bool):
        self.name, self.quiet = name, quiet

    def __enter__(self):
        self.t0 = time.perf_counter()
        if not self.quiet:
            print(f"{self.name} ...", flush=True)
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        if not self.quiet and exc[0] is None:
            print(f"  done in {self.seconds:.1f} s", flush=True)


# ------------------------------------------------------------------ reading


def read_table(source: str):
    """A pyarrow Table from a Parquet (``.parquet``/``.pq``) or JSON Lines (``.jsonl``/``.json``)
    file, or ``hf:<dataset>[:split]`` (needs the ``datasets`` package)."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    if str(source).startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise ValueError("pool: hf:<dataset> needs the datasets package (pip install datasets)") from None
        name, _, split = str(source)[3:].partition(":")
        return datasets.load_dataset(name, split=split or "train").data.table
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"pool: no file at {path.resolve()}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    if suffix in (".jsonl", ".json"):
        return pj.read_json(path)
    raise ValueError(f"pool: {path.name} has suffix {suffix!r}; allowed: .parquet, .pq, .jsonl, .json, or hf:<dataset>")


@dataclass
class PoolTable:
    """A checked pool, padded to ``[m, K]`` (``slot[i]``: row ``i``'s place)."""

    prompt_ids: list  # [m]
    completion_ids: list  # [m] lists
    features: np.ndarray  # [m, K, D] (0 where absent)
    log_ref: np.ndarray  # [m, K] (-inf where absent)
    rows: np.ndarray  # [m, K] input row index (-1 where absent)
    extra: dict  # column -> list of values per input row
    prompt_level: list  # extra columns constant within every prompt
    skipped_prompts: int = 0
    renormalised: bool = False
    notes: list = field(default_factory=list)
    varies_in: dict = field(default_factory=dict)  # extra column -> the first prompt (index) whose rows differ in it


def load_pool(table, renormalise_ref: bool = False) -> PoolTable:
    """Check a completions table and pad it into prompts x completions.

    Every problem raises ``ValueError`` naming the column: missing columns, features
    of unequal length, NaN or inf, duplicate ``(prompt_id, completion_id)``, and a
    ``ref_logprob`` that does not normalise within its prompt unless
    ``renormalise_ref`` (then ``pi0`` is restricted to the pool and renormalised there,
    which is what the policy class over the pool assumes). Prompts with a single
    completion are skipped and counted.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"pool: missing column(s) {missing}; required: {list(REQUIRED)}, optional: ['ref_logprob'] "
                         f"(the table has {table.column_names})")
    if table.num_rows == 0:
        raise ValueError("pool: the table has no rows")
    feats_col = table.column("features")
    if not (pa.types.is_list(feats_col.type) or pa.types.is_large_list(feats_col.type) or pa.types.is_fixed_size_list(feats_col.type)):
        raise ValueError(f"features: must be a list of floats per row, got type {feats_col.type}")
    if feats_col.null_count:
        raise ValueError(f"features: {feats_col.null_count} row(s) have no features (null)")
    lengths = np.asarray(pc.list_value_length(feats_col).to_numpy(zero_copy_only=False))
    if lengths.min() != lengths.max():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(f"features: rows have different lengths (row 0 has {lengths[0]}, row {bad} has {lengths[bad]}); "
                         "all rows must have the same length")
    if lengths[0] == 0:
        raise ValueError("features: rows are empty lists")
    flat = np.asarray(pc.list_flatten(feats_col).to_numpy(zero_copy_only=False), dtype=np.float64)
    feats = flat.reshape(table.num_rows, int(lengths[0]))
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        raise ValueError(f"features: row {int(np.flatnonzero(~finite)[0])} has NaN or inf ({int((~finite).sum())} such rows)")
    pid = table.column("prompt_id").to_pylist()
    cid = table.column("completion_id").to_pylist()
    for name, col in (("prompt_id", pid), ("completion_id", cid)):
        if any(v is None for v in col):
            raise ValueError(f"{name}: null values; every row needs one")
    if "ref_logprob" in table.column_names:
        lp = np.asarray(table.column("ref_logprob").to_numpy(zero_copy_only=False), dtype=np.float64)
        if not np.isfinite(lp).all():
            raise ValueError(f"ref_logprob: row {int(np.flatnonzero(~np.isfinite(lp))[0])} is NaN, inf or null; "
                             "give a finite log-probability on every row")
        if lp.max() > NORMALISED_TOL:  # renormalise_ref would take any column, a negative log-likelihood reversed
            r = int(np.argmax(lp))
            raise ValueError(f"ref_logprob: row {r} is {lp[r]:.4g} > 0, and a log-probability is <= 0 (a negative "
                             "log-likelihood? give log pi0(y|x), the reference model's sequence log-probability)")
    else:
        lp = None
    # group rows by prompt (first-appearance order), completions in input order
    p_uniq, p_idx = np.unique(np.asarray([str(p) for p in pid], dtype=object), return_inverse=True)
    key = np.asarray([f"{p}\x00{c}" for p, c in zip(pid, cid)], dtype=object)
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    if counts.max() > 1:
        dup = int(np.sort(first[counts > 1])[0])
        raise ValueError(f"prompt_id/completion_id: duplicate pair (prompt_id={pid[dup]!r}, completion_id={cid[dup]!r}); "
                         "each completion must appear once per prompt")
    order = np.argsort(p_idx, kind="stable")
    sizes = np.bincount(p_idx, minlength=len(p_uniq))
    keep = sizes >= 2
    skipped = int((~keep).sum())
    if not keep.any():
        raise ValueError("pool: every prompt has a single completion; comparisons need at least two per prompt")
    # prompts ordered by first appearance
    first_row = np.full(len(p_uniq), table.num_rows)
    np.minimum.at(first_row, p_idx, np.arange(table.num_rows))
    prompts = [int(p) for p in np.argsort(first_row) if keep[p]]
    m, k = len(prompts), int(sizes[keep].max())
    rows = -np.ones((m, k), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i, p in enumerate(prompts):
        r = order[starts[p]:starts[p + 1]]
        rows[i, :r.size] = r
    present = rows >= 0
    features = np.where(present[..., None], feats[np.maximum(rows, 0)], 0.0)
    if lp is None:
        logits = np.where(present, 0.0, -np.inf)
    else:
        logits = np.where(present, lp[np.maximum(rows, 0)], -np.inf)
    lse = np.logaddexp.reduce(logits, axis=1)
    renormalised = False
    if lp is not None and np.abs(lse).max() > NORMALISED_TOL:
        bad = int(np.argmax(np.abs(lse)))
        if not renormalise_ref:
            raise ValueError(
                f"ref_logprob: does not normalise within prompt {pid[rows[bad, 0]]!r} (logsumexp over its completions = "
                f"{lse[bad]:.4g}, not 0). Sampled completions rarely carry all of pi0's mass: set renormalise_ref=true to "
                "restrict pi0 to the pool and renormalise it within each prompt (what the policy class over the pool assumes)")
        renormalised = True
    log_ref = logits - lse[:, None]
    extra_cols = [c for c in table.column_names if c not in (*REQUIRED, "ref_logprob")]
    extra = {c: table.column(c).to_pylist() for c in extra_cols}
    prompt_level, varies_in = [], {}
    for c in extra_cols:
        vals = extra[c]
        x = next((i for i in range(m) if len({json.dumps(vals[r], default=str) for r in rows[i][rows[i] >= 0]}) > 1), None)
        if x is None:
            prompt_level.append(c)
        else:
            varies_in[c] = x
    return PoolTable([pid[rows[i, 0]] for i in range(m)], [[cid[r] for r in rows[i] if r >= 0] for i in range(m)],
                     features, log_ref, rows, extra, prompt_level, skipped, renormalised, varies_in=varies_in)


def pca_reduce(features, log_ref, dim, key):
    """Project features on the top ``dim`` principal directions of the features centred
    within each prompt (the span that edge differences live in), by a randomized SVD
    (Halko, Martinsson and Tropp 2011; 10 extra columns, 4 power iterations).

    Returns ``(features [m, K, dim], explained_fraction)``; with ``dim`` at or above the
    feature count the features are returned as they are, and with ``dim`` at or above the
    number of completions ``N`` (more features than completions: a small pool of embeddings)
    they are projected on the whole span of the centred features (exact SVD; ``r <= N``
    columns, every edge difference and the policy's curvature unchanged).
    """
    m, k, big = features.shape
    if dim is None or dim >= big:
        return features, 1.0
    present = np.isfinite(log_ref)
    mean = (features * present[..., None]).sum(1) / present.sum(1)[:, None]
    x = (features - mean[:, None, :])[present]  # [N, D]
    if dim >= x.shape[0]:  # the randomized SVD has at most N directions to give
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        r = int(np.sum(s > max(x.shape) * np.finfo(np.float64).eps * s[0])) if s.size and s[0] > 0 else 0
        basis = vt[:max(r, 1)].T
        return np.where(present[..., None], (features.reshape(-1, big) @ basis).reshape(m, k, basis.shape[1]), 0.0), 1.0
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().astype(np.uint32))
    q = np.linalg.qr(x @ rng.normal(size=(big, dim + 10)))[0]
    for _ in range(4):
        q = np.linalg.qr(x.T @ q)[0]
        q = np.linalg.qr(x @ q)[0]
    _, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    basis = vt[:dim].T  # [D, dim]
    explained = float((s[:dim] ** 2).sum() / max((x * x).sum(), 1e-300))
    out = np.where(present[..., None], (features.reshape(-1, big) @ basis).reshape(m, k, dim), 0.0)
    return out, explained


# ------------------------------------------------------------------ pilot labels


def read_pilot(path, pool: PoolTable, edges):
    """Labelled pairs (``prompt_id``, ``chosen``, ``rejected``) -> per-edge ``(counts, wins)``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    prompt_of = {str(p): i for i, p in enumerate(pool.prompt_ids)}
    slot = [{str(c): j for j, c in enumerate(cs)} for cs in pool.completion_ids]
    index = {(int(p), int(a), int(b)): e for e, (p, a, b) in enumerate(zip(edges.prompt, edges.first, edges.second))}
    counts = np.zeros(edges.num_edges, np.int64)
    wins = np.zeros(edges.num_edges, np.int64)
    for n, r in enumerate(rows, 1):
        missing = [k for k in ("prompt_id", "chosen", "rejected") if k not in r]
        if missing:
            raise ValueError(f"pilot: line {n} lacks {missing}; each line needs prompt_id, chosen, rejected")
        p = prompt_of.get(str(r["prompt_id"]))
        if p is None:
            raise ValueError(f"pilot: line {n} names prompt_id {r['prompt_id']!r}, which is not in the pool (or has one completion)")
        a, b = slot[p].get(str(r["chosen"])), slot[p].get(str(r["rejected"]))
        if a is None or b is None or a == b:
            bad = r["chosen"] if a is None else r["rejected"]
            raise ValueError(f"pilot: line {n} names completion {bad!r}, not a distinct completion of prompt {r['prompt_id']!r}")
        e = index[(p, min(a, b), max(a, b))]
        counts[e] += 1
        wins[e] += int(a < b)  # wins of the edge's first completion
    return counts, wins


# ------------------------------------------------------------------ selection


def _criterion(counts, diffs, curv, beta, prior_precision):
    n = counts.sum()
    ridge = 0.0 if prior_precision is None else prior_precision / n
    w = jnp.asarray(counts / n)
    return float(design_criterion(w, jnp.zeros(diffs.shape[1], diffs.dtype), diffs, curv, beta, ridge=ridge))


def _best_vs_worst_by_reference(key, problem, budget, cap):
    """One pair a prompt: the completions of highest and lowest reference log-probability."""
    e = problem.edges
    lr = np.asarray(problem.pool.log_ref)
    hi = np.argmax(np.where(np.isfinite(lr), lr, -np.inf), axis=1)
    lo = np.argmin(np.where(np.isfinite(lr), lr, np.inf), axis=1)
    a, b = np.minimum(hi, lo), np.maximum(hi, lo)
    pick = (e.first == a[e.prompt]) & (e.second == b[e.prompt]) & (a[e.prompt] != b[e.prompt])
    w = np.where(pick, np.asarray(problem.pool.prompt_weights)[e.prompt], 0.0)
    if w.sum() <= 0:
        raise ValueError("no prompt has completions of different reference log-probability")
    return weighted_output(key, problem, budget, w / w.sum(), max_labels_per_edge=cap)


def select(cfg: DictConfig, quiet: bool = False) -> dict:
    """Run the selection of ``cfg`` (see the module docstring), in float64; returns the report."""
    with float64():
        return _select(cfg, quiet)


def _select(cfg: DictConfig, quiet: bool = False) -> dict:
    check_config(cfg)
    key = jax.random.key(cfg.seed)
    k_pca, k_design, k_base, k_order = jax.random.split(key, 4)
    stages = {}
    with _Stage(f"reading {cfg.pool}", quiet) as st:
        table = read_table(cfg.pool)
        pool = load_pool(table, bool(cfg.renormalise_ref))
    col = cfg.get("prompt_column")
    if col in pool.varies_in:  # the queue would carry it per completion: no prompt text
        x = pool.varies_in[col]
        raise ValueError(f"prompt_column: column {col!r} differs between the rows of prompt {pool.prompt_ids[x]!r}, so it is no "
                         "prompt text; give each prompt's rows one value (or set prompt_column to the column that has one)")
    stages["read"] = st.seconds
    m, k, dim_in = pool.features.shape
    with _Stage(f"PCA {dim_in} -> {cfg.pca} dimensions" if cfg.pca is not None and cfg.pca < dim_in else "features as given", quiet) as st:
        feats, explained = pca_reduce(pool.features, pool.log_ref, cfg.pca, k_pca)
    stages["pca"] = st.seconds
    with _Stage("enumerating comparisons and the reference curvature I(0)", quiet) as st:
        f, lr = jnp.asarray(feats), jnp.asarray(pool.log_ref)
        rho = jnp.full(m, 1.0 / m)
        edges = enumerate_edges(f, lr)
        curv = policy_curvature(jnp.zeros(feats.shape[-1]), f, lr, rho)
        problem = DesignProblem(edges, Pool(f, lr, rho), Pool(f, lr, rho), float(cfg.beta), None)
    stages["edges"] = st.seconds
    cap = cfg.max_labels_per_edge
    allowed = edges.num_edges * cap if cap is not None else math.inf
    if cfg.budget > allowed:
        raise ValueError(f"budget: {cfg.budget} exceeds the {allowed} comparisons allowed ({edges.num_edges} candidate comparisons x "
                         f"max_labels_per_edge = {cap}); allowed: budget <= {allowed}")
    params = {"max_labels_per_edge": cap}
    spec = DESIGNS[cfg.design]
    if "prior_precision" in spec.params:
        params["prior_precision"] = cfg.prior_precision
    if "tol" in spec.params:
        params["tol"] = cfg.tol
    with _Stage(f"design {cfg.design}: {edges.num_edges:,} candidate comparisons, budget {cfg.budget:,}", quiet) as st:
        if cfg.design == "two_stage":
            counts, info = _two_stage_from_pilot(k_design, problem, pool, cfg)
        else:
            out = run_design(cfg.design, k_design, problem, int(cfg.budget), **params)
            counts, info = out.dense_counts(edges.num_edges), dict(out.info or {})
    stages["design"] = st.seconds
    with _Stage("baselines on the same pool and budget (uniform, first-two, best-vs-worst by reference log-prob)", quiet) as st:
        report_rows = {cfg.design: counts}
        for name, kk in zip(("uniform", "first_two", "best_vs_worst_ref"), jax.random.split(k_base, 3)):
            if name in report_rows:
                continue
            try:
                if name == "best_vs_worst_ref":
                    o = _best_vs_worst_by_reference(kk, problem, int(cfg.budget), cap)
                else:
                    o = run_design(name, kk, problem, int(cfg.budget), max_labels_per_edge=cap)
                report_rows[name] = o.dense_counts(edges.num_edges)
            except (ValueError, RuntimeError) as err:
                report_rows[name] = str(err).split(";")[0]
        crit = {name: (_criterion(c, edges.diffs, curv, cfg.beta, cfg.prior_precision) if not isinstance(c, str) else None)
                for name, c in report_rows.items()}
    stages["baselines"] = st.seconds
    with _Stage(f"writing {cfg.out}", quiet) as st:
        lines = write_queue(Path(cfg.out), pool, edges, counts, k_order)
        report = _report(cfg, pool, edges, counts, crit, report_rows, info, explained, stages, lines)
        _write_report(Path(cfg.out), report, crit)
    report["seconds"]["write"] = st.seconds
    if not quiet:
        print(format_report(report))
    return report


def _two_stage_from_pilot(key, problem, pool, cfg):
    """Two-stage with your pilot labels: MAP fit on them, then the L-optimal design at that estimate."""
    if cfg.pilot is None:
        raise ValueError("pilot: design=two_stage needs pilot=<file.jsonl> with labelled pairs (prompt_id, chosen, rejected)")
    edges = problem.edges
    pc, pw = read_pilot(cfg.pilot, pool, edges)
    if cfg.max_labels_per_edge is not None and pc.max() > cfg.max_labels_per_edge:
        raise ValueError(f"pilot: a comparison has {pc.max()} pilot labels, more than max_labels_per_edge = {cfg.max_labels_per_edge}")
    lab = pc > 0
    fit = fit_newton(edges.diffs[lab], jnp.asarray(pc[lab], edges.diffs.dtype), jnp.asarray(pw[lab], edges.diffs.dtype),
                     cfg.beta, ridge=cfg.pilot_ridge)
    theta = fit.theta
    t = problem.target
    curv_hat = policy_curvature(theta, t.features, t.log_ref, t.prompt_weights)
    caps = None if cfg.max_labels_per_edge is None else np.maximum(cfg.max_labels_per_edge - pc, 0) / cfg.budget
    sol = optimal_design(edges.diffs, theta, curv_hat, cfg.beta, "L", tol=cfg.tol, caps=caps, prior_precision=cfg.prior_precision,
                         budget=cfg.budget if cfg.prior_precision is not None else None)
    out = weighted_output(key, problem, int(cfg.budget + pc.sum()), np.asarray(sol.weights), pilot=(pc, pw),
                          max_labels_per_edge=cfg.max_labels_per_edge)
    counts = out.dense_counts(edges.num_edges) - pc
    info = {"criterion_value": sol.value, "relative_certificate": sol.relative_certificate, "converged": sol.converged,
            "rounding": out.info.get("rounding"), "pilot_labels": int(pc.sum())}
    return counts, info



def check_config(cfg: DictConfig) -> None:
    """Every option checked before any file is read; errors name the option and the allowed values."""
    if cfg.get("pool") in (None, "", "???"):
        raise ValueError("pool: give pool=<file.parquet|file.jsonl|hf:dataset>")
    if cfg.get("out") in (None, "", "???"):
        raise ValueError("out: give out=<file.jsonl>, where the labelling queue goes")
    _setting("budget", cfg.get("budget"), "int >= 1")
    if cfg.design not in NO_TRUTH_DESIGNS:
        raise ValueError(f"design: {cfg.design!r} is not available on a real pool; allowed (designs that need no simulated truth): "
                         f"{list(NO_TRUTH_DESIGNS)}")
    _setting("pca", cfg.pca, "optional int >= 1", null_means="no reduction")
    _setting("max_labels_per_edge", cfg.max_labels_per_edge, "optional int >= 1", null_means="unlimited")
    _setting("prior_precision", cfg.prior_precision, "optional number > 0")
    _setting("beta", cfg.beta, "number > 0")
    _setting("renormalise_ref", cfg.renormalise_ref, "bool")
    if cfg.pilot is not None and not Path(cfg.pilot).is_file():
        raise ValueError(f"pilot: no file at {Path(cfg.pilot).resolve()}")
    if cfg.pilot is not None and cfg.design != "two_stage":
        raise ValueError(f"pilot: only design=two_stage uses pilot labels, got design={cfg.design}")
    # > 0: a small pilot's unpenalised MLE often does not exist, and the design would be solved at a diverging estimate
    _setting("pilot_ridge", cfg.get("pilot_ridge"), "number > 0")
    _setting("tol", cfg.get("tol"), "number in (0, 1)")  # the solver's relative certificate
    _setting("seed", cfg.seed, "int >= 0")


def _setting(name, value, spec, null_means=""):
    """One option checked by its spec (:mod:`theory.checked`); the message reads ``name: must be ...``."""
    check_argument(f"{name}:", value, spec, config=True, null_means=null_means)


# ------------------------------------------------------------------ output


RESERVED = ("prompt_id", "completion_a", "completion_b", "preferred")


def queue_column(col: str) -> str:
    """Stem of a completion-level input column in the queue (``<stem>_a``, ``<stem>_b``):
    the column's name, or ``<col>_text`` where that would clash with the id fields
    (a column named ``completion`` becomes ``completion_text_a``/``_b``)."""
    return f"{col}_text" if f"{col}_a" in RESERVED or f"{col}_b" in RESERVED else col


def write_queue(out: Path, pool: PoolTable, edges, counts, key) -> int:
    """The labelling queue: one JSON line per comparison, shuffled, a/b order randomised."""
    e_ids = np.repeat(np.arange(edges.num_edges), counts)
    k_perm, k_flip = jax.random.split(key)
    e_ids = e_ids[np.asarray(jax.random.permutation(k_perm, e_ids.size))]
    flip = np.asarray(jax.random.bernoulli(k_flip, 0.5, (e_ids.size,)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    comp_cols = [(c, queue_column(c)) for c in pool.extra if c not in pool.prompt_level]
    with open(tmp, "w") as fh:
        for e, fl in zip(e_ids, flip):
            p, i, j = int(edges.prompt[e]), int(edges.first[e]), int(edges.second[e])
            if fl:
                i, j = j, i
            ra, rb = int(pool.rows[p, i]), int(pool.rows[p, j])
            line = {"prompt_id": pool.prompt_ids[p], "completion_a": pool.completion_ids[p][i], "completion_b": pool.completion_ids[p][j]}
            for c in pool.prompt_level:
                line[c] = pool.extra[c][ra]
            for c, name in comp_cols:
                line[f"{name}_a"], line[f"{name}_b"] = pool.extra[c][ra], pool.extra[c][rb]
            fh.write(json.dumps(line, default=str) + "\n")
    tmp.replace(out)
    return int(e_ids.size)


def _report(cfg, pool, edges, counts, crit, rows, info, explained, stages, lines) -> dict:
    touched = counts > 0
    comps = np.zeros(pool.log_ref.shape, bool)
    comps[edges.prompt[touched], edges.first[touched]] = True
    comps[edges.prompt[touched], edges.second[touched]] = True
    present = np.isfinite(pool.log_ref)
    base = crit.get("uniform")
    return {
        "pool": str(cfg.pool), "out": str(cfg.out), "design": cfg.design, "budget": int(cfg.budget), "lines": lines,
        "max_labels_per_edge": cfg.max_labels_per_edge, "prior_precision": cfg.prior_precision, "beta": cfg.beta, "seed": cfg.seed,
        "prompts": len(pool.prompt_ids), "completions": int(present.sum()), "skipped_single_completion_prompts": pool.skipped_prompts,
        "ref_logprob": "renormalised within each prompt's pool" if pool.renormalised else "as given (normalised)",
        "features": {"input_dim": int(pool.features.shape[-1]), "dim": int(edges.diffs.shape[1]), "pca_explained": explained},
        "candidate_comparisons": int(edges.num_edges),
        "criterion": crit,
        "predicted_gap_ratio_to_uniform": {k: (v / base if v is not None and base else None) for k, v in crit.items()},
        "unavailable": {k: v for k, v in rows.items() if isinstance(v, str)},
        "coverage": {"prompts": int(np.unique(edges.prompt[touched]).size), "completions": int(comps.sum()),
                     "distinct_comparisons": int(touched.sum()), "max_labels_on_a_comparison": int(counts.max())},
        "solver": {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in info.items()
                   if k in ("criterion_value", "relative_certificate", "converged", "rounding")},
        "seconds": dict(stages),
    }


def format_report(r: dict) -> str:
    lines = [f"selected {r['lines']:,} comparisons from {r['candidate_comparisons']:,} candidates "
             f"({r['prompts']:,} prompts, {r['completions']:,} completions; {r['skipped_single_completion_prompts']} single-completion prompts skipped)",
             f"features {r['features']['input_dim']} -> {r['features']['dim']} (PCA explains {r['features']['pca_explained']:.1%}); ref_logprob {r['ref_logprob']}",
             f"{'design':<22}{'criterion tr(I S^+)':>22}{'gap ratio to uniform':>22}"]
    for name, v in r["criterion"].items():
        ratio = r["predicted_gap_ratio_to_uniform"][name]
        lines.append(f"{name:<22}{('%.4g' % v) if v is not None else 'n/a':>22}{('%.3f' % ratio) if ratio is not None else 'n/a':>22}")
    for name, why in r["unavailable"].items():
        lines.append(f"  {name}: not available here ({why})")
    c = r["coverage"]
    lines.append(f"coverage: {c['prompts']:,} of {r['prompts']:,} prompts, {c['completions']:,} of {r['completions']:,} completions, "
                 f"{c['distinct_comparisons']:,} distinct comparisons (at most {c['max_labels_on_a_comparison']} labels each)")
    if r["solver"]:
        lines.append("solver: " + ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in r["solver"].items()))
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()))
    return "\n".join(lines)


def _write_report(out: Path, report: dict, crit: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.plotting import design_style, paper_style

    paths = report_paths(out)
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    paths["txt"].write_text(format_report(report) + "\n")
    paper_style()
    names = [k for k, v in crit.items() if v is not None and math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(4.2, 0.45 * len(names) + 0.9), constrained_layout=True)
    vals = [crit[k] for k in names]
    ax.barh(range(len(names)), vals, color=[design_style(k)[0] for k in names])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    if vals:
        ax.set_xlim(0, max(vals) * 1.2)
    else:  # no selection covers I's range (a budget below its rank: the CoverageWarning said so)
        ax.text(0.5, 0.5, "every criterion is infinite:\nno selection covers the range of I", ha="center", va="center",
                transform=ax.transAxes, fontsize=8)
    ax.set_xlabel(r"criterion $\mathrm{tr}(I\,\Sigma^+)$ of the realised selection (lower is better)")
    ax.set_title(f"{report['lines']:,} comparisons, {report['candidate_comparisons']:,} candidates")
    fig.savefig(paths["png"], dpi=200)
    plt.close(fig)


def report_paths(out) -> dict:
    """``<out stem>.report.{json,txt,png}`` beside the queue."""
    out = Path(out)
    stem = out.name.removesuffix(".jsonl")
    return {ext: out.with_name(f"{stem}.report.{ext}") for ext in ("json", "txt", "png")}


# ------------------------------------------------------------------ TRL format


def _prompt_text(r: dict, prompt_column: str, n: int):
    """The prompt text of queue line ``r`` (line ``n``): its ``prompt_column``; or, where the pool's column
    differed between rows of one prompt (so the queue holds it per completion, ``<col>_a`` and ``<col>_b``),
    the pair's common value; the prompt id where the queue has neither."""
    if prompt_column in r:
        return r[prompt_column]
    stem = queue_column(prompt_column)
    if f"{stem}_a" in r or f"{stem}_b" in r:
        a, b = r.get(f"{stem}_a"), r.get(f"{stem}_b")
        if a != b:
            raise ValueError(f"convert: line {n}: the pool's {prompt_column!r} differs between the rows of prompt {r['prompt_id']!r} "
                             f"({a!r} and {b!r}), so it is no prompt text; make it one value per prompt in the pool")
        return a
    return r["prompt_id"]


def convert_to_trl(labelled, out, prompt_column: str = "prompt", text_column: str = "completion") -> int:
    """A labelled queue (each line with ``preferred``: ``"a"``, ``"b"`` or a completion id)
    -> JSON Lines of ``{"prompt", "chosen", "rejected"}`` (TRL's preference format).

    Texts come from ``prompt_column`` and ``<text_column>_a``/``_b`` where the queue has
    them, ids otherwise. Returns the number of lines written.
    """
    rows = [json.loads(line) for line in Path(labelled).read_text().splitlines() if line.strip()]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for n, r in enumerate(rows, 1):
            pref = r.get("preferred")
            if pref is None:
                raise ValueError(f"convert: line {n} of {labelled} has no 'preferred' field; allowed values: 'a', 'b', or a completion id")
            # read as a position ('a', 'b') and as a completion id; where both readings exist they must agree
            # (completion ids 'a' and 'b' in swapped slots would otherwise flip the label)
            by_position = pref if pref in ("a", "b") else None
            by_id = "a" if pref == r.get("completion_a") else "b" if pref == r.get("completion_b") else None
            if by_position is None and by_id is None:
                raise ValueError(f"convert: line {n}: preferred = {pref!r}; allowed: 'a', 'b', {r.get('completion_a')!r} or {r.get('completion_b')!r}")
            if by_position is not None and by_id is not None and by_position != by_id:
                raise ValueError(f"convert: line {n}: preferred = {pref!r} is ambiguous: as a position it names completion_{by_position} "
                                 f"({r.get('completion_' + by_position)!r}), as an id completion_{by_id}; completion ids 'a' and 'b' "
                                 "clash with the positions: rename those completions in the pool")
            win = by_position or by_id
            lose = "b" if win == "a" else "a"
            stem = queue_column(text_column)
            text = (lambda s: r.get(f"{stem}_{s}", r[f"completion_{s}"]))
            fh.write(json.dumps({"prompt": _prompt_text(r, prompt_column, n), "chosen": text(win), "rejected": text(lose),
                                 "prompt_id": r["prompt_id"], "chosen_id": r[f"completion_{win}"], "rejected_id": r[f"completion_{lose}"]},
                                default=str) + "\n")
    return len(rows)


@hydra.main(version_base=None, config_path="conf", config_name="select")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.get("convert"):
            if cfg.get("out") in (None, "", "???"):
                raise ValueError("out: give out=<file.jsonl> for the TRL-format file")
            n = convert_to_trl(cfg.convert, cfg.out, cfg.prompt_column, cfg.text_column)
            print(f"wrote {n:,} preference pairs (prompt, chosen, rejected) to {cfg.out}")
            return
        select(cfg, quiet=not cfg.progress)
    except ValueError as err:
        raise SystemExit(f"select: {err}") from None


if __name__ == "__main__":
    main()
