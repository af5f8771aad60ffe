"""`%kfnb nodes` and the check's GPU row under the RBAC that deploy/ grants, against the
FAKE API server of tests/fake_kube.py, which enforces a Role in its namespace only and a
ClusterRole everywhere, as RBAC does. Nothing here ran on Kubernetes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fake_kube import CORE, FakeKube

pytest.importorskip("kubernetes")
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def rules_of(name: str, kind: str) -> list[dict[str, Any]]:
    role = next(d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d["kind"] == kind)
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def gpu_pod(fake: FakeKube, namespace: str, name: str, node: str, gpus: int) -> None:
    """A running pod that holds ``gpus`` on ``node`` (another tenant's, when not alice's)."""
    container = {"name": "main", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}}
    fake._put(CORE, "pods", namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [container]},
        "status": {"phase": "Running"},
    })  # fmt: skip


@pytest.fixture
def granted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: Any) -> Iterator[FakeKube]:
    """The fake with deploy/rbac.yaml's Role in alice and the ClusterRoles given as the
    test's parameter bound to alice's account."""
    cluster: list[dict[str, Any]] = []
    for name in request.param:
        cluster += rules_of(name, "ClusterRole")
    with FakeKube(rules=rules_of("rbac.yaml", "Role"), cluster_rules=cluster) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        gpu_pod(fake, "alice", "mine", "node-a", 1)
        gpu_pod(fake, "bob", "theirs", "node-a", 1)
        yield fake


def test_the_fake_grants_a_role_in_its_namespace_only() -> None:
    """RBAC as the API server applies it: a Role's `list pods` is for its namespace; the
    cluster-wide list and another namespace's need a ClusterRole."""
    with FakeKube(rules=rules_of("rbac.yaml", "Role")) as fake:
        assert fake.allows("list", "", "pods", "alice")
        assert not fake.allows("list", "", "pods", "bob")
        assert not fake.allows("list", "", "pods", "")  # the cluster scope
        assert not fake.allows("list", "", "nodes", "")
    with FakeKube(rules=[], cluster_rules=rules_of("rbac-nodes.yaml", "ClusterRole")) as fake:
        assert fake.allows("list", "", "nodes", "") and not fake.allows("list", "", "pods", "")


@pytest.mark.parametrize("granted", [["rbac-nodes.yaml"]], indirect=True)
def test_nodes_with_the_narrow_grant_count_the_namespace_and_say_so(
    granted: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("kfnb", "nodes")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-4:] == ["GPU(Total)", "GPU(Allocated", "in", "alice)"]
    assert lines[1].split()[0] == "node-a" and lines[1].split()[-2:] == ["2", "1"]  # not bob's
    assert lines[-1].startswith(
        "Allocated to alice's pods/Total GPUs in cluster: 1/2; other namespaces' pods are not "
        "counted: this account may not list pods cluster-wide"
    )
    assert "deploy/rbac-cluster-pods.yaml" in lines[-1]
    assert ("GET", "/api/v1/namespaces/alice/pods") in granted.requests


@pytest.mark.parametrize("granted", [["rbac-nodes.yaml", "rbac-cluster-pods.yaml"]], indirect=True)
def test_nodes_with_the_cluster_wide_grant_count_every_pod(
    granted: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("kfnb", "nodes")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["GPU(Total)", "GPU(Allocated)"]
    assert lines[1].split()[-2:] == ["2", "2"]
    assert lines[-1] == "Allocated/Total GPUs in cluster: 2/2 (100%)"


@pytest.mark.parametrize("granted", [["rbac-nodes.yaml"]], indirect=True)
def test_the_check_row_says_whose_gpus_it_counted(granted: FakeKube) -> None:
    from kfnb.checks import check

    (row,) = [r for r in check(backend="kubernetes") if r.what == "GPU nodes"]
    assert row.status == "ok"
    assert row.detail == (
        "1 (node-a): 2 GPUs, 1 allocated to alice's pods (other namespaces' not counted: "
        "deploy/rbac-cluster-pods.yaml)"
    )
