"""The README's main job (experiment=quickstart) at test size: a multirun that writes
its records, prints the summary table and draws the figure with its data."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_experiment_writes_figure_data_and_summary(tmp_path):
    cmd = [sys.executable, "-m", "experiments.sweep", "-m", "experiment=quickstart", "design=uniform,oracle,first_two",
           "budget=300,2000", "num_replicates=20", f"results_dir={tmp_path / 'res'}", f"figure={tmp_path / 'qs'}",
           "hydra.sweep.dir=" + str(tmp_path / "hydra")]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for ext in (".png", ".pdf", ".csv"):
        p = tmp_path / f"qs{ext}"
        assert p.exists() and p.stat().st_size > 0
    with open(tmp_path / "qs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2 and {r["design"] for r in rows} == {"uniform", "oracle", "first_two"}
    for r in rows:
        assert float(r["valid_fraction"]) == 1.0 and np.isfinite(float(r["mean_gap"])) and float(r["se"]) > 0
    assert "mean gap" in res.stdout and "/uniform" in res.stdout and "/predicted" in res.stdout
    assert len(list((tmp_path / "res").glob("*.npz"))) == 6
