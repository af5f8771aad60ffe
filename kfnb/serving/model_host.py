"""TensorFlow in a process of its own, beside the model server's HTTP process.

    ModelHost(loop).load(path, version) -> LoadedModel          (from any thread)
    await loaded_model.remote(requests, max_rows, awake)         (from the event loop)

The HTTP process then runs one Python thread, the event loop, which reads
requests and hands each batch to the host over a socket pair; the host checks
the JSON bodies the loop had no time for (``batch.run_batch``) and runs
TensorFlow in parallel with the loop, under another GIL. TensorFlow in a thread of
the HTTP process shared the event loop's GIL, so under load this answers more
requests even for the light dense model (the README's serving benchmarks have the
figures).

The host is ``python -m kfnb.serving.model_host FD``: it loads versions in a
thread (requests to loaded versions keep being answered meanwhile), runs
signatures in its main thread, and exits when the server's end of the socket
closes, so a killed server leaves no TensorFlow process behind. Messages are
pickles (protocol 5: arrays travel as their bytes) behind an 8-byte length; the
server's side is an asyncio protocol, so a large batch never blocks its loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kfnb._util import first_line
from kfnb.serving.batch import Batch, Request, Rows, prediction_error, run_batch
from kfnb.serving.codec import RequestError
from kfnb.serving.loader import LoadedModel, ModelLoadError, load_saved_model

__all__ = ["HostDied", "ModelHost"]

_HEADER = 8  # bytes of a message's length, big-endian
_AWAKE_AT_MOST = 0.005  # the longest the host stays awake for the next request
# How long a lone client's request is waited for awake (see ``_wait_awake``); a
# slower model's answer is then awaited asleep, as under load.
AWAKE_SECONDS = 0.01


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=5)
    return len(data).to_bytes(_HEADER, "big") + data


class HostDied(RuntimeError):
    """The model process exited: what was asked of it is lost, and nothing can be served."""


class ModelHost(asyncio.Protocol):
    """The server's end of the model process: loads, runs and unloads versions there."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[str], None] | None = None
    ) -> None:
        self.loop = loop
        self.on_exit = on_exit
        self.process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # When each batch still unanswered was sent, oldest first (the host answers in
        # order); kept until its answer comes, even when its caller gave up waiting.
        self._batches_out: dict[int, float] = {}
        self._ids = itertools.count()
        self._died = ""
        self._closing = False
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Start the process now (it imports TensorFlow at its first load)."""
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kfnb.serving.model_host", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                start_new_session=True,  # Ctrl-C reaches the server, which stops the host
            )
        await self.loop.create_unix_connection(lambda: self, sock=ours)
        self._sock = ours  # the transport's own: read directly only while awake

    def load(self, path: Path, version: int) -> LoadedModel:
        """Load a version in the host (blocking: call it off the event loop)."""
        found = asyncio.run_coroutine_threadsafe(self._ask("load", (str(path), version)), self.loop)
        key, signatures, signature_defs, protos = found.result()

        async def remote(requests: list[Request], max_rows: int, awake: bool = False) -> Batch:
            asked = (key, requests, max_rows)
            wire, results, calls, seconds = await self._ask("batch", asked, awake)
            outcomes = [o if isinstance(o, Rows) else _outcome_from(*o) for o in wire]
            return Batch(outcomes, results, calls, seconds)

        model = LoadedModel(
            version, path, signatures, {}, signature_defs, signature_protos=protos, remote=remote
        )
        # Unloaded in the host once the server holds it no more (nor any request does).
        weakref.finalize(model, self._unload, key)
        return model

    async def _ask(self, op: str, payload: Any, awake: bool = False) -> Any:
        if self._died or self._transport is None:
            raise HostDied(self._died or "the model process has not started")
        ident = next(self._ids)
        future = self.loop.create_future()
        self._waiting[ident] = future
        self._transport.write(_frame((op, ident, payload)))
        if op == "batch":
            self._batches_out[ident] = time.monotonic()
        if awake and not self._transport.get_write_buffer_size():  # all of it is sent
            self._wait_awake(future)
        kind, value = await future
        outcome = _outcome_from(kind, value)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def busy_seconds(self) -> float:
        """How long the host has been on its oldest unanswered batch (0 when idle): how the
        server tells a model process stuck in a TensorFlow call."""
        oldest = next(iter(self._batches_out.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def _wait_awake(self, future: asyncio.Future[Any]) -> None:
        """Read the answer right here, in a busy loop, for up to ``AWAKE_SECONDS``.

        For a lone client: this blocks the event loop, but nothing else waits on
        it, and the answer is read without this process sleeping and being woken,
        a wake-up that costs a light model's lone client a large part of its
        latency. Whatever is read goes through ``data_received``, as
        the transport's own reads do; they find the socket empty afterwards, which
        asyncio's and uvloop's transports take in their stride.
        """
        sock = self._sock
        deadline = time.perf_counter() + AWAKE_SECONDS
        while sock is not None and not future.done() and time.perf_counter() < deadline:
            try:
                data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return  # the transport will see it too
            if not data:
                return  # the end: left for the transport to see
            self.data_received(data)

    def _unload(self, key: int) -> None:
        if not self._died and self._transport is not None and not self.loop.is_closed():
            message = _frame(("unload", None, key))
            self.loop.call_soon_threadsafe(self._write_quietly, message)

    def _write_quietly(self, message: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(message)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= _HEADER:
            size = int.from_bytes(self._buffer[:_HEADER], "big")
            if len(self._buffer) < _HEADER + size:
                return
            ident, outcome = pickle.loads(self._buffer[_HEADER : _HEADER + size])
            del self._buffer[: _HEADER + size]
            self._batches_out.pop(ident, None)
            future = self._waiting.pop(ident, None)
            if future is not None and not future.done():
                future.set_result(outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._closing or self.process is None:
            return
        code = self.process.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        self._died = f"the model process (TensorFlow) {how}: restart the server"
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(HostDied(self._died))
        self._waiting.clear()
        self._batches_out.clear()
        if self.on_exit is not None:
            self.on_exit(self._died)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the process: closing our end makes it exit; it is killed if it lingers."""
        self._closing = True
        self._died = self._died or "the server is stopping"
        if self._transport is not None:
            self._transport.abort()
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ----------------------------------------------------------------- the host side


