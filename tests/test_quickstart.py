"""The README's main job, at test size: config composition, validation, records, figure."""

import csv

import numpy as np

import pytest
from hydra import compose, initialize_config_module

from experiments import quickstart


def _cfg(tmp_path, *overrides):
    with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
        return compose(
            config_name="quickstart",
            overrides=[f"output={tmp_path}/qs", "budgets=[400,2000]", "num_replicates=20", *overrides],
        )


def test_quickstart_runs_and_writes_figure_and_data(tmp_path):
    cfg = _cfg(tmp_path)
    rows = quickstart.run(cfg)
    assert len(rows) == 3 * 2
    assert {r["design"] for r in rows} == {"uniform", "reference", "first_two"}
    for r in rows:
        # (the CI brackets the mean by construction; what can fail is a NaN or a degenerate sample)
        assert r["valid_fraction"] == 1.0 and np.isfinite(r["mean_gap"]) and r["se"] > 0
        assert r["predicted_gap"] > 0
    paths = quickstart.write_outputs(rows, cfg.output)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    with open(tmp_path / "qs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert "design" in quickstart.format_table(rows)


def test_world_group_switches_all_parameters(tmp_path):
    rows = quickstart.run(_cfg(tmp_path, "world=tabular", "world.params.num_completions=5", "designs=[uniform]", "budgets=[800]"))
    assert rows[0]["world"] == "tabular" and rows[0]["valid_fraction"] == 1.0


def test_same_seed_same_numbers(tmp_path):
    a = quickstart.run(_cfg(tmp_path, "designs=[uniform]", "budgets=[500]"))
    b = quickstart.run(_cfg(tmp_path, "designs=[uniform]", "budgets=[500]"))
    assert a == b


@pytest.mark.parametrize(
    "override, field",
    [
        ("designs=[uniform,best_of_breed]", "designs"),
        ("world.name=atlantis", "world.name"),
        ("budgets=[0]", "budgets"),
        ("num_replicates=1", "num_replicates"),
        ("world.params.num_completions=1", "num_completions"),
        ("world.params.beta=0", "beta"),
        ("world=tabular +world.params.prompt_dim=3", "world.params.prompt_dim"),
    ],
)
def test_invalid_config_fails_before_work(tmp_path, override, field):
    with pytest.raises(ValueError, match=field):
        quickstart.run(_cfg(tmp_path, *override.split()))
