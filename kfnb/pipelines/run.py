"""Pipeline runs as records: start one, attach to it from any kernel, wait, stop.

A run's directory (``<Kfnb.home>/records/pipeline-runs/<run>/``) holds a snapshot of
its steps and their recorded names (``run.json``, ``<step>.names.pkl``: renaming or
re-recording a step later does not change a run under way), its ``status.json`` and
the runner's pid and log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kfnb._util import (
    PRIVATE_DIR,
    PRIVATE_UMASK,
    open_private,
    pid_alive,
    private_dir,
    write_atomic,
    write_json,
)
from kfnb.pipelines.run_status import RunStatus, StepState
from kfnb.pipelines.steps import (
    PipelineError,
    graph,
    load_steps,
    names_path,
    parameters,
    parse_overrides,
)
from kfnb.records import records_dir

RUNNER_MODULE = "kfnb.pipelines.runner"
_SETTINGS_ENV = {  # what the runner's submits need of this kernel's %config
    "home": "KFNB_HOME",
    "storage": "KFNB_STORAGE",
    "python": "KFNB_PYTHON",
    "wheelhouse": "KFNB_WHEELHOUSE",
    "namespace": "KFNB_NAMESPACE",
    "image": "KFNB_IMAGE",
}


class PipelineFailed(RuntimeError):
    """A run ended Failed; shows the failing step's traceback as IPython shows a cell's."""

    def __init__(self, status: RunStatus) -> None:
        self.status = status
        failed = [n for n, s in status.steps.items() if s.phase in ("Failed", "Error")]
        self.step = failed[0] if failed else None
        super().__init__(f"pipeline run {status.name} {status.phase.lower()}: {status.message}")

    def _render_traceback_(self) -> list[str]:
        lines = []
        state = self.status.steps.get(self.step or "")
        if state is not None and state.traceback:
            lines += [f"--- traceback of step {self.step} ---", *state.traceback.splitlines()]
        return [*lines, f"PipelineFailed: {self}"]


def runs_dir() -> Path:
    return records_dir() / "pipeline-runs"


class PipelineRun:
    """A run of a pipeline, wherever it runs: its status, its steps' jobs, control."""

    def __init__(self, name: str) -> None:
        from kfnb.spec import validate_name

        self.name = validate_name(name, "pipeline run name")  # never a path: delete removes it
        self.dir = runs_dir() / name

    @classmethod
    def attach(cls, name: str) -> PipelineRun:
        run = cls(name)
        if not (run.dir / "status.json").exists():
            raise PipelineError(
                f"no pipeline run named {name!r}: `%kfnb pipeline list` shows the runs"
            )
        return run

    @property
    def cluster(self) -> dict[str, str] | None:
        """Where the run's Workflow is, for a run on the cluster (None: a local run)."""
        path = self.dir / "cluster.json"
        return json.loads(path.read_text()) if path.exists() else None

    def status(self) -> RunStatus:
        status = RunStatus.read(self.dir / "status.json")
        where = self.cluster
        if where is not None:
            if not status.done:
                from kfnb.pipelines.cluster import workflow_status

                status = workflow_status(status, where["namespace"])
                write_json(self.dir / "status.json", status.to_json())
            return status
        if not status.done and not self._runner_alive():
            status = RunStatus.read(self.dir / "status.json")  # it may have just finished
            if not status.done:
                status = status.with_run(
                    phase="Failed", finished=time.time(),
                    message="kfnb's pipeline runner of this run is gone (killed, or the "
                    "machine restarted): run the pipeline again",
                )  # fmt: skip
                write_json(self.dir / "status.json", status.to_json())
        return status

    def _runner_alive(self) -> bool:
        try:
            pid = int((self.dir / "runner.pid").read_text())
        except FileNotFoundError:
            return True  # between starting the runner and writing its pid
        except (OSError, ValueError):
            return False
        return pid_alive(pid, RUNNER_MODULE)

    def step(self, name: str) -> StepState:
        status = self.status()
        if name not in status.steps:
            raise PipelineError(
                f"run {self.name} has no step {name!r} (steps: {', '.join(status.steps)})"
            )
        return status.steps[name]

    def job(self, step: str) -> Any:
        """The `Job` a step of this run started (None for a step that started none)."""
        from kfnb.api import attach

        state = self.step(step)
        if self.cluster is not None:
            raise PipelineError(
                f"step {step} runs in the cluster's Workflow {self.name}: its logs are in the "
                f"Argo UI, or `kubectl logs -l workflows.argoproj.io/workflow={self.name}`"
            )
        return attach(state.job) if state.job and self._has_job(step) else None

    def _has_job(self, step: str) -> bool:
        spec = json.loads((self.dir / "run.json").read_text())
        return bool(spec["steps"][step]["kind"] != "serve")

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> RunStatus:
        """Block until the run ends; `PipelineFailed` with the failing step's traceback."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        while not status.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pipeline run {self.name} is still {status.phase}")
            time.sleep(poll)
            status = self.status()
        if status.phase != "Succeeded":
            raise PipelineFailed(status)
        return status

    def stop(self, timeout: float = 15.0) -> RunStatus:
        """Stop the runner, which stops the steps' running jobs."""
        status = self.status()
        where = self.cluster
        if where is not None:
            from kfnb.pipelines.cluster import delete_workflow

            delete_workflow(self.name, where["namespace"])
            return status
        if not status.done:
            pid = int((self.dir / "runner.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not status.done and time.monotonic() < deadline:
                time.sleep(0.1)
                status = self.status()
        return status

    def delete(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def summary(self) -> str:
        status = self.status()
        steps = ", ".join(f"{n} {s.phase}" for n, s in status.steps.items())
        return f"Pipeline run {self.name} ({status.backend}): {status.phase} [{steps}]"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())


def list_runs() -> list[RunStatus]:
    root = runs_dir()
    found = []
    for path in root.glob("*/status.json") if root.is_dir() else []:
        try:
            found.append(PipelineRun(path.parent.name).status())
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return sorted(found, key=lambda s: s.started or 0)


def start_run(
    pipeline: str,
    overrides: Iterable[str] = (),
    parallelism: int | None = None,
    backend: str = "local",
    service_account: str | None = None,
) -> PipelineRun:
    """Start a run of ``pipeline`` and return its handle: locally a detached runner, on
    ``backend="kubernetes"`` an Argo Workflow (``service_account`` runs its pods)."""
    from kfnb.config import settings
    from kfnb.spec import generate_name

    steps = load_steps(pipeline)
    deps = graph(steps)
    values = parse_overrides(overrides, steps)
    if parallelism is not None and parallelism < 1:
        raise PipelineError(f"--parallelism {parallelism}: use 1 or more")
    if backend == "kubernetes":
        while (runs_dir() / (name := generate_name(pipeline))).exists():
            pass
        return _start_on_cluster(pipeline, name, overrides, parallelism, service_account)
    private_dir(runs_dir())
    while True:  # the run's directory is its name, taken by creating it
        run_dir = runs_dir() / (name := generate_name(pipeline))
        try:
            run_dir.mkdir(PRIVATE_DIR)
            break
        except FileExistsError:
            continue
    for step in steps:
        write_atomic(run_dir / f"{step}.names.pkl", names_path(pipeline, step).read_bytes())
    dep_lists = {n: list(d) for n, d in deps.items()}
    spec: dict[str, Any] = {
        "name": name,
        "pipeline": pipeline,
        "steps": {n: s.to_json() for n, s in steps.items()},
        "deps": dep_lists,
        "overrides": values,
        "parallelism": parallelism,
        "backend": backend,
    }
    write_json(run_dir / "run.json", spec)
    status = RunStatus(
        name, pipeline, backend, parameters={**parameters(steps), **values},
        steps={n: StepState() for n in steps}, deps=dep_lists,
    )  # fmt: skip
    write_json(run_dir / "status.json", status.to_json())
    config = settings()
    env = {**os.environ, "KFNB_BACKEND": backend, "KFNB_LOG_LEVEL": config.log_level}
    env.update({var: str(getattr(config, key)) for key, var in _SETTINGS_ENV.items()
                if getattr(config, key)})  # fmt: skip
    env["KFNB_INSTALL_PACKAGES"] = "1" if config.install_packages else "0"
    with open_private(run_dir / "runner.log") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", RUNNER_MODULE, str(run_dir)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the kernel, and Ctrl-C in it
            umask=PRIVATE_UMASK,
        )
    _children.append(process)
    write_atomic(run_dir / "runner.pid", str(process.pid))
    return PipelineRun(name)


_children: list[subprocess.Popen[bytes]] = []  # reaped by Python, never waited on here


def _start_on_cluster(
    pipeline: str,
    name: str,
    overrides: Iterable[str],
    parallelism: int | None,
    service_account: str | None,
) -> PipelineRun:
    from kfnb.pipelines.argo import render_workflow
    from kfnb.pipelines.cluster import submit_workflow

    workflow = render_workflow(pipeline, overrides, service_account=service_account,
                               parallelism=parallelism)  # fmt: skip
    steps = load_steps(pipeline)
    created = submit_workflow(workflow, name, service_account)
    namespace = created["metadata"]["namespace"]
    run_dir = runs_dir() / name
    private_dir(run_dir)
    write_json(run_dir / "cluster.json", {"namespace": namespace, "workflow": name})
    values = {
        p["name"]: p["value"] for p in workflow["spec"].get("arguments", {}).get("parameters", [])
    }
    status = RunStatus(
        name, pipeline, "kubernetes", parameters={k: json.loads(v) for k, v in values.items()},
        steps={n: StepState() for n in steps}, deps={n: list(d) for n, d in graph(steps).items()},
    )  # fmt: skip
    write_json(run_dir / "status.json", status.to_json())
    return PipelineRun(name)
