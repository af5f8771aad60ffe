"""Follow one TFJob on a cluster: watches for the job, its pods and their events, and
a log stream per replica, all feeding caches that `status()` and the log reads use.

Watches resume from the last resourceVersion (relisting on 410 Gone); a log stream
that drops resumes with ``sinceTime`` and ``timestamps=true`` and drops the lines
it already has, so no line is lost or repeated. The kernel never waits on them.
"""

from __future__ import annotations

import calendar
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from kfnb.backends.kube_api import ApiError, KubeApi
from kfnb.spec import CONTAINER_NAME, REPLICA_TYPES
from kfnb.status import PHASES, JobStatus, ReplicaStatus

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


def parse_time(stamp: str | None) -> int | None:
    """RFC 3339 (``...Z``, any fraction) as nanoseconds since the epoch."""
    if not stamp or not stamp.endswith("Z"):
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    digits = (fraction + "000000000")[:9]
    return seconds * 1_000_000_000 + int(digits or 0)


def format_seconds(ns: int) -> str:
    """``sinceTime`` has whole seconds: round down, the duplicates are dropped after."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


class LogBuffer:
    """A replica's log as bytes, with offsets as `read_log_since` hands them out."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.last_ns: int | None = None
        self.at_last = 0  # lines already kept with timestamp == last_ns
        self.error = ""  # why the log cannot be read (e.g. 403 on pods/log)
        self._seen = 0  # lines at last_ns seen in the current stream
        self._lock = threading.Lock()

    def add(self, line: bytes) -> None:
        """One ``<timestamp> <text>`` line of a stream; one already kept is skipped."""
        stamp, _, text = line.partition(b" ")
        ns = parse_time(stamp.decode(errors="replace"))
        with self._lock:
            if ns is None:  # no timestamp to order by: keep it as it is
                self.data += line + b"\n"
                return
            if self.last_ns is not None and ns < self.last_ns:
                return  # before the newest line kept: a resumed stream repeats it
            if ns == self.last_ns:
                self._seen += 1
                if self._seen <= self.at_last:
                    return
                self.at_last += 1
            else:
                self.last_ns, self.at_last, self._seen = ns, 1, 1
            self.data += text + b"\n"

    def restart(self) -> None:
        """A new stream begins: count lines at the last timestamp again from zero."""
        with self._lock:
            self._seen = 0

    def since(self, offset: int, partial: bool) -> tuple[str, int]:
        with self._lock:
            chunk = bytes(self.data[offset:])
        complete = chunk if partial else chunk[: chunk.rfind(b"\n") + 1]
        return complete.decode(errors="replace"), offset + len(complete)


def _replica_of(pod: dict[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels", {})
    kind, index = labels.get(REPLICA_TYPE_LABEL), labels.get(REPLICA_INDEX_LABEL)
    return f"{kind.lower()}-{index}" if kind and index is not None else None


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == CONTAINER_NAME), {})


