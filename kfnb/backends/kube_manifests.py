"""What the Kubernetes backend adds to a TFJob manifest, and the objects beside it.

Pure functions of plain dicts, so each is validated in the tests against the
TFJob CRD schema and kubernetes-validate without a cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kfnb.backends import BackendError
from kfnb.bundle import Bundle
from kfnb.spec import CONTAINER_NAME, MANAGED_BY, PACKAGES_CONTAINER, configmap_key
from kfnb.storage import POD_PVC_ROOT, PvcUrl, parse_pvc

# etcd's limit on one object; the ConfigMap's own metadata and keys need some of it.
CONFIGMAP_LIMIT = 1024 * 1024
CONFIGMAP_HEADROOM = 8 * 1024
# The replica's scratch in the pod (/tmp is a writable emptyDir): the job's files stay
# there with a store the pods cannot see; with an s3:// store the runtime uploads them.
POD_ARTIFACTS = "/tmp/kfnb-artifacts"
STORE_VOLUME = "kfnb-store"  # the pvc:// store's claim, in every replica pod
# Non-secret S3 settings the TF S3 filesystem and boto-style clients read.
_S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how a job runs on the cluster; nothing secret, only a Secret's name."""

    namespace: str
    storage: str  # s3://bucket/prefix, pvc://CLAIM/PATH, or a local path the pods cannot see
    s3_endpoint: str = ""
    s3_secret: str = ""

    @property
    def shared_store(self) -> bool:
        return self.storage.startswith(("s3://", "pvc://"))

    @property
    def pvc(self) -> PvcUrl | None:
        return parse_pvc(self.storage) if self.storage.startswith("pvc://") else None


def image_python(image: str) -> str | None:
    """The Python version inside a known official TensorFlow image, else None."""
    from kfnb.packages import image_facts

    facts = image_facts(image)
    return facts.python if facts else None


def configmap_for(bundle: Bundle, job: str, namespace: str) -> dict[str, Any]:
    """The bundle as a ConfigMap; keys are flat, the TFJob's volume maps them to paths."""
    binary: dict[str, str] = {}
    text: dict[str, str] = {}
    import base64

    for index, (path, data) in enumerate(bundle.files.items()):
        key = configmap_key(index, path)
        try:
            text[key] = data.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(data).decode()
    size = sum(len(v.encode()) for v in text.values()) + sum(len(v) for v in binary.values())
    if size > CONFIGMAP_LIMIT - CONFIGMAP_HEADROOM:
        # Seam for the artifact store (kfnb/storage.py): a large bundle will be uploaded
        # there and fetched by the runtime instead of mounted. Until then: say so.
        raise BackendError(
            f"the job's code bundle is {size / 1e6:.1f} MB, over the 1 MiB a ConfigMap holds: "
            "ship large files through the artifact store with --storage s3://bucket/prefix, "
            "or --include less"
        )
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{job}-code",
            "namespace": namespace,
            "labels": {**MANAGED_BY, "kfnb/job": job},
        },
    }
    if text:
        configmap["data"] = text
    if binary:
        configmap["binaryData"] = binary
    return configmap


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``owner`` as its controller, so deleting the owner deletes it.

    No ``blockOwnerDeletion``: kfnb deletes in the background, so nothing waits on it, and
    under OwnerReferencesPermissionEnforcement setting it needs ``update`` on the owner's
    ``finalizers`` subresource, a right a profile's Role rarely has.
    """
    obj = copy.deepcopy(obj)
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
    ]
    return obj


def _store_env(settings: ClusterSettings, job: str) -> list[dict[str, Any]]:
    if settings.pvc is not None:  # the claim is a directory in the pod: written directly
        return [{"name": "KFNB_ARTIFACTS", "value": settings.pvc.pod_path(job)}]
    # KFNB_ARTIFACTS is a directory, never the store's URL (KFNB_STORE carries that): an
    # s3:// URL there became the relative path s3:/... under a read-only working directory.
    env: list[dict[str, Any]] = [{"name": "KFNB_ARTIFACTS", "value": f"{POD_ARTIFACTS}/{job}"}]
    if not settings.storage.startswith("s3://"):
        return env
    env.append({"name": "KFNB_STORE", "value": f"{settings.storage.rstrip('/')}/{job}"})
    if settings.s3_endpoint:
        env.append({"name": "S3_ENDPOINT", "value": settings.s3_endpoint})
    if settings.s3_secret:
        # Keys only by reference: the manifest names the Secret, never its values.
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": settings.s3_secret, "key": key}},
            }
            for key in _S3_SECRET_KEYS
        ]
    return env


def for_cluster(manifest: dict[str, Any], settings: ClusterSettings) -> dict[str, Any]:
    """The TFJob as submitted: namespace, where artifacts go, S3 keys by reference."""
    manifest = copy.deepcopy(manifest)
    job = manifest["metadata"]["name"]
    manifest["metadata"]["namespace"] = settings.namespace
    added = _store_env(settings, job)
    names = {e["name"] for e in added}
    for spec in manifest["spec"]["tfReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        # The packages init container reads an s3:// wheelhouse with the store's settings.
        for container in pod["containers"] + pod.get("initContainers", []):
            if container["name"] not in (CONTAINER_NAME, PACKAGES_CONTAINER):
                continue
            kept = [e for e in container.get("env", []) if e["name"] not in names]
            container["env"] = kept + copy.deepcopy(added)
        if settings.pvc is not None:
            mount_claim(pod, settings.pvc.claim)
            _wheelhouse_on_claim(pod)
    return manifest


def _wheelhouse_on_claim(pod: dict[str, Any]) -> None:
    """The packages init container reads a pvc:// wheelhouse on the store's claim."""
    for init in pod.get("initContainers", []):
        if init["name"] == PACKAGES_CONTAINER:
            mount = {"name": STORE_VOLUME, "mountPath": POD_PVC_ROOT, "readOnly": True}
            init["volumeMounts"] = [*init.get("volumeMounts", []), mount]
            init["env"] = [*init.get("env", []), {"name": "KFNB_PVC_ROOT", "value": POD_PVC_ROOT}]


def mount_claim(pod: dict[str, Any], claim: str, read_only: bool = False) -> None:
    """Mount ``claim`` at `POD_PVC_ROOT` in the pod's main container (``tensorflow``, or
    the only one); the pod's fsGroup makes it writable by the non-root user."""
    source: dict[str, Any] = {"claimName": claim, **({"readOnly": True} if read_only else {})}
    volume = {"name": STORE_VOLUME, "persistentVolumeClaim": source}
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != STORE_VOLUME] + [volume]
    containers = pod["containers"]
    main = next((c for c in containers if c["name"] == CONTAINER_NAME), containers[0])
    mount = {"name": STORE_VOLUME, "mountPath": POD_PVC_ROOT, "readOnly": read_only}
    kept = [m for m in main.get("volumeMounts", []) if m["name"] != STORE_VOLUME]
    main["volumeMounts"] = kept + [mount]


def check_volume(manifest: dict[str, Any], configmap: dict[str, Any]) -> None:
    """Every key the TFJob's code volume mounts must be in the ConfigMap (a bug otherwise)."""
    keys = set(configmap.get("data", {})) | set(configmap.get("binaryData", {}))
    for spec in manifest["spec"]["tfReplicaSpecs"].values():
        for volume in spec["template"]["spec"].get("volumes", []):
            source = volume.get("configMap")
            if source and source["name"] == configmap["metadata"]["name"]:
                missing = {i["key"] for i in source.get("items", [])} - keys
                if missing:
                    raise BackendError(f"kfnb bug: the code volume mounts missing keys {missing}")
