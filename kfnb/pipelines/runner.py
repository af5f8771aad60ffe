"""The local pipeline runner: a run's steps as local jobs, with Argo's DAG semantics.

Started as ``python -m kfnb.pipelines.runner RUN_DIR`` in a session of its own (as the
job supervisor is), so a run goes on through a kernel restart. It copies what Argo's
controller does with a ``dag`` template:

- a step starts when all its dependencies have ended, at most ``parallelism`` at once;
- ``when`` is evaluated on the dependencies' outputs: false, the step is Skipped; a
  step all of whose dependencies were skipped is Skipped too (Argo: Omitted);
- ``retry`` N runs a failed step again up to N times (``retryStrategy.limit``);
- a step that fails for good fails the run (failFast): no further step starts, those
  running finish, and the run's message names the step.

The run's state is ``status.json`` in RUN_DIR, rewritten atomically on every change.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kfnb._util import first_line, write_json
from kfnb.pipelines.run_status import FINISHED, RunStatus
from kfnb.pipelines.steps import Step, load_names
from kfnb.pipelines.when import WhenError, parse_when

POLL_SECONDS = 0.1
log = logging.getLogger("kfnb.pipelines.runner")


class Runner:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        spec = json.loads((run_dir / "run.json").read_text())
        self.run = spec["name"]
        self.steps = {n: Step.from_json(d) for n, d in spec["steps"].items()}
        self.deps: dict[str, list[str]] = spec["deps"]
        self.overrides: dict[str, Any] = spec["overrides"]
        self.parallelism: int = spec["parallelism"] or len(self.steps)
        self.backend: str = spec["backend"]
        self.status = RunStatus.read(run_dir / "status.json")
        self.serving: dict[str, Future[Any]] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kfnb-serve")
        self.stopping = False

    def save(self) -> None:
        write_json(self.dir / "status.json", self.status.to_json())

    def set(self, step: str, **changes: Any) -> None:
        self.status = self.status.with_step(step, **changes)
        self.save()

    # -- the loop ---------------------------------------------------------------

    def loop(self) -> None:
        self.status = self.status.with_run(phase="Running", started=time.time())
        self.save()
        while True:
            self.poll_running()
            if self.stopping:
                self.stop_running()
                self.finish("Failed", "the run was stopped")
                return
            failed = [n for n, s in self.status.steps.items() if s.phase in ("Failed", "Error")]
            if not failed:
                self.start_ready()
            running = [n for n, s in self.status.steps.items() if s.phase == "Running"]
            if not running:
                if failed:
                    step = self.status.steps[failed[0]]
                    for name, state in self.status.steps.items():
                        if state.phase == "Pending":
                            self.set(name, phase="Omitted", message=f"{failed[0]} failed")
                    self.finish("Failed", f"step {failed[0]} failed: {step.message}")
                    return
                if all(s.phase in FINISHED for s in self.status.steps.values()):
                    self.finish("Succeeded", "")
                    return
            time.sleep(POLL_SECONDS)

    def finish(self, phase: str, message: str) -> None:
        self.status = self.status.with_run(phase=phase, finished=time.time(), message=message)
        self.save()
        self.pool.shutdown(wait=False)

    def start_ready(self) -> None:
        for name, state in self.status.steps.items():
            if state.phase != "Pending":
                continue
            deps = [self.status.steps[d] for d in self.deps[name]]
            if any(d.phase not in FINISHED for d in deps):
                continue
            if deps and all(d.phase in ("Skipped", "Omitted") for d in deps):
                self.set(name, phase="Skipped", message="all its dependencies were skipped")
                continue
            step = self.steps[name]
            if step.when:
                try:
                    outputs = {n: s.outputs for n, s in self.status.steps.items()}
                    if not parse_when(step.when).evaluate(outputs):
                        self.set(name, phase="Skipped", message=f"when '{step.when}' was false")
                        continue
                except WhenError as err:
                    self.set(name, phase="Error", message=str(err), finished=time.time())
                    continue
            if self.running_count() >= self.parallelism:
                return
            self.start(name, attempt=0)

    def running_count(self) -> int:
        return sum(s.phase == "Running" for s in self.status.steps.values())

    def start(self, name: str, attempt: int) -> None:
        step = self.steps[name]
        job = f"{self.run}-{name}" + (f"-r{attempt}" if attempt else "")
        now = time.time()
        self.set(name, phase="Running", job=job, attempt=attempt, message="",
                 started=self.status.steps[name].started or now)  # fmt: skip
        try:
            if step.kind == "serve":
                self.serving[name] = self.pool.submit(self.serve, step)
            else:
                self.submit(step, job)
        except Exception as err:  # a step that cannot start is a failed step
            log.debug("step %s did not start", name, exc_info=True)
            self.failed(name, first_line(err), traceback.format_exc())

    def inputs(self, step: Step) -> dict[str, Any]:
        from kfnb.pipelines.inputs import step_input

        return {
            dep: step_input(self.status.steps[dep].job, self.status.steps[dep].outputs)
            for dep in self.deps[step.name]
            if self.status.steps[dep].phase == "Succeeded" and self.status.steps[dep].job
        }

    def submit(self, step: Step, job: str) -> None:
        from kfnb.api import submit

        names = load_names(self.dir / f"{step.name}.names.pkl")
        names.update({k: v for k, v in self.overrides.items() if k in names})
        options = dict(step.options)
        env = [tuple(pair) for pair in options.pop("env", [])]
        env.append(("KFNB_INPUTS", json.dumps(self.inputs(step))))
        options.pop("backend", None)
        cwd = options.pop("cwd", None)
        submit(step.source, name=job, names=names, hidden=(), env=env, backend=self.backend,
               cwd=Path(cwd) if cwd else None, **options)  # fmt: skip

    def serve(self, step: Step) -> dict[str, Any]:
        from kfnb.api import serve

        source = step.source
        if source in self.status.steps:  # a step's name: the model its job saved in this run
            source = self.status.steps[source].job
        served = serve(source, **step.options)
        return {"url": served.predict_url, "version": served.version}

    def poll_running(self) -> None:
        from kfnb.api import attach

        for name, state in list(self.status.steps.items()):
            if state.phase != "Running":
                continue
            if name in self.serving:
                future = self.serving[name]
                if not future.done():
                    continue
                del self.serving[name]
                error = future.exception()
                if error is None:
                    self.set(name, phase="Succeeded", outputs=future.result(),
                             finished=time.time())  # fmt: skip
                else:
                    text = "".join(traceback.format_exception(error))
                    self.failed(name, first_line(error), text)
                continue
            job = attach(state.job)
            status = job.status()
            if not status.finished:
                continue
            if status.phase == "Succeeded":
                result = job.backend.replica_result(job.name, job.decider) or {}
                self.set(name, phase="Succeeded", outputs=result.get("outputs") or {},
                         finished=time.time())  # fmt: skip
            else:
                failure = job.failure(status)
                text = (failure.traceback if failure is not None else None) or ""
                self.failed(name, str(failure or status.message), text)

    def failed(self, name: str, message: str, text: str) -> None:
        state = self.status.steps[name]
        if state.attempt < self.steps[name].retry and not self.stopping:
            log.debug("step %s failed, retrying: %s", name, message)
            self.start(name, state.attempt + 1)
            return
        self.set(name, phase="Failed", message=message, traceback=text, finished=time.time())

    def stop_running(self) -> None:
        from kfnb.api import attach

        for name, state in self.status.steps.items():
            if state.phase == "Running" and state.job and name not in self.serving:
                try:
                    attach(state.job).delete()
                except Exception:  # stopping what can be stopped
                    log.debug("could not stop %s", state.job, exc_info=True)
                self.set(name, phase="Failed", message="stopped", finished=time.time())


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    logging.basicConfig(level=os.environ.get("KFNB_LOG_LEVEL", "WARNING"))
    runner = Runner(run_dir)

    def stop(signum: int, frame: Any) -> None:
        runner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        runner.loop()
    except Exception:
        runner.finish("Error", f"kfnb's pipeline runner failed: {traceback.format_exc()}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
