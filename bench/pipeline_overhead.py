"""Local pipeline overhead: a 3-step chain of trivial cells (train -> evaluate -> publish)
run by `%kfnb pipeline run --wait` vs the same three cells as `%%tfjob --wait` one after
another, 3 interleaved runs (``.venv/bin/python bench/pipeline_overhead.py [RUNS]``).

Both sides start the same three local jobs in the same order; the pipeline adds its
detached runner (a Python process importing kfnb), recording steps' values, passing
outputs as ``tfjob.inputs`` and its polling. The DAG must not add seconds.
"""

from __future__ import annotations

import sys

from common import alternate, private_home, report, shell

CELLS = {
    "train": ("", "tfjob.output('accuracy', 0.9)\n"),
    "evaluate": ("--after train", "tfjob.output('ok', True)\n"),
    "publish": ("--after evaluate", "print('published')\n"),
}


def main(runs: int = 3) -> float:
    private_home()
    ip = shell()
    ip.run_line_magic("config", "Kfnb.backend = 'local'")
    for step, (flags, cell) in CELLS.items():
        ip.run_cell_magic("step", f"{step} --pipeline bench {flags} --record-only", cell)
    counter = iter(range(1000))

    def pipeline() -> None:
        ip.run_line_magic("kfnb", "pipeline run bench --wait")

    def in_sequence() -> None:
        run = next(counter)
        for step, (_, cell) in CELLS.items():
            cell = cell.replace("tfjob.output", "print")  # no step: no outputs to keep
            ip.run_cell_magic("tfjob", f"--name seq-{run}-{step} --wait", cell)

    times = alternate(runs, **{"pipeline run --wait": pipeline, "3 cells --wait": in_sequence})
    pairs = zip(times["pipeline run --wait"], times["3 cells --wait"], strict=True)
    ratios = [piped / plain for piped, plain in pairs]
    result = report("local pipeline, 3 trivial steps", times, "3 cells --wait", None)
    print(f"  per-run ratios: {min(ratios):.2f}-{max(ratios):.2f}")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
