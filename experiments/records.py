"""Cell records on disk, and the summary table made from them.

One record per cell: ``<results_dir>/<cell id>.npz``, columnar (one array per field
of :data:`RECORD_FIELDS`, one entry per replicate) plus a JSON ``meta`` entry with
the cell's identity, the full config, the code version and the git commit. Writes
are atomic (temporary file, then ``os.replace``) and use the mode the umask gives,
so a shared ``results_dir`` is readable by the other users of a cluster.

Reading is strict: a record that cannot be read, lacks a field, has columns of the
wrong length or no code version raises :class:`RecordError`, which names the file.
The summary (:func:`aggregate`) never pools two records: it has one row per cell
file, says which parameters tell apart rows that share a design name, and reports
unreadable files instead of failing.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from synthetic.files import write_atomic
from synthetic.monte_carlo import mean_and_ci

__all__ = [
    "RECORD_FIELDS",
    "RecordError",
    "write_atomic",
    "read_cell",
    "check_writable",
    "aggregate",
    "aggregate_files",
    "DuplicateRecord",
    "format_summary",
    "SUMMARY_FIELDS",
]

log = logging.getLogger(__name__)

# required; the others (mle_exists, labels_spent, allocation, allocation_random) are read where present
RECORD_FIELDS = ["replicate", "gap", "valid", "predicted_gap"]

#: Columns of a summary row, in order (also the CSV header).
SUMMARY_FIELDS = [
    "world", "design", "config", "estimator", "budget", "labels_spent", "seed", "replicates", "allocations", "valid_fraction", "mle_fraction",
    "mean_gap", "se", "ci_low", "ci_high", "predicted_gap", "ratio_to_prediction", "z_to_prediction", "p_to_prediction", "ratio_to_uniform",
    "code_version", "current_code", "cell", "note",
]


class RecordError(ValueError):
    """A record file that cannot be trusted; the message names the file and why."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"record {self.path}: {reason}")


class DuplicateRecord(RecordError):
    """A second file holding the record of a cell already read (the same cell id and code
    version: a copy under another name); the summary counts the cell once."""

    def __init__(self, path, first):
        self.first = Path(first)
        same = Path(path).resolve() == self.first.resolve()
        super().__init__(path, "given twice, counted once" if same else
                         f"a second record of the cell of {self.first.name} (the same cell and code version), not counted twice")


def read_cell(path, fields=RECORD_FIELDS):
    """``(columns, meta)`` of a record; :class:`RecordError` naming the file if it cannot be trusted."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise RecordError(path, f"cannot be read ({err.strerror or err})") from None
    if size == 0:
        raise RecordError(path, "is empty (0 bytes): an interrupted or failed write")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("meta", *fields) if k not in z.files]
            if missing:
                raise RecordError(path, f"lacks the field(s) {missing}")
            meta = json.loads(str(z["meta"]))
            cols = {k: z[k] for k in z.files if k != "meta"}  # the required fields and any others
    except RecordError:
        raise
    except Exception as err:  # noqa: BLE001 - zip, npy and JSON errors alike: the file is not a record
        raise RecordError(path, f"is not a readable record ({type(err).__name__}: {err})") from None
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise RecordError(path, f"has columns of different lengths {lengths}")
    if not isinstance(meta, dict) or "code_version" not in meta:
        raise RecordError(path, "has no code version in its metadata")
    return cols, meta


def check_writable(directory, name: str = "results_dir") -> Path:
    """Create ``directory`` if needed and check that a record can be written there.

    Raises ``ValueError`` naming the setting ``name`` and the path, before any job runs.
    """
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=d, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{name}: cannot write records to {d.resolve()} ({err.strerror or err}); "
                         "allowed: a directory you can create and write") from None
    return d


# ------------------------------------------------------------------ summary


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_IDENTITY = ("world", "world_seed", "design", "estimator", "budget", "seed", "num_replicates", "allocation_draws")


def _identity(meta) -> dict:
    ident = {k: meta[k] for k in _IDENTITY if k in meta}
    ident.setdefault("allocation_draws", 1)  # not in the identity of a one-draw cell (its id is the one it had)
    return ident


class CodeCheck(enum.Enum):
    """How a record's code version compares with the code of this process."""

    CURRENT = "current"  # made by this code (or the check was skipped)
    STALE = "stale"  # made by other code
    UNKNOWN = "unknown"  # cannot tell: the design or its imports are not available here


