"""Local sweep overhead: 12 trivial trials at --parallel 2 vs 12 trivial `%%tfjob --wait`
cells one after another, per trial, 3 interleaved runs.

Both sides run the same trivial cell (it reports one value) as local jobs; the sweep adds
Optuna's suggestions, its detached runner and its polling, and gains running two at once.
"""

from __future__ import annotations

from common import alternate, private_home, report, shell

TRIALS = 12
CELL = "tfjob.report(score=1.0)\n"


def main(runs: int = 3) -> float:
    private_home()
    ip = shell()
    counter = iter(range(1000))

    def sweep() -> None:
        line = (
            f"--backend local --name sweep-{next(counter)} --sweep 'x=uniform(0, 1)' "
            f"--trials {TRIALS} --parallel 2 --objective 'maximize score' --algorithm random --wait"
        )
        ip.run_cell_magic("tfjob", line, CELL)

    def in_sequence() -> None:
        run = next(counter)
        for index in range(TRIALS):
            ip.run_cell_magic("tfjob", f"--backend local --name seq-{run}-{index} --wait", CELL)

    times = alternate(runs, **{"sweep, parallel 2": sweep, f"{TRIALS} cells --wait": in_sequence})
    per_trial = {name: [t / TRIALS for t in values] for name, values in times.items()}
    return report(
        f"local sweep, per trial ({TRIALS} trivial trials)",
        per_trial,
        f"{TRIALS} cells --wait",
        None,
    )


if __name__ == "__main__":
    main()
