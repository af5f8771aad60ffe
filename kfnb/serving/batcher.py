"""The micro-batching worker: model calls in one background thread.

Requests queue from the event loop; the worker merges what queued meanwhile into
one signature call and hands each request its rows back (a lone request to a
quick model is answered in the caller's thread). TensorFlow is only used through
``LoadedModel.run``, never imported here. Depends on the codec (``RequestError``)
and on ``LoadedModel``, not on the version manager.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfnb.serving.codec import RequestError
from kfnb.serving.loader import LoadedModel, _first_line

__all__ = ["Batcher"]

log = logging.getLogger("kfnb.serving")


@dataclass
class _Job:
    model: LoadedModel
    signature: str
    inputs: dict[str, np.ndarray]
    rows: int | None
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop


BatchListener = Callable[[LoadedModel, int, int, float], None]


class Batcher:
    """Runs model calls in one background thread, merging what queued meanwhile.

    Requests queue; the worker takes everything that queued while the previous
    call ran (up to ``max_batch_rows`` rows), makes one signature call on the
    concatenation and splits the results back. At one client this is batch size
    1 with no added wait; under load batches grow with the load. Waiting a fixed
    time to fill a batch was measured to cost latency at low load and gain nothing.
    A merged call that fails is retried request by request, so one bad request
    cannot fail its neighbours. ``on_batch(model, requests, rows, seconds)`` is
    called after each signature call, from the thread that made it.

    ``run(..., alone=True)`` says the caller knows no other request can join
    this one (one client connected): then, if the worker is idle and the
    signature's last call took under ``inline_seconds``, the call is made in
    the caller's thread, as KServe calls its model.
    The hop to the worker and back costs two thread wake-ups (0.2 ms on a
    quiet machine, milliseconds on a busy VM); nobody else is waiting on the
    event loop meanwhile, except a new connection (a probe, a scrape), which
    waits at most ``inline_seconds``. A slower model still goes to the worker.
    """

    def __init__(
        self,
        max_batch_rows: int = 256,
        on_batch: BatchListener | None = None,
        inline_seconds: float = 0.05,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be at least 1")
        self.max_batch_rows = max_batch_rows
        self.inline_seconds = inline_seconds
        self._on_batch = on_batch
        self._working = False  # set by the worker thread around each batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="kfnb-batcher", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the worker (approximate)."""
        return self._queue.qsize()

    async def run(
        self,
        model: LoadedModel,
        signature: str,
        inputs: dict[str, np.ndarray],
        rows: int | None,
        alone: bool = False,
    ) -> dict[str, np.ndarray]:
        """The signature's outputs for these inputs, computed in the worker thread
        (or, for a lone request to a quick signature, in this one)."""
        self.start()
        if alone and self._may_inline(model, signature):
            outcome = self._call(model, signature, inputs, 1)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._queue.put(_Job(model, signature, inputs, rows, future, loop))
        return await future

    def _may_inline(self, model: LoadedModel, signature: str) -> bool:
        last = model.single_call_seconds.get(signature)
        return (
            last is not None
            and last < self.inline_seconds
            and not self._working
            and self._queue.empty()
        )

    def close(self, timeout: float = 5.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    # -- the worker thread

    def _work(self) -> None:
        held: _Job | None = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is None:
                return
            jobs, rows, stop = [job], job.rows or 1, False
            while rows < self.max_batch_rows:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stop = True
                    break
                if rows + (following.rows or 1) > self.max_batch_rows:
                    held = following
                    break
                jobs.append(following)
                rows += following.rows or 1
            self._working = True
            try:
                self._process(jobs)
            finally:
                self._working = False
            if stop:
                return

    def _process(self, jobs: Sequence[_Job]) -> None:
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            batchable = job.rows is not None and job.model.signatures[job.signature].batchable
            key = (id(job.model), job.signature) if batchable else id(job)
            groups.setdefault(key, []).append(job)
        done: list[tuple[_Job, dict[str, np.ndarray] | BaseException]] = []
        for group in groups.values():
            done.extend(self._run_group(group))
        # Idle before the answers go out, so a request sent in reply finds it so.
        self._working = False
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, outcome in done:
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

    def _run_group(
        self, jobs: list[_Job]
    ) -> list[tuple[_Job, dict[str, np.ndarray] | BaseException]]:
        if len(jobs) == 1:
            return [(jobs[0], self._call(jobs[0].model, jobs[0].signature, jobs[0].inputs, 1))]
        first = jobs[0]
        merged = {k: np.concatenate([j.inputs[k] for j in jobs]) for k in first.inputs}
        total = sum(j.rows or 0 for j in jobs)
        outcome = self._call(first.model, first.signature, merged, len(jobs))
        if isinstance(outcome, dict) and all(
            v.ndim and v.shape[0] == total for v in outcome.values()
        ):
            results: list[tuple[_Job, dict[str, np.ndarray] | BaseException]] = []
            start = 0
            for job in jobs:
                end = start + (job.rows or 0)
                results.append((job, {k: v[start:end] for k, v in outcome.items()}))
                start = end
            return results
        # The merged call failed (or did not keep rows apart): each request on its own.
        return [(j, self._call(j.model, j.signature, j.inputs, 1)) for j in jobs]

    def _call(
        self, model: LoadedModel, signature: str, inputs: dict[str, np.ndarray], requests: int
    ) -> dict[str, np.ndarray] | BaseException:
        started = time.perf_counter()
        try:
            outcome: dict[str, np.ndarray] | BaseException = model.run(signature, inputs)
        except Exception as exc:
            outcome = _prediction_error(exc)
        seconds = time.perf_counter() - started
        if requests == 1:
            model.single_call_seconds[signature] = seconds
        if self._on_batch is not None:
            rows = max((len(v) if v.ndim else 1 for v in inputs.values()), default=0)
            try:
                self._on_batch(model, requests, rows, seconds)
            except Exception:  # metrics must never break serving
                log.exception("batch listener failed")
        return outcome


def _prediction_error(exc: Exception) -> BaseException:
    """TensorFlow's INVALID_ARGUMENT is the request's fault (400); anything else is ours."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "InvalidArgumentError" in names:
        return RequestError(_first_line(exc), 400)
    return exc


def _deliver(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in results:
        if future.done():  # the client went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
