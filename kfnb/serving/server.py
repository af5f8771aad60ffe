"""The local model server: TF Serving's REST API on uvicorn, in a process of its own.

    python -m kfnb.serving.server --model-base-path JOB/model --model-name mnist --port 8501

It serves the numbered SavedModel versions under ``--model-base-path`` the way
TF Serving does, so TF Serving clients (the Kubeflow MNIST client, ``requests``
snippets, KServe's TF predictor clients) work unchanged against a laptop:

- ``GET  /v1/models/NAME[/versions/V]``            version status
- ``GET  /v1/models/NAME[/versions/V]/metadata``   signatures
- ``POST /v1/models/NAME[/versions/V]:predict``    ``instances`` or ``inputs``
- ``GET  /healthz``                                200 once a version is served
- ``GET  /metrics``                                Prometheus metrics

Browsers are kept out (``_guard``): a ``Host`` that is not one of the server's
names is refused with 403 (DNS rebinding, see ``kfnb.hostcheck``), and a POST
body not sent as ``Content-Type: application/json`` with 415, so that a web page
cannot post a prediction request without the CORS preflight this server never
answers. A prediction the model has not answered within ``--request-timeout-seconds``
gets 504, and ``/healthz`` says 503 while the model process is stuck in a call.

It runs in its own process, never in the kernel: TensorFlow's threads, memory and
crashes stay out of the notebook, and the same command runs in a container.
TensorFlow itself runs in a second process (``model_host``), started once the
port is bound, so a wrong path or a port in use is reported in a fraction of a
second, and this process's one thread, the event loop, parses requests while
TensorFlow answers the previous batch.

The HTTP side is uvicorn (httptools' parser) calling ``ModelServer`` as a bare
ASGI app. With one image per request this process's own work per request is
what limits the light models, and this stack does less of it than aiohttp (its
``Application`` or its low-level server) doing the same parsing: the README's
serving benchmarks have the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from kfnb.hostcheck import HostPolicy
from kfnb.serving import ERROR_PREFIX, EXIT_MODEL_ERROR, EXIT_USAGE
from kfnb.serving.batch import Request
from kfnb.serving.batcher import Batcher
from kfnb.serving.codec import PredictRequest, RequestError, encode_predict
from kfnb.serving.config import ServerConfig
from kfnb.serving.listen import StartError, adopt, bind
from kfnb.serving.loader import LoadedModel, load_saved_model
from kfnb.serving.metrics import ServerMetrics
from kfnb.serving.model_host import ModelHost
from kfnb.serving.versions import ModelManager, VersionStatus, check_base_path

__all__ = ["ModelServer", "ServerConfig", "StartError", "bind", "main", "serve"]

log = logging.getLogger("kfnb.serving")

# How long the rest of a body over the limit is read (and dropped) before the 413.
_LINGER_SECONDS = 10.0

# ASGI's message types, as far as this server needs them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = b"application/json"
_MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[^/]*))?"
)


_PLAIN_PATHS = {"/healthz": "health", "/metrics": "metrics"}


@dataclass(frozen=True)
class Route:
    """What a request asks for. ``api`` labels its metrics: status, metadata,
    predict, health, metrics, or other (a path this server does not know)."""

    api: str
    name: str | None = None
    version: int | None = None


def route(method: str, path: str) -> Route:
    """The route of ``METHOD path``, or TF Serving's words for why there is none."""
    found = _MODEL_PATH.fullmatch(path)
    if found is not None and found["verb"] != "":
        verb = found["verb"]
        _allow(method, path, ("POST",) if verb is not None else ("GET", "HEAD"))
        if verb in ("classify", "regress"):
            raise RequestError(
                f"this server answers :predict only; :{verb} is not implemented "
                "(use TF Serving for classify and regress)",
                501,
            )
        if verb not in (None, "predict"):
            raise RequestError(f"Malformed request: {method} {path}", 404)
        api = "predict" if verb else "metadata" if found["metadata"] else "status"
        version = int(found["version"]) if found["version"] else None
        return Route(api, found["name"], version)
    if path in _PLAIN_PATHS:
        _allow(method, path, ("GET", "HEAD"))
        return Route(_PLAIN_PATHS[path])
    raise RequestError(f"Malformed request: {method} {path}", 404)


