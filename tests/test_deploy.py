"""The YAML under deploy/ that a cluster admin applies: what it grants and exposes.

Parsed and checked here; validated against Kubernetes 1.30's schemas by kubernetes-validate.
Nothing here was applied to a cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
README = Path(__file__).resolve().parent.parent / "README.md"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize(
    "name", ["rbac.yaml", "rbac-nodes.yaml", "rbac-cluster-pods.yaml", "minio.yaml"]
)
def test_every_deploy_file_validates(name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for document in documents(name):
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_the_nodes_role_reads_nodes_and_no_pod_of_any_tenant() -> None:
    """`list pods` cluster-wide shows every tenant's pod specs (inline env values, args):
    deploy/rbac-nodes.yaml grants only nodes, which carry no tenant's data."""
    (role,) = by_kind(documents("rbac-nodes.yaml"), "ClusterRole")
    assert grants(role["rules"]) == {("", "nodes", "list")}
    text = (DEPLOY / "rbac-nodes.yaml").read_text()
    assert "rbac-cluster-pods.yaml" in text  # the wider choice is named, with its cost


def test_the_cluster_pods_role_is_opt_in_and_says_what_it_exposes() -> None:
    docs = documents("rbac-cluster-pods.yaml")
    (role,) = by_kind(docs, "ClusterRole")
    assert grants(role["rules"]) == {("", "pods", "list")}
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    header = (DEPLOY / "rbac-cluster-pods.yaml").read_text().split("apiVersion:")[0].lower()
    for said in ("every namespace", "env", "args", "secret"):
        assert said in header, said


def test_the_namespace_role_grants_nothing_cluster_wide() -> None:
    docs = documents("rbac.yaml")
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding"}


def test_minio_ships_no_keys_and_says_how_to_make_them() -> None:
    """No literal keys: a skipped replace step must not run MinIO with a public password."""
    docs = documents("minio.yaml")
    assert by_kind(docs, "Secret") == []
    text = (DEPLOY / "minio.yaml").read_text()
    assert "REPLACE" not in text and "stringData" not in text
    for doc in docs:
        for container in _containers(doc):
            for env in container.get("env", []):
                assert "value" not in env or "PASSWORD" not in env["name"], env
                if env["name"].startswith("MINIO_ROOT"):
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "minio-creds"
    # The Secret comes from a command, with random keys, in the file and in the README.
    command = re.compile(
        r"kubectl -n \S+ create secret generic minio-creds\s+(\\\s*#?\s*)?"
        r"--from-literal=AWS_ACCESS_KEY_ID=\"?\$\(openssl rand"
    )
    assert command.search(text), "minio.yaml's header"
    assert command.search(README.read_text()), "README"


def test_minio_console_is_not_on_the_service() -> None:
    docs = documents("minio.yaml")
    (service,) = by_kind(docs, "Service")
    ports = service["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in ports] == [(9000, "s3")]
    assert all(p.get("name") != "console" for p in ports)


def test_a_network_policy_lets_only_the_namespace_reach_minio_s3() -> None:
    docs = documents("minio.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    (policy,) = by_kind(docs, "NetworkPolicy")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected and all(pod_labels.get(k) == v for k, v in selected.items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    # Only the S3 port; the console's stays unreachable from other pods.
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    # An empty or absent `from` would admit every source, in every namespace.
    assert rule["from"] == [{"podSelector": {}}]  # the pods of the policy's own namespace


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))
