"""``%serve``: model servers from cells, over `kfnb.api.serve`.

``%serve JOB`` starts one; ``%serve list``, ``%serve stop NAME`` and ``%serve restart
NAME`` manage them, like ``%kfnb``'s sub-commands (``--list``, ``--stop NAME`` and
``--restart NAME`` still work). A job named like a sub-command is served with a
flag before its name: ``%serve --name mnist list``.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from kfnb.magics._common import pod_options, table, usage_errors, with_pod_flags
from kfnb.magics.pipelines import with_step_flags

SUBCOMMANDS = ("list", "stop", "restart")


@magics_class
class ServingMagics(Magics):  # type: ignore[misc]
    @magic_arguments()
    @argument("source", nargs="?", help="a job name, a SavedModel directory, or an s3:// URL")
    @argument("--name", default="mnist", help="the model's name in /v1/models/NAME")
    @argument("--port", type=int, help="REST port (default 8501 when free, else a free one)")
    @argument("--grpc-port", type=int, help="gRPC port (default 8500 when free, else free)")
    @argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it)")
    @argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers besides localhost and IP addresses, e.g. a "
        "proxy's (repeatable; .DOMAIN for the names under it)",
    )
    @argument("--backend", help="auto, local or kubernetes (default: local)")
    @argument("--replicas", type=int, default=1, help="server replicas (Kubernetes)")
    @argument("--gpus", type=int, default=0, help="GPUs per server replica (Kubernetes)")
    @argument("--canary", metavar="JOB", help="serve JOB's model to --percent of requests")
    @argument("--percent", type=int, help="share of requests for the --canary, 1-99")
    @argument("--variant", metavar="NAME=JOB", action="append", default=[],
              help="another model to serve under --name (an A/B test), with --split")  # fmt: skip
    @argument("--split", metavar="P,P,...", help="percent of requests per variant, source first")
    @argument("--runtime", default="kserve", help="on Kubernetes: kserve or tfserving")
    @with_pod_flags  # on Kubernetes: pull secrets, scheduling, labels, as %%tfjob's
    @argument("--dry-run", action="store_true", help="print the Kubernetes manifests only")
    @argument("--list", action="store_true", help="the same as `%%serve list`")
    @argument("--stop", metavar="NAME", help="the same as `%%serve stop NAME`")
    @argument("--restart", metavar="NAME", help="the same as `%%serve restart NAME`")
    @with_step_flags  # %serve train --step publish: a pipeline's serving step
    @line_magic
    def serve(self, line: str) -> Any:
        """Serve a trained model behind TF Serving's REST (and gRPC) API.

        ``%serve JOB`` serves the newest model version the job exported and
        picks up new ones; ``%serve PATH`` a SavedModel. Returns a handle with
        the URLs. ``%serve list``, ``%serve stop NAME`` and ``%serve restart NAME``
        manage running servers.
        """
        command, _, rest = line.strip().partition(" ")
        with usage_errors():
            if command in SUBCOMMANDS:
                return self._subcommand(command, rest)
            args = parse_argstring(self.serve, line)  # type: ignore[misc]
            if args.list:
                return self._list()
            if args.stop:
                return self._stop(args.stop)
            if args.restart:
                return self._restart(args.restart)
            if not args.source:
                raise UsageError(
                    "%serve needs a job name or a SavedModel path, or list | stop | restart"
                )
            if args.step:
                args = self._record_step(args)
                if args is None:
                    return None
            if args.dry_run:
                return self._dry_run(args)
            if args.backend == "kubernetes":
                return self._serve_on_cluster(args)
            return self._serve_here(args)

    @magic_arguments()
    @argument("name", help="the served model's name")
    def _name_arg(self, line: str) -> None:
        """%serve stop|restart NAME"""

    def _record_step(self, args: Any) -> Any:
        """Record ``%serve SOURCE --step NAME`` (served locally in a local run); the
        args to serve now (SOURCE a step's name: its latest job), or None."""
        from kfnb.magics.pipelines import record_cell, said_recorded
        from kfnb.pipelines.steps import load_steps

        if args.backend not in (None, "local", "auto") or args.canary or args.dry_run:
            raise UsageError("a %serve --step serves locally in a local run: leave out "
                             "--backend, --canary and --dry-run")  # fmt: skip
        options = {"name": args.name, "port": args.port, "grpc_port": args.grpc_port,
                   "host": args.host, "allowed_hosts": args.allowed_host}  # fmt: skip
        step = record_cell(args, "serve", args.source, options, self.shell)
        print(said_recorded(step))
        if args.record_only:
            return None
        source = load_steps(step.pipeline).get(args.source)
        if source is not None:
            if not source.last_job:
                raise UsageError(f"step {args.source} has not run yet: run its cell first, "
                                 f"or --record-only")  # fmt: skip
            args.source = source.last_job
        return args

    def _subcommand(self, command: str, rest: str) -> Any:
        if command == "list":
            if rest.strip():
                raise UsageError("%serve list takes no arguments")
            return self._list()
        name = parse_argstring(self._name_arg, rest).name
        return self._stop(name) if command == "stop" else self._restart(name)

    @staticmethod
    def _serve_here(args: Any) -> Any:
        from kfnb.api import serve

        served = serve(
            args.source,
            name=args.name,
            port=args.port,
            grpc_port=args.grpc_port,
            host=args.host,
            allowed_hosts=args.allowed_host,
            backend=args.backend,
            replicas=args.replicas,
            gpus=args.gpus,
            canary=args.canary,
            percent=args.percent,
            variants=args.variant,
            split=args.split,
            **pod_options(args),
        )
        grpc = f"; gRPC {served.grpc}" if served.grpc else ""
        print(
            f"Serving {served.name} version {served.version} (from {served.source}): "
            f"{served.predict_url}{grpc}"
        )
        _show_predictions(served, args.source)
        return served

    @staticmethod
    def _cluster_options(args: Any) -> dict[str, Any]:
        return {
            "name": args.name,
            "runtime": args.runtime,
            "replicas": args.replicas,
            "gpus": args.gpus,
            "canary": args.canary,
            "percent": args.percent,
            "variants": args.variant,
            "split": args.split,
            **pod_options(args),
        }

    def _dry_run(self, args: Any) -> None:
        from kfnb.api import render_serving, serving_notes
        from kfnb.spec import to_yaml

        manifests = render_serving(args.source, **self._cluster_options(args))
        sources = [args.source, *(v.partition("=")[2] for v in args.variant)]
        notes = [
            note
            for source in dict.fromkeys(sources)
            for note in serving_notes(source, name=args.name, runtime=args.runtime, gpus=args.gpus)
        ]
        print("".join(f"# {note}\n" for note in notes), end="")  # YAML comments
        print("---\n".join(to_yaml(m) for m in manifests), end="")

    def _serve_on_cluster(self, args: Any) -> Any:
        from kfnb.api import serve_on_cluster, serving_notes

        served, rollout = serve_on_cluster(args.source, **self._cluster_options(args))
        source = args.canary or args.source
        if not args.variant:
            print(serving_notes(source, name=args.name, runtime=args.runtime, gpus=args.gpus)[0])
        split = ", ".join(f"{rev} {pct}%" for rev, pct in rollout.traffic.items())
        print(
            f"Serving {args.name} with {args.runtime} in namespace {rollout.namespace}: "
            f"{served.predict_url}" + (f" (traffic: {split})" if len(rollout.traffic) > 1 else "")
        )
        return served

    @staticmethod
    def _stop(name: str) -> None:
        from kfnb.api import stop_serving
        from kfnb.serving.served import ClusterServer

        served = stop_serving(name)
        if isinstance(served, ClusterServer):
            print(f"{served.runtime} serving {name} deleted from namespace {served.namespace}.")
        else:
            print(f"Model server {served.name} stopped.")

    @staticmethod
    def _restart(name: str) -> Any:
        from kfnb.serving.local import LocalServing

        served = LocalServing().restart(name)
        print(f"Model server {served.name} restarted: {served.predict_url}")
        return served

    @staticmethod
    def _list() -> None:
        from kfnb.serving.local import LocalServing
        from kfnb.serving.served import ClusterServer

        rows = [
            (
                s.name,
                s.runtime if isinstance(s, ClusterServer) else _state(s),
                s.url,
                s.grpc or "-",
                s.source,
            )
            for s in LocalServing().list()
        ]
        if not rows:
            print("No models are served. Start one with `%serve JOB`.")
            return
        print(table(("NAME", "STATE", "REST", "GRPC", "FROM"), rows))


def _state(served: Any) -> str:
    return "serving" if served.alive() else "stopped"


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
