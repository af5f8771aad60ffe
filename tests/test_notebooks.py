"""The demo notebooks as the test suite runs them.

`pytest` itself runs notebooks/mnist.ipynb and notebooks/kubeflow.ipynb end to end under
nbval (`--nbval-lax`, set in pyproject.toml): a cell that raises fails (`%%tfjob --wait`
raises JobFailed when the job fails), and the cells tagged `nbval-check-output` must print
what the saved notebook shows, after tests/nbval_sanitize.cfg. These tests check that
set-up: that it can fail.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "mnist.ipynb"
KUBEFLOW = REPO / "notebooks" / "kubeflow.ipynb"
# Each demo notebook and how many of its cells nbval checks at least.
NOTEBOOKS = {NOTEBOOK: 5, KUBEFLOW: 3}
SANITIZE = REPO / "tests" / "nbval_sanitize.cfg"
sys.path.insert(0, str(REPO / "notebooks"))

import run_demo  # noqa: E402


def sanitize(text: str) -> str:
    for regex, replace in get_sanitize_patterns(SANITIZE.read_text()):
        text = re.sub(regex, replace, text)
    return text


def checked_cells(path: Path = NOTEBOOK) -> list[nbformat.NotebookNode]:
    notebook = nbformat.read(path, as_version=4)
    return [c for c in notebook.cells if "nbval-check-output" in c.metadata.get("tags", [])]


def saved_text(source_start: str, path: Path = NOTEBOOK) -> str:
    cell = next(c for c in checked_cells(path) if c.source.startswith(source_start))
    return "".join(o.text for o in cell.outputs)


def test_pytest_runs_every_demo_notebook() -> None:
    # tomllib is Python 3.11+; kfnb supports 3.10.
    testpaths = re.search(r"^testpaths = \[(.*)\]$", (REPO / "pyproject.toml").read_text(), re.M)
    assert testpaths is not None
    demos = sorted(p for p in (REPO / "notebooks").glob("*.ipynb") if ".out." not in p.name)
    assert demos == sorted(NOTEBOOKS)
    assert {f'"{p.relative_to(REPO)}"' for p in demos} <= set(testpaths[1].split(", "))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_cells_carry_their_saved_outputs(path: Path) -> None:
    """nbval compares nothing for a cell saved without an execution count: a notebook
    whose outputs were cleared would pass. Every checked cell must carry its outputs."""
    cells = checked_cells(path)
    assert len(cells) >= NOTEBOOKS[path]
    for cell in cells:
        assert cell.execution_count is not None and cell.outputs, cell.source
        assert all(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_saved_notebook_keeps_only_checked_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    checked = checked_cells(path)
    unchecked = [c for c in notebook.cells if c.cell_type == "code" and c not in checked]
    assert unchecked and not any(c.outputs for c in unchecked)
    assert "widgets" not in notebook.metadata


def test_kubeflow_notebook_is_checked_as_run_without_a_cluster() -> None:
    """Its saved outputs are the local backend's, which notebooks/conftest.py guarantees
    (no kubeconfig, no service account, no S3 settings): they must say so, and claim no
    cluster, namespace or permission review."""
    backend = saved_text("from kfnb.backends import", KUBEFLOW)
    assert backend.startswith("backend: local (no Kubernetes cluster is configured)\n")
    assert "namespace:" not in backend
    assert saved_text("from IPython.core.error", KUBEFLOW).startswith("Nothing to check")
    assert saved_text("canary = _", KUBEFLOW).startswith("No canary here")


def test_sanitizers_let_a_good_run_through_and_not_a_worse_model() -> None:
    accuracy = saved_text("import numpy")
    assert sanitize(accuracy) == sanitize(re.sub(r"0\.\d+", "0.9812", accuracy))
    assert sanitize(accuracy) != sanitize(re.sub(r"0\.\d+", "0.9350", accuracy))
    served = saved_text("prediction = served")
    assert sanitize(served) == sanitize(re.sub(r"\d+%", "93%", served))
    assert sanitize(served) != sanitize(re.sub(r"\d+%", "71%", served))


def test_sanitizers_accept_another_digit_but_not_a_failed_client() -> None:
    client = saved_text("!kfnb predict")
    other = re.sub(r"number is\.\.\. \d!", "number is... 3!", client.replace("@", "."))
    assert sanitize(client) == sanitize(other)
    assert sanitize(client) != sanitize("/bin/bash: line 1: kfnb: command not found\r\n")
    # A digit of 27 rows is no longer a digit.
    assert sanitize(client) != sanitize(re.sub(r"[.@]{28}\r?\n", "", client, count=1))


def test_run_demo_injects_parameters_after_the_parameters_cell() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    run_demo.inject(notebook, ["epochs=1", "workers=1"])
    assert notebook.cells[at + 1].source == "# Injected parameters\nepochs = 1\nworkers = 1"


def test_run_demo_update_keeps_only_checked_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.execution_count = 1
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
            cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    notebook.metadata["widgets"] = {"state": {}}
    kept = run_demo.keep_checked_outputs(notebook)
    with_outputs = [c for c in kept.cells if c.cell_type == "code" and c.outputs]
    assert [c.source for c in with_outputs] == [c.source for c in checked_cells()]
    assert not any("execution" in c.metadata for c in kept.cells)
    assert "widgets" not in kept.metadata
