"""``%%tfjob`` and ``%kfnb``: argument parsing and display only.

Every user mistake becomes a one-line `UsageError`; the work is done by
`kfnb.spec`, `kfnb.bundle`, the backends and the `Job` handle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

if TYPE_CHECKING:
    from kfnb.spec import JobSpec

F = TypeVar("F", bound=Callable[..., Any])
_announced_backend = False


def _default_image(gpus: int) -> str:
    """The official TensorFlow image matching the kernel's TensorFlow, GPU build if asked."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            tag = version(dist)
            break
        except PackageNotFoundError:
            continue
    else:
        tag = "latest"
    return f"tensorflow/tensorflow:{tag}{'-gpu' if gpus else ''}"


def settings_backend() -> str:
    from kfnb.config import settings

    return str(settings().backend)


def _env_pairs(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return tuple(pairs)


def _job_spec(
    args: Any,
    name: str,
    artifacts: str,
    code_files: tuple[str, ...],
    storage_env: tuple[tuple[str, str], ...] = (),
) -> JobSpec:
    """The `JobSpec` that ``%%tfjob`` flags and the ``Kfnb`` settings describe."""
    from kfnb.config import settings
    from kfnb.spec import JobSpec

    config = settings()
    return JobSpec(
        name=name,
        workers=args.workers,
        ps=args.ps,
        chief=args.chief,
        evaluator=args.evaluator,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        image=args.image or config.image or _default_image(args.gpus),
        env=_env_pairs(args.env),
        restart_policy=args.restart_policy,
        backoff_limit=args.backoff_limit,
        timeout=args.timeout,
        namespace=args.namespace or config.namespace or None,
        legacy_keras=config.legacy_keras,
        artifacts=artifacts,
        code_files=code_files,
        storage_env=storage_env,
    )


def _job_flags(func: F) -> F:
    decorators = [
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
        argument("--dry-run", action="store_true", help="print the TFJob manifest, submit nothing"),
    ]
    for decorate in reversed(decorators):
        func = decorate(func)
    return func


@magics_class
class KfnbMagics(Magics):  # type: ignore[misc]
    @_job_flags
    @cell_magic
    def tfjob(self, line: str, cell: str) -> Any:
        """Run this cell as a distributed TensorFlow job (a Kubeflow TFJob).

        The cell runs in every replica, with ``tfjob`` telling it its role
        (``tfjob.task_type``, ``tfjob.is_chief``) and where to write
        (``tfjob.model_dir``, ``tfjob.logdir``, ``tfjob.tensorboard()``).
        Returns a `Job` at once; ``--wait`` blocks and raises `JobFailed`.
        """
        from kfnb.backends import BackendError, get_backend, resolve_backend_name
        from kfnb.bundle import BundleError, build_bundle
        from kfnb.config import settings
        from kfnb.job import Job
        from kfnb.records import JobRecord, load_record, save_record
        from kfnb.spec import SpecError, generate_name, to_yaml, validate_name
        from kfnb.storage import StoreError, open_store, replica_env
        from kfnb.widgets import show_job

        args = parse_argstring(self.tfjob, line)  # type: ignore[misc]
        config = settings()
        shell = self.shell
        assert shell is not None, "kfnb's magics need an IPython shell"
        if not cell.strip():
            raise UsageError("the %%tfjob cell is empty: write the training code below the magic")
        backend_name = resolve_backend_name(args.backend or config.backend)
        try:
            backend = get_backend(
                backend_name,
                storage=args.storage or None,
                namespace=args.namespace or config.namespace or None,
            )
            store = open_store(backend.storage)
            name = validate_name(args.name) if args.name else self._fresh_name(generate_name)
            if args.name and load_record(name) is not None and not args.dry_run:
                raise UsageError(
                    f"a job named {name!r} exists already: pick another --name, or "
                    f"`%kfnb delete {name} --purge` first"
                )
            bundle = build_bundle(
                cell,
                shell.user_ns,
                job_name=name,
                hidden=shell.user_ns_hidden,
                includes=args.include,
                cwd=Path.cwd(),
                s3=store.local_root is None,
            )
            job_dir = backend.job_dir(name)
            storage_env = tuple(replica_env(store, name).items())
            spec = _job_spec(
                args, name, str(job_dir) if job_dir else "", tuple(bundle.files), storage_env
            )
            manifest = spec.to_manifest()
            if args.dry_run:
                print(to_yaml(manifest), end="")
                return None
            for warning in backend.preflight(manifest):
                print(f"kfnb: {warning}", file=sys.stderr)
            self._announce(backend_name, args.backend)
            backend.submit(manifest, bundle)
        except (SpecError, BundleError, BackendError, StoreError) as err:
            raise UsageError(str(err)) from None
        save_record(
            JobRecord(
                name,
                backend.name,
                backend.storage,
                namespace=backend.namespace,
                image=spec.image,
                replicas=spec.replica_counts,
            )
        )
        job = Job(name, backend)
        show_job(job, wait=args.wait)
        return job

    @staticmethod
    def _fresh_name(generate: Callable[[], str]) -> str:
        from kfnb.records import load_record

        while load_record(name := generate()) is not None:
            pass
        return name

    @staticmethod
    def _announce(backend: str, asked: str | None) -> None:
        global _announced_backend
        if asked in (None, "auto") and not _announced_backend:
            _announced_backend = True
            from kfnb.backends.kubernetes import choose_auto

            why = f": {choose_auto().reason}" if (asked or settings_backend()) == "auto" else ""
            print(
                f"kfnb: running jobs on the {backend} backend{why} "
                "(--backend or %config Kfnb.backend to change)"
            )

    @line_magic
    def kfnb(self, line: str) -> Any:
        """Manage jobs: %kfnb list | status NAME | logs NAME [--replica R] [--follow]
        | delete NAME [--purge] | attach NAME | tensorboard NAME | nodes"""
        command, _, rest = line.strip().partition(" ")
        handlers = {
            "list": self._list,
            "status": self._status,
            "logs": self._logs,
            "delete": self._delete,
            "attach": self._attach,
            "tensorboard": self._tensorboard,
            "nodes": self._nodes,
        }
        if command not in handlers:
            raise UsageError(
                f"unknown %kfnb command {command!r}: use one of {', '.join(handlers)}"
                if command
                else f"%kfnb needs a command: {', '.join(handlers)}"
            )
        from kfnb.backends import BackendError

        try:
            return handlers[command](rest)
        except BackendError as err:
            raise UsageError(str(err)) from None

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
        print(_table(("NAME", "BACKEND", "PHASE", "ELAPSED", "REPLICAS"), rows))

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
        from kfnb.job import Job

        return Job.attach(name)

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

        from kfnb.storage import StoreError
        from kfnb.tensorboard import TensorBoardError, start_tensorboard, stop_tensorboard

        args = parse_argstring(self._tensorboard_args, rest)
        job = self._job(args.name)
        try:
            source = job.tensorboard_source()
        except StoreError as err:
            raise UsageError(str(err)) from None
        if source is None:
            raise UsageError(f"job {args.name} keeps no TensorBoard events on this machine")
        logdir, refresh = source
        if args.stop:
            stopped = stop_tensorboard(logdir)
            print(f"TensorBoard of {args.name} {'stopped' if stopped else 'was not running'}.")
            return
        try:
            server = start_tensorboard(logdir, refresh=refresh)
        except (TensorBoardError, StoreError) as err:
            raise UsageError(str(err)) from None
        text = f"TensorBoard of {args.name}: {server.url}"
        link = f'<a href="{server.url}" target="_blank">TensorBoard of {args.name}</a>'
        display({"text/plain": text, "text/html": link}, raw=True)

    def _nodes(self, rest: str) -> None:
        """GPUs per node on the cluster, like `arena top node`."""
        from kfnb.backends import get_backend
        from kfnb.backends.kube_nodes import gpu_nodes

        if rest.strip():
            raise UsageError("%kfnb nodes takes no arguments")
        rows = gpu_nodes(get_backend("kubernetes").api)  # type: ignore[attr-defined]
        header = ("NAME", "IPADDRESS", "ROLE", "GPU(Total)", "GPU(Allocated)")
        table = [(r.name, r.address, r.role, str(r.allocatable), str(r.allocated)) for r in rows]
        print(_table(header, table))
        total, used = sum(r.allocatable for r in rows), sum(r.allocated for r in rows)
        share = f" ({100 * used / total:.0f}%)" if total else ""
        print(f"Allocated/Total GPUs in cluster: {used}/{total}{share}")

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

    @magic_arguments()
    @argument("source", nargs="?", help="a job name, a SavedModel directory, or an s3:// URL")
    @argument("--name", default="mnist", help="the model's name in /v1/models/NAME")
    @argument("--port", type=int, help="REST port (default 8501 when free, else a free one)")
    @argument("--grpc-port", type=int, help="gRPC port (default 8500 when free, else free)")
    @argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it)")
    @argument("--backend", help="auto, local or kubernetes (default: where the job ran)")
    @argument("--replicas", type=int, default=1, help="server replicas (Kubernetes)")
    @argument("--gpus", type=int, default=0, help="GPUs per server replica (Kubernetes)")
    @argument("--canary", metavar="JOB", help="serve JOB's model to --percent of requests")
    @argument("--percent", type=int, help="share of requests for the --canary, 1-99")
    @argument("--runtime", default="kserve", help="on Kubernetes: kserve or tfserving")
    @argument("--dry-run", action="store_true", help="print the Kubernetes manifests only")
    @argument("--list", action="store_true", help="list the models being served")
    @argument("--stop", metavar="NAME", help="stop the server of model NAME")
    @argument("--restart", metavar="NAME", help="start a stopped or killed server again")
    @line_magic
    def serve(self, line: str) -> Any:
        """Serve a trained model behind TF Serving's REST (and gRPC) API.

        ``%serve JOB`` serves the newest model version the job exported and
        picks up new ones; ``%serve PATH`` a SavedModel. Returns a handle with
        the URLs; ``%serve --list``, ``--stop NAME`` and ``--restart NAME``
        manage running servers.
        """
        from kfnb.backends import BackendError
        from kfnb.serving.local import LocalServing, ServeError, model_base_path

        args = parse_argstring(self.serve, line)  # type: ignore[misc]
        serving = LocalServing()
        try:
            if args.list:
                return self._served_list(serving)
            if args.stop:
                return self._serve_stop(serving, args.stop)
            if args.restart:
                served = serving.restart(args.restart)
                print(f"Model server {served.name} restarted: {served.predict_url}")
                return served
            if not args.source:
                raise UsageError("%serve needs a job name or a SavedModel path, or --list/--stop")
            if args.dry_run or args.backend == "kubernetes":
                return self._serve_on_cluster(args, serving)
            _check_serve_flags(args)
            base = model_base_path(args.source, args.name, serving.root.parent)
            served = serving.start(
                args.name, base, args.source, args.port, args.grpc_port, host=args.host
            )
        except (ServeError, BackendError) as err:
            raise UsageError(str(err)) from None
        grpc = f"; gRPC {served.grpc}" if served.grpc else ""
        print(
            f"Serving {served.name} version {served.version} (from {served.source}): "
            f"{served.predict_url}{grpc}"
        )
        _show_predictions(served, args.source)
        return served

    @staticmethod
    def _serve_stop(serving: Any, name: str) -> None:
        served = serving.get(name)
        if served is not None and served.backend == "kubernetes":
            from kfnb.serving.kubernetes import ClusterServing

            ClusterServing(served.namespace).delete(name, served.runtime)
            serving.forget(name)
            print(f"{served.runtime} serving {name} deleted from namespace {served.namespace}.")
            return
        stopped = serving.stop(name)
        print(f"Model server {stopped.name} stopped.")

    @staticmethod
    def _serve_on_cluster(args: Any, serving: Any) -> Any:
        from kfnb.backends import BackendError
        from kfnb.serving.cluster import cluster_manifests, storage_uri
        from kfnb.serving.local import ServedModel
        from kfnb.spec import to_yaml

        manifests = cluster_manifests(
            args.name,
            args.source,
            runtime=args.runtime,
            replicas=args.replicas,
            gpus=args.gpus,
            canary=args.canary,
            percent=args.percent,
        )
        if args.dry_run:
            print("---\n".join(to_yaml(m) for m in manifests), end="")
            return None
        from kfnb.serving.kubernetes import ClusterServing

        try:
            cluster = ClusterServing()
            cluster.apply(manifests)
            rollout = cluster.wait(args.name, args.runtime)
        except BackendError as err:  # no cluster, no kubeconfig: the backend's own words
            raise UsageError(str(err)) from None
        served = ServedModel(
            name=args.name,
            url=rollout.url,
            grpc="",
            source=args.canary or args.source,
            model_base_path=storage_uri(args.canary or args.source),
            version=0,
            pid=0,
            argv=(),
            log="",
            backend="kubernetes",
            namespace=rollout.namespace,
            runtime=args.runtime,
        )
        serving.save(served)
        split = ", ".join(f"{rev} {pct}%" for rev, pct in rollout.traffic.items())
        print(
            f"Serving {args.name} with {args.runtime} in namespace {rollout.namespace}: "
            f"{served.predict_url}" + (f" (traffic: {split})" if len(rollout.traffic) > 1 else "")
        )
        return served

    @staticmethod
    def _served_list(serving: Any) -> None:
        rows = [
            (
                s.name,
                ("serving" if s.alive() else "stopped") if s.backend == "local" else s.runtime,
                s.url,
                s.grpc or "-",
                s.source,
            )
            for s in serving.list()
        ]
        if not rows:
            print("No models are served. Start one with `%serve JOB`.")
            return
        print(_table(("NAME", "STATE", "REST", "GRPC", "FROM"), rows))


