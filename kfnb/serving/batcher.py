"""Micro-batching: the model calls, merging the requests that queue meanwhile.

Requests queue in the event loop; whenever no call is running, everything queued
goes into the next one. A version in the model process (``LoadedModel.remote``)
is awaited over its socket, so the event loop keeps reading requests while
TensorFlow runs; an in-process one (tests, other runtimes) runs in one worker
thread. TensorFlow is never imported here. Depends on the codec
(``RequestError``) and on ``LoadedModel``, not on the version manager.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfnb.serving.codec import RequestError
from kfnb.serving.loader import LoadedModel, _first_line

__all__ = ["Batcher"]

log = logging.getLogger("kfnb.serving")

Outcome = dict[str, np.ndarray] | BaseException


@dataclass
class _Job:
    model: LoadedModel
    signature: str
    inputs: dict[str, np.ndarray]
    rows: int | None
    future: asyncio.Future[dict[str, np.ndarray]]


BatchListener = Callable[[LoadedModel, int, int, float], None]


class Batcher:
    """Makes the model calls of one event loop, merging what queued meanwhile.

    The first request starts a call at the loop's next turn (so the requests read
    in this turn join it); while a call runs, requests queue, and the next call
    takes all of them (up to ``max_batch_rows`` rows) on their concatenation and
    splits the results back. At one client this is batch size 1 with no added
    wait; under load batches grow with the load. Waiting a fixed time to fill a
    batch was measured to cost latency at low load and gain nothing. A merged
    call that fails is retried request by request, so one bad request cannot fail
    its neighbours. ``on_batch(model, requests, rows, seconds)`` is called after
    each signature call.

    ``run(..., alone=True)`` says the caller knows no other request can join
    this one (one client connected): then, for an in-process model whose last
    call for one request took under ``inline_seconds``, the call is made right
    here, as KServe calls its model: the hop to the worker thread and back costs
    two thread wake-ups (milliseconds on a busy VM). Nobody else waits on the
    event loop meanwhile, except a new connection (a probe, a scrape).
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
        self._queue: deque[_Job] = deque()
        self._calling: asyncio.Task[None] | None = None
        self._worker: ThreadPoolExecutor | None = None  # for in-process models

    @property
    def pending(self) -> int:
        """Requests queued for the next call."""
        return len(self._queue)

    async def run(
        self,
        model: LoadedModel,
        signature: str,
        inputs: dict[str, np.ndarray],
        rows: int | None,
        alone: bool = False,
    ) -> dict[str, np.ndarray]:
        """The signature's outputs for these inputs, from a call shared with the
        requests queued alongside (or, for a lone request, a call of its own)."""
        if alone and self._may_inline(model, signature):
            outcome = await self._call(model, signature, inputs, 1, here=True)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._queue.append(_Job(model, signature, inputs, rows, future))
        if self._calling is None:
            self._calling = loop.create_task(self._drain())
        return await future

    def _may_inline(self, model: LoadedModel, signature: str) -> bool:
        last = model.single_call_seconds.get(signature)
        return (
            model.remote is None
            and last is not None
            and last < self.inline_seconds
            and self._calling is None
        )

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    # -- the calls

    async def _drain(self) -> None:
        try:
            while self._queue:
                jobs = self._take()
                try:
                    await self._process(jobs)
                except Exception as exc:  # a bug here must fail these requests, not hang them
                    log.exception("a batch of %d requests failed", len(jobs))
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
        finally:
            self._calling = None

    def _take(self) -> list[_Job]:
        """The queued requests, oldest first, up to ``max_batch_rows`` rows (at least one)."""
        jobs = [self._queue.popleft()]
        rows = jobs[0].rows or 1
        while self._queue and rows + (self._queue[0].rows or 1) <= self.max_batch_rows:
            job = self._queue.popleft()
            jobs.append(job)
            rows += job.rows or 1
        return jobs

    async def _process(self, jobs: Sequence[_Job]) -> None:
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            batchable = job.rows is not None and job.model.signatures[job.signature].batchable
            key = (id(job.model), job.signature) if batchable else id(job)
            groups.setdefault(key, []).append(job)
        for group in groups.values():
            for job, outcome in await self._run_group(group):
                if job.future.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    async def _run_group(self, jobs: list[_Job]) -> list[tuple[_Job, Outcome]]:
        first = jobs[0]
        if len(jobs) == 1:
            return [(first, await self._call(first.model, first.signature, first.inputs, 1))]
        merged = {k: np.concatenate([j.inputs[k] for j in jobs]) for k in first.inputs}
        total = sum(j.rows or 0 for j in jobs)
        outcome = await self._call(first.model, first.signature, merged, len(jobs))
        if isinstance(outcome, dict) and all(
            v.ndim and v.shape[0] == total for v in outcome.values()
        ):
            results: list[tuple[_Job, Outcome]] = []
            start = 0
            for job in jobs:
                end = start + (job.rows or 0)
                results.append((job, {k: v[start:end] for k, v in outcome.items()}))
                start = end
            return results
        # The merged call failed (or did not keep rows apart): each request on its own.
        return [(j, await self._call(j.model, j.signature, j.inputs, 1)) for j in jobs]

    async def _call(
        self,
        model: LoadedModel,
        signature: str,
        inputs: dict[str, np.ndarray],
        requests: int,
        here: bool = False,
    ) -> Outcome:
        """One signature call, timed and counted: in this thread (``here``, for an
        in-process model), in the model process, or in the worker thread."""
        started = time.perf_counter()
        outcome: Outcome
        try:
            if here:
                outcome = model.run(signature, inputs)
            elif model.remote is not None:
                outcome = {
                    k: np.asarray(v) for k, v in (await model.remote(signature, inputs)).items()
                }
            else:
                if self._worker is None:
                    self._worker = ThreadPoolExecutor(1, thread_name_prefix="kfnb-batcher")
                loop = asyncio.get_running_loop()
                outcome = await loop.run_in_executor(self._worker, model.run, signature, inputs)
        except Exception as exc:
            outcome = _prediction_error(exc)
        self._record(model, signature, inputs, requests, time.perf_counter() - started)
        return outcome

    def _record(
        self,
        model: LoadedModel,
        signature: str,
        inputs: dict[str, np.ndarray],
        requests: int,
        seconds: float,
    ) -> None:
        if requests == 1:
            model.single_call_seconds[signature] = seconds
        if self._on_batch is not None:
            rows = max((len(v) if v.ndim else 1 for v in inputs.values()), default=0)
            try:
                self._on_batch(model, requests, rows, seconds)
            except Exception:  # metrics must never break serving
                log.exception("batch listener failed")


def _prediction_error(exc: Exception) -> BaseException:
    """TensorFlow's INVALID_ARGUMENT is the request's fault (400); anything else is ours."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "InvalidArgumentError" in names:
        return RequestError(_first_line(exc), 400)
    return exc
