"""What kfnb may replace or delete on a cluster: only objects it created.

Names like ``mnist`` or ``mnist-tf-serving`` are easily taken in a shared namespace, so
before kfnb replaces or deletes an object it reads it and checks kfnb's
``app.kubernetes.io/managed-by`` label; a delete then names the uid it checked
(DeleteOptions preconditions) and a replace the resourceVersion, so an object swapped
in between is refused by the API server rather than overwritten.
"""

from __future__ import annotations

from typing import Any

from kfnb.backends.kube_api import KubeApi
from kfnb.spec import MANAGED_BY

__all__ = ["delete_exactly", "managed_by_kfnb", "not_ours", "owner_said"]

_KEY, _VALUE = next(iter(MANAGED_BY.items()))


def managed_by_kfnb(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(labels.get(_KEY) == _VALUE)


def owner_said(obj: dict[str, Any]) -> str:
    """What ``obj``'s managed-by label says, for a message."""
    owner = (obj.get("metadata", {}).get("labels") or {}).get(_KEY)
    return f"its {_KEY} label is {owner!r}" if owner else f"it has no {_KEY}={_VALUE} label"


def not_ours(obj: dict[str, Any], kind: str, namespace: str) -> str:
    """Why kfnb leaves ``obj`` alone, naming who manages it, if anyone says."""
    name = obj.get("metadata", {}).get("name", "?")
    return f"{kind} {name} in namespace {namespace} was not created by kfnb ({owner_said(obj)})"


def delete_exactly(api: KubeApi, path: str, checked: dict[str, Any]) -> dict[str, Any]:
    """DELETE the object at ``path`` only if it is still the one ``checked`` (same uid):
    the API server answers 409 otherwise. Children go in the background, as kubectl's."""
    options = {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Background",
        "preconditions": {"uid": checked.get("metadata", {}).get("uid")},
    }
    return api.request("DELETE", path, body=options)