def _show_predictions(served: Any, source: str) -> None:
    """Live predictions under the cell; refreshed while the job still trains new versions."""
    from kfnb.widgets import widgets_available

    if not widgets_available():
        return
    from IPython.display import display

    from kfnb.job import Job
    from kfnb.records import load_record
    from kfnb.widgets import PredictionView

    record = load_record(source)
    job = Job.from_record(record) if record is not None else None
    training = job is not None and not job.status().finished
    view = PredictionView(
        served.url,
        model=served.name,
        job=job if training else None,
        refresh=3.0 if training else None,
        serve_command=f"%serve {source} --name {served.name}",
    )
    display(view)  # type: ignore[no-untyped-call]


def _check_serve_flags(args: Any) -> None:
    """Flags that only mean something on Kubernetes are refused locally, with the reason."""
    if args.backend not in (None, "auto", "local"):
        raise UsageError(f"--backend {args.backend}: use auto, local or kubernetes")
    if args.replicas != 1 or args.gpus:
        raise UsageError(
            "--replicas and --gpus apply to a Kubernetes server; the local server is one "
            "process that batches concurrent requests: leave them out"
        )
    if args.canary or args.percent is not None:
        raise UsageError("--canary needs the Kubernetes backend (KServe splits the traffic)")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, like ``kubectl get``."""
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )
