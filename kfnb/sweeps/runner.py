"""The local sweep runner: a detached process (like a job's supervisor) that runs a
sweep's trials as local jobs with Katib's semantics, so a sweep outlives the kernel.

``python -m kfnb.sweeps.runner <sweep-dir>`` asks Optuna for parameters, submits each
trial as a job named ``<sweep>-<n>`` (the bundle built once in the kernel, the
parameters as ``KFNB_PARAM_<name>``), follows its objective as it is written, stops
it early when the pruner says so, and writes ``state.json`` as things change:

- at most ``parallel`` trials at once (parallelTrialCount), fewer when this machine
  lacks the cores for their replicas: the others queue;
- ``trials`` in all (maxTrialCount); the sweep fails once more than ``max_failed``
  trials failed (maxFailedTrialCount), with the first failure's traceback;
- it succeeds early when a trial reaches the goal (running trials are then stopped);
- a trial that succeeded without writing the objective stops the sweep at once,
  saying which metrics it did write.

SIGTERM (``%kfnb sweep delete``) stops the running trials and ends the sweep.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kfnb.sweeps.record import TrialState, load_sweep, write_state
from kfnb.sweeps.space import SweepSpec

log = logging.getLogger("kfnb.sweeps.runner")
POLL_SECONDS = 0.2
RUNNER_MODULE = "kfnb.sweeps.runner"
ENV_FILE = "env.json"  # the trials' --env, kept out of the record (mode 0600)


def _bundle(directory: Path) -> Any:
    from kfnb.bundle import Bundle

    files = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    return Bundle(files=files)


def trial_env(env_pairs: list[Any], params: dict[str, Any]) -> list[tuple[str, str]]:
    """The job's environment plus one ``KFNB_PARAM_<name>`` per parameter, as JSON
    (strings bare, as Katib substitutes them)."""
    env = [tuple(pair) for pair in env_pairs]
    for key, value in params.items():
        env.append((f"KFNB_PARAM_{key}", value if isinstance(value, str) else json.dumps(value)))
    return [(str(k), str(v)) for k, v in env]


def machine_parallel(parallel: int, replicas: int) -> int:
    """Trials at once that this machine's cores hold (at least one)."""
    return max(1, min(parallel, (os.cpu_count() or 1) // max(1, replicas)))


class Runner:
    def __init__(self, directory: Path) -> None:
        record = load_sweep(directory.name)
        if record is None:
            raise SystemExit(f"no sweep record for {directory.name}")
        self.name = record.name
        self.record = record
        self.spec = SweepSpec.from_json(record.spec)
        self.bundle = _bundle(directory / "bundle")
        self.source = (directory / "bundle" / "cell.py").read_text()
        self.env = json.loads((directory / ENV_FILE).read_text())
        replicas = sum(int(record.options.get(k) or 0) for k in ("workers", "ps", "chief"))
        self.parallel = machine_parallel(self.spec.parallel, replicas)
        self.trials: list[TrialState] = []
        self.jobs: dict[int, Any] = {}
        self.failures = 0
        self.first_failure = ""
        self.phase, self.reason, self.message = "Running", "ExperimentRunning", ""
        self.started = time.time()
        self.finished: float | None = None
        self.stopping = False
        self.missing_objective_said = False
        from kfnb.sweeps.optimizer import Optimizer

        self.optimizer = Optimizer(self.spec)

    def save(self) -> None:
        write_state(
            self.name,
            {
                "phase": self.phase,
                "reason": self.reason,
                "message": self.message,
                "started": self.started,
                "finished": self.finished,
                "parallel": self.parallel,
                "first_failure": self.first_failure,
                "trials": [t.to_json() for t in self.trials],
                "pid": os.getpid(),
            },
        )

    def _start_trial(self) -> None:
        from kfnb.api import submit

        number, params = self.optimizer.ask()
        trial = TrialState(number, f"{self.name}-{number}", params, "Running", started=time.time())
        self.trials.append(trial)
        options = {**self.record.options, "env": trial_env(self.env, params)}
        try:
            self.jobs[number] = submit(
                self.source, name=trial.name, bundle=self.bundle, names={}, **options
            )
        except Exception as err:  # noqa: BLE001 - a trial that cannot start is a failed trial
            self._failed(trial, f"not started: {err}")

    def _failed(self, trial: TrialState, message: str) -> None:
        trial.state, trial.message, trial.finished = "Failed", message, time.time()
        self.optimizer.tell(trial.number, None, "failed")
        self.failures += 1
        if not self.first_failure:
            self.first_failure = message
        self.jobs.pop(trial.number, None)

    def _follow(self, trial: TrialState) -> None:
        from kfnb.sweeps.objective import metric_names, read_metric, trial_metrics

        job = self.jobs[trial.number]
        status = job.status()
        metrics = trial_metrics(job)
        trial.curve = read_metric(metrics, self.spec.objective.metric)
        for step, value in trial.curve:
            self.optimizer.report(trial.number, step, value)
        if not status.finished:
            if self.optimizer.should_stop(trial.number):
                job.delete()
                trial.state, trial.finished = "EarlyStopped", time.time()
                trial.objective = trial.curve[-1][1] if trial.curve else None
                trial.message = "stopped early by medianstop"
                self.optimizer.tell(trial.number, None, "pruned")
                self.jobs.pop(trial.number)
            return
        self.jobs.pop(trial.number)
        trial.finished = time.time()
        if status.phase != "Succeeded":
            failure = job.failure(status)
            lines = failure._render_traceback_() if failure else [status.message]
            self._failed(trial, "\n".join(lines))
            return
        if not trial.curve:
            wrote = ", ".join(metric_names(metrics)) or "no metric at all"
            trial.state = "MetricsUnavailable"
            trial.message = f"it wrote {wrote}"
            self.optimizer.tell(trial.number, None, "failed")
            self._end(
                "Failed",
                "ObjectiveNotWritten",
                f"trial {trial.name} ended without writing {self.spec.objective.metric!r} "
                f"({trial.message}): fix --objective or call "
                f"tfjob.report({self.spec.objective.metric.split('/')[-1]}=value)",
            )
            return
        trial.state, trial.objective = "Succeeded", trial.curve[-1][1]
        self.optimizer.tell(trial.number, trial.objective)
        if self.spec.objective.reached(trial.objective):
            self._end("Succeeded", "ExperimentGoalReached", f"trial {trial.name} reached the goal")

    def _end(self, phase: str, reason: str, message: str) -> None:
        if self.phase != "Running":
            return
        self.phase, self.reason, self.message = phase, reason, message
        self._stop_running()

    def _stop_running(self) -> None:
        for number, job in list(self.jobs.items()):
            try:
                job.delete()
            except Exception as err:  # noqa: BLE001 - stop the others anyway
                log.warning("stopping %s: %s", job.name, err)
            trial = next(t for t in self.trials if t.number == number)
            trial.state, trial.finished = "Killed", time.time()
            self.optimizer.tell(number, None, "failed")
            self.jobs.pop(number)

    def _more(self) -> bool:
        return (
            self.phase == "Running"
            and len(self.trials) < self.spec.trials
            and not self.optimizer.grid_exhausted
        )

    def run(self) -> None:
        self.save()
        while True:
            if self.stopping:
                self._end("Failed", "ExperimentDeleted", "the sweep was deleted")
            while self._more() and len(self.jobs) < self.parallel:
                self._start_trial()
            for trial in [t for t in self.trials if t.number in self.jobs]:
                try:
                    self._follow(trial)
                except Exception as err:  # noqa: BLE001 - a status read that failed: next poll
                    log.warning("following %s: %s", trial.name, err)
            if self.failures > self.spec.failures_allowed:
                self._end(
                    "Failed",
                    "MaxFailedTrialsReached",
                    f"{self.failures} trials failed, more than --max-failed "
                    f"{self.spec.failures_allowed}",
                )
            if not self.jobs and not self._more():
                break
            self.save()
            time.sleep(POLL_SECONDS)
        if self.phase == "Running":
            done = sum(t.state == "Succeeded" for t in self.trials)
            if done:
                self.phase, self.reason = "Succeeded", "ExperimentMaxTrialsReached"
                self.message = f"{done} of {len(self.trials)} trials succeeded"
            else:
                self.phase, self.reason = "Failed", "NoTrialSucceeded"
                self.message = f"none of {len(self.trials)} trials succeeded"
        self.finished = time.time()
        self.save()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    runner = Runner(Path(argv[0]))

    def request_stop(signum: int, frame: Any) -> None:
        runner.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
