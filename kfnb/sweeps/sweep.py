"""`Sweep`: the handle a ``%%tfjob --sweep`` cell returns, and `start_sweep`, which
starts one: locally kfnb's runner (a detached process), on a cluster a Katib Experiment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from kfnb._util import (
    PRIVATE_DIR,
    PRIVATE_UMASK,
    open_private,
    pid_alive,
    private_dir,
    write_atomic,
)
from kfnb.job import Job
from kfnb.sweeps.record import (
    SweepRecord,
    TrialState,
    delete_sweep_record,
    load_sweep,
    read_state,
    save_sweep,
    sweep_dir,
)
from kfnb.sweeps.runner import ENV_FILE, RUNNER_MODULE
from kfnb.sweeps.space import SweepError, SweepSpec

__all__ = ["BestTrial", "Sweep", "SweepFailed", "SweepStatus", "start_sweep"]

# submit() arguments a trial does not take again: the bundle holds what they gave.
_BUNDLED = ("names", "hidden", "cwd", "include", "bundle", "env", "name", "backend")


class SweepFailed(RuntimeError):
    """A sweep ended Failed; carries its first failed trial's traceback, shown as
    IPython shows a cell's own."""

    def __init__(self, status: SweepStatus) -> None:
        self.status = status
        super().__init__(f"sweep {status.name} failed ({status.reason}): {status.message}")

    def _render_traceback_(self) -> list[str]:
        lines = []
        if self.status.first_failure:
            lines += ["--- the first failed trial ---", *self.status.first_failure.splitlines()]
        return [*lines, f"SweepFailed: {self}"]


@dataclass
class SweepStatus:
    name: str
    phase: str  # Created, Running, Succeeded, Failed (Katib's Experiment conditions)
    reason: str = ""
    message: str = ""
    trials: list[TrialState] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    first_failure: str = ""
    parallel: int | None = None  # trials at once the runner allows here (cores permitting)

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def count(self, *states: str) -> int:
        return sum(t.state in states for t in self.trials)


class BestTrial(Job):
    """The best trial: its `Job` (logs, scalars, model), with ``.params`` and ``.objective``."""

    def __init__(self, job: Job, params: dict[str, Any], objective: float | None) -> None:
        super().__init__(job.name, job.backend)
        self.params = params
        self.objective = objective

    @property
    def job(self) -> Job:
        return self

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"<best trial {self.name}: {self.objective!r} with {params}>"


