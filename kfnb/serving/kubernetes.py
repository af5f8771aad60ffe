"""Serving on Kubernetes: creates KServe's InferenceService (or TF Serving) and waits for it.

The manifests come from `kfnb.serving.manifests` (through `kfnb.serving.cluster`);
this module only talks to the API server, through the Kubernetes backend's
`KubeApi`, so configuration, namespaces and errors read the same as for jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kfnb.backends.kube_api import ApiError, KubeApi, in_cluster
from kfnb.backends.kube_owned import delete_exactly, managed_by_kfnb, not_ours, owner_said
from kfnb.serving.cluster import annotate_command
from kfnb.serving.local import ServeError
from kfnb.serving.manifests import ServingSpec, secret_annotations

__all__ = ["ClusterServing", "Rollout"]

# kind -> (API prefix, plural)
_RESOURCES = {
    "ServiceAccount": ("api/v1", "serviceaccounts"),
    "Service": ("api/v1", "services"),
    "Deployment": ("apis/apps/v1", "deployments"),
    "InferenceService": ("apis/serving.kserve.io/v1beta1", "inferenceservices"),
    "InferenceGraph": ("apis/serving.kserve.io/v1alpha1", "inferencegraphs"),
}
KSERVE_INSTALL = "https://kserve.github.io/website/docs/admin-guide/serverless"


@dataclass(frozen=True)
class Rollout:
    """A model being served on the cluster, once ready."""

    name: str
    namespace: str
    runtime: str  # "kserve" or "tfserving"
    url: str  # the predictor's URL (KServe's address in-cluster, else its status.url)
    traffic: dict[str, int]  # revision -> percent, as KServe reports it ({} for TF Serving)


class ClusterServing:
    """Applies serving manifests in one namespace and follows them until they serve."""

    def __init__(self, namespace: str | None = None, api: KubeApi | None = None) -> None:
        self.api = api or KubeApi(namespace)
        self.namespace = self.api.namespace
        self._percent: dict[str, int | None] = {}  # InferenceService -> the canary's asked share

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Create each object, or replace it where it exists (a canary updates the service).

        An InferenceService given twice (a canary rollout) is waited for in between:
        KServe splits traffic between the last ready revision and the new one. An
        InferenceGraph's InferenceServices are waited for before it is written.
        """
        for obj in objects:  # all checked before any is written
            self._existing(obj["kind"], obj["metadata"]["name"])
            if obj["kind"] == "InferenceGraph":
                self._not_an_inference_service(obj["metadata"]["name"])
        for index, obj in enumerate(objects):
            if obj["kind"] == "InferenceGraph":
                for step in obj["spec"]["nodes"]["root"]["steps"]:
                    self.wait(step["serviceName"], "kserve")
            self._apply(obj)
            later = objects[index + 1 :]
            if obj["kind"] == "InferenceService" and obj["metadata"]["name"] in {
                o["metadata"]["name"] for o in later if o["kind"] == "InferenceService"
            }:
                self.wait(obj["metadata"]["name"], "kserve")

    def _not_an_inference_service(self, name: str) -> None:
        """An InferenceService and an InferenceGraph of one name would claim one host name
        (``NAME.NAMESPACE.<domain>``): the graph is refused while the service is there."""
        try:
            self.api.request("GET", f"{self._path('InferenceService')}/{name}")
        except ApiError as err:
            if err.status == 404 or err.reason == "NoCRD":
                return
            raise ServeError(str(err)) from err
        raise ServeError(
            f"InferenceService {name} is served in namespace {self.namespace}: variants serve "
            f"{name} as an InferenceGraph of the same host name; `%serve stop {name}` first, "
            "or give the variants another --name"
        )

    def check_s3(self, spec: ServingSpec, runtime: str) -> None:
        """For KServe: the S3 Secret must say where the store is (`check_secret`)."""
        wanted = secret_annotations(spec)
        if runtime == "kserve" and spec.s3_secret and wanted and spec.storage_uri[:5] == "s3://":
            fix = annotate_command(spec.s3_secret, self.namespace, wanted)
            self.check_secret(spec.s3_secret, wanted, fix)

    def check_secret(self, secret: str, wanted: dict[str, str], fix: str) -> None:
        """ServeError unless the S3 Secret carries the annotations KServe reads from it.

        kfnb never writes the Secret (its user's, with the keys): ``fix`` is the command
        that annotates it. A Secret kfnb may not read is not checked."""
        try:
            found = self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{secret}")
        except ApiError as err:
            if err.status == 404:
                raise ServeError(
                    f"Secret {secret} (Kfnb.s3_secret) is not in namespace {self.namespace}: "
                    "create it with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, then `" + fix + "`"
                ) from err
            return
        have = found.get("metadata", {}).get("annotations") or {}
        wrong = sorted(key for key, value in wanted.items() if have.get(key) != value)
        if wrong:
            raise ServeError(
                f"KServe reads S3 settings from Secret {secret}'s annotations and "
                f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not what this "
                f"notebook uses, so the model would be fetched from elsewhere: run `{fix}`"
            )

    def _apply(self, obj: dict[str, Any]) -> None:
        if obj["kind"] == "InferenceService":
            predictor = obj["spec"]["predictor"]
            self._percent[obj["metadata"]["name"]] = predictor.get("canaryTrafficPercent")
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
        path = self._path(obj["kind"])
        name = obj["metadata"]["name"]
        try:
            self.api.request("POST", path, body=obj)
        except ApiError as err:
            if err.status == 409:  # there already: replace kfnb's own, as `kubectl apply` would
                current = self._existing(obj["kind"], name)
                if current is None:
                    raise ServeError(f"{obj['kind']} {name} came and went: serve again") from err
                try:
                    # The resourceVersion read: one changed since is refused (409), not replaced.
                    version = current["metadata"].get("resourceVersion")
                    obj["metadata"] = {**obj["metadata"], "resourceVersion": version}
                    self.api.request("PUT", f"{path}/{name}", body=obj)
                except ApiError as again:
                    raise ServeError(str(again)) from again
            elif err.reason == "NoCRD" and obj["kind"] == "InferenceGraph":
                raise ServeError(
                    "this cluster has no InferenceGraph resource (KServe 0.11 or later has it): "
                    f"upgrade KServe ({KSERVE_INSTALL}), or serve one model without --variant"
                ) from err
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

    def wait_graph(self, name: str, timeout: float = 600.0, poll: float = 1.0) -> Rollout:
        """Until the InferenceGraph is Ready (KServe's router serves it), or ServeError.
        Its traffic is the Splitter's weights, by InferenceService."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                graph = self.api.request("GET", f"{self._path('InferenceGraph')}/{name}")
            except ApiError as err:
                raise ServeError(str(err)) from err
            status = graph.get("status", {})
            conditions = {c.get("type"): c for c in status.get("conditions", [])}
            ready = conditions.get("Ready", {})
            if _observed(graph) and ready.get("status") == "True":
                steps = graph["spec"]["nodes"]["root"].get("steps", [])
                traffic = {s["serviceName"]: int(s.get("weight", 0)) for s in steps}
                return Rollout(name, self.namespace, "kserve", _predict_url(status), traffic)
            if _observed(graph) and ready.get("status") == "False":
                raise ServeError(
                    f"KServe could not serve InferenceGraph {name}: {ready.get('reason')}: "
                    f"{ready.get('message')}"
                )
            if time.monotonic() > deadline:
                raise ServeError(
                    f"{name} was not ready within {timeout:.0f} s: see `kubectl -n "
                    f"{self.namespace} describe inferencegraph {name}`"
                )
            time.sleep(poll)

    def _existing(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object of that kind and name, None if there is none; ServeError if kfnb did
        not create it, which kfnb then neither replaces nor deletes."""
        try:
            current = self.api.request("GET", f"{self._path(kind)}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise ServeError(str(err)) from err
        if not managed_by_kfnb(current):
            raise ServeError(
                f"{not_ours(current, kind, self.namespace)}: kfnb does not replace it; serve "
                f"under another --name, or remove it yourself if it is yours to remove"
            )
        return current

    def delete(self, name: str, runtime: str, variants: tuple[str, ...] = ()) -> list[str]:
        """Delete what kfnb created for ``name`` (with ``variants``, the InferenceGraph
        ``name`` and its InferenceServices ``name-VARIANT``). Objects of its names that
        kfnb did not create are left alone: returned, one reason each."""
        kinds = ["Deployment", "Service"] if runtime == "tfserving" else ["InferenceService"]
        targets = [(kind, _object(name, runtime)) for kind in kinds]
        targets.append(("ServiceAccount", f"{name}-kfnb-s3"))
        if variants:
            targets = [("InferenceGraph", name)]
            for variant in variants:
                targets += [("InferenceService", f"{name}-{variant}"),
                            ("ServiceAccount", f"{name}-{variant}-kfnb-s3")]  # fmt: skip
        left = []
        for kind, obj_name in targets:
            try:
                current = self.api.request("GET", f"{self._path(kind)}/{obj_name}")
                if not managed_by_kfnb(current):
                    left.append(
                        f"{kind} {obj_name} in namespace {self.namespace} alone: it was not "
                        f"created by kfnb ({owner_said(current)})"
                    )
                    continue
                delete_exactly(self.api, f"{self._path(kind)}/{obj_name}", current)
            except ApiError as err:
                if err.status != 404:
                    raise ServeError(str(err)) from err
        return left

    def _ready(self, name: str, runtime: str) -> Rollout | None:
        if runtime == "tfserving":
            deployment = self.api.request("GET", f"{self._path('Deployment')}/{name}-tf-serving")
            want = deployment.get("spec", {}).get("replicas", 1)
            if not _observed(deployment):
                return None
            if deployment.get("status", {}).get("availableReplicas", 0) < want:
                self._raise_failed_copy(name)
                return None
            url = f"http://{name}-tf-serving.{self.namespace}.svc.cluster.local:8501"
            return Rollout(name, self.namespace, runtime, url, {})
        isvc = self.api.request("GET", f"{self._path('InferenceService')}/{name}")
        if not _observed(isvc):
            return None  # the status still describes the spec before this change
        status = isvc.get("status", {})
        _raise_failed_load(name, status)
        conditions = {c.get("type"): c for c in status.get("conditions", [])}
        ready = conditions.get("Ready", {})
        if ready.get("status") != "True":
            failed = [c for c in conditions.values() if c.get("status") == "False"]
            reasons = [f"{c.get('reason')}: {c.get('message')}" for c in failed if c.get("reason")]
            if any("Failed" in (c.get("reason") or "") for c in failed):
                raise ServeError(f"KServe could not serve {name}: {'; '.join(reasons)}")
            return None
        predictor = status.get("components", {}).get("predictor", {})
        if not _settled(predictor, self._percent.get(name)):
            return None
        traffic = {
            t.get("revisionName", "?"): int(t.get("percent", 0))
            for t in predictor.get("traffic", [])
        }
        return Rollout(name, self.namespace, runtime, _predict_url(status), traffic)

    def _raise_failed_copy(self, name: str) -> None:
        """A copy-model init container that failed (it crash-loops, the Deployment is never
        available) is said at once, with the tail of its log (its termination message)."""
        pods = self.api.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/pods",
            query={"labelSelector": f"app={name}-tf-serving"},
        )  # fmt: skip
        for pod in pods.get("items", []):
            for init in pod.get("status", {}).get("initContainerStatuses") or []:
                ended = init.get("state", {}).get("terminated") or init.get("lastState", {}).get(
                    "terminated"
                )
                if init.get("name") == "copy-model" and ended and ended.get("exitCode"):
                    lines = (ended.get("message") or "").strip().splitlines() or ["(no log)"]
                    raise ServeError(
                        f"copy-model could not copy the model into pod "
                        f"{pod['metadata']['name']} (exit {ended['exitCode']}, "
                        f"{ended.get('reason', '')}): {lines[-1][:300]}; check the s3:// URL, "
                        "Kfnb.s3_endpoint and the Secret Kfnb.s3_secret names"
                    )

    def _path(self, kind: str) -> str:
        prefix, plural = _RESOURCES[kind]
        return f"/{prefix}/namespaces/{self.namespace}/{plural}"


