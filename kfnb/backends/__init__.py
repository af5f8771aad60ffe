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
    namespace: str  # the Kubernetes namespace its jobs are in ("" for local)

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
_BACKENDS = {
    "local": "kfnb.backends.local:LocalBackend",
    "kubernetes": "kfnb.backends.kubernetes:KubernetesBackend",
}
# The options each backend takes; others (a namespace for local) do not apply to it.
_OPTIONS = {"local": {"storage", "python"}, "kubernetes": {"storage", "namespace", "api"}}


def resolve_backend_name(name: str) -> str:
    """``auto``: Kubernetes when a cluster with the TFJob resource answers, else local."""
    if name != "auto":
        return name
    from kfnb.backends.kubernetes import choose_auto

    return choose_auto().name


def get_backend(name: str, **options: Any) -> Backend:
    """The backend registered under ``name``, created with the ``options`` it takes."""
    name = resolve_backend_name(name)
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}: use auto, local or kubernetes")
    module_name, class_name = _BACKENDS[name].split(":")
    taken = {k: v for k, v in options.items() if k in _OPTIONS[name] and v is not None}
    backend: Backend = getattr(importlib.import_module(module_name), class_name)(**taken)
    return backend
