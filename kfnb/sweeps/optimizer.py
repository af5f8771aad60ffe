"""Suggestions from Optuna, the library Katib itself wraps for tpe and multivariate-tpe.

Katib's algorithm names map to Optuna's samplers (``bayesianoptimization`` to its
Gaussian-process sampler, which needs torch and scipy); ``medianstop`` (and
``hyperband``) to its pruners, fed the trials' intermediate values. Optuna is an
optional extra (``pip install 'kfnb[sweeps]'``), imported on first use.
"""

from __future__ import annotations

import math
from typing import Any

from kfnb.sweeps.space import Space, SweepError, SweepSpec

__all__ = ["Optimizer"]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SweepError(
            "local sweeps need Optuna: pip install 'kfnb[sweeps]' (or pip install optuna)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _distribution(optuna: Any, space: Space) -> Any:
    dist = optuna.distributions
    if space.kind == "uniform":
        return dist.FloatDistribution(space.low, space.high)
    if space.kind == "loguniform":
        return dist.FloatDistribution(space.low, space.high, log=True)
    if space.kind == "int":
        return dist.IntDistribution(int(space.low), int(space.high))
    return dist.CategoricalDistribution(list(space.values))


def _sampler(optuna: Any, spec: SweepSpec, seed: int | None) -> Any:
    samplers = optuna.samplers
    algorithm = spec.algorithm
    if algorithm == "grid":
        grid = {s.name: list(s.grid_values()) for s in spec.spaces}
        return samplers.GridSampler(grid, seed=seed)
    if algorithm == "tpe":
        return samplers.TPESampler(seed=seed)
    if algorithm == "multivariate-tpe":
        return samplers.TPESampler(seed=seed, multivariate=True)
    if algorithm == "cmaes":
        return _needing("cmaes", lambda: samplers.CmaEsSampler(seed=seed))
    if algorithm == "sobol":
        return _needing("scipy", lambda: samplers.QMCSampler(qmc_type="sobol", seed=seed))
    if algorithm == "bayesianoptimization":
        return _needing("torch", lambda: samplers.GPSampler(seed=seed))
    return samplers.RandomSampler(seed=seed)  # random, and hyperband's brackets


def _needing(module: str, make: Any) -> Any:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SweepError(
            f"--algorithm needs {module} here (Optuna's sampler uses it): pip install {module}, "
            "or pick tpe or random",
            "algorithm",
        )
    return make()


def _pruner(optuna: Any, spec: SweepSpec) -> Any:
    if spec.early_stopping == "medianstop":
        # Katib's medianstop defaults: a trial is compared once min_trials_required
        # (3) trials have reported at that step.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if spec.algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


class Optimizer:
    """One in-memory Optuna study: ``ask`` parameters, ``report`` steps, ``tell`` ends."""

    def __init__(self, spec: SweepSpec, seed: int | None = None) -> None:
        optuna = _optuna()
        self.spec = spec
        self._distributions = {s.name: _distribution(optuna, s) for s in spec.spaces}
        self._study = optuna.create_study(
            direction=spec.objective.direction,
            sampler=_sampler(optuna, spec, seed),
            pruner=_pruner(optuna, spec),
        )
        self._trials: dict[int, Any] = {}
        self._steps: dict[int, set[int]] = {}
        self._state = optuna.trial.TrialState

    def ask(self) -> tuple[int, dict[str, Any]]:
        """A new trial's number and parameters."""
        trial = self._study.ask(self._distributions)
        self._trials[trial.number] = trial
        self._steps[trial.number] = set()
        return trial.number, dict(trial.params)

    def report(self, number: int, step: int, value: float) -> None:
        """An intermediate value (once per step, as Optuna takes them)."""
        if step in self._steps[number] or not math.isfinite(value):
            return
        self._steps[number].add(step)
        self._trials[number].report(value, step)

    def should_stop(self, number: int) -> bool:
        """Whether the pruner (median stop, hyperband) would stop this trial now."""
        return bool(self._steps[number]) and bool(self._trials[number].should_prune())

    def tell(self, number: int, value: float | None, state: str = "complete") -> None:
        """The trial's end: ``complete`` with its objective, ``pruned`` or ``failed``."""
        trial = self._trials[number]
        try:
            if state == "pruned":
                self._study.tell(trial, state=self._state.PRUNED)
            elif state == "complete" and value is not None and math.isfinite(value):
                self._study.tell(trial, value)
            else:
                self._study.tell(trial, state=self._state.FAIL)
        except RuntimeError as err:
            # GridSampler stops "the optimize loop" once its grid is done; there is none
            # with ask/tell, and the trial is recorded before it tries.
            if "Study.stop" not in str(err):
                raise

    @property
    def grid_exhausted(self) -> bool:
        """Every point of a grid was asked for: no more trials to run."""
        sampler = self._study.sampler
        return bool(getattr(sampler, "is_exhausted", lambda _s: False)(self._study))
