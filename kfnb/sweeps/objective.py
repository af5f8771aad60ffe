"""A trial's objective as Katib's collectors read it: ``tfjob.report()`` lines, or the
TensorBoard scalars of its logdir.

The metric is a reported name (``accuracy``) or a TensorBoard ``run/tag``
(``validation/epoch_accuracy``: Keras' validation run, its epoch tag; a tag alone
reads the logdir's own events, then the ``train`` run). The trial's value is the
latest point, as the Experiments kfnb renders ask Katib for (``metricStrategies:
latest``): the model a trial saves is its last epoch's.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from kfnb.metrics import Points

if TYPE_CHECKING:
    from kfnb.job import Job

__all__ = ["REPORTS", "metric_names", "parse_reports", "read_metric", "trial_metrics"]

REPORTS = "reports.jsonl"  # kfnb.runtime.REPORTS: runtime.py imports nothing of kfnb
# Katib's StdOut collector's default filter: name=value on a line of its own.
_STDOUT_LINE = re.compile(r"^([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)\s*$")


def parse_reports(text: str) -> dict[str, Points]:
    """``reports.jsonl`` as ``{name: [(step, value)]}``; a torn last line is skipped."""
    found: dict[str, Points] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            found.setdefault(str(entry["name"]), []).append(
                (int(entry["step"]), float(entry["value"]))
            )
        except (ValueError, KeyError, TypeError):
            continue
    return found


def parse_stdout(text: str) -> dict[str, Points]:
    """``name=value`` lines of a log, as Katib's StdOut collector reads them, in order."""
    found: dict[str, Points] = {}
    for line in text.splitlines():
        match = _STDOUT_LINE.match(line.strip())
        if match and match[2] not in ("", "+", "-", "."):
            points = found.setdefault(match[1], [])
            points.append((len(points), float(match[2])))
    return found


def _reports(job: Job) -> dict[str, Points]:
    root = job.artifacts
    if root is not None and (root / REPORTS).is_file():
        return parse_reports((root / REPORTS).read_text())
    try:  # a remote store: the chief's runtime uploads the file as it grows
        data = job._store().read(f"{job.name}/{REPORTS}")
    except Exception:  # noqa: BLE001 - no store reachable reads as nothing reported yet
        data = None
    return parse_reports(data.decode()) if data else {}


def trial_metrics(job: Job) -> dict[str, Points]:
    """Every metric a trial wrote: its reports, and its scalars as ``run/tag``
    (``tag`` alone for the logdir's own events)."""
    found = {
        (tag if run == "." else f"{run}/{tag}"): points
        for tag, runs in job.scalars().items()
        for run, points in runs.items()
    }
    found.update(_reports(job))
    return found


def read_metric(metrics: dict[str, Points], metric: str) -> Points:
    """The points of ``metric`` among ``metrics`` (``tag`` also finds ``train/tag``)."""
    for name in (metric, f"train/{metric}"):
        if name in metrics:
            return sorted(metrics[name], key=lambda p: p[0])
    return []


def metric_names(metrics: dict[str, Points]) -> list[str]:
    return sorted(metrics)
