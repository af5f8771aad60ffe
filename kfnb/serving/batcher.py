"""Micro-batching in the event loop: what queued while the model ran goes in its next batch.

Requests queue in the event loop; whenever the model is idle, everything queued
goes to it as one batch (``batch.run_batch`` merges, calls and splits there). A
version in the model process (``LoadedModel.remote``) is awaited over its
socket, so the event loop keeps reading requests meanwhile; an in-process one
(tests, other runtimes) runs in one worker thread. TensorFlow is never
imported here.

JSON bodies are checked (parsed, converted to arrays, compared with the
signature) by whichever process has time: at one image per request checking is
a large share of a request's cost. Checked in the HTTP process, a light model's
server is bound by this process's one core while the model's sits partly idle;
checked in the model process, a heavy model waits on it. So neither place is
right for every model (the README's serving benchmarks have the figures), and a
body is checked as it arrives while the model process is the busier one
(``_Balance``); otherwise it is queued as it came, and the event loop checks
queued bodies one per turn while a batch runs, so that only what it had no time
for is left to the model's side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from kfnb.serving.batch import Batch, Call, Request, run_batch
from kfnb.serving.codec import PredictRequest, RequestError, decode_body
from kfnb.serving.loader import LoadedModel

__all__ = ["Batcher"]

log = logging.getLogger("kfnb.serving")

# JSON bodies larger than this are never checked in the event loop: one would
# hold it for milliseconds while small requests wait.
CHECK_HERE_BYTES = 64 * 1024


@dataclass
class _Job:
    model: LoadedModel
    request: Request
    future: asyncio.Future[tuple[PredictRequest, dict[str, np.ndarray]]]
    taken: bool = False  # in a batch already: too late to check it here


BatchListener = Callable[[LoadedModel, int, int, float], None]


class Batcher:
    """Makes the model calls of one event loop, merging what queued meanwhile.

    The first request starts a batch at the loop's next turn (so the requests read
    in this turn join it); while it runs, requests queue, and the next batch takes
    all of them (up to ``max_batch_rows`` rows). At one client this is batch size
    1 with no added wait; under load batches grow with the load. Waiting a fixed
    time to fill a batch was measured to cost latency at low load and gain
    nothing. ``on_batch(model, requests, rows, seconds)`` is called after each
    signature call.

    ``run(..., alone=True)`` says the caller knows no other request can join
    this one (one client connected). Then a request for the model process goes
    there at once and its answer is read awake (``ModelHost._wait_awake``); for
    an in-process model whose last call for one request took under
    ``inline_seconds``, the call is made right here, as KServe calls its model:
    the hop to the worker thread and back costs two thread wake-ups
    (milliseconds on a busy VM).
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
        self._unchecked: deque[_Job] = deque()  # queued JSON bodies, oldest first
        self._calling: asyncio.Task[Any] | None = None
        self._checking: asyncio.Task[None] | None = None
        self._worker: ThreadPoolExecutor | None = None  # for in-process models
        self._balance = _Balance()

    @property
    def pending(self) -> int:
        """Requests queued for the next batch."""
        return len(self._queue)

    async def run(
        self, model: LoadedModel, request: Request, alone: bool = False
    ) -> tuple[PredictRequest, dict[str, np.ndarray]]:
        """The request as checked and the signature's outputs for it, from a batch
        shared with the requests queued alongside. A bad request raises RequestError."""
        if _checkable_here(request):
            # An in-process model shares this process's time anyway; a model process
            # busier than this one had better spend its time on the model alone.
            if model.remote is None or self._balance.model_is_busier:
                request = decode_body(request, model.signatures)
        if alone and self._may_inline(model, request):
            done = run_batch(model, [request], self.max_batch_rows)
            self._record(model, done.calls, [1])
            return done.answer(0, request)
        loop = asyncio.get_running_loop()
        if alone and model.remote is not None and self._calling is None:
            return await self._run_alone(model, request)
        job = _Job(model, request, loop.create_future())
        self._queue.append(job)
        if self._calling is None:
            self._calling = loop.create_task(self._drain())
        elif _checkable_here(request):
            self._unchecked.append(job)
            if self._checking is None:
                self._checking = loop.create_task(self._check_while_the_model_runs())
        return await job.future

    async def _run_alone(
        self, model: LoadedModel, request: Request
    ) -> tuple[PredictRequest, dict[str, np.ndarray]]:
        """A lone client's request, straight to the model process, waiting awake."""
        self._calling = asyncio.current_task()
        try:
            done = await self._execute(model, [request], [1], awake=True)
        finally:
            self._calling = None
            if self._queue:  # someone came meanwhile
                self._calling = asyncio.get_running_loop().create_task(self._drain())
        return done.answer(0, request)

    def _may_inline(self, model: LoadedModel, request: Request) -> bool:
        if model.remote is not None or not isinstance(request, PredictRequest):
            return False
        last = model.single_call_seconds.get(request.signature)
        return last is not None and last < self.inline_seconds and self._calling is None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)

    # -- the batches

    async def _drain(self) -> None:
        try:
            while self._queue:
                jobs = self._take()
                by_model: dict[int, list[_Job]] = {}
                for job in jobs:
                    by_model.setdefault(id(job.model), []).append(job)
                for group in by_model.values():
                    try:
                        await self._run(group)
                    except Exception as exc:  # a bug here must fail these requests, not hang them
                        log.exception("a batch of %d requests failed", len(group))
                        for job in group:
                            _settle(job, exc)
        finally:
            self._calling = None

    def _take(self) -> list[_Job]:
        """The queued requests, oldest first, up to ``max_batch_rows`` rows (at least
        one; a JSON body not yet checked counts as one row)."""
        jobs: list[_Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            size = (job.request.rows or 1) if isinstance(job.request, PredictRequest) else 1
            if jobs and rows + size > self.max_batch_rows:
                break
            self._queue.popleft()
            job.taken = True
            if not job.future.done():  # checked here and refused, or the client went away
                jobs.append(job)
                rows += size
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        """One batch for one model. Checked requests for the same signature are merged
        here into one request (pickling costs per object, so one array goes over far
        quicker than many small ones), JSON bodies go as they are; the model's side
        merges them all."""
        model = jobs[0].model
        parts: list[list[_Job]] = []
        by_signature: dict[str, list[_Job]] = {}
        for job in jobs:
            request = job.request
            if isinstance(request, bytes) or not _batchable(model, request):
                parts.append([job])
                continue
            if request.signature not in by_signature:
                by_signature[request.signature] = []
                parts.append(by_signature[request.signature])
            by_signature[request.signature].append(job)
        items = [_merged(part) for part in parts]
        done = await self._execute(model, items, [len(part) for part in parts])
        alone: list[_Job] = []
        for index, part in enumerate(parts):
            try:
                checked, outputs = done.answer(index, items[index])
            except Exception as exc:
                if len(part) > 1:  # one bad request fails its merged call: each on its own
                    alone.extend(part)
                else:
                    _settle(part[0], exc)
                continue
            if len(part) == 1:
                _settle(part[0], (checked, outputs))
                continue
            start = 0
            for job in part:
                assert isinstance(job.request, PredictRequest)
                stop = start + (job.request.rows or 0)
                _settle(job, (job.request, {k: v[start:stop] for k, v in outputs.items()}))
                start = stop
        for job in alone:
            single = await self._execute(model, [job.request], [1])
            try:
                _settle(job, single.answer(0, job.request))
            except Exception as exc:
                _settle(job, exc)

    async def _execute(
        self, model: LoadedModel, requests: list[Request], sizes: list[int], awake: bool = False
    ) -> Batch:
        """``run_batch`` in the model process, or in the worker thread; ``sizes`` are
        how many clients' requests each of ``requests`` merges."""
        done: Batch
        if model.remote is not None:
            try:
                done = await model.remote(requests, self.max_batch_rows, awake)
            except Exception as exc:  # the model process died: every request fails with it
                return Batch([exc] * len(requests), [], [], 0.0)
            self._balance.model_was_busy(done.seconds)
        else:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="kfnb-batcher")
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(
                self._worker, run_batch, model, requests, self.max_batch_rows
            )
        self._record(model, done.calls, sizes)
        return done

    async def _check_while_the_model_runs(self) -> None:
        """Check queued JSON bodies here, one per turn of the loop, while a batch runs.

        Reading requests comes first: a turn of the loop handles all the sockets
        that are ready before this checks one more body, so a busy loop leaves
        most bodies to the model's side, and an idle one checks them all.
        """
        try:
            while self._unchecked and self._calling is not None:
                job = self._unchecked.popleft()
                if isinstance(job.request, bytes) and not job.taken and not job.future.done():
                    try:
                        job.request = decode_body(job.request, job.model.signatures)
                    except RequestError as exc:
                        job.future.set_exception(exc)
                await asyncio.sleep(0)
        finally:
            self._unchecked.clear()  # taken by a batch meanwhile, or left to the model's side
            self._checking = None

    def _record(self, model: LoadedModel, calls: list[Call], sizes: list[int]) -> None:
        for call in calls:
            requests = sum(sizes[i] for i in call.requests)
            if requests == 1:
                model.single_call_seconds[call.signature] = call.seconds
            if self._on_batch is not None:
                try:
                    self._on_batch(model, requests, call.rows, call.seconds)
                except Exception:  # metrics must never break serving
                    log.exception("batch listener failed")


