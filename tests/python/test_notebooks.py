"""Executes the notebooks in notebooks/ with nbclient (ctest runs one test per notebook). They run
at the small sizes their first cell sets; FLASHLSTM_NOTEBOOK_QUICK=1 (set here) asks the training
notebook for its CI setting. A failing cell fails the test with the cell's error."""

import os
import time
from pathlib import Path

import pytest

fl = pytest.importorskip("flashlstm")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["validate", "plstm_custom_dag", "arrow_pointing"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The kernel is a child process: it finds the package through PYTHONPATH.
    path = os.environ.get("FLASHLSTM_PYTHONPATH")
    if path:
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("FLASHLSTM_NOTEBOOK_QUICK", "1")
    start = time.time()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{name}.ipynb: {time.time() - start:.1f} s")
