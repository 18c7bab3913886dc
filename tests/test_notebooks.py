"""The notebooks run end to end at small sizes, and each .ipynb matches its jupytext .py source."""

import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {
    "bounds_exploration": "NUM_TRAIN_PROMPTS = 10\nBUDGETS = [1e3, 1e6, 1e9]\nLOWER_GRID = 10\n",
    "validate_new_design": "BUDGETS = [300, 1000]\nREPLICATES = 40\nRESULTS = {results!r}\n",
}

#: Figures each notebook draws.
FIGURES = {"bounds_exploration": 3, "validate_new_design": 1}


def _sources(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_ipynb_is_in_sync_with_its_py_source(name):
    py = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    ipynb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert _sources(ipynb) == _sources(py), f"run `jupytext --sync notebooks/{name}.py`"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes_at_small_size(name, tmp_path):
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(idx) == 1, "one cell tagged 'parameters'"
    small = NOTEBOOKS[name].format(results=str(tmp_path / "results"))
    nb.cells.insert(idx[0] + 1, nbformat.v4.new_code_cell(small, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # The notebooks draw: each figure reaches the output as an image (an Agg backend
    # set on import of experiments.plotting used to swallow them all).
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images == FIGURES[name], f"{name}: {images} figures in the outputs, expected {FIGURES[name]}"
    if name == "validate_new_design":
        assert text.count("agrees at level 1e-3") == 2 and "DISAGREES" not in text
    if name == "bounds_exploration":
        assert "upper bound from n0" in text and "(Lemma 9.4)" in text and "t* =" in text


@pytest.mark.slow
def test_jupytext_execute_works_with_the_notebooks_extra(tmp_path):
    """`jupytext --to ipynb --set-kernel python3 --execute` (the README's way to run a notebook) needs nbconvert."""
    src = tmp_path / "tiny.py"
    src.write_text("# %%\nimport experiments.plotting as p\nimport matplotlib.pyplot as plt\nplt.plot([1, 2]);\n")
    res = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--set-kernel", "python3", "--execute", str(src)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    nb = nbformat.read(tmp_path / "tiny.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for o in nb.cells[0].outputs)
