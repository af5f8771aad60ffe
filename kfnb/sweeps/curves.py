"""Katib trials' objective curves, read from each trial's own artifacts in the store.

Katib's Trial status holds only the final observation; the per-epoch values are in
what the trial's chief uploads beside its job's other files: ``<trial>/tensorboard/``
and ``<trial>/reports.jsonl`` (`katib.py` names each trial's job, and its place in
the store, after the Trial). A `TrialCurves` keeps one reader per trial between
refreshes of a view: the TensorBoard events through the job's store mirror (only the
bytes added since are fetched), ``reports.jsonl`` from the length already read on;
a trial that has ended is read once more, then not again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from kfnb.sweeps.objective import REPORTS, parse_reports, read_metric

if TYPE_CHECKING:
    from kfnb.job import Job
    from kfnb.metrics import Points, ScalarReader
    from kfnb.sweeps.record import TrialState

__all__ = ["TrialCurves"]

logger = logging.getLogger(__name__)
_ENDED = ("Succeeded", "Failed", "EarlyStopped", "MetricsUnavailable", "Killed")
# After a failed read (the store unreachable from here costs ~0.6 s a call in retries),
# the store is left alone this long, so a view refreshing each second stays responsive.
RETRY_SECONDS = 30.0


class _TrialReader:
    """One trial's metrics, read a little more at each `read`."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.scalars: ScalarReader | None = job.scalar_reader()
        self.reports = b""  # reports.jsonl as far as read: the file only grows
        self.final = False  # read once after the trial ended: nothing more will come

    def read(self) -> dict[str, Points]:
        found: dict[str, Points] = {}
        if self.scalars is not None:
            for tag, runs in self.scalars.scalars().items():
                for run, points in runs.items():
                    found[tag if run == "." else f"{run}/{tag}"] = points
        found.update(parse_reports(self._reports().decode("utf-8", "replace")))
        return found

    def _reports(self) -> bytes:
        root = self.job.artifacts  # a pvc:// store: this notebook's mount of it
        if root is not None:
            path = root / REPORTS
            return path.read_bytes() if path.is_file() else b""
        store = self.job._store()
        key = f"{self.job.name}/{REPORTS}"
        size = store.size(key)
        if size is not None and size > len(self.reports):
            self.reports += store.read(key, offset=len(self.reports)) or b""
        elif size is not None and size < len(self.reports):  # rewritten: start again
            self.reports = store.read(key) or b""
        return self.reports

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()


class TrialCurves:
    """The objective curves of a cluster sweep's trials, kept current cheaply."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self._readers: dict[str, _TrialReader] = {}
        self._curves: dict[str, list[tuple[int, float]]] = {}
        self._retry_at = 0.0  # monotonic time before which the store is not read again
        # A view's thread and the kernel (sweep.plot()) may refresh one Sweep at once:
        # one reader appends each trial's new bytes, never two.
        self._lock = threading.Lock()

    def fill(self, trials: list[TrialState]) -> None:
        """Set each trial's ``curve`` from its artifacts; a trial whose store has none
        (yet, or unreachable) keeps the curve it came with (Katib's final value)."""
        with self._lock:
            self._fill(trials)

    def _fill(self, trials: list[TrialState]) -> None:
        from kfnb.job import Job

        for trial in trials:
            reader = self._readers.get(trial.name)
            if (reader is None or not reader.final) and time.monotonic() >= self._retry_at:
                try:
                    if reader is None:
                        reader = self._readers[trial.name] = _TrialReader(Job.attach(trial.name))
                    ended = trial.state in _ENDED  # before reading: no value read is missed
                    curve = read_metric(reader.read(), self.metric)
                    if curve:
                        self._curves[trial.name] = curve
                    if ended:
                        reader.final = True
                        reader.close()
                except Exception as err:  # noqa: BLE001 - a view refresh never fails on this
                    logger.debug("kfnb: reading trial %s's metrics: %s", trial.name, err)
                    self._retry_at = time.monotonic() + RETRY_SECONDS
            if self._curves.get(trial.name):
                trial.curve = list(self._curves[trial.name])

    def close(self) -> None:
        with self._lock:
            for reader in self._readers.values():
                reader.close()
