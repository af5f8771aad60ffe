"""Job records on disk, so ``%kfnb list`` and reattaching survive a kernel restart.

A record says where a job runs and where its artifacts are, never how to reach
them with credentials: no environment values, keys or tokens are written here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfnb.config import settings

RECORD_VERSION = 1


@dataclass(frozen=True)
class JobRecord:
    name: str
    backend: str
    storage: str
    created: float = field(default_factory=time.time)
    namespace: str = ""
    image: str = ""
    replicas: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"job record version {data.get('version')} is not {RECORD_VERSION}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def records_dir() -> Path:
    return Path(settings().home).expanduser() / "records"


def save_record(record: JobRecord) -> Path:
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    tmp.replace(path)
    return path


def load_record(name: str) -> JobRecord | None:
    try:
        return JobRecord.from_json(json.loads((records_dir() / f"{name}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def delete_record(name: str) -> None:
    (records_dir() / f"{name}.json").unlink(missing_ok=True)


def list_records() -> list[JobRecord]:
    directory = records_dir()
    if not directory.is_dir():
        return []
    records = (load_record(p.stem) for p in directory.glob("*.json"))
    return sorted((r for r in records if r is not None), key=lambda r: r.created)
