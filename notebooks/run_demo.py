"""Run a demo notebook headless, printing what its cells print as they print it.

    python notebooks/run_demo.py notebooks/mnist.ipynb [-p epochs=2 ...]

Values given with ``-p`` are injected after the cell tagged ``parameters``, as
papermill does. The executed notebook is saved beside the original as
``<name>.out.ipynb``. Exits non-zero, naming the cell, when a cell fails.

The terminal shows each cell's output as the kernel sends it, line by line, so a
``%%tfjob --wait`` cell shows the job's phases and epochs while it trains: the kernel
gets ``KFNB_WIDGETS=0`` (nothing here renders widgets), and kfnb prints its text
progress instead. TensorFlow's own log lines (``I0000 00:00:...] ...``) are left out
of the terminal only: the executed copy and the jobs' logs keep them. The kernel talks
to this process over Unix sockets, not TCP, and what the kernel process itself writes
(its own log, copies of the cells' low-level output) goes to ``<name>.kernel.log``.

``--update`` (without ``-p``) also writes the run's outputs back into the notebook, for
the cells that the test suite checks with nbval (tagged ``nbval-check-output``) only:
the other outputs (logs, widgets) would only make the file large and its diffs noisy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config

from kfnb.widgets.tf_messages import is_tensorflow_message


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


class EchoingClient(NotebookClient):
    """A `NotebookClient` that prints each output as it arrives, not after the last cell.

    stdout streams, results and errors go to ``echo_out``, stderr streams to
    ``echo_err``; streams line by line, without TensorFlow's own log lines.
    """

    def __init__(self, nb: nbformat.NotebookNode, *, echo_out: TextIO, echo_err: TextIO,
                 **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.echo_out, self.echo_err = echo_out, echo_err
        self.partial: dict[str, str] = {}  # each stream's text after its last newline
        self.on_cell_executed = self._end_of_cell

    def output(self, outs: list[nbformat.NotebookNode], msg: dict[str, Any],
               display_id: str | None, cell_index: int) -> nbformat.NotebookNode | None:
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            self.echo(out)
        return out

    def echo(self, output: nbformat.NotebookNode) -> None:
        kind = output.output_type
        if kind == "stream":
            text = self.partial.pop(output.name, "") + output.text
            complete, newline, rest = text.rpartition("\n")
            if rest:
                self.partial[output.name] = rest
            self._stream(output.name, complete + newline)
        elif kind in ("execute_result", "display_data"):
            text = output.data.get("text/plain", "")
            if text:
                self._write(self.echo_out, text + "\n")
        elif kind == "error":
            self._write(self.echo_out, f"{output.ename}: {output.evalue}\n")

    def _stream(self, name: str, text: str) -> None:
        kept = "".join(line for line in text.splitlines(keepends=True)
                       if not is_tensorflow_message(line))
        if kept:
            self._write(self.echo_err if name == "stderr" else self.echo_out, kept)

    def _end_of_cell(self, **_: Any) -> None:
        for name, rest in sorted(self.partial.items(), reverse=True):  # stdout first
            self._stream(name, rest + "\n")
        self.partial.clear()

    @staticmethod
    def _write(stream: TextIO, text: str) -> None:
        stream.write(text)
        stream.flush()


def run(notebook: nbformat.NotebookNode, directory: Path, kernel_log: Path, *,
        timeout: int = 1800, echo_out: TextIO | None = None,
        echo_err: TextIO | None = None) -> CellExecutionError | None:
    """Execute ``notebook`` (in place) in a fresh kernel started in ``directory``,
    echoing its output as it comes; the failing cell's error, if one failed."""
    env = dict(os.environ)
    # The kernel's `!kfnb ...` finds this environment's commands, as in an activated one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("KFNB_WIDGETS", "0")  # nothing renders widgets here: text progress
    with tempfile.TemporaryDirectory(prefix="kfnb-kernel-") as sockets:
        config = Config()
        if os.name == "posix":
            # Unix sockets in a directory of this user's: no port open to other users, and
            # no "running over TCP without encryption" warning. A short path: sun_path
            # holds about 100 bytes.
            config.KernelManager.transport = "ipc"
            config.KernelManager.ip = os.path.join(sockets, "kernel")
        client = EchoingClient(notebook, echo_out=echo_out or sys.stdout,
                               echo_err=echo_err or sys.stderr, config=config,
                               timeout=timeout, kernel_name="python3",
                               resources={"metadata": {"path": str(directory)}})
        with kernel_log.open("w") as log:
            try:
                client.execute(env=env, stdout=log, stderr=subprocess.STDOUT)
            except CellExecutionError as err:
                return err
    return None


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
    inject(notebook, args.parameters)
    kernel_log = args.notebook.with_suffix(".kernel.log")
    started = time.perf_counter()
    error = run(notebook, args.notebook.parent, kernel_log, timeout=args.timeout)
    out_path = args.notebook.with_suffix(".out.ipynb")
    nbformat.write(notebook, out_path)
    print(f"\n{args.notebook} ran in {time.perf_counter() - started:.0f} s "
          f"(executed copy: {out_path}; the kernel's own output: {kernel_log})")
    if error is not None:
        print(f"a cell failed: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    if args.update:
        nbformat.write(keep_checked_outputs(notebook), args.notebook)
        print(f"outputs of the cells nbval checks saved in {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
