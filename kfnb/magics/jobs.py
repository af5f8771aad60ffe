"""``%%tfjob`` and ``%kfnb``: jobs from cells, over `kfnb.api`.

Flags become `kfnb.submit` arguments; every user mistake becomes a one-line
`UsageError` that names the flag to change.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from kfnb.magics._common import pod_flags, pod_options, table, usage_errors
from kfnb.magics.pipelines import PipelineCommands, with_step_flags

F = TypeVar("F", bound=Callable[..., Any])


def _env_pairs(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def _sweep_flags() -> list[Callable[[F], F]]:
    """A hyperparameter sweep of the cell: Katib's Experiment fields as flags."""
    return [
        argument(
            "--sweep",
            action="append",
            default=[],
            metavar="NAME=SPACE",
            help="a parameter to search, seen as tfjob.params[NAME]: uniform(a, b), "
            "loguniform(a, b), int(a, b), choice(v, ...) or grid(v, ...)",
        ),
        argument("--trials", type=int, help="trials in all (maxTrialCount; default 10)"),
        argument("--parallel", type=int, help="trials at once (parallelTrialCount; default 1)"),
        argument("--max-failed", type=int, help="failed trials before the sweep fails"),
        argument("--objective", metavar="'maximize|minimize METRIC'", help="what to optimise"),
        argument("--goal", type=float, help="stop once a trial's objective reaches this"),
        argument("--algorithm", help="random, grid, tpe, multivariate-tpe, ... (Katib's names)"),
        argument("--early-stopping", metavar="ALGORITHM", help="medianstop"),
    ]


_SWEEP_ONLY = ("trials", "parallel", "max_failed", "objective", "goal", "algorithm",
               "early_stopping")  # fmt: skip


