"""GPUs per node, allocatable and allocated, like ``arena top node`` (seed 002)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfnb.backends.kube_api import KubeApi

GPU = "nvidia.com/gpu"


@dataclass(frozen=True)
class NodeGpus:
    name: str
    address: str
    role: str
    allocatable: int
    allocated: int  # requested by the pods that hold them (not Succeeded or Failed)


def _gpus(resources: dict[str, Any]) -> int:
    # Extended resources need requests == limits; a pod may give only limits.
    value = (resources.get("requests") or {}).get(GPU) or (resources.get("limits") or {}).get(GPU)
    return int(value or 0)


def gpu_nodes(api: KubeApi) -> list[NodeGpus]:
    """Every node with its GPUs; needs cluster-wide list on nodes and pods."""
    nodes = api.request("GET", "/api/v1/nodes").get("items", [])
    pods = api.request(
        "GET",
        "/api/v1/pods",
        {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"},
    ).get("items", [])
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
    return sorted(rows, key=lambda r: r.name)
