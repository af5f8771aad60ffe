"""`PredictionFeed`: batches of MNIST test digits and what a model server says about them.

The data behind `PredictionView` (which only draws its `FeedState`): which test
digits are shown, the model's answers, the running accuracy, "only mistakes",
and the last failure, kept as the `PredictorError` so a view can word it. No
ipywidgets here: the feed is used and tested without a front end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from kfnb.serving.client import Predictor, PredictorError, to_pixels

__all__ = ["FeedState", "PredictionFeed", "Tile"]

# "Only mistakes" scans this many digits per request while it looks for mistakes.
_SCAN_CHUNK = 128


@dataclass(frozen=True)
class Tile:
    """One test digit and the model's answer."""

    index: int  # into the feed's images
    label: int  # the true digit
    predicted: int
    confidence: float  # the predicted digit's probability

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


@dataclass(frozen=True)
class FeedState:
    """Everything a view shows; a new one after every change."""

    tiles: tuple[Tile, ...] = ()
    version: int | None = None  # the version that made these tiles (None: not known)
    latency: float | None = None  # seconds of the last predict request
    request_images: int = 0  # images in that request
    seen: int = 0  # distinct digits this version has predicted so far
    correct: int = 0  # of those, predicted right
    only_mistakes: bool = False
    searched: int = 0  # only mistakes: digits predicted to find these tiles
    error: PredictorError | None = None  # the last request's failure, cleared by a success

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.seen if self.seen else None


class PredictionFeed:
    """Batches of ``batch_size`` test digits predicted by ``predictor``.

    ``images``/``labels`` default to the MNIST held-out digits
    (`kfnb.serving.digits`). The running accuracy counts each digit once, with
    its latest answer, and only answers of the version now served: when a
    training job exports a new version, the count starts again for it. Methods
    never raise a `PredictorError`: it is kept in ``state.error``. Thread-safe.
    """

    def __init__(
        self,
        predictor: Predictor,
        images: Any = None,
        labels: Any = None,
        batch_size: int = 16,
        start: int = 0,
    ) -> None:
        if images is None or labels is None:
            from kfnb.serving.digits import load_test_digits

            digits = load_test_digits()
            images = digits.images if images is None else images
            labels = digits.labels if labels is None else labels
        self.images = np.asarray(images)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.images) != len(self.labels) or len(self.labels) == 0:
            raise ValueError(
                f"{len(self.images)} images and {len(self.labels)} labels: give one label per image"
            )
        to_pixels(self.images[:1])  # a wrong shape or dtype fails here, not in a thread
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.predictor = predictor
        self.batch_size = batch_size
        self.state = FeedState()
        self._lock = threading.RLock()
        self._start = start % len(self.labels)  # the current batch's first digit
        self._next = self._start  # where the next batch starts
        self._answers: dict[int, tuple[int | None, bool]] = {}  # index -> (version, correct)

    def __len__(self) -> int:
        return len(self.labels)

    # -- actions (each returns the new state)

    def load(self) -> FeedState:
        """Predict the current batch again (e.g. with a new model version)."""
        with self._lock:
            return self._load(self._start)

    def next_batch(self) -> FeedState:
        """Move on to the next digits (after the last one shown or searched)."""
        with self._lock:
            return self._load(self._next)

    def set_only_mistakes(self, on: bool) -> FeedState:
        """Show only the digits the model gets wrong (searched from the current batch on)."""
        with self._lock:
            self.state = replace(self.state, only_mistakes=on)
            return self._load(self._start)

    def served_version(self) -> int | None:
        """The version the server answers with now (``None``: unknown); raises `PredictorError`."""
        if self.predictor.version is not None:
            return self.predictor.version
        return self.predictor.status().serving

    # -- internals

    def _load(self, start: int) -> FeedState:
        try:
            version = self.served_version()
            if self.state.only_mistakes:
                tiles, searched, end, latency, sent = self._find_mistakes(start, version)
            else:
                indices = [(start + i) % len(self) for i in range(min(self.batch_size, len(self)))]
                tiles, latency = self._predict(indices, version)
                searched, end, sent = len(indices), indices[-1] + 1, len(indices)
        except PredictorError as err:
            self.state = replace(self.state, error=err)
            return self.state
        self._start, self._next = start, end % len(self)
        seen = [ok for v, ok in self._answers.values() if v == version]
        self.state = replace(
            self.state,
            tiles=tuple(tiles),
            version=version,
            latency=latency,
            request_images=sent,
            seen=len(seen),
            correct=sum(seen),
            searched=searched,
            error=None,
        )
        return self.state

    def _predict(self, indices: list[int], version: int | None) -> tuple[list[Tile], float]:
        answer = self.predictor.predict(self.images[indices])
        tiles = [
            Tile(i, int(self.labels[i]), int(p), float(c))
            for i, p, c in zip(indices, answer.labels, answer.confidences, strict=True)
        ]
        for tile in tiles:
            self._answers[tile.index] = (version, tile.correct)
        return tiles, answer.latency

    def _find_mistakes(
        self, start: int, version: int | None
    ) -> tuple[list[Tile], int, int, float, int]:
        """Up to ``batch_size`` wrong answers from ``start`` on, at most one pass over the set."""
        mistakes: list[Tile] = []
        searched, latency, sent = 0, 0.0, 0
        end = start
        while len(mistakes) < self.batch_size and searched < len(self):
            count = min(_SCAN_CHUNK, len(self) - searched)
            indices = [(start + searched + i) % len(self) for i in range(count)]
            tiles, latency = self._predict(indices, version)
            sent = count
            for tile in tiles:
                searched += 1
                end = tile.index + 1
                if not tile.correct:
                    mistakes.append(tile)
                    if len(mistakes) == self.batch_size:
                        break
        return mistakes, searched, end, latency, sent
