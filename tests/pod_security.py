"""The Pod Security Standards' ``baseline`` and ``restricted`` checks, for tests.

Written from the Kubernetes Pod Security Standards page (kubernetes.io/docs/concepts/
security/pod-security-standards/, policy version latest) and worded as the API
server's PodSecurity admission words a rejection (k8s.io/pod-security-admission
``policy/check_*.go``): ``violates PodSecurity "restricted:latest": <check> (<detail>)``.
Only the checks a pod kfnb renders could meet or miss; Windows and AppArmor are left out.
"""

from __future__ import annotations

from typing import Any

# Volume types `restricted` allows; every other type (hostPath above all) is refused.
RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
_VOLUME_SOURCE_KEYS = frozenset({"name"})


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _context(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def _quote(names: list[str]) -> str:
    word = "container" if len(names) == 1 else "containers"
    return f"{word} " + ", ".join(f'"{n}"' for n in names)


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    found = []
    namespaces = [k for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    if namespaces:
        found.append(f"host namespaces ({'=true, '.join(namespaces)}=true)")
    privileged = [c["name"] for c in _containers(pod) if _context(c).get("privileged")]
    if privileged:
        found.append(
            f"privileged ({_quote(privileged)} must not set securityContext.privileged=true)"
        )
    host_paths = [v["name"] for v in pod.get("volumes", []) if "hostPath" in v]
    if host_paths:
        found.append(f"hostPath volumes (volumes {', '.join(map(repr, host_paths))})")
    ports = [c["name"] for c in _containers(pod) for p in c.get("ports", []) if p.get("hostPort")]
    if ports:
        found.append(f"hostPort ({_quote(ports)} uses hostPorts)")
    unconfined = [
        c["name"]
        for c in _containers(pod)
        if (_context(c).get("seccompProfile") or {}).get("type") == "Unconfined"
    ]
    if (_context(pod).get("seccompProfile") or {}).get("type") == "Unconfined" or unconfined:
        found.append('seccompProfile (pod or containers must not set type to "Unconfined")')
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What PodSecurity admission at ``restricted`` says against the pod spec ``pod``."""
    found = baseline_violations(pod)
    other_volumes = [
        (v["name"], t)
        for v in pod.get("volumes", [])
        for t in set(v) - _VOLUME_SOURCE_KEYS
        if t not in RESTRICTED_VOLUMES
    ]
    if other_volumes:
        detail = ", ".join(
            f'volume "{n}" uses restricted volume type "{t}"' for n, t in other_volumes
        )
        found.append(f"restricted volume types ({detail})")
    containers = _containers(pod)
    escalating = [
        c["name"] for c in containers if _context(c).get("allowPrivilegeEscalation") is not False
    ]
    if escalating:
        found.append(
            f"allowPrivilegeEscalation != false ({_quote(escalating)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    capabilities = [
        c["name"]
        for c in containers
        if "ALL" not in ((_context(c).get("capabilities") or {}).get("drop") or [])
        or set((_context(c).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
    ]
    if capabilities:
        found.append(
            f"unrestricted capabilities ({_quote(capabilities)} must set "
            'securityContext.capabilities.drop=["ALL"])'
        )
    pod_non_root = _context(pod).get("runAsNonRoot") is True
    root_allowed = [
        c["name"]
        for c in containers
        if _context(c).get("runAsNonRoot") is False
        or (not pod_non_root and _context(c).get("runAsNonRoot") is not True)
    ]
    if root_allowed:
        found.append(
            f"runAsNonRoot != true (pod or {_quote(root_allowed)} must set "
            "securityContext.runAsNonRoot=true)"
        )
    as_root = [c["name"] for c in containers if _context(c).get("runAsUser") == 0]
    if _context(pod).get("runAsUser") == 0 or as_root:
        found.append("runAsUser=0 (pod and containers must not set runAsUser=0)")
    pod_seccomp = (_context(pod).get("seccompProfile") or {}).get("type")
    no_seccomp = [
        c["name"]
        for c in containers
        if (_context(c).get("seccompProfile") or {}).get("type", pod_seccomp)
        not in ("RuntimeDefault", "Localhost")
    ]
    if no_seccomp:
        found.append(
            f"seccompProfile (pod or {_quote(no_seccomp)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
        )
    return found


def admission_message(kind: str, name: str, level: str, violations: list[str]) -> str:
    """The API server's words when PodSecurity admission refuses a pod."""
    return f'{kind} "{name}" is forbidden: violates PodSecurity "{level}:latest": ' + ", ".join(
        violations
    )
