"""A sweep's progress as text: one line per trial as it ends, for terminals and headless
runs (and under the live view, what a saved notebook keeps)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfnb.sweeps.record import TrialState
    from kfnb.sweeps.sweep import Sweep, SweepStatus


def trial_line(trial: TrialState, metric: str) -> str:
    params = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    objective = f" {metric}={trial.objective:.4g}" if trial.objective is not None else ""
    duration = f" in {trial.duration:.0f}s" if trial.duration is not None else ""
    first = trial.message.splitlines()[-1] if trial.message else ""
    note = f" ({first})" if first and trial.state != "Failed" else ""
    return f"  {trial.name} {trial.state}{objective}{duration} [{params}]{note}"


def print_sweep_progress(sweep: Sweep, poll: float = 0.5) -> SweepStatus:
    """Print each trial's end until the sweep ends; return the last status."""
    said: set[str] = set()
    print(f"Sweep {sweep.name}: {sweep.spec.objective.describe()}, {sweep.spec.algorithm}, "
          f"{sweep.spec.trials} trials, {sweep.spec.parallel} at a time", flush=True)  # fmt: skip
    limited = False
    while True:
        status = sweep.status()
        if not limited and status.parallel is not None and status.parallel < sweep.spec.parallel:
            limited = True
            print(f"  {status.parallel} at a time here: this machine's {os.cpu_count()} cores "
                  "hold no more; the others queue", flush=True)  # fmt: skip
        for trial in status.trials:
            if trial.finished is not None and trial.name not in said:
                said.add(trial.name)
                print(trial_line(trial, sweep.spec.objective.metric), flush=True)
        if status.done:
            print(sweep.summary(status), flush=True)
            if status.message:
                print(status.message, flush=True)
            return status
        time.sleep(poll)
