"""Pipelines from cells: the ``--step`` flags of ``%%tfjob``/``%%step``/``%serve`` and
``%kfnb pipeline list | show P | run P | status RUN | logs RUN STEP | delete RUN``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from kfnb.magics._common import table

F = TypeVar("F", bound=Callable[..., Any])


def with_step_flags(func: F) -> F:
    """``--step NAME [--pipeline P] [--after STEP…] [--when EXPR] [--retry N] [--record-only]``."""
    decorators = [
        argument("--step", metavar="NAME", help="record this cell as step NAME of a pipeline"),
        argument("--pipeline", metavar="P", help="the step's pipeline (default: pipeline)"),
        argument(
            "--after",
            nargs="+",
            action="extend",
            default=[],
            metavar="STEP",
            help="steps this one runs after",
        ),  # fmt: skip
        argument("--when", metavar="EXPR", help="run only if EXPR holds, e.g. 'eval.acc >= 0.9'"),
        argument("--retry", type=int, default=0, help="retries of a failed step in a run"),
        argument("--record-only", action="store_true", help="record the step, do not run it now"),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@contextmanager
def pipeline_errors() -> Any:
    from kfnb.pipelines.steps import PipelineError
    from kfnb.pipelines.when import WhenError

    try:
        yield
    except (PipelineError, WhenError) as err:
        raise UsageError(str(err)) from None


def record_cell(args: Any, kind: str, source: str, options: Mapping[str, Any], shell: Any) -> Any:
    """Record the cell as ``args.step`` (the `Step`), its JSON options and read names."""
    from kfnb.pipelines.steps import (
        DEFAULT_PIPELINE,
        Step,
        capture_names,
        record_step,
        written_outputs,
    )

    if args.retry < 0:
        raise UsageError(f"--retry {args.retry}: use 0 or more")
    # A job's --name is the run's to choose; a served model's name is the step's.
    dropped = ("names", "hidden") + (("name",) if kind != "serve" else ())
    saved = {k: v for k, v in options.items() if k not in dropped}
    if "env" in saved:  # %%tfjob and %%step pass env; %serve does not
        saved["env"] = [list(pair) for pair in saved["env"]]
    if "cwd" in saved:
        saved["cwd"] = str(saved["cwd"])
    saved = json.loads(json.dumps(saved, default=list))
    names = capture_names(source, shell.user_ns, shell.user_ns_hidden) if kind != "serve" else {}
    step = Step(
        pipeline=args.pipeline or DEFAULT_PIPELINE,
        name=args.step,
        kind=kind,
        source=source,
        options=saved,
        after=tuple(args.after),
        when=_unquoted(args.when or ""),
        retry=args.retry,
        outputs=written_outputs(source) if kind != "serve" else ("url", "version"),
    )
    with pipeline_errors():
        return record_step(step, names)


def _unquoted(text: str) -> str:
    """IPython's argument split keeps the quotes around ``--when "a.b > 1"``."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def inputs_now(step: Any) -> list[tuple[str, str]]:
    """``KFNB_INPUTS`` for running a step cell now: its dependencies' latest runs."""
    from kfnb.pipelines.inputs import step_input
    from kfnb.pipelines.steps import load_steps

    steps = load_steps(step.pipeline)
    found = {}
    for dep in step.dependencies(steps):
        if dep in steps and steps[dep].last_job and steps[dep].kind != "serve":
            try:
                found[dep] = step_input(steps[dep].last_job)
            except Exception:  # a job deleted since: no inputs from it
                continue
    return [("KFNB_INPUTS", json.dumps(found))] if found else []


def said_recorded(step: Any) -> str:
    after = f" after {', '.join(step.after)}" if step.after else ""
    when = f" when {step.when}" if step.when else ""
    said = f"Step {step.name} recorded in pipeline {step.pipeline}{after}{when}."
    if step.renamed_from:
        said += (f" It was step {step.renamed_from} (the same cell): steps that ran after "
                 f"{step.renamed_from} need --after {step.name} now.")  # fmt: skip
    return said