def _note(gap, valid, pred, code: CodeCheck, mle=None, estimator="newton") -> str:
    notes = []
    r, k = gap.size, int(valid.sum())
    if mle is None:  # records before every replicate had a gap: valid meant "the MLE exists"
        if k < 2:
            notes.append(f"no number: {'no' if k == 0 else 'only one'} replicate of {r} has a finite MLE (separable labels)")
        elif k < r:
            notes.append(f"mean over the {k} of {r} replicates with a finite MLE")
    else:
        if k < 2:
            notes.append(f"no number: {'no' if k == 0 else 'only one'} replicate of {r} has a defined gap")
        elif k < r:
            notes.append(f"mean over the {k} of {r} replicates whose gap is defined")
        m = int(mle.sum())
        if m < r:
            how = ("; the others' gap is that of the ridge-path limit policy" if estimator == "newton"
                   else f"; every replicate's {estimator} estimate is finite")
            notes.append(f"MLE exists in {m} of {r} replicates{how}")
    bad = int(np.sum(valid & ~np.isfinite(gap)))
    if bad:
        notes.append(f"{bad} valid replicates have a non-finite gap")
    if not np.isfinite(pred):
        notes.append("prediction inf: the allocation's information does not cover I (uncovered or saturated)")
    if code is CodeCheck.UNKNOWN:
        notes.append("code not checked: its design or imports are not available in this process")
    elif code is CodeCheck.STALE:
        notes.append("made by other code: rerun the sweep to recompute")
    return "; ".join(notes)


def draws_mean_and_ci(gap, valid, allocation, level: float = 0.95) -> tuple[float, float, float, float, int]:
    """``(mean, se, lo, hi, draws)`` of a cell's gap over its valid replicates, the design's
    allocation draws taken into account.

    ``allocation[i]`` is the draw of the design's allocation replicate ``i`` was labelled on.
    Where every replicate has its own draw (adaptive designs), or all share one (a cell
    of ``allocation_draws = 1``), the replicates are independent given what they share:
    :func:`synthetic.monte_carlo.mean_and_ci` (over one draw, the interval is over label
    sets given that allocation and says nothing of the design's own randomness). Otherwise
    the replicates are clustered by draw, ``S`` draws with ``N_s`` valid replicates and sum
    ``Y_s``: the mean is ``sum Y_s / N`` and its standard error the cluster-robust (CR1)
    ``sqrt(S / (S - 1) * sum_s (Y_s - mean N_s)^2) / N`` (with equal ``N_s``, the standard
    deviation of the draws' means over ``sqrt(S)``), which estimates the variance from the
    draws and the labels together; the interval is ``mean -+ t se``, ``t`` the quantile of
    Student's t with ``S - 1`` degrees of freedom. ``draws``: the number of draws with a
    valid replicate. Fewer than two valid replicates, or a clustered cell with valid
    replicates in one draw only: no number (``nan``).
    """
    gap, valid = np.asarray(gap, np.float64), np.asarray(valid, bool)
    ok = gap[valid]
    alloc = np.zeros(gap.size, np.int64) if allocation is None else np.asarray(allocation, np.int64)
    labels, sizes = np.unique(alloc[valid], return_counts=True)
    s = int(labels.size)
    if ok.size < 2:
        return (np.nan,) * 4 + (s,)
    made = np.unique(alloc).size
    if made == 1 or made == alloc.size:  # one allocation, or each replicate its own: independent replicates
        return (*mean_and_ci(ok, level), s)
    if s < 2:
        return (np.nan,) * 4 + (s,)
    from scipy import stats

    n = ok.size
    mean = float(ok.sum() / n)
    sums = np.bincount(np.searchsorted(labels, alloc[valid]), weights=ok, minlength=s)
    se = float(np.sqrt(s / (s - 1) * np.sum((sums - mean * sizes) ** 2)) / n)
    q = float(stats.t.ppf(0.5 + level / 2, s - 1))
    return mean, se, mean - q * se, mean + q * se, s


