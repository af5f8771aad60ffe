"""Typed job state shared by the backends, the `Job` handle and the widgets.

The phases are the TFJob condition types of the Training Operator (``Suspended``
while ``runPolicy.suspend`` holds it, as Kueue does until it admits the job), plus
``Deleted`` for a job stopped by the user (on a cluster the TFJob is gone then;
its logs and artifacts stay in the store).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfnb._util import write_json


class StatusUnreadable(ValueError):
    """A status file that is not a job's status (cut short, edited, of another kfnb);
    the message names the file and why."""


PHASES = ("Created", "Suspended", "Running", "Restarting", "Succeeded", "Failed", "Deleted")
FINAL_PHASES = frozenset({"Succeeded", "Failed", "Deleted"})


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica, like one pod of a TFJob."""

    type: str  # chief, worker, ps, evaluator (TF_CONFIG's task type)
    index: int
    phase: str = "Pending"  # Pending, Running, Succeeded, Failed, Stopped (by kfnb)
    restarts: int = 0
    exit_code: int | None = None

    @property
    def name(self) -> str:
        return f"{self.type}-{self.index}"


@dataclass(frozen=True)
class JobStatus:
    name: str
    backend: str
    phase: str = "Created"
    reason: str = ""
    message: str = ""
    start_time: float | None = None  # when it started Running: elapsed counts from there
    completion_time: float | None = None
    replicas: tuple[ReplicaStatus, ...] = field(default_factory=tuple)
    # Store keys the job could not upload (an s3:// store that failed): its data is
    # then only in the replica's scratch directory.
    not_uploaded: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        return self.phase in FINAL_PHASES

    @property
    def elapsed(self) -> float | None:
        if self.start_time is None:
            return None
        import time

        return (self.completion_time or time.time()) - self.start_time

    def replica(self, name: str) -> ReplicaStatus | None:
        return next((r for r in self.replicas if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = 1
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        fields = {k: v for k, v in data.items() if k != "version"}
        fields["replicas"] = tuple(ReplicaStatus(**r) for r in data.get("replicas", ()))
        fields["not_uploaded"] = tuple(data.get("not_uploaded", ()))
        return cls(**fields)

    def write(self, path: Path) -> None:
        """Write atomically: readers in other processes never see half a file."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> JobStatus:
        """The status in ``path``; StatusUnreadable naming it when it holds none
        (FileNotFoundError when it is missing)."""
        return cls.parse(path.read_bytes(), str(path))

    @classmethod
    def parse(cls, data: bytes, where: str) -> JobStatus:
        """The status in ``data``, read from ``where``; StatusUnreadable if it is none."""
        try:
            return cls.from_json(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise StatusUnreadable(f"{where} is not a job status ({err})") from err

    @classmethod
    def unreadable(cls, name: str, backend: str, err: StatusUnreadable, running: bool) -> JobStatus:
        """What a job whose status file cannot be read shows, instead of a traceback."""
        then = (
            "its supervisor still runs and writes it again at its next change"
            if running
            else "the job's outcome is unknown: its logs say how far it got"
        )
        return cls(
            name, backend, "Running" if running else "Failed", "StatusUnreadable", f"{err}: {then}"
        )


def log_transition(log: logging.Logger, seen: dict[str, str], status: JobStatus) -> JobStatus:
    """``status``, logged at DEBUG when its phase is not the one in ``seen`` (then noted there).

    A backend keeps ``seen`` (job name -> the phase it last reported), so each change
    it observes is one log line, however often the widgets poll.
    """
    if seen.get(status.name) != status.phase:
        seen[status.name] = status.phase
        replicas = ", ".join(f"{r.name} {r.phase}" for r in status.replicas)
        log.debug(
            "job %s is %s%s%s",
            status.name,
            status.phase,
            f" ({status.reason})" if status.reason else "",
            f": {replicas}" if replicas else "",
        )
    return status
