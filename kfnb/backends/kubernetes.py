"""The Kubernetes backend: a TFJob (Training Operator 1.9, kubeflow.org/v1) on a cluster.

No image is built: the bundle becomes a ConfigMap, owned by the TFJob so that
deleting the job removes both, mounted into a stock TensorFlow image. State and
logs come from watches and log streams (`kfnb.backends.kube_watch`), so `status`
and the log reads answer from memory however often the widgets ask.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from kfnb.backends import BackendError, JobNotFound
from kfnb.backends.kube_api import (
    OPERATOR_INSTALL,
    RBAC_FIX,
    TFJOB_GROUP,
    TFJOB_PLURAL,
    TFJOB_VERSION,
    ApiError,
    KubeApi,
    cluster_configured,
)
from kfnb.backends.kube_manifests import (
    ClusterSettings,
    check_volume,
    configmap_for,
    for_cluster,
    image_python,
    owned_by,
)
from kfnb.backends.kube_owned import delete_exactly, managed_by_kfnb, not_ours
from kfnb.backends.kube_pvc import check_claim
from kfnb.backends.kube_watch import JobWatcher, init_failure
from kfnb.bundle import Bundle
from kfnb.config import settings
from kfnb.spec import CONTAINER_NAME, MANAGED_BY, validate_name
from kfnb.status import JobStatus, log_transition

# What kfnb does on the cluster: (verb, group, resource); deploy/rbac.yaml grants these.
NEEDED = (
    ("create", TFJOB_GROUP, "tfjobs"),
    ("get", TFJOB_GROUP, "tfjobs"),
    ("list", TFJOB_GROUP, "tfjobs"),
    ("watch", TFJOB_GROUP, "tfjobs"),
    ("delete", TFJOB_GROUP, "tfjobs"),
    ("create", "", "configmaps"),
    # Under OwnerReferencesPermissionEnforcement (OpenShift) an object may be created with
    # an ownerReference only by whoever may delete it: the code ConfigMap, owned by its TFJob.
    ("delete", "", "configmaps"),
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("get", "", "pods/log"),
    ("list", "", "events"),
    ("watch", "", "events"),
)
log = logging.getLogger(__name__)
FINAL_LOG_WAIT = 5.0  # seconds a finished job waits for its pods and last log lines
_checked: set[tuple[str, str]] = set()  # (server, namespace) whose access was reviewed
_watchers: dict[tuple[str, str, str], JobWatcher] = {}
_watchers_lock = threading.Lock()


@dataclass(frozen=True)
class BackendChoice:
    name: str
    reason: str


_auto: BackendChoice | None = None


def choose_auto(timeout: float = 2.0) -> BackendChoice:
    """Kubernetes if a cluster with the TFJob resource answers quickly, else local.

    Without a kubeconfig or a service account this returns at once, without
    importing the kubernetes client: the local backend is the common case.
    """
    global _auto
    if _auto is not None:
        return _auto
    if not cluster_configured():
        _auto = BackendChoice("local", "no Kubernetes cluster is configured")
        return _auto
    try:
        api = KubeApi(timeout=timeout)
        KubernetesBackend(api=api).check_operator()
    except BackendError as err:
        _auto = BackendChoice("local", f"the cluster is not usable: {err}")
    else:
        _auto = BackendChoice("kubernetes", f"cluster {api.info.server}, namespace {api.namespace}")
    return _auto


def reset_auto() -> None:
    global _auto
    _auto = None


def stop_watchers() -> None:
    """Stop every background watch and log stream (tests, and a kernel shutting down)."""
    with _watchers_lock:
        for watcher in _watchers.values():
            watcher.stop.set()
        _watchers.clear()


class _NoCluster:
    """The API of an offline backend: it has a namespace, and no server to ask."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def __getattr__(self, name: str) -> Any:
        raise BackendError(
            "no Kubernetes cluster is configured: set KUBECONFIG (or run in a pod), or use "
            "--backend local; --dry-run prints what a cluster would get without one"
        )