def _may_draw(design: str) -> bool:
    """Whether one record of ``design`` may label one draw of a random allocation: not for an
    adaptive design (each replicate runs the design: its draws are the replicates') nor a
    keyless one (one allocation whatever the key); unknown designs may."""
    from synthetic.designs import DESIGNS

    spec = DESIGNS.get(design)
    return spec is None or not (spec.adaptive or spec.keyless)


def summarise_cell(cols, meta, current_code="", level: float = 0.95) -> dict:
    """One summary row of one record (its interval: :func:`draws_mean_and_ci`)."""
    gap = np.asarray(cols["gap"], np.float64)
    valid = np.asarray(cols["valid"], bool)
    pred = float(np.mean(cols["predicted_gap"]))
    ok = gap[valid]
    alloc = cols.get("allocation")
    if alloc is not None and "allocation_random" in cols and not np.any(cols["allocation_random"]):
        alloc = None  # every draw gave the same allocation: one allocation, the plain interval is exact
    mean, se, lo, hi, draws = draws_mean_and_ci(gap, valid, alloc, level)
    # current_code: the version the current code gives this cell; None if it cannot be
    # computed here (design or module unavailable); "" to skip the check.
    stale = current_code != "" and meta["code_version"] != current_code
    code = CodeCheck.UNKNOWN if current_code is None else CodeCheck.STALE if stale else CodeCheck.CURRENT
    mle = np.asarray(cols["mle_exists"], bool) if "mle_exists" in cols else None
    note = _note(gap, valid, pred, code, mle, meta["estimator"]["name"])
    made = 1 if alloc is None else int(np.unique(alloc).size)
    if 1 < made < gap.size:
        why = (f"interval over {draws} draws of the design's allocation (t, {draws - 1} df)" if draws >= 2
               else f"no interval: valid replicates in {draws} of {made} allocation draws")
        note = "; ".join(x for x in (why, note) if x)
    elif made == 1 and gap.size > 1 and bool(np.any(cols.get("allocation_random", False))):
        why = ("interval over labels given one draw of the design's allocation, which is random here (a pilot, or a "
               "rounding its key decides): the design's own randomness is not in it; allocation_draws >= 2 puts it in")
        note = "; ".join(x for x in (why, note) if x)
    elif made == 1 and gap.size > 1 and "allocation_random" not in cols and _may_draw(meta["design"]["name"]):
        why = ("interval over labels given one allocation; this record predates allocation draws, so whether that "
               "allocation is a draw of the design (and the interval leaves it out) is unknown: rerun it")
        note = "; ".join(x for x in (why, note) if x)
    z_pred = p_pred = np.nan
    if np.isfinite(pred) and np.isfinite(se) and se > 0:
        from scipy import stats

        z_pred = (mean - pred) / se
        df = draws - 1 if 1 < made < gap.size else int(valid.sum()) - 1
        p_pred = float(2 * stats.t.sf(abs(z_pred), df))
    spent = int(cols["labels_spent"][0]) if "labels_spent" in cols and len(cols["labels_spent"]) else meta["budget"]
    if spent != meta["budget"]:
        note = "; ".join(x for x in (f"trained on {meta['budget']} of {spent} labels spent", note) if x)
    return {
        "world": meta["world"]["name"], "design": meta["design"]["name"], "config": "",
        "estimator": meta["estimator"]["name"], "budget": meta["budget"],
        "labels_spent": spent,
        "seed": meta.get("seed"),
        "replicates": int(gap.size), "allocations": draws, "valid_fraction": float(valid.mean()),
        "mle_fraction": float((valid if mle is None else mle).mean()),
        "mean_gap": mean, "se": se, "ci_low": lo, "ci_high": hi,
        "predicted_gap": pred, "ratio_to_prediction": mean / pred if pred > 0 and np.isfinite(pred) else np.nan,
        # (mean - prediction) / se, and its two-sided p-value under Student's t with the interval's degrees of
        # freedom (draws - 1 over clustered draws, else valid replicates - 1): the test against the first-order
        # theory (at small budgets the second order is not small)
        "z_to_prediction": z_pred, "p_to_prediction": p_pred,
        "ratio_to_uniform": np.nan,
        "code_version": meta["code_version"], "current_code": not stale, "cell": meta.get("cell", ""),
        "note": note,
    }


