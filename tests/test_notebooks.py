"""The demo notebooks as the test suite runs them.

`pytest` itself runs notebooks/mnist.ipynb and notebooks/kubeflow.ipynb end to end under
nbval (`--nbval-lax`, set in pyproject.toml): a cell that raises fails (`%%tfjob --wait`
raises JobFailed when the job fails), and the cells tagged `nbval-check-output` must print
what the saved notebook shows, after tests/nbval_sanitize.cfg. These tests check that
set-up: that it can fail.
"""

from __future__ import annotations

import io
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
    backend = saved_text("choice = kfnb.backend_choice()", KUBEFLOW)
    assert backend.startswith("backend: local (no Kubernetes cluster is configured)\n")
    assert "namespace" not in backend
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


class _Terminal(io.StringIO):
    """What run_demo prints, with a file touched once ``marker`` has been printed."""

    def __init__(self, marker: str, touch: Path) -> None:
        super().__init__()
        self.marker, self.touch = marker, touch

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.marker in self.getvalue():
            self.touch.touch()
        return written


TF_LINE = ("I0000 00:00:1796302780.292854    4669 cpu_feature_guard.cc:227] This TensorFlow "
           "binary is optimized to use available CPU instructions")


@pytest.mark.timeout(120)
def test_run_demo_prints_the_jobs_progress_while_it_trains(tmp_path: Path) -> None:
    """`make demo` talks: the job's phases and its worker's lines reach the terminal as
    they happen. The job waits for a file that is only created once its first line has
    been printed: a runner that printed at the end would leave it waiting."""
    go = tmp_path / "go"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "%load_ext kfnb\nimport sys\n"
            f"print('a note on stderr', file=sys.stderr)\nprint({TF_LINE!r}, file=sys.stderr)\n"
            f"print({TF_LINE!r})\nprint('no newline', end='')"
        ),
        nbformat.v4.new_code_cell(
            "%%tfjob --name talks --wait\nimport pathlib, time\n"
            "print('Epoch 1/2', flush=True)\n"
            "deadline = time.monotonic() + 30\n"
            f"while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:\n"
            "    time.sleep(0.02)\n"
            f"print('Epoch 2/2' if pathlib.Path({str(go)!r}).exists() else 'never released')\n"
        ),
    ]
    out, err = _Terminal("[worker-0] Epoch 1/2\n", go), io.StringIO()
    kernel_log = tmp_path / "demo.kernel.log"
    error = run_demo.run(notebook, tmp_path, kernel_log, timeout=90, echo_out=out, echo_err=err)
    assert error is None, error
    lines = out.getvalue().splitlines()
    # In order; the Running line may come just after the first line the worker printed.
    expected = ("[worker-0] Epoch 1/2", "[talks] Running", "[worker-0] Epoch 2/2",
                "[talks] Succeeded")
    at = [next((i for i, line in enumerate(lines) if line.startswith(e)), -1) for e in expected]
    assert -1 not in at and at[0] < at[2] and at[1:] == sorted(at[1:]), lines
    assert lines[-1].startswith("Job talks (local): Succeeded")  # the cell's result
    assert "never released" not in out.getvalue() and "I0000" not in out.getvalue()
    assert out.getvalue().startswith("no newline\n")  # at the end of its cell, with a newline
    # No widget that nothing here would render: the cell's output is the text progress.
    job_cell = notebook.cells[1]
    assert all("data" not in o or list(o.data) == ["text/plain"] for o in job_cell.outputs)
    # stderr reaches the terminal without TensorFlow's lines; the executed copy keeps them.
    assert err.getvalue() == "a note on stderr\n"
    assert TF_LINE in "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    # The kernel runs over Unix sockets: no warning about TCP without encryption.
    assert kernel_log.exists() and "without encryption" not in kernel_log.read_text()
