"""What ``%serve`` returns and records: a model served here (`LocalServer`) or on a
cluster (`ClusterServer`), both `ServedModel`.

A local server is a process (its pid, command line and log); a cluster's server is
an InferenceService or Deployment (its namespace and runtime). Each type has only
the fields that mean something for it; the records in ``<home>/servers/`` keep
which one it is in ``"backend"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from kfnb._util import pid_alive
from kfnb.records import record_fields, record_json

if TYPE_CHECKING:
    from kfnb.serving.kubernetes import Rollout

__all__ = ["ClusterServer", "LocalServer", "ServedModel", "served_from_json"]

SERVER_MODULE = "kfnb.serving.server"


@dataclass(frozen=True, kw_only=True)
class ServedModel:
    """A model being served: where to reach it and what it serves."""

    name: str
    url: str  # REST, e.g. http://127.0.0.1:8501
    source: str  # the job name, SavedModel path or URL that %serve was given
    model_base_path: str  # the numbered versions: a directory here, an s3:// URL on a cluster
    version: int = 0  # the version it served first (0: the cluster's to say)
    grpc: str = ""  # host:port of the gRPC PredictionService, "" without one
    started: float = field(default_factory=time.time)
    backend: ClassVar[str] = ""

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.name}:predict"

    def predictor(self, timeout: float = 10.0) -> Any:
        """A `Predictor` for this model (``predictor.predict(images)``)."""
        from kfnb.serving.client import Predictor

        return Predictor(self.url, self.name, timeout=timeout)

    def alive(self) -> bool:
        """Whether it still serves, as far as the kernel can tell without asking it."""
        return True

    def to_json(self) -> dict[str, Any]:
        return record_json(self, backend=self.backend)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServedModel:
        """The served model a record describes, as the type its ``"backend"`` names."""
        return served_from_json(data)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


@dataclass(frozen=True, kw_only=True)
class LocalServer(ServedModel):
    """A ``python -m kfnb.serving.server`` process on this machine."""

    pid: int
    argv: tuple[str, ...]  # its command line, to start it again (%serve restart)
    log: str  # the file its output goes to
    backend: ClassVar[str] = "local"

    def alive(self) -> bool:
        """Whether the server process still runs (it may still be loading)."""
        return pid_alive(self.pid, SERVER_MODULE, self.name)

    def __str__(self) -> str:
        state = "serving" if self.alive() else "stopped"
        grpc = f", gRPC {self.grpc}" if self.grpc else ""
        return f"{self.name} ({state}, from {self.source}): {self.predict_url}{grpc}"


@dataclass(frozen=True, kw_only=True)
class ClusterServer(ServedModel):
    """KServe's InferenceService or a TF Serving Deployment: the cluster keeps it running."""

    namespace: str
    runtime: str  # "kserve" or "tfserving"
    # With variants (an A/B test): their names; ``name`` is then KServe's InferenceGraph,
    # which takes requests at its root and sends each to one variant's InferenceService.
    variants: tuple[str, ...] = ()
    backend: ClassVar[str] = "kubernetes"

    @property
    def predict_url(self) -> str:
        return self.url if self.variants else super().predict_url

    @classmethod
    def from_rollout(
        cls, rollout: Rollout, source: str, storage_uri: str, variants: tuple[str, ...] = ()
    ) -> ClusterServer:
        """The record of what `ClusterServing.wait` found ready.

        ``source`` is what it serves (the canary's, after a canary rollout) and
        ``storage_uri`` the ``s3://`` URL of that source's numbered versions.
        """
        return cls(
            name=rollout.name,
            url=rollout.url,
            source=source,
            model_base_path=storage_uri,
            namespace=rollout.namespace,
            runtime=rollout.runtime,
            variants=variants,
        )

    def __str__(self) -> str:
        where = f"{self.runtime} in namespace {self.namespace}"
        return f"{self.name} ({where}, from {self.source}): {self.predict_url}"


_TYPES: dict[str, type[ServedModel]] = {"local": LocalServer, "kubernetes": ClusterServer}


def served_from_json(data: dict[str, Any]) -> ServedModel:
    """A server's record, as the type its ``"backend"`` names (local when absent)."""
    kind = _TYPES.get(data.get("backend") or "local")
    if kind is None:
        raise ValueError(f"server record of unknown backend {data.get('backend')!r}")
    known = record_fields(kind, data, old_key="version_")
    if kind is LocalServer:
        known["argv"] = tuple(known.get("argv", ()))
    if kind is ClusterServer:
        known["variants"] = tuple(known.get("variants", ()))
    if known.get("started") is None:
        known.pop("started", None)
    return kind(**known)
