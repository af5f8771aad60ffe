"""Records on disk, so ``%kfnb list``, ``%serve list`` and reattaching survive a kernel restart.

Every record kfnb keeps (a job's here, a model server's in `kfnb.serving.local`) is
one JSON object in one schema: ``{"record_version": 1, <the dataclass's fields>}``,
written atomically, one file per name in a directory of its kind (`RecordDir`).
Records written before that schema said ``"version"`` (jobs) or ``"version_"``
(servers, whose ``"version"`` is the model's): they are still read.

A record says where a job runs and where its artifacts are, never how to reach
them with credentials: no environment values, keys or tokens are written here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from kfnb._util import private_dir, write_json
from kfnb.config import settings
from kfnb.spec import validate_name

RECORD_VERSION = 1
RECORD_KEY = "record_version"

T = TypeVar("T")


def record_json(obj: Any, **extra: Any) -> dict[str, Any]:
    """The record of dataclass ``obj`` (and ``extra`` keys): what `RecordDir.save` writes."""
    return {RECORD_KEY: RECORD_VERSION, **extra, **asdict(obj)}


def record_fields(cls: type, data: dict[str, Any], old_key: str) -> dict[str, Any]:
    """The fields of ``cls`` in record ``data``; ValueError for a version kfnb cannot read.

    ``old_key`` is where records from before the one schema kept their version.
    """
    version = data[RECORD_KEY] if RECORD_KEY in data else data.get(old_key)
    if version != RECORD_VERSION:
        raise ValueError(f"{cls.__name__} record version {version!r} is not {RECORD_VERSION}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


class RecordDir(Generic[T]):
    """``<directory>/<name>.json`` records of one kind, each parsed by ``parse``.

    A record that cannot be read (half-written by a kfnb of another version,
    edited by hand) reads as missing, so one bad file never hides the others.
    """

    def __init__(
        self, directory: Path, parse: Callable[[dict[str, Any]], T], called: str = "name"
    ) -> None:
        self.directory = directory
        self._parse = parse
        self.called = called  # how an error names a name: "job name", "server name"

    def path(self, name: str) -> Path:
        """The record's file; SpecError unless ``name`` is a name (never a path)."""
        return self.directory / f"{validate_name(name, self.called)}.json"

    def save(self, name: str, record: dict[str, Any]) -> Path:
        path = self.path(name)  # the name checked before anything is made
        private_dir(self.directory)
        write_json(path, record)
        return path

    def load(self, name: str) -> T | None:
        """The record named ``name``; None when there is none, or ``name`` could name none
        (callers ask with a model's path too: "is this a job?")."""
        try:
            record = self._parse(json.loads(self.path(name).read_text()))
        except (OSError, ValueError, TypeError, KeyError):  # SpecError is a ValueError
            return None
        return record if getattr(record, "name", name) == name else None  # edited by hand

    def all(self) -> list[T]:
        if not self.directory.is_dir():
            return []
        found = (self.load(p.stem) for p in self.directory.glob("*.json"))
        return [r for r in found if r is not None]

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)


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
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**record_fields(cls, data, old_key="version"))


def records_dir() -> Path:
    return Path(settings().home).expanduser() / "records"


def _jobs() -> RecordDir[JobRecord]:
    return RecordDir(records_dir(), JobRecord.from_json, "job name")


def save_record(record: JobRecord) -> Path:
    return _jobs().save(record.name, record.to_json())


def load_record(name: str) -> JobRecord | None:
    return _jobs().load(name)


def delete_record(name: str) -> None:
    _jobs().delete(name)


def list_records() -> list[JobRecord]:
    return sorted(_jobs().all(), key=lambda r: r.created)