def _short(key: str, keys) -> str:
    """The shortest dotted suffix of ``key`` that no other key in ``keys`` ends with."""
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        s = ".".join(parts[i:])
        if not any(k != key and (k == s or k.endswith("." + s)) for k in keys):
            return s
    return key


#: Identity keys that change a cell's precision or its draw, not the quantity it estimates: rows that
#: differ only in these (and the budget) are points of one curve.
_PRECISION = ("budget", "seed", "num_replicates", "allocation_draws")


def _label_differences(rows, idents) -> None:
    """Fill ``config`` with the parameters that tell rows apart, so that rows with one
    (world, design, estimator, config) are the points of one curve.

    Among the rows of one world name, design and estimator (at any budget), every parameter
    outside :data:`_PRECISION` that takes more than one value (the world's size, the design's
    cap, ...) is in ``config``, and ``code=<version>`` where records of several code versions
    were kept; where rows still share (world, design, estimator, config, budget), the
    parameters that differ among them (a seed, a number of replicates) are added.
    """
    flat = [_flatten(i) for i in idents]

    def differing(members, exclude):
        keys = sorted(set().union(*(flat[i] for i in members)) - set(exclude))
        return [k for k in keys if len({json.dumps(flat[i].get(k), sort_keys=True) for i in members}) > 1]

    def label(i, keys):
        return [f"{_short(k, keys)}={flat[i].get(k)}" for k in keys]

    curves: dict = {}
    for i, r in enumerate(rows):
        curves.setdefault((r["world"], r["design"], r["estimator"]), []).append(i)
    parts = {}
    for members in curves.values():
        keys = differing(members, _PRECISION)
        code = len({rows[i]["code_version"] for i in members}) > 1  # records of other code kept: not one curve
        for i in members:
            parts[i] = label(i, keys) + ([f"code={rows[i]['code_version']}"] if code else [])
    points: dict = {}
    for i, r in enumerate(rows):
        points.setdefault((r["world"], r["design"], r["estimator"], " ".join(parts[i]), r["budget"]), []).append(i)
    for members in points.values():
        if len(members) < 2:
            continue
        keys = differing(members, ())
        for i in members:
            parts[i] = parts[i] + label(i, keys)
    for i, r in enumerate(rows):
        r["config"] = " ".join(parts[i])


def _attach_uniform(rows, idents) -> None:
    """``ratio_to_uniform``: against the uniform cell with the same world, estimator, budget and seeds
    (whatever its ``allocation_draws``, which change the interval, not what the mean estimates).

    When several uniform cells match, the one with the row's ``allocation_draws`` is used if
    there is one; then, among uniform cells with different parameters, the one with the
    registry's default parameters, or none.
    """
    from synthetic.designs import DESIGNS

    def context(ident):  # the allocation draws change the interval, not what the mean estimates
        return json.dumps({k: v for k, v in ident.items() if k not in ("design", "allocation_draws")}, sort_keys=True, default=str)

    base: dict = {}
    for r, ident in zip(rows, idents):
        if r["design"] == "uniform" and r["current_code"]:
            base.setdefault(context(ident), []).append((r, ident))
    defaults = DESIGNS["uniform"].params if "uniform" in DESIGNS else None
    for r, ident in zip(rows, idents):
        cands = base.get(context(ident), [])
        if len(cands) > 1:  # uniform cells that differ in their draws only: the one with the row's, if there is one
            draws = ident.get("allocation_draws", 1)
            cands = [c for c in cands if c[1].get("allocation_draws", 1) == draws] or cands
        if len(cands) > 1:
            cands = [c for c in cands if c[1]["design"].get("params") == defaults]
        if len(cands) == 1 and r["current_code"]:
            b = cands[0][0]["mean_gap"]
            r["ratio_to_uniform"] = r["mean_gap"] / b if b and np.isfinite(b) else np.nan


