"""Run a demo notebook headless and print what it printed.

    python notebooks/run_demo.py notebooks/mnist.ipynb [-p epochs=2 ...]

Values given with ``-p`` are injected after the cell tagged ``parameters``, as
papermill does. The executed notebook is saved beside the original as
``<name>.out.ipynb``. Exits non-zero, naming the cell, when a cell fails.

``--update`` (without ``-p``) also writes the run's outputs back into the notebook, for
the cells that the test suite checks with nbval (tagged ``nbval-check-output``) only:
the other outputs (logs, widgets) would only make the file large and its diffs noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def inject(notebook: nbformat.NotebookNode, values: list[str]) -> None:
    if not values:
        return
    lines = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"-p {item!r}: write NAME=VALUE")
        lines.append(f"{name} = {value}")
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    at = tagged[0] + 1 if tagged else 0
    cell = nbformat.v4.new_code_cell("# Injected parameters\n" + "\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(at, cell)


def printed(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)  # stderr (TensorFlow's start-up chatter) stays in the copy
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", "") + "\n")
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n")
    return "".join(parts)


def keep_checked_outputs(executed: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The executed notebook with outputs and counts only where nbval compares them."""
    for cell in executed.cells:
        if cell.cell_type == "code" and "nbval-check-output" not in cell.metadata.get("tags", []):
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)  # nbclient's timestamps
    executed.metadata.pop("widgets", None)
    return executed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", dest="parameters", action="append", default=[],
                        metavar="NAME=VALUE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--update", action="store_true",
                        help="save the outputs nbval checks into the notebook itself")
    args = parser.parse_args()
    if args.update and args.parameters:
        raise SystemExit("--update saves a run with the notebook's own parameters: drop -p")
    notebook = nbformat.read(args.notebook, as_version=4)
    # The kernel's `!kfnb ...` finds this environment's commands, as in an activated one.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    inject(notebook, args.parameters)
    client = NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    started = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        error = err
    out_path = args.notebook.with_suffix(".out.ipynb")
    nbformat.write(notebook, out_path)
    for cell in notebook.cells:
        if cell.cell_type == "code" and (text := printed(cell)):
            print(text, end="" if text.endswith("\n") else "\n")
    print(f"\n{args.notebook} ran in {time.perf_counter() - started:.0f} s "
          f"(executed copy: {out_path})")
    if error is not None:
        print(f"a cell failed: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    if args.update:
        nbformat.write(keep_checked_outputs(notebook), args.notebook)
        print(f"outputs of the cells nbval checks saved in {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
