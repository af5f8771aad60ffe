"""GPUs per node, allocatable and allocated, like ``arena top node`` (seed 002).

Allocatable GPUs are on the nodes (`list nodes`, cluster-wide: nodes carry no tenant's
data). Allocated ones are only known from the pods that request them, and listing pods
cluster-wide shows every tenant's pod specs (inline env values, args), so
deploy/rbac-nodes.yaml does not grant it: kfnb then counts the pods of its own namespace
and says that other namespaces' are not counted. deploy/rbac-cluster-pods.yaml is the
wider, opt-in grant with which every pod is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfnb.backends.kube_api import ApiError, KubeApi

GPU = "nvidia.com/gpu"
CLUSTER_PODS_GRANT = "deploy/rbac-cluster-pods.yaml"
_LIVE = {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"}


@dataclass(frozen=True)
class NodeGpus:
    name: str
    address: str
    role: str
    allocatable: int
    allocated: int  # requested by the pods counted (not Succeeded or Failed): see GpuReport


@dataclass(frozen=True)
class GpuReport:
    """The nodes, and whose pods their ``allocated`` counts: every namespace's
    (``namespace`` ""), or only ``namespace``'s when the account may not list pods
    cluster-wide."""

    nodes: list[NodeGpus]
    namespace: str = ""

    @property
    def total(self) -> int:
        return sum(n.allocatable for n in self.nodes)

    @property
    def allocated(self) -> int:
        return sum(n.allocated for n in self.nodes)


def _gpus(resources: dict[str, Any]) -> int:
    # Extended resources need requests == limits; a pod may give only limits.
    value = (resources.get("requests") or {}).get(GPU) or (resources.get("limits") or {}).get(GPU)
    return int(value or 0)


def _pods(api: KubeApi) -> tuple[list[dict[str, Any]], str]:
    """The live pods of every namespace, else (403) of the account's own, and which."""
    try:
        return api.request("GET", "/api/v1/pods", _LIVE).get("items", []), ""
    except ApiError as err:
        if err.status != 403:
            raise
    path = f"/api/v1/namespaces/{api.namespace}/pods"
    return api.request("GET", path, _LIVE).get("items", []), api.namespace


def gpu_nodes(api: KubeApi) -> GpuReport:
    """Every node with its GPUs; needs cluster-wide `list nodes` (ApiError 403 without)."""
    nodes = api.request("GET", "/api/v1/nodes").get("items", [])
    pods, namespace = _pods(api)
    used: dict[str, int] = {}
    for pod in pods:
        node = pod.get("spec", {}).get("nodeName")
        if node:
            containers = pod.get("spec", {}).get("containers", [])
            used[node] = used.get(node, 0) + sum(_gpus(c.get("resources", {})) for c in containers)
    rows = []
    for node in nodes:
        meta, status = node.get("metadata", {}), node.get("status", {})
        addresses = {a.get("type"): a.get("address") for a in status.get("addresses", [])}
        labels = meta.get("labels", {})
        role = (
            "master"
            if any(k.startswith("node-role.kubernetes.io/control") for k in labels)
            else "worker"
        )
        rows.append(
            NodeGpus(
                meta.get("name", "?"),
                addresses.get("InternalIP", ""),
                role,
                int(status.get("allocatable", {}).get(GPU, 0) or 0),
                used.get(meta.get("name", ""), 0),
            )
        )
    return GpuReport(sorted(rows, key=lambda r: r.name), namespace)