class KubernetesBackend:
    name = "kubernetes"

    @classmethod
    def offline(cls, storage: str | Path | None, namespace: str | None) -> KubernetesBackend:
        """A backend that renders what a cluster would get and never calls one (--dry-run
        with no cluster configured): the namespace is the one given, set, or ``default``."""
        where = namespace or settings().namespace or "default"
        return cls(storage, where, api=cast(KubeApi, _NoCluster(where)))

    def __init__(
        self,
        storage: str | Path | None = None,
        namespace: str | None = None,
        api: KubeApi | None = None,
    ) -> None:
        config = settings()
        self.api = api or KubeApi(namespace or config.namespace or None)
        self.namespace = self.api.namespace
        self.storage = str(storage or config.storage)
        self.cluster = ClusterSettings(
            self.namespace, self.storage, config.s3_endpoint, config.s3_secret
        )
        self._tfjobs = f"/apis/{TFJOB_GROUP}/{TFJOB_VERSION}/namespaces/{self.namespace}/tfjobs"
        self._phases: dict[str, str] = {}  # the phase each job was last seen in, for the log

    # -- submission ----------------------------------------------------------------

    def check_access(self) -> None:
        """SelfSubjectAccessReviews for everything kfnb does, once per namespace."""
        key = (self.api.info.server, self.namespace)
        if key in _checked:
            return
        missing = self.denied()
        if missing is None:
            return  # may not even ask: the requests themselves will say what fails
        if missing:
            verb, what = missing[0]
            raise BackendError(
                f"your account may not {verb} {what} in namespace {self.namespace}, which "
                f"kfnb needs: {RBAC_FIX}"
            )
        _checked.add(key)

    def denied(
        self, needs: tuple[tuple[str, str, str], ...] = NEEDED
    ) -> list[tuple[str, str]] | None:
        """(verb, resource.group) of what kfnb needs and the account may not do, in
        `NEEDED`'s order; None when it may not even ask (403 on the review itself): its
        requests will then say what fails."""
        missing = []
        for verb, group, resource in needs:
            plural, _, sub = resource.partition("/")
            attributes = {
                "namespace": self.namespace,
                "verb": verb,
                "group": group,
                "resource": plural,
            }
            if sub:
                attributes["subresource"] = sub
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            try:
                answer = self.api.request(
                    "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review
                )
            except ApiError as err:
                if err.status == 403:
                    return None
                raise
            if not answer.get("status", {}).get("allowed"):
                missing.append((verb, f"{resource}.{group}" if group else resource))
        return missing

    def check_operator(self) -> None:
        """The TFJob resource must be served (the API group alone is not enough)."""
        found = self.api.request("GET", f"/apis/{TFJOB_GROUP}/{TFJOB_VERSION}")
        if not any(r.get("name") == TFJOB_PLURAL for r in found.get("resources", [])):
            raise BackendError(no_operator_message())

    def preflight(self, manifest: dict[str, Any]) -> list[str]:
        self.check_operator()
        self.check_access()
        warnings = []
        images = {
            c["image"]
            for spec in manifest["spec"]["tfReplicaSpecs"].values()
            for c in spec["template"]["spec"]["containers"]
            if c["name"] == CONTAINER_NAME
        }
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        # A known image of another Python got a bundle any Python loads (or an error).
        for image in sorted(i for i in images if image_python(i) is None):
            warnings.append(
                f"kfnb cannot tell which Python {image} has: notebook values shipped with "
                f"the cell load only under Python {here}, this kernel's"
            )
        if not self.cluster.shared_store:
            warnings.append(
                "the model and TensorBoard events stay inside the pods and go with them: "
                "keep them with --storage s3://bucket/prefix (%config Kfnb.storage)"
            )
        elif self.cluster.pvc is not None:
            specs = manifest["spec"]["tfReplicaSpecs"].values()
            replicas = sum(spec.get("replicas", 1) for spec in specs)
            warnings += check_claim(self.api, self.namespace, self.cluster.pvc, replicas)
        elif not self.cluster.s3_secret:
            warnings.append(
                "no Secret with the S3 keys is named, so pods get none: create one with "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and set %config Kfnb.s3_secret"
            )
        return warnings + self._absent_pull_secrets(manifest)

    def _absent_pull_secrets(self, manifest: dict[str, Any]) -> list[str]:
        """Image pull secrets the namespace lacks (one it may not read is not asked about)."""
        names = sorted(
            {
                ref["name"]
                for spec in manifest["spec"]["tfReplicaSpecs"].values()
                for ref in spec["template"]["spec"].get("imagePullSecrets", [])
            }
        )
        warnings = []
        for name in names:
            try:
                self.api.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
            except ApiError as err:
                if err.status == 404:
                    warnings.append(
                        f"the image pull secret {name} is not in namespace {self.namespace}, "
                        "so a private image will not pull: create it (kubectl -n "
                        f"{self.namespace} create secret docker-registry {name} ...) or drop "
                        "--image-pull-secret"
                    )
        return warnings

    def submit(self, manifest: dict[str, Any], bundle: Bundle) -> JobStatus:
        """Create the TFJob, then its code ConfigMap owned by it (pods wait for the mount)."""
        tfjob = for_cluster(manifest, self.cluster)
        name = tfjob["metadata"]["name"]
        configmap = configmap_for(bundle, name, self.namespace)
        check_volume(tfjob, configmap)
        created = self.api.request("POST", self._tfjobs, body=tfjob)
        if not isinstance(created.get("metadata", {}).get("uid"), str):
            raise BackendError(f"the API server created TFJob {name} but gave it no uid")
        try:
            self.api.request(
                "POST",
                f"/api/v1/namespaces/{self.namespace}/configmaps",
                body=owned_by(configmap, created),
            )
        except BackendError:
            self._delete_tfjob(name, created)  # a job without its code would wait forever
            raise
        log.debug("submitted TFJob %s and its code ConfigMap to %s", name, self.namespace)
        return log_transition(
            log,
            self._phases,
            JobStatus(
                name, self.name, "Created", message=f"TFJob {name} is created in {self.namespace}."
            ),
        )

    # -- state ---------------------------------------------------------------------

    def _watcher(self, name: str) -> JobWatcher:
        key = (self.api.info.server, self.namespace, name)
        with _watchers_lock:
            watcher = _watchers.get(key)
            if watcher is None:
                watcher = _watchers[key] = JobWatcher(self.api, self.namespace, name)
        try:
            watcher.start()
        except ApiError as err:
            with _watchers_lock:
                _watchers.pop(key, None)
            if err.status == 404 and err.reason == "NotFound":
                raise JobNotFound(
                    f"no TFJob named {name!r} in namespace {self.namespace}: `%kfnb list` "
                    "shows the jobs"
                ) from err
            raise
        return watcher

    def status(self, name: str) -> JobStatus:
        watcher = self._watcher(name)
        status = watcher.snapshot(self.name)

        def settled() -> bool:
            return watcher.pods_caught_up(status.phase) and watcher.logs_done()

        if status.finished and not watcher.stop.is_set() and not settled():
            # The failed pod or the last lines are still on their way: hold the verdict
            # briefly, so a reader that checks the phase before reading the log misses
            # none, and a failure names its replica.
            deadline = time.monotonic() + FINAL_LOG_WAIT
            with watcher.changed:
                while not settled() and time.monotonic() < deadline:
                    watcher.changed.wait(0.05)
            status = watcher.snapshot(self.name)
        if status.finished and watcher.logs_done():
            watcher.stop.set()
        return log_transition(log, self._phases, status)

    def _delete_tfjob(self, name: str, checked: dict[str, Any]) -> bool:
        """Delete the TFJob ``checked`` (by its uid: not another made since under its name)."""
        try:
            delete_exactly(self.api, f"{self._tfjobs}/{name}", checked)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def _own_tfjob(self, name: str) -> dict[str, Any] | None:
        """The TFJob ``name`` if kfnb created it, None if there is none; BackendError if
        someone else's has the name (kfnb's may have been deleted and the name reused)."""
        try:
            tfjob = self.api.request("GET", f"{self._tfjobs}/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        if not managed_by_kfnb(tfjob):
            raise BackendError(
                f"{not_ours(tfjob, 'TFJob', self.namespace)}: kfnb leaves it alone; forget "
                f"kfnb's record of the job with kfnb.records.delete_record({name!r})"
            )
        return tfjob

    def delete(self, name: str, purge: bool = False) -> JobStatus:
        """Stop the job. The TFJob of a finished job stays (its pods keep the logs),
        unless ``purge``; deleting it removes the ConfigMap with it, and ``purge`` the
        job's artifacts in the store."""
        tfjob = self._own_tfjob(name)
        deleted = JobStatus(
            name, self.name, "Deleted", "TFJobDeleted", f"TFJob {name} was deleted.",
            completion_time=time.time(),
        )  # fmt: skip
        if tfjob is None and purge:  # gone already (a purge that could not reach the store)
            self._purge_store(name)
            return deleted
        status = self.status(name)
        if status.finished and not purge:
            return status
        log.debug("deleting TFJob %s from %s", name, self.namespace)
        if tfjob is not None:
            self._delete_tfjob(name, tfjob)
        if purge:
            self._purge_store(name)
        if status.finished:
            return status
        return replace(
            status,
            phase=deleted.phase,
            reason=deleted.reason,
            message=deleted.message,
            completion_time=deleted.completion_time,
        )

    def _purge_store(self, name: str) -> None:
        """Remove the job's artifacts from an s3:// or pvc:// store (in any other, they
        were in the pods, gone with them); BackendError saying what was left and how to
        remove it when the store cannot be reached from here."""
        if not self.cluster.shared_store:
            return
        from kfnb.storage import StoreError, open_store

        try:
            removed = open_store(self.storage).delete_prefix(name)
        except StoreError as err:
            where = f"{self.storage.rstrip('/')}/{name}/"
            raise BackendError(
                f"TFJob {name} deleted, but its artifacts under {where} were left ({err}): "
                f"once the store answers, `%kfnb delete {name} --purge` again, or run "
                f"kfnb.storage.open_store({self.storage!r}).delete_prefix({name!r})"
            ) from err
        log.debug("purged %d objects of %s from %s", removed, name, self.storage)

    def list_jobs(self) -> list[JobStatus]:
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        listing = self.api.request("GET", self._tfjobs, {"labelSelector": selector})
        jobs = []
        for item in listing.get("items", []):
            watcher = JobWatcher(self.api, self.namespace, item["metadata"]["name"])
            watcher.tfjob = item
            jobs.append(watcher.snapshot(self.name))
        return sorted(jobs, key=lambda s: s.start_time or 0.0)

    def replica_names(self, name: str) -> list[str]:
        return self._watcher(name).replica_names()

    def _buffer(self, name: str, replica: str) -> Any:
        watcher = self._watcher(name)
        names = watcher.replica_names()
        if replica not in names:
            raise BackendError(
                f"job {name!r} has no replica {replica!r}: it has {', '.join(names)}"
            )
        buffer = watcher.logs[replica]
        if buffer.error:
            raise BackendError(buffer.error)
        return buffer

    def read_log(self, name: str, replica: str) -> str:
        buffer = self._buffer(name, replica)
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}-{replica}/log"
        try:
            return self.api.text(path, {"container": CONTAINER_NAME})
        except ApiError as err:
            if err.status in (400, 404):  # not started yet, or cleaned up: what we have
                return str(buffer.since(0, True)[0])
            raise

    def read_log_since(
        self, name: str, replica: str, offset: int, partial: bool = False
    ) -> tuple[str, int]:
        text, next_offset = self._buffer(name, replica).since(offset, partial)
        return str(text), int(next_offset)

    def replica_result(self, name: str, replica: str) -> dict[str, Any] | None:
        """The container's exit, as the kubelet recorded it (tracebacks are in the log)."""
        pod = self._watcher(name).pods.get(replica)
        if pod is None:
            return None
        failed_init = init_failure(pod)
        if failed_init is not None:  # the cell never ran: the init container says why
            return {"exit_code": failed_init[0], "error": failed_init[1]}
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if status.get("name") != CONTAINER_NAME:
                continue
            ended = status.get("state", {}).get("terminated") or status.get("lastState", {}).get(
                "terminated"
            )
            if ended:
                detail = ": ".join(x for x in (ended.get("reason"), ended.get("message")) if x)
                return {"exit_code": ended.get("exitCode"), "error": detail or None}
        return None

    def job_dir(self, name: str) -> Path | None:
        """The job's directory on this notebook's mount of a pvc:// store, which the pods
        write directly; otherwise None: artifacts live in the pods or the S3 store."""
        if self.cluster.pvc is None:
            return None
        from kfnb.storage import open_store

        root = open_store(self.storage).local_root
        return root / validate_name(name, "job name") if root is not None else None

    def replica_python(self, image: str) -> str | None:
        """The Python in ``image`` when it is a known official TensorFlow image."""
        return image_python(image)

    def close(self) -> None:
        stop_watchers()


def no_operator_message() -> str:
    return (
        f"this cluster has no TFJob resource: install the Training Operator with {OPERATOR_INSTALL}"
    )