class PipelineCommands:
    """``%kfnb pipeline …``: one method per sub-command."""

    def __call__(self, rest: str) -> Any:
        command, _, more = rest.strip().partition(" ")
        handlers: dict[str, Callable[[str], Any]] = {
            "list": self.list,
            "show": self.show,
            "run": self.run,
            "status": self.status,
            "attach": self.attach,
            "logs": self.logs,
            "delete": self.delete,
            "export": self.export,
        }
        if command not in handlers:
            raise UsageError(f"%kfnb pipeline needs one of: {', '.join(handlers)}")
        with pipeline_errors():
            return handlers[command](more)

    def list(self, rest: str) -> None:
        from kfnb.pipelines.run import list_runs
        from kfnb.pipelines.steps import list_pipelines, load_steps

        pipelines = [(p, ", ".join(load_steps(p))) for p in list_pipelines()]
        if not pipelines:
            print("No pipelines yet: record steps with %%step NAME or --step NAME.")
            return
        print(table(("PIPELINE", "STEPS"), pipelines))
        runs = [
            (r.name, r.pipeline, r.backend, r.phase, _duration(r.started, r.finished))
            for r in list_runs()
        ]
        if runs:
            print()
            print(table(("RUN", "PIPELINE", "BACKEND", "PHASE", "DURATION"), runs))

    def show(self, rest: str) -> None:
        from kfnb.pipelines.steps import graph, load_steps, parameters

        steps = load_steps(rest.strip())
        deps = graph(steps)
        rows = [
            (n, s.kind, ",".join(deps[n]) or "-", s.when or "-", ",".join(s.outputs) or "-")
            for n, s in steps.items()
        ]
        print(table(("STEP", "KIND", "AFTER", "WHEN", "OUTPUTS"), rows))
        params = parameters(steps)
        if params:
            print("parameters: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))

    @magic_arguments()
    @argument("pipeline")
    @argument("-p", dest="params", nargs=1, action="extend", default=[], metavar="NAME=VALUE")
    @argument("--parallelism", type=int, help="steps running at once (default: no limit)")
    @argument("--backend", choices=("local", "kubernetes"), default="local", help="where to run")
    @argument("--service-account", help="on Kubernetes: the Workflow's service account")
    @argument("--wait", action="store_true", help="block until the run ends")
    def _run_args(self, line: str) -> None:
        """%kfnb pipeline run P [-p NAME=VALUE …] [--parallelism N] [--wait]"""

    def run(self, rest: str) -> Any:
        from kfnb.magics._common import usage_errors
        from kfnb.pipelines.run import start_run

        args = parse_argstring(self._run_args, rest)
        with usage_errors():
            run = start_run(args.pipeline, args.params, args.parallelism, args.backend,
                            args.service_account)  # fmt: skip
        print(f"Pipeline run {run.name} started ({args.backend}): "
              f"`%kfnb pipeline status {run.name}`")  # fmt: skip
        if args.wait:
            try:
                _show(run, wait=True)
            except KeyboardInterrupt:
                print(f"(stopped waiting; the run goes on: `%kfnb pipeline delete {run.name}` "
                      "stops it)")  # fmt: skip
        return run

    @magic_arguments()
    @argument("pipeline")
    @argument("-o", dest="output", metavar="FILE", help="write the YAML there (default: print)")
    @argument("-p", dest="params", nargs=1, action="extend", default=[], metavar="NAME=VALUE")
    @argument("--schedule", metavar="CRON", help="a CronWorkflow on this cron line")
    @argument("--namespace", help="the Workflow's namespace (default: Kfnb.namespace)")
    @argument("--storage", help="the steps' store, s3:// or pvc:// (default: Kfnb.storage)")
    @argument("--service-account", help="the Workflow's service account")
    @argument("--parallelism", type=int, help="steps running at once")
    def _export_args(self, line: str) -> None:
        """%kfnb pipeline export P [-o FILE] [--schedule CRON] [-p NAME=VALUE …]"""

    def export(self, rest: str) -> None:
        """The Argo Workflow (or CronWorkflow) `argo submit` or `kubectl create` takes."""
        from kfnb.magics._common import usage_errors
        from kfnb.pipelines.argo import render_workflow
        from kfnb.spec import to_yaml

        args = parse_argstring(self._export_args, rest)
        with usage_errors():
            workflow = render_workflow(
                args.pipeline, args.params, namespace=args.namespace, storage=args.storage,
                service_account=args.service_account, parallelism=args.parallelism,
                schedule=args.schedule.strip("'\"") if args.schedule else None,
            )  # fmt: skip
        text = to_yaml(workflow)
        if args.output:
            from pathlib import Path

            Path(args.output).write_text(text)
            print(f"{workflow['kind']} of pipeline {args.pipeline} written to {args.output}.")
        else:
            print(text, end="")

    def _run(self, rest: str) -> Any:
        from kfnb.pipelines.run import PipelineRun

        words = shlex.split(rest)
        if len(words) != 1:
            raise UsageError("name one pipeline run: `%kfnb pipeline list` shows them")
        return PipelineRun.attach(words[0])

    def status(self, rest: str) -> None:
        run = self._run(rest)
        status = run.status()
        print(f"Pipeline run {run.name} ({status.pipeline}, {status.backend}): {status.phase} "
              f"{_duration(status.started, status.finished)}")  # fmt: skip
        rows = [
            (n, s.phase, _duration(s.started, s.finished), s.job or "-", (s.message or "")[:60])
            for n, s in status.steps.items()
        ]
        print(table(("STEP", "PHASE", "DURATION", "JOB", "MESSAGE"), rows))
        if status.message:
            print(status.message)

    def attach(self, rest: str) -> Any:
        return self._run(rest)

    def logs(self, rest: str) -> None:
        words = shlex.split(rest)
        if len(words) != 2:
            raise UsageError("%kfnb pipeline logs RUN STEP")
        run = self._run(words[0])
        job = run.job(words[1])
        if job is None:
            state = run.step(words[1])
            raise UsageError(f"step {words[1]} of run {run.name} ran no job ({state.phase})")
        print(job.logs(), end="")

    def delete(self, rest: str) -> None:
        run = self._run(rest)
        run.delete()
        print(f"Pipeline run {run.name} stopped and deleted; its steps' jobs stay "
              "(`%kfnb list`).")  # fmt: skip


def _duration(started: float | None, finished: float | None) -> str:
    import time

    if started is None:
        return ""
    return f"{(finished or time.time()) - started:.0f}s"


def _show(run: Any, wait: bool) -> None:
    """Block until the run ends, under its live view (or, with no widgets, printing each
    step's phase change); raise PipelineFailed."""
    import time

    from kfnb.widgets import _display_run, widgets_available

    if widgets_available():
        _display_run(run)
        run.wait()
        return

    seen: dict[str, str] = {}
    while True:
        status = run.status()
        for name, state in status.steps.items():
            if seen.get(name) != state.phase:
                seen[name] = state.phase
                print(f"  {name}: {state.phase}", flush=True)
        if status.done:
            break
        time.sleep(0.2)
    run.wait()