class Sweep:
    """A sweep's trials, status, best trial and control, on either backend."""

    def __init__(self, record: SweepRecord) -> None:
        self.record = record
        self.name = record.name
        self.spec = SweepSpec.from_json(record.spec)
        self._curves: Any = None  # a cluster sweep's TrialCurves, kept between refreshes

    @classmethod
    def attach(cls, name: str) -> Sweep:
        record = load_sweep(name)
        if record is None:
            raise SweepError(f"no sweep named {name!r}: `%kfnb sweeps` lists them")
        return cls(record)

    def status(self) -> SweepStatus:
        if self.record.backend == "kubernetes":
            from kfnb.sweeps.curves import TrialCurves
            from kfnb.sweeps.katib import experiment_status

            status = experiment_status(self.record)
            if self._curves is None:
                self._curves = TrialCurves(self.spec.objective.metric)
            self._curves.fill(status.trials)  # per-epoch values: Katib keeps only the last
            return status
        return self._local_status()

    def _local_status(self) -> SweepStatus:
        state = read_state(self.name)
        if state is None:
            if not self._runner_alive() and read_state(self.name) is None:
                return SweepStatus(self.name, "Failed", "RunnerLost", _LOST)
            return SweepStatus(self.name, "Created", message="the runner has not started yet")
        status = SweepStatus(
            self.name,
            state["phase"],
            state.get("reason", ""),
            state.get("message", ""),
            [TrialState.from_json(t) for t in state.get("trials", [])],
            state.get("started"),
            state.get("finished"),
            state.get("first_failure", ""),
            state.get("parallel"),
        )
        if not status.done and not self._runner_alive():
            state = read_state(self.name) or state  # it may have written its end since
            if state["phase"] in ("Succeeded", "Failed"):
                return self._local_status()
            status.phase, status.reason, status.message = "Failed", "RunnerLost", _LOST
        return status

    def _runner_alive(self) -> bool:
        try:
            pid = int((sweep_dir(self.name) / "runner.pid").read_text())
        except (OSError, ValueError):
            return True  # between starting it and writing its pid
        return not _reap(pid) and pid_alive(pid, RUNNER_MODULE)

    @property
    def trials(self) -> list[TrialState]:
        return self.status().trials

    def trial_job(self, trial: TrialState) -> Job:
        return Job.attach(trial.name)

    def best_of(self, status: SweepStatus) -> TrialState | None:
        """The succeeded trial with the best objective in ``status`` (None before any)."""
        scored = [t for t in status.trials if t.objective is not None and t.state == "Succeeded"]
        if not scored:
            return None
        pick = max if self.spec.objective.maximize else min
        return pick(scored, key=lambda t: t.objective or 0.0)

    @property
    def best(self) -> BestTrial | None:
        """The best trial so far: its `Job`, with ``.params`` and ``.objective``."""
        trial = self.best_of(self.status())
        if trial is None:
            return None
        return BestTrial(self.trial_job(trial), trial.params, trial.objective)

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> SweepStatus:
        """Block until the sweep ends; raise `SweepFailed` if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        while not status.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {self.name} is still {status.phase} after {timeout} s")
            time.sleep(poll)
            status = self.status()
        if status.phase == "Failed":
            raise SweepFailed(status)
        return status

    def delete(self, purge: bool = False, timeout: float = 30.0) -> SweepStatus:
        """Stop the sweep and its running trials; ``purge`` also removes its trials' jobs
        and records."""
        if self.record.backend == "kubernetes":
            from dataclasses import replace

            from kfnb.sweeps.katib import delete_experiment

            status = self.status()  # its trials, read while the Experiment is there
            delete_experiment(self.record)  # Katib's garbage collection takes its trials
            if not status.done:
                status = replace(status, phase="Failed", reason="ExperimentDeleted",
                                 message="the Experiment was deleted")  # fmt: skip
        else:
            self._stop_runner(timeout)
            status = self.status()
        for trial in status.trials:  # a lost runner's trials: stop them too
            if trial.state in ("Created", "Running") and self.record.backend == "local":
                try:
                    self.trial_job(trial).delete()
                except Exception:  # noqa: BLE001, S112 - never started, or gone already
                    continue
        if purge:
            import shutil

            from kfnb.records import delete_record

            for trial in status.trials:
                try:
                    job = self.trial_job(trial)
                    job.backend.delete(trial.name, purge=True)
                except Exception:  # noqa: BLE001, S112 - a trial that never started has no job
                    pass
                delete_record(trial.name)
            shutil.rmtree(sweep_dir(self.name), ignore_errors=True)
            delete_sweep_record(self.name)
        return status

    def _stop_runner(self, timeout: float) -> None:
        if self._local_status().done:
            return
        try:
            pid = int((sweep_dir(self.name) / "runner.pid").read_text())
        except (OSError, ValueError):
            return
        if not pid_alive(pid, RUNNER_MODULE):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _reap(pid) and pid_alive(pid, RUNNER_MODULE):
            time.sleep(0.1)

    def summary(self, status: SweepStatus | None = None) -> str:
        status = status or self.status()
        elapsed = f" {status.elapsed:.0f}s" if status.elapsed is not None else ""
        counts = f"{status.count('Succeeded')}/{self.spec.trials} succeeded"
        failed = status.count("Failed", "MetricsUnavailable")
        if failed:
            counts += f", {failed} failed"
        stopped = status.count("EarlyStopped")
        if stopped:
            counts += f", {stopped} stopped early"
        best = ""
        top = self.best_of(status)
        if top is not None and top.objective is not None:
            best = f"; best {top.name} {self.spec.objective.metric}={top.objective:.4g}"
        return (
            f"Sweep {self.name} ({self.record.backend}): {status.phase}{elapsed} [{counts}{best}]"
        )

    def plot(self) -> Any:
        """A matplotlib figure: every trial's objective curve, and each parameter against
        the objective."""
        from kfnb.widgets.static_plots import sweep_figure

        return sweep_figure(self)

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())


_runners: dict[int, subprocess.Popen[bytes]] = {}
_LOST = (
    "kfnb's runner of this sweep is gone (killed, or the machine restarted): "
    "`%kfnb sweep delete NAME` stops its trials"
)


def _reap(pid: int) -> bool:
    """True if ``pid`` is a runner this kernel started that has exited (and reaps it)."""
    child = _runners.get(pid)
    return child is not None and child.poll() is not None


def fresh_sweep_name() -> str:
    from kfnb.spec import generate_name

    while load_sweep(name := generate_name("sweep")) is not None:
        pass
    return name


def check_sweep_name(name: str, spec: SweepSpec) -> str:
    from kfnb.spec import validate_name

    validate_name(name)
    try:
        validate_name(f"{name}-{spec.trials}")
    except SweepError:
        raise
    except ValueError:
        raise SweepError(
            f"--name {name!r} is too long for its trials' names ({name}-{spec.trials}-...): "
            "shorten it",
            "name",
        ) from None
    if load_sweep(name) is not None:
        raise SweepError(
            f"a sweep named {name!r} exists already: pick another --name, or "
            f"`%kfnb sweep delete {name} --purge` first",
            "name",
        )
    return name


def start_sweep(source: str, sweep: SweepSpec, *, name: str | None = None, **options: Any) -> Sweep:
    """Start ``sweep`` over the cell ``source``; ``options`` are `kfnb.submit`'s.

    On the Kubernetes backend it is a Katib Experiment; otherwise kfnb's local runner,
    a detached process that outlives the kernel. Returns its `Sweep` at once.
    """
    from kfnb.api import prepare

    name = check_sweep_name(name or fresh_sweep_name(), sweep)
    probe = {s.name: _example(s) for s in sweep.spaces}
    env = [*_pairs(options.get("env", ())), *_param_env(probe)]
    prepared = prepare(source, **{**options, "name": name, "env": env})
    backend = prepared.backend.name
    kept = {k: v for k, v in options.items() if k not in _BUNDLED}
    record = SweepRecord(
        name,
        backend,
        prepared.backend.storage,
        sweep.to_json(),
        {**kept, "backend": backend, "storage": prepared.backend.storage},
        namespace=prepared.backend.namespace or "",
    )
    if backend == "kubernetes":
        from kfnb.sweeps.katib import create_experiment

        create_experiment(record, sweep, source, prepared)
        save_sweep(record)
        return Sweep(record)
    from kfnb.sweeps.optimizer import Optimizer

    Optimizer(sweep)  # Optuna is there and takes the spaces: say so now, not in the runner
    directory = sweep_dir(name)
    private_dir(directory.parent)
    try:  # the name is taken by creating the sweep's directory: one of two kernels gets it
        directory.mkdir(PRIVATE_DIR)
    except FileExistsError:
        raise SweepError(
            f"a sweep named {name!r} exists already: pick another --name, or "
            f"`%kfnb sweep delete {name} --purge` first",
            "name",
        ) from None
    prepared.bundle.write(directory / "bundle")
    env_file = os.open(directory / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(env_file, "w") as out:  # --env values: readable by this user only
        json.dump(_pairs(options.get("env", ())), out)
    save_sweep(record)
    with open_private(directory / "runner.log") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", RUNNER_MODULE, str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the kernel, and Ctrl-C in it
            umask=PRIVATE_UMASK,  # what it and its trials create is the user's alone
        )
    _runners[process.pid] = process
    write_atomic(directory / "runner.pid", str(process.pid))
    return Sweep(record)


def _pairs(env: Any) -> list[tuple[str, str]]:
    items = env.items() if hasattr(env, "items") else env
    return [(str(k), str(v)) for k, v in items]


def _param_env(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"KFNB_PARAM_{k}", v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()
    ]


def _example(space: Any) -> Any:
    """A value of ``space``, for the rendering that checks the cell before the sweep."""
    if space.values:
        return space.values[0]
    return int(space.low) if space.kind == "int" else space.low
