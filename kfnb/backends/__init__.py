"""Backends run a TFJob manifest: `local` as processes here, `kubernetes` on a cluster.

Both take the same manifest and bundle and answer with the same typed
`JobStatus`, so the `Job` handle and the widgets never know which one runs a job.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from kfnb.bundle import Bundle
from kfnb.status import JobStatus


class BackendError(RuntimeError):
    """A backend cannot do what was asked; the message is one line with the fix."""


class JobNotFound(BackendError):
    pass


class Backend(Protocol):
    name: str
    storage: str  # where its jobs' artifacts go, kept in the job's record

    def preflight(self, manifest: dict[str, Any]) -> list[str]:
        """Check the job can run here; raise BackendError if not, return warnings."""

    def submit(self, manifest: dict[str, Any], bundle: Bundle) -> JobStatus: ...

    def status(self, name: str) -> JobStatus: ...

    def delete(self, name: str, purge: bool = False) -> JobStatus: ...

    def list_jobs(self) -> list[JobStatus]: ...

    def replica_names(self, name: str) -> list[str]: ...

    def read_log(self, name: str, replica: str) -> str: ...

    def read_log_since(
        self, name: str, replica: str, offset: int, partial: bool = False
    ) -> tuple[str, int]:
        """Log lines after byte ``offset`` (complete ones unless ``partial``), next offset."""

    def replica_result(self, name: str, replica: str) -> dict[str, Any] | None:
        """What the runtime recorded for a replica (exit code, traceback), if anything."""

    def job_dir(self, name: str) -> Path | None: ...


# name -> "module:class", imported on first use so `import kfnb` stays light.
_BACKENDS = {"local": "kfnb.backends.local:LocalBackend"}
_PLANNED = {
    "kubernetes": "the Kubernetes backend is not part of this kfnb version yet: use --backend "
    "local, or --dry-run to print the TFJob manifest and apply it with kubectl",
}


def resolve_backend_name(name: str) -> str:
    """``auto`` is the local backend until a cluster backend exists."""
    return "local" if name == "auto" else name


def get_backend(name: str, **options: Any) -> Backend:
    """The backend registered under ``name``, created with ``options`` (e.g. ``storage``)."""
    name = resolve_backend_name(name)
    if name in _PLANNED:
        raise BackendError(_PLANNED[name])
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}: use auto, local or kubernetes")
    module_name, class_name = _BACKENDS[name].split(":")
    backend: Backend = getattr(importlib.import_module(module_name), class_name)(**options)
    return backend