class JobWatcher:
    """Caches of one job's TFJob, pods and pending reasons, kept current by watches."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.tfjob: dict[str, Any] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # by replica name (worker-0)
        self.pending: dict[str, str] = {}  # replica -> why it waits, from events
        self.errors: dict[str, str] = {}  # watch -> why it stopped (403)
        self.logs: dict[str, LogBuffer] = {}
        self._log_threads: dict[str, threading.Thread] = {}
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self._lock = threading.Lock()
        self._started = False

    # -- watches -------------------------------------------------------------------

    def start(self) -> None:
        """List the job once (so errors surface now), then watch it in the background."""
        if self._started:
            return
        base = f"/apis/kubeflow.org/v1/namespaces/{self.namespace}/tfjobs"
        self.tfjob = self.api.request("GET", f"{base}/{self.name}")
        for replica in self.replica_names():
            self.logs.setdefault(replica, LogBuffer())
        self._started = True
        core = f"/api/v1/namespaces/{self.namespace}"
        watches: list[tuple[str, str, dict[str, Any], Callable[[str, dict[str, Any]], None]]] = [
            ("tfjob", base, {"fieldSelector": f"metadata.name={self.name}"}, self._on_tfjob),
            (
                "pods",
                f"{core}/pods",
                {"labelSelector": f"{JOB_NAME_LABEL}={self.name}"},
                self._on_pod,
            ),
            (
                "events",
                f"{core}/events",
                {"fieldSelector": "involvedObject.kind=Pod"},
                self._on_event,
            ),
        ]
        for kind, path, query, handle in watches:
            threading.Thread(
                target=self._watch,
                args=(kind, path, query, handle),
                daemon=True,
                name=f"kfnb-watch-{kind}-{self.name}",
            ).start()

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _watch(
        self,
        kind: str,
        path: str,
        query: dict[str, Any],
        handle: Callable[[str, dict[str, Any]], None],
    ) -> None:
        version: str | None = None
        delay = 0.05
        while not self.stop.is_set():
            try:
                if version is None:
                    listing = self.api.request("GET", path, query)
                    for item in listing.get("items", []):
                        handle("ADDED", item)
                    version = listing.get("metadata", {}).get("resourceVersion") or "0"
                watch_query = {
                    **query,
                    "watch": "true",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": 240,
                }
                for line in self.api.stream(path, watch_query):
                    if self.stop.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object", {})
                    if event.get("type") == "ERROR":
                        version = None  # 410 Gone: our version is too old, list again
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") != "BOOKMARK":
                        handle(event["type"], obj)
                    delay = 0.05
            except ApiError as err:
                if err.status in (401, 403):
                    self.errors[kind] = str(err)
                    self._notify()
                    return
            except (ValueError, KeyError, TypeError, AttributeError):
                version = None  # not a watch event: start over from a fresh list
            self.stop.wait(delay)
            delay = min(delay * 2, 2.0)

    def _on_tfjob(self, kind: str, obj: dict[str, Any]) -> None:
        if obj.get("metadata", {}).get("name") != self.name:
            return
        if kind == "DELETED":
            self.tfjob = {**obj, "kfnbDeleted": True}
        else:
            self.tfjob = obj
        self._notify()

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        replica = _replica_of(pod)
        if replica is None:
            return
        with self._lock:
            if kind == "DELETED":
                pod = {**pod, "kfnbDeleted": True}
            self.pods[replica] = pod
            state = _container(pod).get("state", {})
            if ("running" in state or "terminated" in state) and replica not in self._log_threads:
                thread = threading.Thread(
                    target=self._follow_log,
                    args=(replica,),
                    daemon=True,
                    name=f"kfnb-log-{self.name}-{replica}",
                )
                self._log_threads[replica] = thread
                thread.start()
        self._notify()

    def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        involved = event.get("involvedObject", {})
        pod = str(involved.get("name", ""))
        prefix = f"{self.name}-"
        if kind == "DELETED" or not pod.startswith(prefix):
            return
        replica = pod[len(prefix) :]
        reason, message = event.get("reason", ""), event.get("message", "")
        if reason == "FailedScheduling":
            self.pending[replica] = _unschedulable(replica, message)
        elif reason in ("Failed", "BackOff") and "image" in message.lower():
            self.pending[replica] = _image_problem(replica, message)
        elif reason in ("Scheduled", "Pulled", "Started"):
            self.pending.pop(replica, None)
        self._notify()

    # -- logs ----------------------------------------------------------------------

    def _pod_done(self, replica: str) -> bool:
        pod = self.pods.get(replica, {})
        return bool(pod.get("kfnbDeleted")) or pod.get("status", {}).get("phase") in (
            "Succeeded",
            "Failed",
        )

    def _follow_log(self, replica: str) -> None:
        buffer = self.logs.setdefault(replica, LogBuffer())
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}-{replica}/log"
        delay = 0.05
        while not self.stop.is_set():
            final = self._pod_done(replica)  # read before the stream, so no line is lost
            query: dict[str, Any] = {"container": CONTAINER_NAME, "timestamps": "true"}
            if not final:
                query["follow"] = "true"
            if buffer.last_ns is not None:
                query["sinceTime"] = format_seconds(buffer.last_ns)
            buffer.restart()
            try:
                for line in self.api.stream(path, query):
                    buffer.add(line)
                    self._notify()
                delay = 0.05
            except ApiError as err:
                if err.status in (401, 403):
                    buffer.error = str(err)
                    return
                if err.status == 404 or (final and err.status):
                    return  # the pod is gone (cleaned up): what we have is all there is
            if final:
                return
            self.stop.wait(delay)
            delay = min(delay * 2, 1.0)

    def logs_done(self) -> bool:
        return all(not t.is_alive() for t in list(self._log_threads.values()))

    def pods_caught_up(self, phase: str) -> bool:
        """Whether every pod of a finished TFJob has ended too. The job and its pods
        come on separate watches, so the operator's verdict can arrive before the pod
        it is about; until then the failed replica (and its log) would be unknown."""
        if phase not in ("Succeeded", "Failed"):
            return True
        return all(self._pod_done(replica) for replica in self.replica_names())

    # -- state ---------------------------------------------------------------------

    def replica_names(self) -> list[str]:
        specs = self.tfjob.get("spec", {}).get("tfReplicaSpecs", {})
        order = {kind: i for i, kind in enumerate(REPLICA_TYPES)}
        return [
            f"{kind.lower()}-{i}"
            for kind in sorted(specs, key=lambda k: order.get(k, len(order)))
            for i in range(specs[kind].get("replicas", 1))
        ]

    def snapshot(self, backend: str) -> JobStatus:
        """The job as its TFJob and pods describe it now."""
        status = self.tfjob.get("status", {})
        phase, reason, message = "Created", "", ""
        for condition in status.get("conditions") or []:
            if condition.get("status") == "True" and condition.get("type") in PHASES:
                phase = condition["type"]
                reason, message = condition.get("reason", ""), condition.get("message", "")
        if self.tfjob.get("kfnbDeleted"):
            phase, reason, message = "Deleted", "TFJobDeleted", f"TFJob {self.name} was deleted."
        replicas = tuple(self._replica(name) for name in self.replica_names())
        waiting = [self._why_pending(r.name) for r in replicas if r.phase == "Pending"]
        waiting = [w for w in waiting if w]
        if waiting and phase in ("Created", "Running", "Restarting"):
            message = waiting[0]
        elif "events" in self.errors and phase == "Created":
            message = f"{message} (Pending reasons unknown: {self.errors['events']})".strip()
        start = parse_time(status.get("startTime"))
        end = parse_time(status.get("completionTime"))
        return JobStatus(
            self.name,
            backend,
            phase,
            reason,
            message,
            start / 1e9 if start else None,
            end / 1e9 if end else None,
            replicas,
        )

    def _replica(self, name: str) -> ReplicaStatus:
        kind, _, index = name.rpartition("-")
        pod = self.pods.get(name)
        if pod is None:
            return ReplicaStatus(kind, int(index))
        container = _container(pod)
        terminated = container.get("state", {}).get("terminated") or container.get(
            "lastState", {}
        ).get("terminated")
        phase = pod.get("status", {}).get("phase", "Pending")
        if pod.get("kfnbDeleted") and phase not in ("Succeeded", "Failed"):
            phase = "Stopped"
        return ReplicaStatus(
            kind,
            int(index),
            phase,
            int(container.get("restartCount", 0)),
            terminated.get("exitCode") if terminated else None,
        )

    def _why_pending(self, replica: str) -> str:
        pod = self.pods.get(replica, {})
        waiting = _container(pod).get("state", {}).get("waiting", {})
        if waiting.get("reason") in _IMAGE_REASONS:
            return _image_problem(replica, waiting.get("message") or waiting["reason"])
        if replica in self.pending:
            return self.pending[replica]
        for condition in pod.get("status", {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("reason") == "Unschedulable"
            ):
                return _unschedulable(replica, condition.get("message", ""))
        return ""


def _unschedulable(replica: str, message: str) -> str:
    if "nvidia.com/gpu" in message:
        return (
            f"{replica} is Pending: no node has the GPUs it asks for ({message.rstrip('.')}): "
            "use fewer --gpus, or see `%kfnb nodes` for free GPUs"
        )
    return f"{replica} is Pending: it cannot be scheduled ({message.rstrip('.')})"


def _image_problem(replica: str, message: str) -> str:
    return (
        f"{replica} cannot pull its image ({message.rstrip('.')}): check --image, and that "
        "the cluster can reach that registry"
    )
