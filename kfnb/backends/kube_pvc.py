"""``pvc://CLAIM/PATH`` stores on a cluster: where the notebook pod has the claim, whether
the claim can serve a job, and the pod events that say why it cannot, in words.

A Kubeflow notebook runs in a pod whose data volumes are claims mounted under the home
directory; the pod's own spec (``GET pods/$HOSTNAME``) says which claim is where.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfnb.backends import BackendError
from kfnb.backends.kube_api import RBAC_FIX, ApiError, KubeApi
from kfnb.storage import PVC_MOUNTS_FIX, PvcUrl, StoreError

SIDECARS = ("istio-proxy",)  # containers of a notebook pod that are not the notebook
_MISSING_CLAIM = re.compile(r'persistentvolumeclaim "(?P<claim>[^"]+)" not found')
_mounts: dict[tuple[str, str, str], list[Mount]] = {}  # (server, namespace, pod) -> mounts
_lock = threading.Lock()


@dataclass(frozen=True)
class Mount:
    """One claim (or a sub-path of it) mounted in the notebook's container."""

    claim: str
    sub_path: str  # "" for the whole claim
    path: str  # the mount path in the notebook container


def pod_mounts(pod: dict[str, Any]) -> list[Mount]:
    """The claims a pod's containers mount, longest sub-path first (sidecars left out)."""
    spec = pod.get("spec", {})
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes") or []
        if v.get("persistentVolumeClaim", {}).get("claimName")
    }
    found = [
        Mount(claims[m["name"]], m.get("subPath", "").strip("/"), m["mountPath"])
        for c in spec.get("containers") or []
        if c.get("name") not in SIDECARS
        for m in c.get("volumeMounts") or []
        if m.get("name") in claims
    ]
    return sorted(found, key=lambda m: -len(m.sub_path))


def directory_in(mounts: list[Mount], pvc: PvcUrl) -> Path | None:
    """Where ``pvc``'s directory is under ``mounts``, None when no mount holds it."""
    for mount in mounts:
        if mount.claim != pvc.claim:
            continue
        if not mount.sub_path:
            return Path(mount.path) / pvc.path
        if pvc.path == mount.sub_path or pvc.path.startswith(mount.sub_path + "/"):
            return Path(mount.path) / pvc.path[len(mount.sub_path) :].lstrip("/")
    return None


def notebook_mounts(api: KubeApi, pod: str) -> list[Mount]:
    """The claims this notebook's own pod mounts, read once per pod."""
    key = (api.info.server, api.namespace, pod)
    with _lock:
        if key in _mounts:
            return _mounts[key]
    found = pod_mounts(api.request("GET", f"/api/v1/namespaces/{api.namespace}/pods/{pod}"))
    with _lock:
        _mounts[key] = found
    return found


def forget_mounts() -> None:
    """Read the notebook pod again next time (tests)."""
    with _lock:
        _mounts.clear()


def notebook_directory(pvc: PvcUrl) -> Path:
    """``pvc``'s directory as this notebook pod has it mounted (in-cluster only)."""
    pod = os.environ.get("HOSTNAME", "")
    fix = PVC_MOUNTS_FIX.format(claim=pvc.claim)
    if not pod:
        raise StoreError(
            f"storage {pvc.url}: HOSTNAME is unset, so kfnb cannot find this pod: {fix}"
        )
    try:
        mounts = notebook_mounts(KubeApi(), pod)
    except (ApiError, BackendError) as err:
        raise StoreError(
            f"storage {pvc.url}: kfnb cannot read this notebook's pod {pod} to find claim "
            f"{pvc.claim} ({str(err).removesuffix(f': {RBAC_FIX}')}): {fix}"
        ) from err
    found = directory_in(mounts, pvc)
    if found is None:
        have = ", ".join(f"{m.claim} at {m.path}" for m in mounts) or "no claims"
        raise StoreError(
            f"storage {pvc.url}: this notebook's pod {pod} does not mount claim {pvc.claim} "
            f"(it mounts {have}): {fix}"
        )
    return found


def check_claim(api: KubeApi, namespace: str, pvc: PvcUrl, replicas: int) -> list[str]:
    """Refuse a job whose claim is missing or single-pod; warnings for one that is not
    bound yet or that pods on other nodes cannot mount beside this notebook's."""
    try:
        claim = api.request(
            "GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{pvc.claim}"
        )
    except ApiError as err:
        if err.status == 404 and err.reason == "NotFound":
            raise BackendError(
                f"--storage {pvc.url}: there is no PersistentVolumeClaim {pvc.claim} in "
                f"namespace {namespace}: create it (Kubeflow: Volumes) or name one that exists"
            ) from err
        if err.status == 403:
            return [f"kfnb may not read claim {pvc.claim}, so it is not checked before submitting"]
        raise
    warnings = []
    phase = claim.get("status", {}).get("phase", "Pending")
    if phase != "Bound":
        warnings.append(
            f"claim {pvc.claim} is {phase}, not bound to a volume: the replicas wait until it "
            f"is (at once if its storage class binds on first use); `kubectl -n {namespace} "
            f"describe pvc {pvc.claim}` says why"
        )
    status, spec = claim.get("status", {}), claim.get("spec", {})
    modes = set(status.get("accessModes") or spec.get("accessModes") or [])
    if not modes or "ReadWriteMany" in modes:
        return warnings
    if modes == {"ReadOnlyMany"}:
        raise BackendError(
            f"--storage {pvc.url}: claim {pvc.claim} is ReadOnlyMany and replicas write to "
            "their store: use a ReadWriteMany claim"
        )
    if "ReadWriteOnce" not in modes:
        raise BackendError(
            f"--storage {pvc.url}: claim {pvc.claim} is ReadWriteOncePod, one pod at a time, "
            f"and this notebook reads it while {replicas} replica pod(s) write it: use a "
            "ReadWriteMany claim"
        )
    warnings.append(
        f"claim {pvc.claim} is ReadWriteOnce: only pods on this notebook's node can mount "
        "it, others wait with a Multi-Attach error: use a ReadWriteMany claim, or keep the "
        "replicas on this node with --node-selector kubernetes.io/hostname=NODE"
    )
    return warnings


def unschedulable(replica: str, message: str, namespace: str) -> str | None:
    """A FailedScheduling message about the store's claim, in words with the fix; None
    when the message is about something else."""
    detail = message.rstrip(".")
    missing = _MISSING_CLAIM.search(message)
    if missing:
        claim = missing["claim"]
        return (
            f"{replica} is Pending: claim {claim} does not exist in namespace {namespace} "
            f"({detail}): create it, or fix --storage pvc://CLAIM/PATH"
        )
    if "unbound immediate PersistentVolumeClaims" in message:
        return (
            f"{replica} is Pending: its claim is not bound to a volume ({detail}): "
            f"`kubectl -n {namespace} describe pvc` says why"
        )
    return None


def attach_problem(replica: str, message: str) -> str:
    """A FailedAttachVolume event: a ReadWriteOnce volume in use on another node, or other."""
    detail = message.rstrip(".")
    if "Multi-Attach error" in message:
        return (
            f"{replica} cannot mount its claim: it is ReadWriteOnce and in use on another node "
            f"({detail}): use a ReadWriteMany claim, or keep the pods on one node with "
            "--node-selector kubernetes.io/hostname=NODE"
        )
    return f"{replica} cannot attach its volume ({detail})"
