"""Figure 6 (the paper's practical regimes): the pools have the stated structure, every
design's allocation honours the label rules of its regime, the pooled standard error
equals an independent cluster-robust one, and the small path writes its figure and CSV
with numbers that the sweep's own summary reproduces."""

import csv
import math

import jax
import numpy as np
import pytest

from experiments import practical, sweep
from experiments.cell import cell_identity, float64
from experiments.worlds import make_world
from synthetic.designs import DESIGNS, design_problem, run_design
from synthetic.monte_carlo import mean_and_ci


def _design_of(job):
    """The design and its parameters exactly as the figure's cell composes them."""
    cfg = sweep.compose_job(job)
    return cfg, cfg.design.name, dict(cfg.design.params)


def _problem(cfg):
    return design_problem(make_world(cfg.world, jax.random.key(cfg.world_seed)))


def test_hh_like_pool_has_the_stated_structure():
    cfg = sweep.compose_job(["experiment=hh_like"])
    m, k = cfg.world.params.num_train_prompts, cfg.world.params.num_completions
    assert k == 16
    with float64():
        problem = _problem(cfg)
    e = problem.num_edges
    assert e == m * k * (k - 1) // 2 == 4800  # every within-prompt pair, each a distinct comparison
    hh = practical.jobs(small=False, panels=("hh_like",))["hh_like"]
    assert hh["num_edges"] == e and hh["budgets"] == [e // f for f in practical.FULL["hh_fractions"]] and hh["budgets"][-1] == e // 2
    spec = practical.FULL
    cells = {}
    for label, job in hh["jobs"]:
        o = dict(x.split("=", 1) for x in job)
        cells.setdefault(label, []).append((int(o["budget"]), int(o["seed"]), o["estimator"]))
    assert set(cells) == set(practical.HH_DESIGNS)
    for label, got in cells.items():  # MAP at every budget, the MLE at E/2, every seed
        want = [(n, s, "map") for n in hh["budgets"] for s in range(spec["seeds"])] + [(e // 2, s, "newton") for s in range(spec["seeds"])]
        assert sorted(got) == sorted(want), label
        # each comparison capped at one label, except best-vs-worst (see the next test)
        _, name, params = _design_of(next(j for lab, j in hh["jobs"] if lab == label))
        assert params["max_labels_per_edge"] == (None if label == "best_vs_worst" else 1), label
    # every cell draws the design's allocation several times, as the experiment's config does
    # (its commands reproduce the figure's cells); an adaptive design's cell runs once a
    # replicate, and its identity is the one-draw cell's whatever the draws asked
    assert cfg.allocation_draws == spec["allocation_draws"] > 1
    for label, job in hh["jobs"]:
        assert [x for x in job if x.startswith("allocation_draws=")] == [f"allocation_draws={spec['allocation_draws']}"], label
        spec_d = DESIGNS[practical.HH_DESIGNS[label][0]]
        assert ("allocation_draws" in cell_identity(sweep.compose_job(job))) == (not (spec_d.adaptive or spec_d.keyless)), label


def test_every_hh_design_labels_n_equal_half_of_e_comparisons_each_at_most_once():
    # the figure's own overrides on a smaller pool of the same kind (6 prompts x 16 completions)
    small = ["world.params.num_train_prompts=6", "world.params.num_eval_prompts=20"]
    with float64():
        problem = _problem(sweep.compose_job(["experiment=hh_like", *small]))
        e = problem.num_edges
        n = e // 2
        assert e == 6 * 120
        for label, (design, extra) in practical.HH_DESIGNS.items():
            cfg, name, params = _design_of(["experiment=hh_like", f"design={design}", *extra, *small, f"budget={n}"])
            counts = run_design(name, jax.random.key(3), problem, n, **params).dense_counts(e)
            assert counts.sum() == n, label
            if label == "best_vs_worst":
                # one comparison a prompt (6 < n): its pairs are labelled repeatedly, evenly
                assert np.count_nonzero(counts) == 6 and counts.max() - counts[counts > 0].min() <= 1
                assert np.all(np.bincount(np.asarray(problem.edges.prompt)[counts > 0], minlength=6) == 1)
            else:
                assert counts.max() == 1 and np.count_nonzero(counts) == n, label


@pytest.mark.slow
def test_imdb_like_selection_picks_175_prompts_with_one_pair_each():
    cfg = sweep.compose_job(["experiment=imdb_like"])
    assert cfg.allocation_draws == practical.FULL["allocation_draws"] and cfg.budget == 175 and cfg.world.params.num_train_prompts == 1000 and cfg.world.params.num_completions == 8
    with float64():
        problem = _problem(cfg)
        assert problem.num_edges == 1000 * 28
        prompt = np.asarray(problem.edges.prompt)
        first, second = np.asarray(problem.edges.first), np.asarray(problem.edges.second)
        for label, (design, extra) in practical.IMDB_DESIGNS.items():
            _, name, params = _design_of(["experiment=imdb_like", f"design={design}", *extra])
            counts = run_design(name, jax.random.key(5), problem, 175, **params).dense_counts(problem.num_edges)
            picked = np.flatnonzero(counts)
            assert counts.sum() == 175 and counts.max() == 1, label
            if label != "uniform":  # uniform draws 175 comparisons from all E: prompts may repeat
                assert np.unique(prompt[picked]).size == 175, label  # 175 prompts, one pair each
            if name in ("prompt_selection", "first_two"):
                assert np.all((first[picked] == 0) & (second[picked] == 1)), label  # the prompt's fixed pair


@pytest.mark.parametrize("draw_sd", [0.0, 0.2])
def test_pooled_interval_clusters_every_seeds_draws_as_statsmodels_does(draw_sd):
    """Two seeds' cells of five draws each: the pooled mean, error and t interval are
    statsmodels' OLS on a constant with errors clustered by (seed, draw), ten clusters
    (not five: a draw index is not shared across seeds); the within error and the F test
    are those of the regression on cluster indicators and scipy's one-way ANOVA."""
    sm = pytest.importorskip("statsmodels.api")
    from scipy import stats

    rng = np.random.default_rng(0)
    s, d, per = 2, 5, 6
    cells, groups = [], []
    for seed in range(s):
        alloc = np.repeat(np.arange(d), per)
        gap = rng.gamma(2.0, 0.01, size=d * per) + draw_sd * rng.random(size=d)[alloc]
        cells.append({"gap": gap, "valid": np.ones(d * per, bool), "allocation": alloc, "allocation_random": np.ones(d * per, bool)})
        groups.append(seed * d + alloc)
    got = practical.pool_draws(cells, level=0.9)
    y, groups = np.concatenate([c["gap"] for c in cells]), np.concatenate(groups)
    fit = sm.OLS(y, np.ones((y.size, 1))).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    assert got["allocations"] == s * d
    np.testing.assert_allclose([got["mean"], got["se"]], [fit.params[0], fit.bse[0]], rtol=1e-10)
    np.testing.assert_allclose([got["ci_low"], got["ci_high"]], fit.conf_int(alpha=0.1)[0], rtol=1e-10)
    # within: the mean of the clusters' coefficients in a regression on cluster indicators
    dummies = (groups[:, None] == np.arange(s * d)[None, :]).astype(float)
    contrast = sm.OLS(y, dummies).fit().t_test(np.full((1, s * d), 1.0 / (s * d)))
    assert math.isclose(got["se_within"], float(np.squeeze(contrast.sd)), rel_tol=1e-10)
    assert math.isclose(got["draw_p"], float(stats.f_oneway(*[y[groups == g] for g in range(s * d)]).pvalue), rel_tol=1e-8)
    if draw_sd > 0:  # draws that differ by far more than the label noise are detected
        assert got["draw_p"] < 1e-3 and got["se"] > 3 * got["se_within"]
    # an invalid replicate is left out of every number
    cells[1]["valid"] = cells[1]["valid"].copy()
    cells[1]["valid"][3] = False
    cells[1]["gap"] = cells[1]["gap"].copy()
    cells[1]["gap"][3] = np.inf
    keep = np.ones(y.size, bool)
    keep[s * d * per // 2 + 3] = False
    fit = sm.OLS(y[keep], np.ones((keep.sum(), 1))).fit(cov_type="cluster", cov_kwds={"groups": groups[keep]}, use_t=True)
    got = practical.pool_draws(cells)
    np.testing.assert_allclose([got["mean"], got["se"]], [fit.params[0], fit.bse[0]], rtol=1e-10)
    cells[1]["valid"][3] = True
    with pytest.raises(ValueError, match="finite"):
        practical.pool_draws(cells)


def test_pooled_interval_without_draws_is_over_independent_replicates():
    """No cell's allocation is random (every draw gave one allocation): all replicates share
    it and the interval is the plain one over all of them. Adaptive cells (each replicate its
    own draw, numbered 0..R-1 in every cell) are independent replicates too. Old records
    without the allocation columns: each cell is one draw."""
    rng = np.random.default_rng(1)
    g = rng.gamma(2.0, 0.01, size=(2, 12))
    plain = dict(zip(("mean", "se", "ci_low", "ci_high"), mean_and_ci(g.ravel())))
    fixed = [{"gap": x, "valid": np.ones(12, bool), "allocation": np.repeat(np.arange(3), 4), "allocation_random": np.zeros(12, bool)} for x in g]
    got = practical.pool_draws(fixed)
    assert got["allocations"] == 1 and got["se_within"] == got["se"] and np.isnan(got["draw_p"])
    np.testing.assert_allclose([got[k] for k in plain], list(plain.values()), rtol=1e-12)
    adaptive = [{"gap": x, "valid": np.ones(12, bool), "allocation": np.arange(12), "allocation_random": np.ones(12, bool)} for x in g]
    got = practical.pool_draws(adaptive)
    assert got["allocations"] == 24 and np.isnan(got["se_within"]) and np.isnan(got["draw_p"])
    np.testing.assert_allclose([got[k] for k in plain], list(plain.values()), rtol=1e-12)
    # one seed's allocation fixed, the other's random: the design is random, every seed's draws are clusters
    mixed = [fixed[0], {**fixed[1], "allocation_random": np.ones(12, bool)}]
    got = practical.pool_draws(mixed)
    ids = np.concatenate([np.repeat(np.arange(3), 4), 3 + np.repeat(np.arange(3), 4)])
    sums = np.bincount(ids, weights=g.ravel())
    se = math.sqrt(6 / 5 * np.sum((sums - g.mean() * 4) ** 2)) / 24
    assert got["allocations"] == 6 and math.isclose(got["se"], se, rel_tol=1e-12)
    # a random allocation drawn once in all: no interval can cover the design's draw, refused
    with pytest.raises(ValueError, match="one draw of a random allocation"):
        practical.pool_draws([{**fixed[0], "allocation": np.zeros(12, int), "allocation_random": np.ones(12, bool)}])
    old = [{"gap": x, "valid": np.ones(12, bool)} for x in g]
    with pytest.raises(ValueError, match="before allocation draws were recorded"):
        practical.pool_draws(old[:1])
    got = practical.pool_draws(old)
    assert got["allocations"] == 2
    assert math.isclose(got["se"], abs(g[0].mean() - g[1].mean()) / 2, rel_tol=1e-12)  # CR1 over two equal clusters


@pytest.mark.slow
def test_small_path_writes_the_figure_and_csv_that_the_records_reproduce(tmp_path):
    out, res = tmp_path / "fig", tmp_path / "res"
    rows = practical.main(["--small", "--out", str(out), "--results", str(res), "--no-progress"])
    for ext in (".png", ".pdf", ".csv"):
        assert (out / f"fig6_practical_regimes{ext}").stat().st_size > 0
    with open(out / "fig6_practical_regimes.csv") as fh:
        written = list(csv.DictReader(fh))
    assert len(written) == len(rows) == len(practical.HH_DESIGNS) * len(practical.SMALL["hh_fractions"]) + len(practical.IMDB_DESIGNS)
    spec = practical.SMALL
    from scipy import stats

    clustered = set()
    # independent: the sweep's per-cell summary rows (records.aggregate) of each directory,
    # averaged over seeds, give the pooled MAP and MLE means and MLE fractions
    for panel in ("hh_like", "imdb_like"):
        cells = {}
        for path in sorted((res / "small" / panel).glob("*.npz")):
            meta = sweep.read_cell(path)[1]
            (summary,) = sweep.aggregate_files([path])
            key = (meta["design"]["name"], meta["design"]["params"].get("at"), meta["budget"], meta["estimator"]["name"])
            cells.setdefault(key, []).append(summary)
        for row in (r for r in rows if r["panel"] == panel):
            design, extra = (practical.HH_DESIGNS if panel == "hh_like" else practical.IMDB_DESIGNS)[row["design"]]
            at = next((x.split("=")[1] for x in extra if x.startswith("design.params.at=")), DESIGNS[design].params.get("at"))
            # the interval's draws: each seed's allocation draws (random designs), every replicate
            # (adaptive), or one allocation; clustered rows use Student t at draws - 1 df
            if DESIGNS[design].adaptive:
                assert row["allocations"] == spec["seeds"] * spec["replicates"], row["design"]
            elif row["allocations"] != 1:
                assert row["allocations"] == spec["seeds"] * spec["allocation_draws"], row["design"]
                q = stats.t.ppf(0.975, row["allocations"] - 1)
                assert math.isclose(row["ci_high"], row["mean_gap"] + q * row["se"], rel_tol=1e-12), row["design"]
                clustered.add(row["design"])
            for est, key in (("map", "mean_gap"), ("newton", "mle_mean_gap")):
                mine = cells[(design, at, row["budget"], est)]
                assert len(mine) == spec["seeds"], (panel, row["design"], est)
                assert math.isclose(row[key], np.mean([c["mean_gap"] for c in mine]), rel_tol=1e-12)
                if est == "newton":
                    assert math.isclose(row["mle_fraction"], np.mean([c["mle_fraction"] for c in mine]), rel_tol=1e-12)
                    assert math.isclose(row["mle_valid_fraction"], np.mean([c["valid_fraction"] for c in mine]), rel_tol=1e-12)
        assert all(np.isfinite(float(r["mean_gap"])) and float(r["reference_gap"]) > 0 for r in written if r["panel"] == panel)
    assert {"uniform", "two_stage"} <= clustered  # a uniform draw and a pilot are random
    # a rerun reuses every record: the same CSV
    before = (out / "fig6_practical_regimes.csv").read_text()
    practical.main(["--small", "--out", str(out), "--results", str(res), "--no-progress"])
    assert (out / "fig6_practical_regimes.csv").read_text() == before