def _unquoted(text: str) -> str:
    """IPython's argument splitter keeps the quotes: "x=uniform(0, 1)" as typed."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _sweep_spec(args: Any) -> Any:
    """The sweep the flags ask for, or None; a sweep flag without --sweep is an error."""
    if not args.sweep:
        given = [f"--{k.replace('_', '-')}" for k in _SWEEP_ONLY if getattr(args, k) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to a sweep: add --sweep NAME=SPACE")
        return None
    from kfnb.sweeps.space import SweepSpec

    return SweepSpec.build(
        [_unquoted(text) for text in args.sweep],
        _unquoted(args.objective) if args.objective else args.objective,
        algorithm=args.algorithm,
        trials=args.trials,
        parallel=args.parallel,
        max_failed=args.max_failed,
        goal=args.goal,
        early_stopping=args.early_stopping,
    )


def _job_flags(func: F) -> F:
    decorators: list[Callable[[F], F]] = [
        magic_arguments(),
        argument("--name", help="job name, a DNS-1035 label (default: a fresh tfjob-xxxxxx)"),
        argument("--workers", type=int, default=1, help="worker replicas (default 1)"),
        argument("--ps", type=int, default=0, help="parameter server replicas"),
        argument("--chief", type=int, default=0, choices=(0, 1), help="add a chief replica"),
        argument("--evaluator", type=int, default=0, choices=(0, 1), help="add an evaluator"),
        argument("--gpus", type=int, default=0, help="GPUs per worker and chief"),
        argument("--cpu", help="CPU per replica, a Kubernetes quantity (2, 500m)"),
        argument("--memory", help="memory per replica, a Kubernetes quantity (4Gi)"),
        argument("--image", help="container image (default: TensorFlow matching the kernel)"),
        argument(
            "--backend",
            choices=("auto", "local", "kubernetes"),
            default=None,
            help="where to run (default: %%config Kfnb.backend)",
        ),
        argument(
            "--storage",
            help="where the job's artifacts go: a directory or s3://bucket/prefix "
            "(default: %%config Kfnb.storage)",
        ),
        argument("--namespace", help="Kubernetes namespace (default: %%config Kfnb.namespace)"),
        argument("--wait", action="store_true", help="block until the job ends"),
        argument(
            "--include",
            nargs="+",
            action="extend",
            default=[],
            metavar="PATH",
            help="files or directories to ship with the cell",
        ),
        argument(
            "--env",
            nargs="+",
            action="extend",
            default=[],
            metavar="KEY=VALUE",
            help="environment variables of every replica",
        ),
        argument(
            "--restart-policy",
            default="Never",
            choices=("Never", "OnFailure", "Always", "ExitCode"),
            help="what to do when a replica fails (default Never)",
        ),
        argument("--backoff-limit", type=int, help="restarts allowed before the job fails"),
        argument(
            "--timeout", type=int, help="seconds before the job fails (activeDeadlineSeconds)"
        ),
        *pod_flags(),
        argument(
            "--pip",
            nargs="+",
            action="extend",
            default=[],
            metavar="SPEC",
            help="packages to install in every replica, as pip takes them (name==1.2)",
        ),
        argument("--requirements", metavar="FILE", help="a requirements file for every replica"),
        argument(
            "--wheelhouse",
            metavar="URL",
            help="where replicas take wheels from: auto, off (the package index) or a "
            "directory or s3:// prefix (default: %%config Kfnb.wheelhouse)",
        ),
        argument(
            "--dry-run",
            action="store_true",
            help="print the TFJob manifest and the packages each replica gets, submit nothing",
        ),
        *_sweep_flags(),
    ]
    func = with_step_flags(func)  # listed last in --help
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@magics_class
class JobMagics(Magics):  # type: ignore[misc]
    @_job_flags
    @cell_magic
    def tfjob(self, line: str, cell: str) -> Any:
        """Run this cell as a distributed TensorFlow job (a Kubeflow TFJob).

        The cell runs in every replica, with ``tfjob`` telling it its role
        (``tfjob.task_type``, ``tfjob.is_chief``) and where to write
        (``tfjob.model_dir``, ``tfjob.logdir``, ``tfjob.tensorboard()``).
        Returns a `Job` at once; ``--wait`` blocks and raises `JobFailed`.
        ``--step NAME`` also records the cell as a step of a pipeline.
        """
        args = parse_argstring(self.tfjob, line)  # type: ignore[misc]
        return self._run_cell(args, cell, "tfjob")

    @cell_magic
    def step(self, line: str, cell: str) -> Any:
        """%%step NAME [--pipeline P] [--after STEP…] [--when EXPR] [%%tfjob's flags]:
        record the cell as a step of a pipeline that runs as one non-distributed replica
        (the same runtime as %%tfjob), and run it now unless ``--record-only``."""
        name, _, rest = line.strip().partition(" ")
        if not name or name.startswith("-"):
            raise UsageError("%%step needs the step's name first: %%step NAME [--after STEP]")
        args = parse_argstring(self.tfjob, f"--step {name} {rest}")  # type: ignore[misc]
        if (args.workers, args.ps, args.chief, args.evaluator) != (1, 0, 0, 0):
            raise UsageError(
                "%%step runs one replica: use %%tfjob --step for --workers, --ps, --chief"
            )
        return self._run_cell(args, cell, "step")

    def _run_cell(self, args: Any, cell: str, kind: str) -> Any:
        from kfnb.api import prepare, submit
        from kfnb.spec import to_yaml
        from kfnb.widgets import show_job

        shell = self.shell
        assert shell is not None, "kfnb's magics need an IPython shell"
        if not cell.strip():
            raise UsageError("the %%tfjob cell is empty: write the training code below the magic")
        options: dict[str, Any] = {
            "name": args.name,
            "workers": args.workers,
            "ps": args.ps,
            "chief": args.chief,
            "evaluator": args.evaluator,
            "gpus": args.gpus,
            "cpu": args.cpu,
            "memory": args.memory,
            "image": args.image,
            "env": _env_pairs(args.env),
            "restart_policy": args.restart_policy,
            "backoff_limit": args.backoff_limit,
            "timeout": args.timeout,
            "backend": args.backend,
            "storage": args.storage or None,
            "namespace": args.namespace or None,
            "include": args.include,
            "names": shell.user_ns,
            "hidden": shell.user_ns_hidden,
            "cwd": Path.cwd(),
            "pip": args.pip,
            "requirements": args.requirements,
            "wheelhouse": args.wheelhouse,
            **pod_options(args),
        }
        step = None
        if args.step and args.sweep:
            raise UsageError("--sweep does not go with --step: a sweep is not a pipeline step yet")
        if args.step:
            from kfnb.magics.pipelines import inputs_now, record_cell, said_recorded

            step = record_cell(args, kind, cell, options, shell)
            print(said_recorded(step))
            if args.record_only:
                return None
            options["env"] = (*options["env"], *inputs_now(step))
        elif args.record_only or args.after or args.when or args.pipeline:
            raise UsageError("--pipeline, --after, --when and --record-only go with --step NAME")
        with usage_errors():
            sweep = _sweep_spec(args)
            if sweep is not None:
                return self._sweep(cell, sweep, options, args)
            if args.dry_run:
                prepared = prepare(cell, **options)
                print(to_yaml(prepared.manifest), end="")
                if prepared.packages is not None:
                    print(prepared.packages.describe(), end="")
                return None
            job = submit(cell, **options)
        if step is not None:
            from kfnb.pipelines.steps import set_last_job

            set_last_job(step.pipeline, step.name, job.name)
        show_job(job, wait=args.wait)
        return job

    def _sweep(self, cell: str, sweep: Any, options: dict[str, Any], args: Any) -> Any:
        from kfnb.sweeps import start_sweep
        from kfnb.widgets import show_sweep

        if args.dry_run:
            from kfnb.spec import to_yaml
            from kfnb.sweeps.katib import render_experiment

            print(to_yaml(render_experiment(cell, sweep, **options)), end="")
            return None
        handle = start_sweep(cell, sweep, **options)
        show_sweep(handle, wait=args.wait)
        return handle

    @line_magic
    def kfnb(self, line: str) -> Any:
        """Manage jobs: %kfnb list | status NAME | logs NAME [--replica R] [--follow]
        | delete NAME [--purge] | attach NAME | tensorboard NAME | nodes
        | check [--backend B] [--namespace NS] [--storage URL]
        | pipeline list | show P | run P [-p NAME=VALUE] [--wait] | status RUN | attach RUN
        | logs RUN STEP | delete RUN
        | sweeps | sweep status|attach|delete NAME [--purge] | compare JOB..."""
        command, _, rest = line.strip().partition(" ")
        handlers: dict[str, Callable[[str], Any]] = {
            "list": self._list,
            "status": self._status,
            "logs": self._logs,
            "delete": self._delete,
            "attach": self._attach,
            "tensorboard": self._tensorboard,
            "nodes": self._nodes,
            "check": self._check,
            "pipeline": PipelineCommands(),
            "sweeps": self._sweeps,
            "sweep": self._sweep_command,
            "compare": self._compare,
        }
        if command not in handlers:
            raise UsageError(
                f"unknown %kfnb command {command!r}: use one of {', '.join(handlers)}"
                if command
                else f"%kfnb needs a command: {', '.join(handlers)}"
            )
        with usage_errors():
            return handlers[command](rest)

    def _list(self, rest: str) -> None:
        from kfnb.job import Job
        from kfnb.records import list_records

        if rest.strip():
            raise UsageError("%kfnb list takes no arguments")
        rows: list[tuple[str, ...]] = []
        for record in list_records():
            try:
                status = Job.from_record(record).status()
            except Exception as err:  # one broken record must not hide the others
                rows.append((record.name, record.backend, f"unknown ({err})"[:40], "", ""))
                continue
            elapsed = f"{status.elapsed:.0f}s" if status.elapsed is not None else ""
            replicas = ",".join(f"{k.lower()}:{n}" for k, n in record.replicas.items())
            rows.append((record.name, record.backend, status.phase, elapsed, replicas))
        if not rows:
            print("No jobs yet: run a cell with %%tfjob.")
            return
        print(table(("NAME", "BACKEND", "PHASE", "ELAPSED", "REPLICAS"), rows))

    @magic_arguments()
    @argument("name")
    def _name_only(self, line: str) -> None:
        """%kfnb status|attach NAME"""

    @magic_arguments()
    @argument("name")
    @argument("--replica", help="replica to show, e.g. worker-1 (default: the chief or worker-0)")
    @argument("--follow", action="store_true", help="keep printing new lines until the job ends")
    def _logs_args(self, line: str) -> None:
        """%kfnb logs NAME [--replica R] [--follow]"""

    @magic_arguments()
    @argument("name")
    @argument("--purge", action="store_true", help="also remove its logs, record and artifacts")
    def _delete_args(self, line: str) -> None:
        """%kfnb delete NAME [--purge]"""

    def _job(self, name: str) -> Any:
        from kfnb.api import attach

        return attach(name)

    def _status(self, rest: str) -> Any:
        job = self._job(parse_argstring(self._name_only, rest).name)
        status = job.status()
        print(job.summary(status))
        if status.message:
            print(status.message)
        return None

    def _attach(self, rest: str) -> Any:
        """The Job handle; a kernel displays it as its live view."""
        return self._job(parse_argstring(self._name_only, rest).name)

    def _logs(self, rest: str) -> None:
        args = parse_argstring(self._logs_args, rest)
        job = self._job(args.name)
        if not args.follow:
            print(job.logs(args.replica), end="")
            return
        try:
            for text in job.logs(args.replica, follow=True):
                print(text, end="", flush=True)
        except KeyboardInterrupt:
            print("\n(stopped following; the job goes on)")

    @magic_arguments()
    @argument("name")
    @argument("--stop", action="store_true", help="stop the job's TensorBoard")
    def _tensorboard_args(self, line: str) -> None:
        """%kfnb tensorboard NAME [--stop]"""

    def _tensorboard(self, rest: str) -> None:
        from IPython.display import display

        from kfnb.tensorboard import start_tensorboard, stop_tensorboard

        args = parse_argstring(self._tensorboard_args, rest)
        job = self._job(args.name)
        source = job.tensorboard_source()
        if source is None:
            raise UsageError(f"job {args.name} keeps no TensorBoard events on this machine")
        logdir, refresh = source
        if args.stop:
            stopped = stop_tensorboard(logdir)
            print(f"TensorBoard of {args.name} {'stopped' if stopped else 'was not running'}.")
            return
        server = start_tensorboard(logdir, refresh=refresh)
        text = f"TensorBoard of {args.name}: {server.url}"
        url, name = html.escape(server.url), html.escape(args.name)
        link = f'<a href="{url}" target="_blank">TensorBoard of {name}</a>'
        display({"text/plain": text, "text/html": link}, raw=True)

    def _nodes(self, rest: str) -> None:
        """GPUs per node on the cluster, like `arena top node`."""
        from kfnb.backends import get_backend
        from kfnb.backends.kube_nodes import CLUSTER_PODS_GRANT, gpu_nodes

        if rest.strip():
            raise UsageError("%kfnb nodes takes no arguments")
        report = gpu_nodes(get_backend("kubernetes").api)  # type: ignore[attr-defined]
        ns = report.namespace
        allocated = f"GPU(Allocated in {ns})" if ns else "GPU(Allocated)"
        header = ("NAME", "IPADDRESS", "ROLE", "GPU(Total)", allocated)
        cells = [
            (r.name, r.address, r.role, str(r.allocatable), str(r.allocated)) for r in report.nodes
        ]
        print(table(header, cells))
        total, used = report.total, report.allocated
        if ns:  # only this namespace's pods could be read: say so, not a cluster figure
            print(
                f"Allocated to {ns}'s pods/Total GPUs in cluster: {used}/{total}; other "
                "namespaces' pods are not counted: this account may not list pods cluster-wide "
                f"({CLUSTER_PODS_GRANT} grants it, and with it every pod spec of every namespace)"
            )
            return
        share = f" ({100 * used / total:.0f}%)" if total else ""
        print(f"Allocated/Total GPUs in cluster: {used}/{total}{share}")

    @magic_arguments()
    @argument("--backend", choices=("auto", "local", "kubernetes"), help="default: Kfnb.backend")
    @argument("--namespace", help="Kubernetes namespace (default: Kfnb.namespace)")
    @argument("--storage", help="the store to check (default: Kfnb.storage)")
    def _check_args(self, line: str) -> None:
        """%kfnb check [--backend B] [--namespace NS] [--storage URL]"""

    def _check(self, rest: str) -> None:
        """What a first job needs, one row each, with the fix under each problem."""
        from kfnb.checks import check

        args = parse_argstring(self._check_args, rest)
        results = check(args.backend, args.namespace, args.storage)
        rows: list[tuple[str, ...]] = []
        for result in results:
            rows.append((result.what, result.status, result.detail))
            if result.fix:
                rows.append(("", "", f"fix: {result.fix}"))
        print(table(("CHECK", "STATUS", "DETAIL"), rows))
        failed = sum(r.status == "fail" for r in results)
        warned = sum(r.status == "warn" for r in results)
        if failed:
            print(f"{failed} problem(s) stop jobs here, {warned} warning(s): see each fix.")
        else:
            print(f"Nothing stops a first job here; {warned} warning(s).")

    def _delete(self, rest: str) -> None:
        from kfnb.records import delete_record

        args = parse_argstring(self._delete_args, rest)
        job = self._job(args.name)
        status = job.backend.delete(args.name, purge=args.purge)
        if args.purge:
            delete_record(args.name)
            print(f"Job {args.name} deleted, with its logs and artifacts.")
        else:
            print(
                f"Job {args.name} is {status.phase}; its logs are kept (`%kfnb logs {args.name}`)."
            )

    def _sweeps(self, rest: str) -> None:
        from kfnb.sweeps import Sweep
        from kfnb.sweeps.record import list_sweeps

        if rest.strip():
            raise UsageError("%kfnb sweeps takes no arguments")
        rows: list[tuple[str, ...]] = []
        for record in list_sweeps():
            sweep = Sweep(record)
            try:
                status = sweep.status()
            except Exception as err:  # one broken sweep must not hide the others
                rows.append((record.name, record.backend, f"unknown ({err})"[:40], "", "", ""))
                continue
            best = sweep.best_of(status)
            rows.append(
                (
                    record.name,
                    record.backend,
                    status.phase,
                    f"{status.count('Succeeded')}/{sweep.spec.trials}",
                    sweep.spec.objective.describe(),
                    f"{best.objective:.4g} ({best.name})"
                    if best and best.objective is not None
                    else "",
                )
            )
        if not rows:
            print("No sweeps yet: run a %%tfjob cell with --sweep NAME=SPACE.")
            return
        print(table(("NAME", "BACKEND", "PHASE", "TRIALS", "OBJECTIVE", "BEST"), rows))

    @magic_arguments()
    @argument("action", choices=("status", "attach", "delete"))
    @argument("name")
    @argument("--purge", action="store_true", help="delete: also remove its trials' jobs")
    def _sweep_args(self, line: str) -> None:
        """%kfnb sweep status|attach|delete NAME [--purge]"""

    def _sweep_command(self, rest: str) -> Any:
        from kfnb.sweeps import Sweep

        args = parse_argstring(self._sweep_args, rest)
        sweep = Sweep.attach(args.name)
        if args.action == "attach":
            return sweep
        if args.action == "delete":
            status = sweep.delete(purge=args.purge)
            kept = (
                ""
                if args.purge
                else "; Katib deletes its Trials with it"
                if sweep.record.backend == "kubernetes"
                else f"; its trials' jobs are kept (`%kfnb sweep status {args.name}`)"
            )
            print(f"Sweep {args.name} is {status.phase}{kept}.")
            return None
        status = sweep.status()
        print(sweep.summary(status))
        if status.message:
            print(status.message)
        rows = [
            (
                t.name,
                t.state,
                ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in t.params.items()
                ),
                "" if t.objective is None else f"{t.objective:.4g}",
                "" if t.duration is None else f"{t.duration:.0f}s",
            )
            for t in status.trials
        ]
        if rows:
            print(table(("TRIAL", "STATE", "PARAMETERS", "OBJECTIVE", "DURATION"), rows))
        return None

    def _compare(self, rest: str) -> Any:
        from kfnb.widgets.compare import compare

        names = rest.split()
        if not names:
            raise UsageError("%kfnb compare needs job or sweep names: %kfnb compare JOB JOB ...")
        return compare(*names)
