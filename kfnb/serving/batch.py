"""One batch, where the model is: check what came as JSON, merge, call, split.

    done = run_batch(model, [checked_request, b'{"instances": ...}'], max_rows)
    checked, outputs = done.answer(1, the_body)   # or raises why it failed

The batcher (in the HTTP process's event loop) decides which requests go
together; this runs them, in the model process (``model_host``) or, for an
in-process model, in the batcher's worker thread. Requests arrive either
checked (``PredictRequest``: gRPC's, or JSON the event loop had time to check)
or as the JSON body still to check, so that a busy HTTP process can leave the
parsing to the model's process (see ``Batcher``). Pure numpy: TensorFlow is only
behind ``LoadedModel.run``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from kfnb._util import first_line
from kfnb.serving.codec import PredictRequest, RequestError, decode_body
from kfnb.serving.loader import LoadedModel

__all__ = ["Batch", "Call", "Rows", "Request", "prediction_error", "run_batch"]

Request = PredictRequest | bytes  # checked, or a JSON body to check here


class Rows(NamedTuple):
    """Where one request's answer is: rows ``start:stop`` of the outputs of call
    ``result`` (all of them when both are None). A tuple, so that a batch's
    answers pickle in microseconds."""

    result: int
    start: int | None
    stop: int | None
    checked: PredictRequest | None  # as checked here (less its inputs); None if it came so


# A request's answer, or why it failed (a RequestError is the client's fault).
Outcome = Rows | BaseException
Checked = tuple[int, PredictRequest, bool]  # index in the batch, request, checked here


class Call(NamedTuple):
    """One signature call, for the metrics: which requests of the batch (by index)
    and how many rows it took, and how long."""

    signature: str
    requests: tuple[int, ...]
    rows: int
    seconds: float


@dataclass
class Batch:
    """A batch run: each request's outcome, in order, the outputs of the calls that
    answered, the signature calls made, and how long it all took (checking
    included: the batcher's measure of how busy the model's side is)."""

    outcomes: list[Outcome]
    results: list[dict[str, np.ndarray]]
    calls: list[Call]
    seconds: float

    def answer(self, index: int, sent: Request) -> tuple[PredictRequest, dict[str, np.ndarray]]:
        """Request ``index`` as checked, and its outputs; raises why it failed."""
        outcome = self.outcomes[index]
        if isinstance(outcome, BaseException):
            raise outcome
        outputs = self.results[outcome.result]
        if outcome.start is not None or outcome.stop is not None:
            outputs = {k: v[outcome.start : outcome.stop] for k, v in outputs.items()}
        checked = outcome.checked or sent
        assert isinstance(checked, PredictRequest)  # a body comes back checked
        return checked, outputs


def run_batch(model: LoadedModel, requests: Sequence[Request], max_rows: int) -> Batch:
    """Check, merge, call and split ``requests``.

    Requests for the same batchable signature are merged into calls of up to
    ``max_rows`` rows and their results split back. A merged call that fails is
    retried request by request, so one bad request cannot fail its neighbours.
    """
    started = time.perf_counter()
    done = Batch([], [], [], 0.0)
    outcomes: dict[int, Outcome] = {}
    groups: dict[Any, list[Checked]] = {}
    for index, request in enumerate(requests):
        checked_here = isinstance(request, bytes)
        if isinstance(request, bytes):
            try:
                request = decode_body(request, model.signatures)
            except RequestError as exc:
                outcomes[index] = exc
                continue
        batchable = request.rows is not None and model.signatures[request.signature].batchable
        key = request.signature if batchable else ("alone", index)
        groups.setdefault(key, []).append((index, request, checked_here))
    for group in groups.values():
        for chunk in _chunks(group, max_rows):
            for index, outcome in _run_merged(model, chunk, done):
                outcomes[index] = outcome
    done.outcomes.extend(outcomes[index] for index in range(len(requests)))
    done.seconds = time.perf_counter() - started
    return done


def _chunks(group: list[Checked], max_rows: int) -> list[list[Checked]]:
    """The group in order, in chunks of up to ``max_rows`` rows (at least one request each)."""
    chunks: list[list[Checked]] = []
    rows = 0
    for item in group:
        size = item[1].rows or 1
        if not chunks or rows + size > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(item)
        rows += size
    return chunks


def _run_merged(model: LoadedModel, chunk: list[Checked], done: Batch) -> list[tuple[int, Outcome]]:
    if len(chunk) == 1:
        return [_run_alone(model, chunk[0], done)]
    first = chunk[0][1]
    merged = {k: np.concatenate([r.inputs[k] for _, r, _ in chunk]) for k in first.inputs}
    total = sum(r.rows or 0 for _, r, _ in chunk)
    result = _call(model, first.signature, merged, tuple(i for i, _, _ in chunk), done)
    if isinstance(result, int) and all(
        v.ndim and v.shape[0] == total for v in done.results[result].values()
    ):
        answers: list[tuple[int, Outcome]] = []
        start = 0
        for index, request, checked_here in chunk:
            stop = start + (request.rows or 0)
            answers.append((index, Rows(result, start, stop, _header(request, checked_here))))
            start = stop
        return answers
    # The merged call failed (or did not keep rows apart): each request on its own.
    return [_run_alone(model, item, done) for item in chunk]


def _run_alone(model: LoadedModel, item: Checked, done: Batch) -> tuple[int, Outcome]:
    index, request, checked_here = item
    result = _call(model, request.signature, request.inputs, (index,), done)
    if isinstance(result, BaseException):
        return index, result
    return index, Rows(result, None, None, _header(request, checked_here))


def _header(request: PredictRequest, checked_here: bool) -> PredictRequest | None:
    """What the batcher needs back of a request checked here: all but its inputs."""
    return replace(request, inputs={}) if checked_here else None


def _call(
    model: LoadedModel,
    signature: str,
    inputs: dict[str, np.ndarray],
    requests: tuple[int, ...],
    done: Batch,
) -> int | BaseException:
    """One signature call, timed: the index of its outputs in ``done.results``, or
    its failure (returned, not raised)."""
    started = time.perf_counter()
    result: int | BaseException
    try:
        done.results.append(model.run(signature, inputs))
        result = len(done.results) - 1
    except Exception as exc:
        result = prediction_error(exc)
    rows = max((len(v) if v.ndim else 1 for v in inputs.values()), default=0)
    done.calls.append(Call(signature, requests, rows, time.perf_counter() - started))
    return result


def prediction_error(exc: BaseException) -> BaseException:
    """TensorFlow's INVALID_ARGUMENT is the request's fault (400); anything else is ours."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "InvalidArgumentError" in names:
        return RequestError(first_line(exc), 400)
    return exc