def _outcome_of(exc: BaseException) -> tuple[str, Any]:
    """An exception as a message the server turns back into its own kind
    (TensorFlow's own exceptions need not unpickle there)."""
    if isinstance(exc, ModelLoadError):
        return "load", (exc.error_code, exc.message)
    exc = prediction_error(exc)
    if isinstance(exc, RequestError):
        return "request", (exc.message, exc.status)
    return "error", f"{type(exc).__name__}: {first_line(exc)}"


def _outcome_from(kind: str, value: Any) -> Any:
    """What ``_outcome_of`` (or an "ok") sent, back as a value or an exception."""
    if kind == "ok":
        return value
    if kind == "load":
        return ModelLoadError(*value)
    if kind == "request":
        return RequestError(*value)
    return RuntimeError(value)


def _receive(sock: socket.socket) -> Any:
    """The next message, or None once the server's end is closed."""
    header = _read_exactly(sock, _HEADER)
    if header is None:
        return None
    data = _read_exactly(sock, int.from_bytes(header, "big"))
    return None if data is None else pickle.loads(data)


def _read_exactly(sock: socket.socket, size: int) -> bytearray | None:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return data


class _NextMessage:
    """Waits for the server's next message: awake, if it has been coming soon.

    A client that sends again as soon as it is answered (one client in a loop, a
    widget's next batch) is then caught without the host sleeping and being
    woken, a wake-up that at one client is a large part of a light model's
    latency.
    The host stays awake twice the recent gap between its answer and the next
    message, and not at all when that gap is longer than ``_AWAKE_AT_MOST``
    (sporadic requests), where staying awake would only burn a core. Under load
    the next batch is there already.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.gap = 0.0  # seconds, a moving average

    def wait(self) -> None:
        started = time.perf_counter()
        if self.gap < _AWAKE_AT_MOST:
            deadline = started + min(_AWAKE_AT_MOST, 2 * self.gap)
            while time.perf_counter() < deadline and not self._ready(0):
                pass
        self._ready(None)
        self.gap = 0.7 * self.gap + 0.3 * (time.perf_counter() - started)

    def _ready(self, timeout: float | None) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])


def host(sock: socket.socket) -> None:
    """Serve the server's requests until it closes its end. Versions are kept by the
    id of their load, so a version loaded again never meets the old one's unload."""
    models: dict[int, LoadedModel] = {}
    sending = threading.Lock()

    def reply(ident: int, outcome: tuple[str, Any]) -> None:
        with sending:
            sock.sendall(_frame((ident, outcome)))

    def load(ident: int, path: str, version: int) -> None:
        try:
            model = load_saved_model(Path(path), version)
        except Exception as exc:
            reply(ident, _outcome_of(exc))
            return
        models[ident] = model
        protos = {k: v.SerializeToString() for k, v in (model.signature_protos or {}).items()}
        reply(ident, ("ok", (ident, model.signatures, model.signature_defs, protos)))

    next_message = _NextMessage(sock)
    while True:
        next_message.wait()
        try:
            message = _receive(sock)
        except OSError:
            return
        if message is None:
            return  # the server is gone
        op, ident, payload = message
        if op == "load":
            threading.Thread(target=load, args=(ident, *payload), daemon=True).start()
        elif op == "unload":
            models.pop(payload, None)
        elif op == "batch":
            key, requests, max_rows = payload
            try:
                done = run_batch(models[key], requests, max_rows)
            except Exception as exc:  # a bug: fail this batch, keep the host
                reply(ident, _outcome_of(exc))
                continue
            wire = [_outcome_of(o) if isinstance(o, BaseException) else o for o in done.outcomes]
            reply(ident, ("ok", (wire, done.results, done.calls, done.seconds)))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when this stops
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        host(socket.socket(fileno=int(sys.argv[1])))
    except BrokenPipeError:
        pass  # the server went away while we answered it


if __name__ == "__main__":
    main()