def _observed(obj: dict[str, Any]) -> bool:
    """Whether the controller has seen the object's newest spec."""
    generation = obj.get("metadata", {}).get("generation", 0)
    return int(obj.get("status", {}).get("observedGeneration", 0)) >= int(generation)


def _raise_failed_load(name: str, status: dict[str, Any]) -> None:
    """KServe's ``status.modelStatus``: a model that failed to load (the storage initializer
    or the server could not) is said at once, with KServe's reason and message."""
    model = status.get("modelStatus") or {}
    states = model.get("states") or {}
    if "FailedToLoad" not in (states.get("targetModelState"), states.get("activeModelState")):
        if model.get("transitionStatus") not in ("BlockedByFailedLoad", "InvalidSpec"):
            return
    info = model.get("lastFailureInfo") or {}
    message = " ".join(str(info.get("message") or "no message").split())
    raise ServeError(
        f"KServe could not load {name}: {info.get('reason') or 'FailedToLoad'}: "
        f"{message[:300]} (see `kubectl describe inferenceservice {name}`)"
    )


def _settled(predictor: dict[str, Any], percent: int | None) -> bool:
    """Whether the predictor's newest revision is the one ready and has the asked share.

    KServe copies observedGeneration from the Knative Service, so Ready with the
    InferenceService's generation can still describe the previous revision. Raw
    deployments report no revisions and no traffic: nothing more to wait for then."""
    created = predictor.get("latestCreatedRevision")
    if created and predictor.get("latestReadyRevision") != created:
        return False
    traffic = predictor.get("traffic") or []
    if not traffic:
        return True
    latest = [t for t in traffic if t.get("latestRevision")]
    share = sum(int(t.get("percent", 0)) for t in latest)
    return bool(latest) and share == (100 if percent is None else percent)


def _predict_url(status: dict[str, Any]) -> str:
    """Where the notebook sends predictions: in a pod, the cluster-local address (the
    ingress host of status.url, ``*.example.com`` by default, is seldom reachable from
    inside); elsewhere status.url. Any path on the address is dropped: kfnb adds its own."""
    address = (status.get("address") or {}).get("url") or ""
    if in_cluster() and address:
        parts = urlsplit(address)
        return f"{parts.scheme}://{parts.netloc}"
    return str(status.get("url", ""))


def _object(name: str, runtime: str) -> str:
    return f"{name}-tf-serving" if runtime == "tfserving" else name


def _kind_word(runtime: str) -> str:
    return "deployment" if runtime == "tfserving" else "inferenceservice"
