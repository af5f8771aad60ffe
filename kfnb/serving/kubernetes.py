"""Serving on Kubernetes: creates KServe's InferenceService (or TF Serving) and waits for it.

The manifests come from `kfnb.serving.manifests` (through `kfnb.serving.cluster`);
this module only talks to the API server, through the Kubernetes backend's
`KubeApi`, so configuration, namespaces and errors read the same as for jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kfnb.backends.kube_api import ApiError, KubeApi
from kfnb.serving.local import ServeError

__all__ = ["ClusterServing", "Rollout"]

# kind -> (API prefix, plural)
_RESOURCES = {
    "ServiceAccount": ("api/v1", "serviceaccounts"),
    "Service": ("api/v1", "services"),
    "Deployment": ("apis/apps/v1", "deployments"),
    "InferenceService": ("apis/serving.kserve.io/v1beta1", "inferenceservices"),
}
KSERVE_INSTALL = "https://kserve.github.io/website/docs/admin-guide/serverless"


@dataclass(frozen=True)
class Rollout:
    """A model being served on the cluster, once ready."""

    name: str
    namespace: str
    runtime: str  # "kserve" or "tfserving"
    url: str  # the predictor's URL (KServe's status.url, or the Service's cluster DNS name)
    traffic: dict[str, int]  # revision -> percent, as KServe reports it ({} for TF Serving)


class ClusterServing:
    """Applies serving manifests in one namespace and follows them until they serve."""

    def __init__(self, namespace: str | None = None, api: KubeApi | None = None) -> None:
        self.api = api or KubeApi(namespace)
        self.namespace = self.api.namespace

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Create each object, or replace it where it exists (a canary updates the service).

        An InferenceService given twice (a canary rollout) is waited for in between:
        KServe splits traffic between the last ready revision and the new one.
        """
        isvcs = [i for i, obj in enumerate(objects) if obj["kind"] == "InferenceService"]
        for index, obj in enumerate(objects):
            self._apply(obj)
            if index in isvcs[:-1]:
                self.wait(obj["metadata"]["name"], "kserve")

    def _apply(self, obj: dict[str, Any]) -> None:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
        path = self._path(obj["kind"])
        name = obj["metadata"]["name"]
        try:
            self.api.request("POST", path, body=obj)
        except ApiError as err:
            if err.status == 409:  # there already: replace it, as `kubectl apply` would
                try:
                    current = self.api.request("GET", f"{path}/{name}")
                    version = current["metadata"].get("resourceVersion")
                    obj["metadata"] = {**obj["metadata"], "resourceVersion": version}
                    self.api.request("PUT", f"{path}/{name}", body=obj)
                except ApiError as again:
                    raise ServeError(str(again)) from again
            elif err.reason == "NoCRD" and obj["kind"] == "InferenceService":
                raise ServeError(
                    "this cluster has no InferenceService resource: install KServe "
                    f"({KSERVE_INSTALL}), or serve with --runtime tfserving"
                ) from err
            else:
                raise ServeError(str(err)) from err

    def wait(self, name: str, runtime: str, timeout: float = 600.0, poll: float = 1.0) -> Rollout:
        """Until the InferenceService is Ready (or the Deployment available), or ServeError."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                rollout = self._ready(name, runtime)
            except ApiError as err:
                raise ServeError(str(err)) from err
            if rollout is not None:
                return rollout
            if time.monotonic() > deadline:
                raise ServeError(
                    f"{name} was not ready within {timeout:.0f} s: see `kubectl -n "
                    f"{self.namespace} describe {_kind_word(runtime)} {_object(name, runtime)}`"
                )
            time.sleep(poll)

    def delete(self, name: str, runtime: str) -> None:
        kinds = ["Deployment", "Service"] if runtime == "tfserving" else ["InferenceService"]
        for kind in [*kinds, "ServiceAccount"]:
            obj_name = _object(name, runtime) if kind != "ServiceAccount" else f"{name}-kfnb-s3"
            try:
                self.api.request("DELETE", f"{self._path(kind)}/{obj_name}")
            except ApiError as err:
                if err.status != 404:
                    raise ServeError(str(err)) from err

    def _ready(self, name: str, runtime: str) -> Rollout | None:
        if runtime == "tfserving":
            deployment = self.api.request("GET", f"{self._path('Deployment')}/{name}-tf-serving")
            want = deployment.get("spec", {}).get("replicas", 1)
            if not _observed(deployment):
                return None
            if deployment.get("status", {}).get("availableReplicas", 0) < want:
                return None
            url = f"http://{name}-tf-serving.{self.namespace}.svc.cluster.local:8501"
            return Rollout(name, self.namespace, runtime, url, {})
        isvc = self.api.request("GET", f"{self._path('InferenceService')}/{name}")
        if not _observed(isvc):
            return None  # the status still describes the spec before this change
        status = isvc.get("status", {})
        conditions = {c.get("type"): c for c in status.get("conditions", [])}
        ready = conditions.get("Ready", {})
        if ready.get("status") != "True":
            failed = [c for c in conditions.values() if c.get("status") == "False"]
            reasons = [f"{c.get('reason')}: {c.get('message')}" for c in failed if c.get("reason")]
            if any("Failed" in (c.get("reason") or "") for c in failed):
                raise ServeError(f"KServe could not serve {name}: {'; '.join(reasons)}")
            return None
        traffic = {
            t.get("revisionName", "?"): int(t.get("percent", 0))
            for t in status.get("components", {}).get("predictor", {}).get("traffic", [])
        }
        return Rollout(name, self.namespace, runtime, status.get("url", ""), traffic)

    def _path(self, kind: str) -> str:
        prefix, plural = _RESOURCES[kind]
        return f"/{prefix}/namespaces/{self.namespace}/{plural}"


def _observed(obj: dict[str, Any]) -> bool:
    """Whether the controller has seen the object's newest spec."""
    generation = obj.get("metadata", {}).get("generation", 0)
    return int(obj.get("status", {}).get("observedGeneration", 0)) >= int(generation)


def _object(name: str, runtime: str) -> str:
    return f"{name}-tf-serving" if runtime == "tfserving" else name


def _kind_word(runtime: str) -> str:
    return "deployment" if runtime == "tfserving" else "inferenceservice"
