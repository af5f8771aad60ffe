"""The local model server: TF Serving's REST API over aiohttp, in a process of its own.

    python -m kfnb.serving.server --model-base-path JOB/model --model-name mnist --port 8501

It serves the numbered SavedModel versions under ``--model-base-path`` the way
TF Serving does, so TF Serving clients (the Kubeflow MNIST client, ``requests``
snippets, KServe's TF predictor clients) work unchanged against a laptop:

- ``GET  /v1/models/NAME[/versions/V]``            version status
- ``GET  /v1/models/NAME[/versions/V]/metadata``   signatures
- ``POST /v1/models/NAME[/versions/V]:predict``    ``instances`` or ``inputs``
- ``GET  /healthz``                                200 once a version is served
- ``GET  /metrics``                                Prometheus metrics

It runs in its own process, never in the kernel: TensorFlow's threads, memory and
crashes stay out of the notebook, and the same command runs in a container.
TensorFlow itself runs in a second process (``model_host``), started once the
port is bound, so a wrong path or a port in use is reported in a fraction of a
second, and this process's one thread, the event loop, parses requests while
TensorFlow answers the previous batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from kfnb.serving import ERROR_PREFIX, EXIT_MODEL_ERROR, EXIT_USAGE
from kfnb.serving.batcher import Batcher
from kfnb.serving.codec import (
    PredictRequest,
    RequestError,
    decode_predict,
    encode_predict,
    parse_json,
)
from kfnb.serving.config import DEFAULT_MAX_BODY, DEFAULT_PORT, ServerConfig
from kfnb.serving.loader import LoadedModel, load_saved_model
from kfnb.serving.model_host import ModelHost
from kfnb.serving.versions import ModelManager, VersionStatus, check_base_path

__all__ = ["ModelServer", "ServerConfig", "main", "serve"]

log = logging.getLogger("kfnb.serving")

# Bodies larger than this are parsed in a thread, so one big request does not
# hold the event loop while small ones wait.
_PARSE_IN_THREAD = 256 * 1024

_OUTCOMES = {
    200: "ok",
    400: "bad_request",
    404: "not_found",
    405: "bad_method",
    413: "too_large",
    500: "error",
    501: "not_implemented",
    503: "unavailable",
}
_ERROR_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "not_found",
    413: "too_large",
    501: "not_implemented",
    503: "unavailable",
}


# -------------------------------------------------------------------- metrics


class ServerMetrics:
    """Prometheus metrics in a registry of their own, so several servers can share a process."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        fast = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        reg = self.registry
        self.requests = Counter(
            "kfnb_serving_requests",
            "HTTP requests answered, by API and outcome",
            ["model", "api", "outcome"],
            registry=reg,
        )
        self.latency = Histogram(
            "kfnb_serving_request_seconds",
            "Time from request to answer",
            ["model", "api"],
            buckets=fast,
            registry=reg,
        )
        self.errors = Counter(
            "kfnb_serving_errors",
            "Errors: bad_request, not_found, too_large, not_implemented, unavailable, "
            "internal (a 500), model_load (a version that failed to load)",
            ["model", "kind"],
            registry=reg,
        )
        self.batches = Counter(
            "kfnb_serving_batches",
            "Signature calls made by the batching worker",
            ["model"],
            registry=reg,
        )
        self.batch_requests = Histogram(
            "kfnb_serving_batch_requests",
            "Requests merged into one signature call",
            ["model"],
            buckets=sizes,
            registry=reg,
        )
        self.batch_rows = Histogram(
            "kfnb_serving_batch_rows",
            "Instances (rows) in one signature call",
            ["model"],
            buckets=sizes,
            registry=reg,
        )
        self.batch_seconds = Histogram(
            "kfnb_serving_batch_seconds",
            "Time of one signature call",
            ["model"],
            buckets=fast,
            registry=reg,
        )
        self.queued = Gauge(
            "kfnb_serving_queued_requests",
            "Requests waiting for the batching worker",
            registry=reg,
        )
        self.version = Gauge(
            "kfnb_serving_model_version",
            "Version that requests without a version get",
            ["model"],
            registry=reg,
        )
        self.loads = Counter(
            "kfnb_serving_model_loads",
            "Version loads, by outcome",
            ["model", "outcome"],
            registry=reg,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, model: str, api: str, status: int, seconds: float) -> None:
        key = (model, api, status)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock: cache the children per key
            outcome = _OUTCOMES.get(status, f"http_{status}")
            children = (self.requests.labels(model, api, outcome), self.latency.labels(model, api))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            self.errors.labels(model, _ERROR_KINDS.get(status, "internal")).inc()

    def observe_batch(self, requests: int, rows: int, seconds: float) -> None:
        self.batches.labels(self.model).inc()
        self.batch_requests.labels(self.model).observe(requests)
        self.batch_rows.labels(self.model).observe(rows)
        self.batch_seconds.labels(self.model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --------------------------------------------------------------------- server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ModelServer:
    """The HTTP application: routes, the version manager and the batching worker.

    ``loader`` loads one version (TensorFlow's by default); tests and other
    runtimes can pass their own. Use ``app`` with any aiohttp runner; ``close``
    stops the worker and loader threads.
    """

    def __init__(
        self,
        config: ServerConfig,
        loader: Callable[[Path, int], LoadedModel] = load_saved_model,
    ) -> None:
        self.config = config
        self.name = config.model_name
        self.metrics = ServerMetrics(config.model_name)
        self.manager = ModelManager(
            config.model_name,
            config.model_base_path,
            config.max_versions,
            loader,
            on_change=self._version_changed,
        )
        self.batcher = Batcher(config.max_batch_size, on_batch=self._batch_done)
        self.metrics.queued.set_function(lambda: self.batcher.pending)
        # Open HTTP connections, once a runner serves the app (see ``serve``): with
        # one, no other request can join a batch, so the batcher may skip its thread.
        self.open_connections: Callable[[], int] | None = None
        self.ready = False
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._middleware]
        )
        model = "/v1/models/{name:[^/:]+}"
        version = "/versions/{version:[0-9]+}"
        app.router.add_get(model, self.model_status, name="status")
        app.router.add_get(model + version, self.model_status, name="status-version")
        app.router.add_get(model + "/metadata", self.model_metadata, name="metadata")
        app.router.add_get(
            model + version + "/metadata", self.model_metadata, name="metadata-version"
        )
        app.router.add_post(model + ":{verb}", self.predict, name="predict")
        app.router.add_post(model + version + ":{verb}", self.predict, name="predict-version")
        app.router.add_get("/healthz", self.health, name="health")
        app.router.add_get("/metrics", self.prometheus, name="metrics")
        return app

    def close(self) -> None:
        self.batcher.close()
        self.manager.close()

    # -- handlers

    async def model_status(self, request: web.Request) -> web.Response:
        """TF Serving's GetModelStatus: every version seen, or the one asked for."""
        name = request.match_info["name"]
        if name != self.name:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if "version" in request.match_info:
            version = int(request.match_info["version"])
            status = self.manager.status(version)
            if status is None:
                raise RequestError(f"Could not find version {version} of model {name}", 404)
            statuses = [status]
        else:
            statuses = self.manager.statuses()
            if not statuses:
                raise RequestError(f"Could not find any versions of model {name}", 404)
        return _json(200, {"model_version_status": [s.to_json() for s in statuses]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        """TF Serving's GetModelMetadata: the version's SignatureDefs."""
        model = self._servable(request)
        return _json(
            200,
            {
                "model_spec": {
                    "name": self.name,
                    "signature_name": "",
                    "version": str(model.version),
                },
                "metadata": {"signature_def": {"signature_def": model.signature_defs}},
            },
        )

    async def predict(self, request: web.Request) -> web.Response:
        """Check the request in the event loop, then hand it to the batcher."""
        verb = request.match_info["verb"]
        if verb != "predict":
            if verb in ("classify", "regress"):
                raise RequestError(
                    f"this server answers :predict only; :{verb} is not implemented "
                    "(use TF Serving for classify and regress)",
                    501,
                )
            raise RequestError(f"Malformed request: POST {request.path}", 404)
        model = self._servable(request)
        body = await self._read_body(request)
        if len(body) > _PARSE_IN_THREAD:
            loop = asyncio.get_running_loop()
            checked = await loop.run_in_executor(None, _decode, body, model)
        else:
            checked = _decode(body, model)
        alone = self.open_connections is not None and self.open_connections() <= 1
        outputs = await self.batcher.run(
            model, checked.signature, checked.inputs, checked.rows, alone=alone
        )
        return _json(200, encode_predict(outputs, checked))

    async def health(self, request: web.Request) -> web.Response:
        """200 while a version is served (readiness); 503 before the first one is loaded."""
        newest = self.manager.newest
        if newest is None or not self.ready:
            return _json(503, {"status": "loading", "model": self.name})
        return _json(200, {"status": "ok", "model": self.name, "version": str(newest.version)})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # -- helpers

    def _servable(self, request: web.Request) -> LoadedModel:
        version = request.match_info.get("version")
        return self.servable(request.match_info["name"], int(version) if version else None)

    def servable(self, name: str, version: int | None) -> LoadedModel:
        """The loaded version asked for, or TF Serving's 404 (503 while starting)."""
        if name == self.name and not self.ready:
            raise RequestError(f"{name} is still loading its first version: retry shortly", 503)
        model = None
        if name == self.name:
            model = self.manager.newest if version is None else self.manager.get(version)
        if model is None:
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise RequestError(f"Servable not found for request: {wanted}", 404)
        return model

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise RequestError(_too_large(length, limit), 413)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestError(_too_large(None, limit), 413) from None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer in TF Serving's ``{"error": ...}`` shape, and counted in the metrics."""
        started = time.perf_counter()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except RequestError as exc:
            response = _json(exc.status, {"error": exc.message})
        except web.HTTPException as exc:  # the router's 404 and 405, aiohttp's 413
            if exc.status == 413:
                message = _too_large(None, self.config.max_body_bytes)
            elif exc.status in (404, 405):
                message = f"Malformed request: {request.method} {request.path}"
            else:
                message = exc.reason
            response = _json(exc.status, {"error": message})
        except Exception as exc:  # a bug or a TensorFlow failure: answer, log, keep serving
            log.exception("%s %s failed", request.method, request.path)
            response = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
        route = request.match_info.route.name or "other"
        api = route.removesuffix("-version")
        name = request.match_info.get("name", self.name)
        model = name if name == self.name else "other"  # unknown names must not grow labels
        self.metrics.observe_request(model, api, response.status, time.perf_counter() - started)
        return response

    def _version_changed(self, status: VersionStatus, seconds: float) -> None:
        newest = self.manager.newest
        serving = f"serving version {newest.version}" if newest else "no version to serve"
        if status.state == "AVAILABLE":
            self.ready = True
            self.metrics.loads.labels(self.name, "ok").inc()
            log.info(
                "%s version %d loaded in %.2f s; %s", self.name, status.version, seconds, serving
            )
        elif status.state == "END" and status.error_code != "OK":
            self.metrics.loads.labels(self.name, "failed").inc()
            self.metrics.errors.labels(self.name, "model_load").inc()
            log.warning(
                "%s version %d failed to load (%s: %s); %s",
                self.name,
                status.version,
                status.error_code,
                status.error_message,
                serving,
            )
        elif status.state == "END":
            log.info("%s version %d unloaded; %s", self.name, status.version, serving)
        if newest is not None:
            self.metrics.version.labels(self.name).set(newest.version)

    def _batch_done(self, model: LoadedModel, requests: int, rows: int, seconds: float) -> None:
        self.metrics.observe_batch(requests, rows, seconds)


def _decode(body: bytes, model: LoadedModel) -> PredictRequest:
    return decode_predict(parse_json(body), model.signatures)


def _json(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json")


def _too_large(length: int | None, limit: int) -> str:
    size = f"of {length} bytes " if length is not None else ""
    return (
        f"request body {size}is over this server's limit of {limit} bytes: send fewer "
        "instances per request, or start the server with a larger --max-body-bytes"
    )


# -------------------------------------------------------------------- process


class StartError(Exception):
    """The server cannot start; the message is the one line to print."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, opened before TensorFlow is imported so a busy port fails fast.

    SO_REUSEADDR lets a restarted server take its port back from TIME_WAIT; it does
    not let two servers listen on one port (that would need SO_REUSEPORT).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot resolve --host {host} ({exc.strerror})", EXIT_USAGE) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = (
                f"port {port} on {host} is already in use (another model server?): "
                "pick another with --port, or --port 0 for a free one"
            )
        elif exc.errno == errno.EACCES:
            message = f"no permission to listen on port {port}: use a port above 1023"
        elif exc.errno == errno.EADDRNOTAVAIL:
            message = f"{host} is not an address of this machine: use --host 127.0.0.1"
        else:
            message = f"cannot listen on {host}:{port}: {exc.strerror}"
        raise StartError(message, EXIT_USAGE) from None
    sock.setblocking(False)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    config: ServerConfig, sock: socket.socket, stop: asyncio.Event | None = None
) -> int:
    """Serve on ``sock`` until ``stop`` is set (or SIGINT/SIGTERM); return the exit code.

    The HTTP side starts at once (health answers 503 while the first version
    loads); the ready line is printed when predictions are answered.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    exit_code = 0

    def host_exited(message: str) -> None:
        nonlocal exit_code
        print(ERROR_PREFIX + message, file=sys.stderr, flush=True)
        exit_code = EXIT_MODEL_ERROR
        stop.set()

    host = ModelHost(loop, on_exit=host_exited)
    await host.start()
    server = ModelServer(config, loader=host.load)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    if runner.server is not None:
        connections = runner.server
        server.open_connections = lambda: len(connections.connections)
    watcher: asyncio.Task[None] | None = None
    grpc_server: Any = None
    try:
        await web.SockSite(runner, sock, shutdown_timeout=5.0).start()
        await server.manager.refresh()
        newest = server.manager.newest
        if newest is None:
            print(ERROR_PREFIX + _no_version(config, server.manager), file=sys.stderr, flush=True)
            return EXIT_MODEL_ERROR
        if config.grpc_port is not None:
            # Imported only now and only for gRPC: its protos import TensorFlow here too.
            from kfnb.serving.grpc_api import start_grpc

            try:
                grpc_server, grpc_port = await start_grpc(server, config.host, config.grpc_port)
            except OSError as exc:
                print(ERROR_PREFIX + f"{exc}: pick another --grpc-port", file=sys.stderr)
                return EXIT_USAGE
            print(
                f"kfnb model server: gRPC PredictionService on {config.host}:{grpc_port}",
                flush=True,
            )
        print(
            f"kfnb model server: {config.model_name} version {newest.version} on {_url(sock)}",
            flush=True,
        )
        watcher = asyncio.create_task(server.manager.watch(config.poll_seconds))
        await stop.wait()
        log.info("stopping")
        return exit_code
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if grpc_server is not None:
            await grpc_server.stop(grace=2.0)
        await runner.cleanup()
        server.close()
        host.close()


def _check_grpc(host: str, port: int) -> None:
    """Fail in a fraction of a second, not after loading TensorFlow, if gRPC cannot start."""
    if importlib.util.find_spec("tensorflow_serving") is None:
        raise StartError(
            "--grpc-port needs TF Serving's protos: pip install --no-deps "
            "tensorflow-serving-api (--no-deps: it would pull the full tensorflow wheel)",
            EXIT_USAGE,
        )
    if port:
        bind(host, port).close()  # the gRPC server binds it again once the model is loaded


def _no_version(config: ServerConfig, manager: ModelManager) -> str:
    failures = [s for s in manager.statuses() if s.error_code != "OK"]
    base = config.model_base_path
    if not failures:
        return f"no model at {base}: no numbered version directory could be read"
    newest = failures[0]
    return (
        f"cannot serve {base / str(newest.version)}: {newest.error_code}: {newest.error_message}"
        f" -- export the model again (tf.saved_model.save) or remove that directory"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kfnb.serving.server",
        description="Serve numbered SavedModel versions with TF Serving's REST API.",
    )
    add = parser.add_argument
    add(
        "--model-base-path",
        "--model_base_path",
        required=True,
        type=Path,
        help="directory of numbered versions (DIR/1, DIR/2, ...), as TF Serving expects",
    )
    add(
        "--model-name",
        "--model_name",
        default="default",
        help="the NAME in /v1/models/NAME (default: %(default)s, as TF Serving)",
    )
    add(
        "--port",
        "--rest-api-port",
        "--rest_api_port",
        type=_port,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    add(
        "--grpc-port",
        type=_port,
        default=None,
        help="also answer TF Serving's gRPC PredictionService on this port (TF Serving uses "
        "8500; 0 picks a free one); needs tensorflow-serving-api",
    )
    add(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 exposes the model)",
    )
    add(
        "--max-body-bytes",
        type=_positive,
        default=DEFAULT_MAX_BODY,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    add(
        "--max-batch-size",
        "--max_batch_size",
        type=_positive,
        default=256,
        help="most instances merged into one model call (default: %(default)s)",
    )
    add(
        "--poll-seconds",
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions (default: %(default)s)",
    )
    add(
        "--max-versions",
        type=_positive,
        default=2,
        help="newest versions kept loaded, like TF Serving's latest{num_versions} "
        "(default: %(default)s)",
    )
    add(
        "--intra-op-threads",
        "--tensorflow_intra_op_parallelism",
        type=_count,
        default=0,
        help="threads for one TensorFlow op (default: 0, one less than the cores, leaving one "
        "to the HTTP side)",
    )
    add(
        "--inter-op-threads",
        "--tensorflow_inter_op_parallelism",
        type=_count,
        default=0,
        help="threads running independent TensorFlow ops (default: 0, up to 2)",
    )
    return parser


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def thread_counts(config: ServerConfig, cores: int) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) threads: the flags, else one core left to HTTP.

    Measured on 2 cores (one image per request): TensorFlow's default of a thread
    per core for both made a batch-1 call 0.82 ms and p50 1.7 ms; one thread each,
    0.64 ms and p50 1.2 ms, at the same throughput under load, since the event loop
    parsing requests needs a core of its own.
    """
    intra = config.intra_op_threads or max(1, cores - 1)
    inter = config.inter_op_threads or min(intra, 2)
    return intra, inter


def _run(main: Coroutine[Any, Any, int]) -> int:
    """``main`` on uvloop where installed: it cuts the event loop's CPU per request by
    about a fifth (measured with one image per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = ServerConfig(
        model_base_path=args.model_base_path.expanduser().absolute(),
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        max_body_bytes=args.max_body_bytes,
        max_batch_size=args.max_batch_size,
        poll_seconds=max(args.poll_seconds, 0.05),
        max_versions=args.max_versions,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
    )
    logging.basicConfig(
        level=logging.INFO, format="kfnb model server: %(message)s", stream=sys.stderr
    )
    # TensorFlow's C++ INFO lines would bury the server's own log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # Read by TensorFlow's runtime when it starts, which is after this (in the loader thread).
    intra, inter = thread_counts(config, os.cpu_count() or 1)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(intra)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(inter)
    try:
        problem = check_base_path(config.model_base_path)
        if problem:
            raise StartError(problem, EXIT_MODEL_ERROR)
        if config.grpc_port is not None:
            _check_grpc(config.host, config.grpc_port)
        sock = bind(config.host, config.port)
    except StartError as exc:
        print(ERROR_PREFIX + str(exc), file=sys.stderr, flush=True)
        return exc.exit_code
    try:
        return _run(serve(config, sock))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
