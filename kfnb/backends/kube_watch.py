"""Follow one TFJob on a cluster: watches for the job, its pods and their events, and
a log stream per replica, all feeding caches that `status()` and the log reads use.

Watches resume from the last resourceVersion (relisting on 410 Gone); a log stream
that drops resumes with ``sinceTime`` and ``timestamps=true`` and drops the lines
it already has, so no line is lost or repeated. The kernel never waits on them.
"""

from __future__ import annotations

import calendar
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kfnb.backends import kube_pvc
from kfnb.backends.kube_api import ApiError, KubeApi
from kfnb.spec import CONTAINER_NAME, REPLICA_TYPES
from kfnb.status import FINAL_PHASES, PHASES, JobStatus, ReplicaStatus

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
_RFC3339 = re.compile(
    r"(?P<whole>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d\d:\d\d)"
)
_SECOND = 1_000_000_000
# What the kernel keeps of each replica's log: the tail, for the widgets and log reads;
# the pod keeps the whole log (`KubernetesBackend.read_log` reads it from there).
LOG_BUFFER_BYTES = 4 * 1024 * 1024


def parse_time(stamp: str | None) -> int | None:
    """RFC 3339 (any fraction; ``Z`` or a zone offset such as ``+08:00``, which
    containerd and conmon write in the node's local zone) as nanoseconds since the epoch."""
    found = _RFC3339.fullmatch(stamp or "")
    if found is None:
        return None
    try:
        seconds = calendar.timegm(time.strptime(found["whole"], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    if found["zone"] not in ("Z", "z"):
        sign = -1 if found["zone"][0] == "-" else 1
        hours, minutes = found["zone"][1:].split(":")
        seconds -= sign * (int(hours) * 3600 + int(minutes) * 60)
    digits = ((found["fraction"] or "") + "000000000")[:9]
    return seconds * 1_000_000_000 + int(digits)


def format_seconds(ns: int) -> str:
    """``sinceTime`` has whole seconds: round down, the duplicates are dropped after."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


class LogBuffer:
    """A replica's log as bytes, with offsets as `read_log_since` hands them out.

    A resumed stream (``sinceTime``, whole seconds) first repeats, in the log file's
    order, every line stamped in or after the second of the newest line kept; those
    are skipped by matching them against what was kept, not by comparing stamps, since
    stdout and stderr lines can be stamped slightly out of order and all must stay.
    """

    def __init__(self, limit: int | None = None, whole_log: str = "`%kfnb logs`") -> None:
        self.data = bytearray()  # the log's tail: ``base`` bytes before it were dropped
        self.limit = limit or LOG_BUFFER_BYTES
        self.whole_log = whole_log  # what reads the whole log, for the notice
        self.base = 0
        self.dropped_lines = 0
        self.error = ""  # why the log cannot be read (e.g. 403 on pods/log)
        self._newest: int | None = None  # the newest stamp kept from the current pod
        self._recent: list[tuple[int, bytes]] = []  # kept lines in _newest's second or later
        self._repeat: deque[tuple[int, bytes]] = deque()  # what this stream repeats first
        self._lock = threading.Lock()

    def begin(self, resume: bool) -> str | None:
        """A new stream starts: the ``sinceTime`` to ask for, or None to read the whole
        log (``resume`` False: a new pod, whose log starts afresh)."""
        with self._lock:
            if not resume or self._newest is None:
                self._newest, self._recent, self._repeat = None, [], deque()
                return None
            self._repeat = deque(self._recent)
            return format_seconds(self._newest)

    def add(self, line: bytes) -> None:
        """One ``<timestamp> <text>`` line of a stream; one the stream repeats is skipped."""
        stamp, _, text = line.partition(b" ")
        ns = parse_time(stamp.decode(errors="replace"))
        with self._lock:
            if ns is None:  # no timestamp to match by: keep it as it is
                self.data += line + b"\n"
                self._trim()
                return
            if self._repeat:
                if self._repeat[0] == (ns, text):
                    self._repeat.popleft()
                    return
                self._repeat.clear()  # the repeat is over: everything from here is new
            self.data += text + b"\n"
            self._remember(ns, text)
            self._trim()

    def _trim(self) -> None:
        """Over the limit, drop whole lines from the front down to three quarters of it
        (not to the limit: a long log then moves its bytes once per quarter, not per line).
        Offsets stay those of the whole log: readers keep theirs."""
        if len(self.data) <= self.limit:
            return
        cut = self.data.find(b"\n", len(self.data) - self.limit * 3 // 4 - 1) + 1
        self.dropped_lines += self.data.count(b"\n", 0, cut)
        del self.data[:cut]
        self.base += cut

    def _remember(self, ns: int, text: bytes) -> None:
        if self._newest is None or ns > self._newest:
            if self._newest is None or ns // _SECOND > self._newest // _SECOND:
                second = ns // _SECOND * _SECOND
                self._recent = [(n, t) for n, t in self._recent if n >= second]
            self._newest = ns
        if ns >= self._newest // _SECOND * _SECOND:
            self._recent.append((ns, text))

    def since(self, offset: int, partial: bool) -> tuple[str, int]:
        """The log from ``offset`` (its complete lines unless ``partial``) and the offset
        after it. Lines dropped before ``offset`` was reached become one notice line."""
        notice = ""
        with self._lock:
            if offset < self.base:
                count = f"{self.dropped_lines} earlier" if offset == 0 else "earlier"
                notice = (
                    f"[kfnb: {count} lines are not kept here (the kernel keeps the last "
                    f"{self.limit // 1024} KiB of each replica's log); {self.whole_log} reads "
                    "the whole log from the pod while it exists]\n"
                )
                offset = self.base
            chunk = bytes(self.data[offset - self.base :])
        complete = chunk if partial else chunk[: chunk.rfind(b"\n") + 1]
        return notice + complete.decode(errors="replace"), offset + len(complete)


def _replica_of(pod: dict[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels", {})
    kind, index = labels.get(REPLICA_TYPE_LABEL), labels.get(REPLICA_INDEX_LABEL)
    return f"{kind.lower()}-{index}" if kind and index is not None else None


def _uid(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("uid", ""))


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == CONTAINER_NAME), {})


def init_failure(pod: dict[str, Any]) -> tuple[int, str] | None:
    """The exit code and words of a failed init container (kfnb-packages: its last line,
    the termination message under FallbackToLogsOnError), None while none failed."""
    for status in pod.get("status", {}).get("initContainerStatuses") or []:
        ended = status.get("state", {}).get("terminated") or status.get("lastState", {}).get(
            "terminated"
        )
        if ended and ended.get("exitCode"):
            lines = [ln for ln in str(ended.get("message") or "").splitlines() if ln.strip()]
            said = lines[-1].removeprefix("kfnb: ") if lines else ended.get("reason", "")
            name = status.get("name", "init")
            return int(ended["exitCode"]), f"its {name} init container failed: {said}"
    return None


def _refused_pods(message: str) -> str:
    """The operator's "Error creating: pods ... violates PodSecurity ..." as one line."""
    _, _, rules = message.partition("violates PodSecurity ")
    level, _, violations = rules.partition(": ")
    first, _, more = violations.partition("), ")
    extra = f" (and {more.count('), ') + 1} more)" if more else ""
    return (
        f"the namespace refuses the job's pods (PodSecurity {level}): {first})"
        f"{extra}: change it with %config Kfnb.pod_template, or ask the cluster admin"
    )


class JobWatcher:
    """Caches of one job's TFJob, pods and pending reasons, kept current by watches."""

    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.tfjob: dict[str, Any] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # by replica name (worker-0)
        self.pending: dict[str, str] = {}  # replica -> why it waits, from events
        self.missing_secrets: dict[str, str] = {}  # replica -> pull secrets not found
        self.errors: dict[str, str] = {}  # watch -> why it stopped (403)
        self.refused: dict[str, str] = {}  # watch -> the 401 it retries after
        self._versions: dict[str, str | None] = {}  # watch -> resourceVersion to resume at
        self.logs: dict[str, LogBuffer] = {}
        self._log_threads: dict[str, threading.Thread] = {}
        self._following: dict[str, str] = {}  # replica -> uid of the pod followed now
        self._followed: dict[str, str] = {}  # replica -> uid of the pod followed last
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self._lock = threading.Lock()
        self._started = False
        self._running_since: int | None = None  # ns; see running_since

    # -- watches -------------------------------------------------------------------

    def start(self) -> None:
        """List the job once (so errors surface now), then watch it in the background."""
        if self._started:
            return
        base = f"/apis/kubeflow.org/v1/namespaces/{self.namespace}/tfjobs"
        self.tfjob = self.api.request("GET", f"{base}/{self.name}")
        for replica in self.replica_names():
            self.logs.setdefault(replica, self._buffer(replica))
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
            (
                "job-events",  # the operator's: a pod it could not create (PodSecurity)
                f"{core}/events",
                {"fieldSelector": f"involvedObject.kind=TFJob,involvedObject.name={self.name}"},
                self._on_job_event,
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
        delay = 0.05
        while not self.stop.is_set():
            try:
                if self._versions.get(kind) is None:
                    self._versions[kind] = self._relist(kind, path, query, handle)
                self._follow_watch(kind, path, query, handle)
                delay = 0.05
            except ApiError as err:
                if err.status == 403:
                    self.errors[kind] = str(err)
                    self._notify()
                    return
                if err.status == 401:  # the token may be rotated yet: say so, and retry
                    self.refused[kind] = str(err)
                    self._notify()
                    delay = max(delay, 1.0)
                elif err.status == 410:  # Gone: the version is too old, list again
                    self._versions[kind] = None
            except (ValueError, KeyError, TypeError, AttributeError):
                self._versions[kind] = None  # not a watch event: start from a fresh list
            self.stop.wait(delay)
            delay = min(delay * 2, 2.0)

    def _relist(
        self,
        kind: str,
        path: str,
        query: dict[str, Any],
        handle: Callable[[str, dict[str, Any]], None],
    ) -> str:
        """List, as a watch starts or after 410 Gone; the list's resourceVersion."""
        listing = self.api.request("GET", path, query)
        items = listing.get("items", [])
        self.refused.pop(kind, None)
        for gone in self._missing(kind, items):
            handle("DELETED", gone)
        for item in items:
            handle("ADDED", item)
        return str(listing.get("metadata", {}).get("resourceVersion") or "0")

    def _missing(self, kind: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the cache holds and a list lacks: deleted while the watch was away, its
        DELETED event gone with the history the API server no longer keeps."""
        listed = {item.get("metadata", {}).get("uid") for item in items}
        if kind == "tfjob":
            cached = [self.tfjob] if self.tfjob else []
        elif kind == "pods":
            cached = list(self.pods.values())
        else:
            return []
        return [
            obj
            for obj in cached
            if not obj.get("kfnbDeleted") and obj.get("metadata", {}).get("uid") not in listed
        ]

    def _follow_watch(
        self,
        kind: str,
        path: str,
        query: dict[str, Any],
        handle: Callable[[str, dict[str, Any]], None],
    ) -> None:
        """One watch stream from the last resourceVersion seen, which it keeps current
        (None: list again), also when the stream is cut."""
        watch_query = {
            **query,
            "watch": "true",
            "resourceVersion": self._versions[kind],
            "allowWatchBookmarks": "true",
            "timeoutSeconds": 240,
        }
        for line in self.api.stream(path, watch_query):
            if self.stop.is_set():
                return
            self.refused.pop(kind, None)  # the server took the credentials again
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event.get("object", {})
            if event.get("type") == "ERROR":
                # 410 Expired/Gone: the history from our version is compacted away. Any
                # other error: the same cure, a fresh list.
                self._versions[kind] = None
                return
            # A BOOKMARK carries only a resourceVersion: remember it, so a resumed
            # watch starts there and not from an old version that may be gone by then.
            version = obj.get("metadata", {}).get("resourceVersion")
            if event.get("type") != "BOOKMARK":
                handle(event["type"], obj)
            if version:
                self._versions[kind] = str(version)

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
            current = self.pods.get(replica)
            if kind == "DELETED":
                if current is not None and _uid(current) != _uid(pod):
                    return  # a pod the operator has already replaced under the same name
                pod = {**pod, "kfnbDeleted": True}
            self.pods[replica] = pod
            self._start_follower(replica)
        self._notify()

    def _start_follower(self, replica: str) -> None:
        """A log follower for the replica's current pod, once it runs and once none
        follows an earlier pod: under ExitCode the operator deletes a failed pod and
        creates a new one with the same name, whose log starts afresh. Holds _lock."""
        pod = self.pods.get(replica, {})
        state = _container(pod).get("state", {})
        uid = _uid(pod)
        if pod.get("kfnbDeleted") or not ("running" in state or "terminated" in state):
            return
        if replica in self._following or self._followed.get(replica) == uid:
            return
        self._following[replica] = self._followed[replica] = uid
        thread = threading.Thread(
            target=self._follow_log,
            args=(replica, uid),
            daemon=True,
            name=f"kfnb-log-{self.name}-{replica}",
        )
        self._log_threads[replica] = thread
        thread.start()

    def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        involved = event.get("involvedObject", {})
        pod = str(involved.get("name", ""))
        prefix = f"{self.name}-"
        if kind == "DELETED" or not pod.startswith(prefix):
            return
        replica = pod[len(prefix) :]
        reason, message = event.get("reason", ""), event.get("message", "")
        if reason == "FailedScheduling":
            claim = kube_pvc.unschedulable(replica, message, self.namespace)
            self.pending[replica] = claim or _unschedulable(replica, message)
        elif reason == "FailedAttachVolume":
            self.pending[replica] = kube_pvc.attach_problem(replica, message)
        elif reason in ("Failed", "BackOff") and "image" in message.lower():
            self.pending[replica] = self._image_problem(replica, message)
        elif reason == "FailedToRetrieveImagePullSecret":  # the kubelet's: names them
            names = message.partition("(")[2].partition(")")[0]
            self.missing_secrets[replica] = names
        elif reason in ("Scheduled", "Pulled", "Started"):
            self.pending.pop(replica, None)
        self._notify()

    def _on_job_event(self, kind: str, event: dict[str, Any]) -> None:
        message = str(event.get("message", ""))
        if kind != "DELETED" and "violates PodSecurity" in message:
            self.pending["job"] = _refused_pods(message)
            self._notify()

    def _image_problem(self, replica: str, message: str) -> str:
        """Why the image does not pull, naming the pull secrets the kubelet could not find."""
        absent = self.missing_secrets.get(replica)
        if not absent:
            return _image_problem(replica, message)
        return (
            f"{replica} cannot pull its image ({message.rstrip('.')}): its image pull secret "
            f"{absent} is not in namespace {self.namespace}: create it (kubectl -n "
            f"{self.namespace} create secret docker-registry {absent.split(',')[0]} ...), "
            "or fix --image-pull-secret"
        )

    # -- logs ----------------------------------------------------------------------

    def _pod_done(self, replica: str) -> bool:
        pod = self.pods.get(replica, {})
        return bool(pod.get("kfnbDeleted")) or pod.get("status", {}).get("phase") in (
            "Succeeded",
            "Failed",
        )

    def _follow_log(self, replica: str, uid: str) -> None:
        try:
            self._follow_pod_log(replica, uid)
        finally:
            with self._lock:
                self._following.pop(replica, None)
                self._start_follower(replica)  # a pod that replaced this one meanwhile
            self._notify()

    def _buffer(self, replica: str) -> LogBuffer:
        return LogBuffer(whole_log=f"`%kfnb logs {self.name} --replica {replica}`")

    def _follow_pod_log(self, replica: str, uid: str) -> None:
        """Stream one pod's log (the pod with ``uid``) into the replica's buffer."""
        buffer = self.logs.setdefault(replica, self._buffer(replica))
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}-{replica}/log"
        delay = 0.05
        resume = False
        while not self.stop.is_set():
            if _uid(self.pods.get(replica, {})) != uid:
                return  # replaced: its name now reads the new pod's log, not this one's
            final = self._pod_done(replica)  # read before the stream, so no line is lost
            query: dict[str, Any] = {"container": CONTAINER_NAME, "timestamps": "true"}
            if not final:
                query["follow"] = "true"
            since = buffer.begin(resume)
            if since is not None:
                query["sinceTime"] = since
            resume = True
            try:
                for line in self.api.stream(path, query):
                    buffer.add(line)
                    self._notify()
                delay = 0.05
            except ApiError as err:
                if err.status == 403:
                    buffer.error = str(err)
                    return
                if err.status == 401:
                    delay = max(delay, 1.0)  # the token may be rotated yet: retry
                elif err.status == 404 or final:
                    return  # the pod is gone (cleaned up): what we have is all there is
            else:
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
        if "job" in self.pending and not self.pods:
            waiting.insert(0, self.pending["job"])
        failed_init = [
            f"{name}: {found[1]}"
            for name, pod in self.pods.items()
            if (found := init_failure(pod)) is not None
        ]
        if failed_init and phase in ("Created", "Running", "Restarting", "Failed"):
            message = failed_init[0]
        elif waiting and phase in ("Created", "Running", "Restarting"):
            message = waiting[0]
        elif "events" in self.errors and phase == "Created":
            message = f"{message} (Pending reasons unknown: {self.errors['events']})".strip()
        if self.refused and phase not in FINAL_PHASES:
            message = next(iter(self.refused.values()))  # what is shown may be stale
        start = self.running_since(status)
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

    def running_since(self, status: dict[str, Any]) -> int | None:
        """When the job started Running: its Running condition's lastTransitionTime (kept
        when that turns False at the end), not ``status.startTime``, the operator's first
        reconcile, before pods are scheduled and images pulled. The operator drops the
        condition while the job restarts: the earliest time seen is kept."""
        for condition in status.get("conditions") or []:
            if condition.get("type") == "Running":
                seen = parse_time(condition.get("lastTransitionTime"))
                if seen is not None and (self._running_since or seen) >= seen:
                    self._running_since = seen
        return self._running_since

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
            return self._image_problem(replica, waiting.get("message") or waiting["reason"])
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
    if "didn't match Pod's node affinity/selector" in message:
        return (
            f"{replica} is Pending: no node has the labels it asks for ({message.rstrip('.')}): "
            "check --node-selector and --gpu-type against `kubectl get nodes --show-labels`"
        )
    return f"{replica} is Pending: it cannot be scheduled ({message.rstrip('.')})"


def _image_problem(replica: str, message: str) -> str:
    return (
        f"{replica} cannot pull its image ({message.rstrip('.')}): check --image, and that "
        "the cluster can reach that registry"
    )
