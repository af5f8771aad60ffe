"""Hyperparameter sweeps: N trials of the TFJob a cell renders, with different parameters.

Locally a runner with Katib's semantics asks Optuna for suggestions (`runner`); on a
cluster a Katib Experiment whose trial template is the same TFJob (`katib`). A sweep
is a record like a job (`record`), followed through a `Sweep` handle (`sweep`).
"""

from kfnb.sweeps.space import Objective, Space, SweepError, SweepSpec, parse_space
from kfnb.sweeps.sweep import BestTrial, Sweep, SweepFailed, SweepStatus, start_sweep

__all__ = [
    "BestTrial",
    "Objective",
    "Space",
    "Sweep",
    "SweepError",
    "SweepFailed",
    "SweepSpec",
    "SweepStatus",
    "parse_space",
    "start_sweep",
]
