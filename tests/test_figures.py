"""The figure pipeline: the sample-efficiency arithmetic against closed forms, and a
small end-to-end run of Figures 1, 3, 4 and 5 (records, CSV, PNG and PDF)."""

import csv
import math

import numpy as np
import pytest

from experiments import figures


def test_labels_to_match_inverts_a_power_law_inside_and_outside_the_budgets():
    c = 3.0
    n = [1e3, 1e4]
    g = [c / x for x in n]
    assert math.isclose(figures.labels_to_match(n, g, c / 5e3), 5e3, rel_tol=1e-12)  # interpolation
    assert math.isclose(figures.labels_to_match(n, g, c / 1e5), 1e5, rel_tol=1e-12)  # extrapolation, slope -1
    assert math.isclose(figures.labels_to_match(n, g, c / 1e2), 1e2, rel_tol=1e-12)
    flat = [0.02, 0.019]  # slope -0.02: a plateau never reaches a lower target
    assert figures.labels_to_match(n, flat, 1e-3) == math.inf
    with pytest.raises(ValueError, match="two budgets"):
        figures.labels_to_match([1e3], [1.0], 0.5)


def test_sample_efficiency_of_a_design_with_half_the_gap_is_one_half():
    rows = []
    for n in (1e3, 1e4, 1e5):
        for design, c in (("uniform", 10.0), ("oracle", 5.0)):
            g = c / n
            rows.append({"world": "w", "design": design, "budget": n, "mean_gap": g, "ci_low": 0.9 * g, "ci_high": 1.1 * g,
                         "valid_fraction": 1.0})
    eff = {r["design"]: r for r in figures.sample_efficiency(rows)}
    assert math.isclose(eff["oracle"]["ratio"], 0.5, rel_tol=1e-12)
    assert math.isclose(eff["uniform"]["ratio"], 1.0, rel_tol=1e-12)
    assert eff["oracle"]["ratio_low"] < 0.5 < eff["oracle"]["ratio_high"]


@pytest.mark.slow
def test_small_figure_run_writes_every_figure_with_its_data(tmp_path):
    out, res = tmp_path / "fig", tmp_path / "res"
    figures.main(["--small", "--only", "fig1", "fig3", "fig4", "fig5", "--out", str(out), "--results", str(res), "--no-progress"])
    for name in ("fig1_gap_vs_budget", "fig3_sample_efficiency", "fig4_plug_in_robustness", "fig5_pool_size"):
        for ext in (".png", ".pdf", ".csv"):
            assert (out / f"{name}{ext}").stat().st_size > 0, name + ext
    with open(out / "fig4_plug_in_robustness.csv") as fh:
        rows = list(csv.DictReader(fh))
    oracle = [r for r in rows if r["kind"] == "random" and float(r["radius"]) == 0.0]
    assert len(oracle) == 1 and float(oracle[0]["gap_ratio"]) == 1.0
    # Theorem 3 holds for the exact criterion of every solved design (it bounds the weights' criterion)
    for r in rows:
        assert float(r["weights_criterion"]) / float(oracle[0]["weights_criterion"]) <= float(r["bound_factor"])
    with open(out / "fig5_pool_size.csv") as fh:
        sizes = sorted({int(r["num_completions"]) for r in csv.DictReader(fh)})
    assert sizes == figures.SMALL["fig5"]["pool_sizes"]
    # a rerun reuses every record: same CSV
    before = (out / "fig1_gap_vs_budget.csv").read_text()
    figures.main(["--small", "--only", "fig1", "--out", str(out), "--results", str(res), "--no-progress"])
    assert (out / "fig1_gap_vs_budget.csv").read_text() == before
    assert np.isfinite([float(r["mean_gap"]) for r in csv.DictReader(open(out / "fig1_gap_vs_budget.csv"))]).any()