def aggregate_files(paths, level: float = 0.95, problems: list | None = None, current_code=None) -> list[dict]:
    """One summary row per record file (never pooled), in the order of ``paths``.

    Args:
      paths: record files.
      level: confidence level of the interval.
      problems: if a list, unreadable files are appended to it as :class:`RecordError`
        (and logged); they never stop the summary. So is a second file of a cell already
        read (:class:`DuplicateRecord`: a copied record had shown as two rows, and the rows'
        ratios to uniform as ``nan``, without a word).
      current_code: a function ``meta -> code version`` (``None`` where it cannot tell);
        records made by other code are marked (``current_code`` false, a note) and get
        no ratio to uniform.
    """
    rows, idents, seen = [], [], {}
    for p in paths:
        try:
            cols, meta = read_cell(p)
        except RecordError as err:
            log.warning("%s; skipped in the summary, recomputed by the next run of its cell", err)
            if problems is not None:
                problems.append(err)
            continue
        key = (meta.get("cell"), meta.get("code_version"))
        if key[0] is not None and key in seen:
            err = DuplicateRecord(p, seen[key])
            log.warning("%s", err)
            if problems is not None:
                problems.append(err)
            continue
        seen[key] = Path(p)
        rows.append(summarise_cell(cols, meta, current_code(meta) if current_code else "", level))
        idents.append(_identity(meta))
    _label_differences(rows, idents)
    _attach_uniform(rows, idents)
    return rows


def aggregate(results_dir, level: float = 0.95, problems: list | None = None, current_code=None) -> list[dict]:
    """One row per cell record in ``results_dir`` (sorted by world, design, estimator, budget, config).

    Raises ``ValueError`` naming the path if ``results_dir`` is not a directory.
    """
    d = Path(results_dir)
    if not d.is_dir():
        raise ValueError(f"results_dir: {d.resolve()} is not a directory (no records there)")
    rows = aggregate_files(sorted(d.glob("*.npz")), level, problems, current_code)
    return sorted(rows, key=lambda r: (r["world"], r["design"], r["estimator"], r["budget"], r["config"], r["cell"]))


def format_summary(rows: list[dict], problems=()) -> str:
    """The summary as a text table; rows without a number say why in the last column."""
    wide = max([len(r["config"]) for r in rows] + [6])
    head = (f"{'world':<11}{'design':<20}{'config':<{wide + 2}}{'estimator':<10}{'budget':>8}{'reps':>6}{'draws':>6}{'valid':>7}"
            f"{'MLE':>6}{'mean gap':>12}{'95% CI':>24}{'/uniform':>9}{'/predicted':>11}{'z':>7}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if np.isfinite(r["mean_gap"]) else "-"
        lines.append(
            f"{r['world']:<11}{r['design']:<20}{r['config']:<{wide + 2}}{r['estimator']:<10}{r['budget']:>8}{r['replicates']:>6}{r.get('allocations', 1):>6}"
            f"{r['valid_fraction']:>7.0%}{r['mle_fraction']:>6.0%}{r['mean_gap']:>12.4g}{ci:>24}{r['ratio_to_uniform']:>9.3f}{r['ratio_to_prediction']:>11.3f}"
            f"{r.get('z_to_prediction', np.nan):>+7.1f}  {r['note']}"
        )
    for err in problems:
        if isinstance(err, DuplicateRecord):
            lines.append(f"second record of a cell, not in the table: {err.path} ({err.reason}; the cell's row is {err.first}'s)")
        else:
            lines.append(f"unreadable record, not in the table (recomputed by the next run of its cell): {err.path} ({err.reason})")
    return "\n".join(lines)