def _allow(method: str, path: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise RequestError(f"Malformed request: {method} {path}", 405)


class _Disconnected(Exception):
    """The client went away before its body arrived: nobody to answer."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, body, content type (JSON unless said otherwise)."""

    status: int
    body: bytes
    content_type: bytes = _JSON

    @classmethod
    def json(cls, status: int, doc: Any) -> Answer:
        return cls(status, orjson.dumps(doc))


class ModelServer:
    """The HTTP application (a bare ASGI app): routes, the version manager and the batcher.

    ``loader`` loads one version (TensorFlow's by default); tests and other
    runtimes can pass their own. Serve it with any ASGI server (``serve`` runs
    uvicorn); ``close`` stops the worker and loader threads.
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
        # Open HTTP connections, once a server serves the app (see ``serve``): with
        # one, no other request can join a batch, so the batcher sends it at once
        # and waits for its answer awake.
        self.open_connections: Callable[[], int] | None = None
        # How long the model process has been in its oldest unanswered call, once a
        # server watches one (see ``serve``): over the request timeout, it is stuck.
        self.model_busy_seconds: Callable[[], float] | None = None
        self.ready = False
        self.hosts = HostPolicy.for_server(config.host, (config.allowed_hosts or "").split(","))
        self._hosts_seen: dict[bytes, bool] = {}  # Host header -> allowed (bounded)
        self._stuck_told = False

    def close(self) -> None:
        self.batcher.close()
        self.manager.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request, answered in TF Serving's ``{"error": ...}`` shape when it
        fails, and counted in the metrics."""
        if scope["type"] != "http":
            return  # lifespan events (uvicorn runs with them off)
        started = time.perf_counter()
        where = Route("other")
        try:
            self._guard_host(scope)
            where = route(scope["method"], scope["path"])
            if where.api == "predict":
                _require_json(scope)
            answer = await self._answer(where, scope, receive)
        except _Disconnected:
            return
        except RequestError as exc:
            answer = Answer.json(exc.status, {"error": exc.message})
        except Exception as exc:  # a bug or a TensorFlow failure: answer, log, keep serving
            log.exception("%s %s failed", scope["method"], scope["path"])
            answer = Answer.json(500, {"error": f"{type(exc).__name__}: {exc}"})
        name = where.name or self.name
        model = name if name == self.name else "other"  # unknown names must not grow labels
        seconds = time.perf_counter() - started
        self.metrics.observe_request(model, where.api, answer.status, seconds)
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", b"%d" % len(answer.body)),
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, where: Route, scope: Scope, receive: Receive) -> Answer:
        if where.api == "predict":
            return await self.predict(where, await self._read_body(scope, receive))
        if where.api == "status":
            return self.model_status(where)
        if where.api == "metadata":
            return self.model_metadata(where)
        if where.api == "health":
            return self.health()
        return Answer(200, self.metrics.exposition(), CONTENT_TYPE_LATEST.encode())

    # -- the API

    def model_status(self, where: Route) -> Answer:
        """TF Serving's GetModelStatus: every version seen, or the one asked for."""
        name = where.name
        if name != self.name:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if where.version is not None:
            status = self.manager.status(where.version)
            if status is None:
                raise RequestError(f"Could not find version {where.version} of model {name}", 404)
            statuses = [status]
        else:
            statuses = self.manager.statuses()
            if not statuses:
                raise RequestError(f"Could not find any versions of model {name}", 404)
        return Answer.json(200, {"model_version_status": [s.to_json() for s in statuses]})

    def model_metadata(self, where: Route) -> Answer:
        """TF Serving's GetModelMetadata: the version's SignatureDefs."""
        model = self.servable(where.name or "", where.version)
        return Answer.json(
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

    async def predict(self, where: Route, body: bytes) -> Answer:
        """Hand the body to the batcher, which has it checked and answered."""
        model = self.servable(where.name or "", where.version)
        alone = self.open_connections is not None and self.open_connections() <= 1
        checked, outputs = await self.call_model(model, body, alone=alone)
        return Answer.json(200, encode_predict(outputs, checked))

    async def call_model(
        self,
        model: LoadedModel,
        request: Request,
        alone: bool = False,
        seconds: float | None = None,
    ) -> tuple[PredictRequest, dict[str, Any]]:
        """The batcher's answer to ``request``, within the request timeout (or ``seconds``,
        a gRPC client's own deadline, when shorter): else TF Serving's DEADLINE_EXCEEDED
        as a 504. While the model process is stuck in an older call, 503 at once."""
        timeout = self.config.request_timeout_seconds
        if seconds is not None:
            timeout = max(0.0, min(timeout, seconds))
        stuck = self._stuck_for()
        if stuck is not None:
            raise RequestError(_stuck_words(stuck, self.config.request_timeout_seconds), 503)
        try:
            async with asyncio.timeout(timeout):
                return await self.batcher.run(model, request, alone=alone)
        except TimeoutError:
            raise RequestError(
                f"Deadline Exceeded: the model did not answer within {timeout:g} s (the server's "
                "--request-timeout-seconds, or the client's deadline)",
                504,
            ) from None

    def _stuck_for(self) -> float | None:
        """Seconds the model process has been in one call, when that is over the timeout."""
        if self.model_busy_seconds is None:
            return None
        busy = self.model_busy_seconds()
        if busy < self.config.request_timeout_seconds:
            self._stuck_told = False
            return None
        if not self._stuck_told:  # once per stuck call, in the server's log
            self._stuck_told = True
            log.warning("%s", _stuck_words(busy, self.config.request_timeout_seconds))
        return busy

    def health(self) -> Answer:
        """200 while a version is served (readiness); 503 before the first one is loaded,
        and while the model process is stuck in a call longer than the request timeout."""
        newest = self.manager.newest
        if newest is None or not self.ready:
            return Answer.json(503, {"status": "loading", "model": self.name})
        stuck = self._stuck_for()
        if stuck is not None:
            words = _stuck_words(stuck, self.config.request_timeout_seconds)
            return Answer.json(503, {"status": "stuck", "model": self.name, "error": words})
        return Answer.json(
            200, {"status": "ok", "model": self.name, "version": str(newest.version)}
        )

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

    # -- helpers

    def _guard_host(self, scope: Scope) -> None:
        """403 for a ``Host`` that is not one of this server's names (DNS rebinding)."""
        header = _header(scope, b"host")
        if header is None:
            return
        allowed = self._hosts_seen.get(header)
        if allowed is None:
            allowed = self.hosts.allows(header.decode("latin-1"))
            if len(self._hosts_seen) < 64:  # a few names in practice; never grows unbounded
                self._hosts_seen[header] = allowed
        if not allowed:
            raise RequestError(self.hosts.refusal(header.decode("latin-1")), 403)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request's body, or a 413 once it is known to be over the limit."""
        limit = self.config.max_body_bytes
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        chunks: list[bytes] = []
        size = 0
        while declared is None or declared <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # Read the rest before answering, as aiohttp and nginx linger: a client still
        # sending would otherwise meet a reset connection instead of the 413.
        with contextlib.suppress(asyncio.TimeoutError, _Disconnected):
            await asyncio.wait_for(_discard_body(receive), _LINGER_SECONDS)
        raise RequestError(_too_large(declared, limit), 413)

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


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def _require_json(scope: Scope) -> None:
    """415 for a POST body not sent as JSON: a web page can POST ``text/plain`` or a form
    to any origin without a CORS preflight, but not ``application/json``."""
    given = _header(scope, b"content-type")
    media = given.split(b";", 1)[0].strip().lower() if given is not None else b""
    if media != _JSON:
        got = media.decode("latin-1")[:100] if media else "no Content-Type"
        raise RequestError(
            f"the request body must be sent as Content-Type: application/json, not {got}: "
            "with curl, add -H 'Content-Type: application/json'",
            415,
        )


def _stuck_words(seconds: float, timeout: float) -> str:
    return (
        f"the model process (TensorFlow) has been in one call for {seconds:.0f} s, over the "
        f"request timeout of {timeout:g} s: predictions fail until it returns; if it never "
        "does, restart the server (%serve restart NAME)"
    )


async def _discard_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        if not message.get("more_body"):
            return


def _too_large(length: int | None, limit: int) -> str:
    size = f"of {length} bytes " if length is not None else ""
    return (
        f"request body {size}is over this server's limit of {limit} bytes: send fewer "
        "instances per request, or start the server with a larger --max-body-bytes"
    )


# -------------------------------------------------------------------- process


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
    import uvicorn  # the serving extra's; imported here so the kernel side never needs it

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
    server.model_busy_seconds = host.busy_seconds
    http = uvicorn.Server(
        uvicorn.Config(
            server,
            interface="asgi3",
            loop="none",  # ours: uvloop where installed (see ``_run``)
            lifespan="off",
            ws="none",
            proxy_headers=False,  # a middleware per request; this server is not behind one
            server_header=False,
            access_log=False,
            log_config=None,  # keep this process's logging as ``main`` set it,
            log_level="warning",  # less uvicorn's own start and stop lines
            timeout_keep_alive=75,  # idle keep-alive connections, as aiohttp and nginx keep them
            timeout_graceful_shutdown=5,
        )
    )
    # What ``uvicorn.Server.serve`` does, less its signal handlers (ours stop the
    # model process too): load the config, then startup, main_loop, shutdown.
    http.config.load()
    http.lifespan = http.config.lifespan_class(http.config)
    connections = http.server_state.connections
    server.open_connections = lambda: len(connections)
    ticking: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    grpc_server: Any = None
    try:
        await http.startup(sockets=[sock])
        ticking = asyncio.create_task(http.main_loop())  # keeps the Date header current
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
        http.should_exit = True
        if ticking is not None:
            await ticking
        if http.started:
            await http.shutdown()
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


def thread_counts(config: ServerConfig, cores: int) -> tuple[int, int]:
    """TensorFlow's (intra-op, inter-op) threads: the flags, else one core left to HTTP.

    TensorFlow's default, a thread per core for both, competes for the cores with
    the event loop parsing requests, which needs a core of its own: on 2 cores one
    thread each made a batch-1 call and the median latency quicker, at the same
    throughput under load (the README's serving benchmarks have the figures).
    """
    intra = config.intra_op_threads or max(1, cores - 1)
    inter = config.inter_op_threads or min(intra, 2)
    return intra, inter


def _run(main: Coroutine[Any, Any, int]) -> int:
    """``main`` on uvloop where installed: its loop, libuv's in C, spends less CPU per
    request than asyncio's own, CPU this one busy thread has little of."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    config = ServerConfig.from_argv(argv)
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
        if config.listen_fd is not None:
            sock = adopt(config.listen_fd)
        else:
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