def _checkable_here(request: Request) -> TypeGuard[bytes]:
    """A JSON body small enough to check in the event loop."""
    return isinstance(request, bytes) and len(request) <= CHECK_HERE_BYTES


def _batchable(model: LoadedModel, request: PredictRequest) -> bool:
    return request.rows is not None and model.signatures[request.signature].batchable


def _merged(part: list[_Job]) -> Request:
    """The part's one request, or its checked requests as one."""
    if len(part) == 1:
        return part[0].request
    requests = [job.request for job in part if isinstance(job.request, PredictRequest)]
    first = requests[0]
    inputs = {k: np.concatenate([r.inputs[k] for r in requests]) for k in first.inputs}
    rows = sum(r.rows or 0 for r in requests)
    return PredictRequest(first.signature, inputs, rows, first.row_format)


def _settle(
    job: _Job, outcome: tuple[PredictRequest, dict[str, np.ndarray]] | BaseException
) -> None:
    if job.future.done():  # the client went away
        return
    if isinstance(outcome, BaseException):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


class _Balance:
    """Whether the model process is busier than this one, over the last tenth of a second.

    The model's busy time is the time its batches took there (not the time they
    were out: a reply waits in the socket while this loop is busy); this
    process's is its CPU time (its one busy thread is the event loop).
    """

    WINDOW = 0.1  # seconds

    def __init__(self) -> None:
        self.model_is_busier = False
        self._started = time.perf_counter()
        self._cpu = time.process_time()
        self._model_busy = 0.0

    def model_was_busy(self, seconds: float) -> None:
        self._model_busy += seconds
        now = time.perf_counter()
        wall = now - self._started
        if wall >= self.WINDOW:
            cpu = time.process_time()
            self.model_is_busier = self._model_busy > cpu - self._cpu
            self._started, self._cpu, self._model_busy = now, cpu, 0.0
