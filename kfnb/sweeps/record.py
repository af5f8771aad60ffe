"""A sweep on disk: its record (``<home>/sweeps/<name>.json``, like a job's), and its
directory (``<home>/sweeps/<name>/``: the bundle its trials share, the runner's state,
pid and log), so ``%kfnb sweeps`` and attaching survive a kernel restart.

Like job records, a sweep's record keeps no environment values, keys or tokens: the
submit options it keeps are the job's shape (replicas, image, store URL, flags).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfnb._util import private_dir, write_json
from kfnb.config import settings
from kfnb.records import RecordDir, record_fields, record_json

__all__ = ["SweepRecord", "TrialState", "delete_sweep_record", "list_sweeps", "load_sweep"]


@dataclass(frozen=True)
class SweepRecord:
    name: str
    backend: str  # "local" (kfnb's runner) or "kubernetes" (a Katib Experiment)
    storage: str
    spec: dict[str, Any]  # SweepSpec.to_json()
    options: dict[str, Any] = field(default_factory=dict)  # submit()'s, for each trial
    namespace: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepRecord:
        return cls(**record_fields(cls, data, old_key="version"))


@dataclass
class TrialState:
    """One trial as the runner (or Katib) sees it. ``state`` is Katib's word: Created,
    Running, Succeeded, Failed, EarlyStopped, MetricsUnavailable or Killed."""

    number: int
    name: str
    params: dict[str, Any]
    state: str = "Created"
    objective: float | None = None
    started: float | None = None
    finished: float | None = None
    message: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)  # the objective per step

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialState:
        found = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        found["curve"] = [(int(s), float(v)) for s, v in found.get("curve", [])]
        return cls(**found)


def sweeps_dir() -> Path:
    return Path(settings().home).expanduser() / "sweeps"


def sweep_dir(name: str) -> Path:
    from kfnb.spec import validate_name

    return sweeps_dir() / validate_name(name, "sweep name")  # never a path: deleted whole


def _records() -> RecordDir[SweepRecord]:
    return RecordDir(sweeps_dir(), SweepRecord.from_json, "sweep name")


def save_sweep(record: SweepRecord) -> None:
    _records().save(record.name, record.to_json())


def load_sweep(name: str) -> SweepRecord | None:
    return _records().load(name)


def delete_sweep_record(name: str) -> None:
    _records().delete(name)


def list_sweeps() -> list[SweepRecord]:
    return sorted(_records().all(), key=lambda r: r.created)


def write_state(name: str, state: dict[str, Any]) -> None:
    private_dir(sweep_dir(name))
    write_json(sweep_dir(name) / "state.json", state)


def read_state(name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((sweep_dir(name) / "state.json").read_text()))
    except (OSError, ValueError):
        return None
