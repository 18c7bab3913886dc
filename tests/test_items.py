"""The items app (experiments.items): Figures 4 and 5's cached items as Hydra jobs."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments import figure_items, figures

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "experiments.items", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_item_grids_cover_every_item_of_their_figure():
    """Each conf/items/<grid>.yaml sweeps index over exactly the figure's list (no item left out, none past its end)."""
    grids = sorted((ROOT / "experiments/conf/items").glob("*.yaml"))
    assert {g.stem for g in grids} == {"fig2", "fig2_small", "fig4", "fig4_small", "fig5", "fig5_small"}
    for g in grids:
        cfg = OmegaConf.load(g)
        assert g.stem == cfg.figure + ("_small" if cfg.small else "")
        with jax.enable_x64(True):
            count = len(figures.figure_items(cfg.figure, cfg.small))
        assert cfg.hydra.sweeper.params.index == f"range(0,{count})", g.name


def test_figure_items_are_distinct_and_refuse_other_figures():
    with jax.enable_x64(True):
        for name in figures.ITEM_FIGURES:
            items = figures.figure_items(name, True)
            files = {figure_items.item_file(it.cache, it.prefix, it.ident) for it in items}
            assert len(files) == len(items)  # no two items share a record
    with pytest.raises(ValueError, match=r"name must be one of \['fig2', 'fig4', 'fig5'\], got 'fig1'"):
        figures.figure_items("fig1", True)


def test_items_app_refuses_a_bad_job_before_any_work(tmp_path):
    res = _run("-m", "figure=fig4", "small=true", "index=0,6", f"results={tmp_path / 'res'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
               cwd=tmp_path)
    assert res.returncode != 0
    assert "invalid multirun, no job started" in res.stderr + res.stdout and "index must be an integer in [0, 5], got 6" in res.stderr + res.stdout
    assert not list((tmp_path / "res").rglob("*.npz"))


def test_items_app_fills_the_records_the_figure_reads(tmp_path, monkeypatch):
    """A multirun of the app writes items 1 and 2 of the small Figure 4; the figure's own path finds them
    without computing, bit for bit what computing them in this process gives; a rerun reuses them."""
    res = _run("-m", "figure=fig4", "small=true", "index=1,2", f"results={tmp_path / 'res'}", f"hydra.sweep.dir={tmp_path / 'mr'}",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "res/small/fig4").glob("fig4_*.npz"))) == 2
    with jax.enable_x64(True):
        items = figures.figure_items("fig4", True)
        fresh = items[1].compute()  # computed here, not read

        def boom():
            raise AssertionError("recomputed an item the app wrote")

        for i in (1, 2):
            assert figure_items.item_done(items[i], tmp_path / "res/small")
            got = figure_items.run_item(items[i]._replace(compute=boom), tmp_path / "res/small")
            if i == 1:
                assert got.keys() == fresh.keys() and all(np.array_equal(got[k], fresh[k]) for k in got)
        assert not figure_items.item_done(items[0], tmp_path / "res/small")
    again = _run("figure=fig4", "small=true", "index=2", f"results={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert again.returncode == 0 and "reused under" in again.stderr + again.stdout
