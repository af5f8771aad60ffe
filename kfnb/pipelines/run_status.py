"""A pipeline run's state: the run's phase and each step's, as Argo's node statuses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# Argo's node phases; Omitted is a step that never started because the run failed first.
FINISHED = frozenset({"Succeeded", "Skipped", "Failed", "Error", "Omitted"})


@dataclass(frozen=True)
class StepState:
    phase: str = "Pending"
    job: str = ""
    attempt: int = 0
    started: float | None = None
    finished: float | None = None
    message: str = ""
    traceback: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        import time

        return (self.finished or time.time()) - self.started


@dataclass(frozen=True)
class RunStatus:
    name: str
    pipeline: str
    backend: str
    phase: str = "Pending"
    started: float | None = None
    finished: float | None = None
    message: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, StepState] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.phase in ("Succeeded", "Failed", "Error")

    def with_step(self, step: str, **changes: Any) -> RunStatus:
        return replace(self, steps={**self.steps, step: replace(self.steps[step], **changes)})

    def with_run(self, **changes: Any) -> RunStatus:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunStatus:
        steps = {n: StepState(**s) for n, s in data.pop("steps", {}).items()}
        return cls(**data, steps=steps)

    @classmethod
    def read(cls, path: Path) -> RunStatus:
        return cls.from_json(json.loads(path.read_text()))
