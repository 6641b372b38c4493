"""The notebook handed in with the assignment: its reviewable .py twin matches it, and its parameters cell comes
first. (It executes against a real tiny pipeline run in tests/test_pipeline.py, which reproduces one anyway.)"""
from __future__ import annotations

import jupytext

from conftest import REPO, assert_notebook_shows_the_run

NOTEBOOK = REPO / "notebooks" / "beta_vae_cifar10.ipynb"
TWIN = REPO / "notebooks" / "beta_vae_cifar10.py"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_the_notebook_and_its_py_twin_hold_the_same_cells():
    assert _cells(jupytext.read(NOTEBOOK)) == _cells(jupytext.read(TWIN)), (
        "notebooks/beta_vae_cifar10.ipynb and its .py twin differ: run "
        "`jupytext --sync notebooks/beta_vae_cifar10.py`")


def test_the_first_code_cell_is_the_parameters_cell():
    nb = jupytext.read(TWIN)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert 'REPO_URL = ""' in first.source and 'RUN = "trial"' in first.source


def test_the_committed_hand_in_was_executed_from_the_committed_run():
    """reports/beta_vae_cifar10.ipynb, as committed, shows the committed run: every cell's output, the five items,
    and its β table equal to metrics/ (a notebook executed against another run, or not at all, fails here)."""
    assert_notebook_shows_the_run(REPO)
