"""`kfnb.check()` and ``%kfnb check``: with no cluster, and against the FAKE API server
(tests/fake_kube.py, kubeconfig and in-cluster modes). The fake is not Kubernetes: these
tests show what kfnb asks and how it words the answers, not that a cluster answers so."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfnb.checks import CheckResult, check
from kfnb.config import settings
from tests import s3_server
from tests.fake_kube import DEPLOYMENTS, FakeKube

PROFILE = {"istio-injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
CLUSTER_ROWS = [
    "backend",
    "cluster",
    "namespace",
    "access",
    "TFJob",
    "KServe",
    "TF Serving",
    "Argo Workflows",
    "Katib",
    "GPU nodes",
    "Istio",
    "Pod Security",
    "store",
    "Python",
    "packages",
]


def rows(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.what: r for r in results}


def kubeconfig(fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
    return fake


@pytest.fixture
def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """The fake as a Kubeflow profile's namespace looks: Istio injection on, restricted."""
    with FakeKube(namespace_labels={"alice": PROFILE}) as fake:
        yield kubeconfig(fake, tmp_path, monkeypatch)


def operator(fake: FakeKube, image: str = "kubeflow/training-operator:v1-855e096") -> None:
    """The Training Operator's Deployment, as its standalone overlay names it."""
    container = {"name": "training-operator", "image": image}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "training-operator"},
        "spec": {"template": {"spec": {"containers": [container]}}},
    }
    fake._put(*DEPLOYMENTS, "kubeflow", deployment)


def one_line_each(results: list[CheckResult]) -> None:
    for result in results:
        assert result.status in ("ok", "warn", "fail")
        assert "\n" not in result.detail + result.fix and result.detail, result


def test_without_a_cluster_it_says_local_and_checks_what_applies_here(
    monkeypatch: pytest.MonkeyPatch, kfnb_home: Path
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    found = check()
    assert [r.what for r in found] == ["backend", "GPUs", "store", "Python", "packages"]
    by = rows(found)
    assert by["backend"] == CheckResult(
        "backend", "ok", "local: no Kubernetes cluster is configured"
    )
    assert by["store"].status == "ok" and str(kfnb_home / "jobs") in by["store"].detail
    assert not (kfnb_home / "jobs" / ".kfnb-check").exists()  # the probe is removed
    assert by["Python"].status == "ok" and by["Python"].detail.startswith("3.")
    assert by["packages"].detail == "the package index https://mirror.example/simple"
    one_line_each(found)


def test_local_faults_are_one_row_each(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    settings().python = str(tmp_path / "no-python")
    settings().wheelhouse = "auto"
    found = rows(check(storage=str(tmp_path / "a-file" / "jobs")))
    assert found["store"].status == "fail"
    assert "cannot create the storage directory" in found["store"].detail
    assert found["Python"].status == "fail" and "no-python" in found["Python"].detail
    assert found["Python"].fix.startswith("%config Kfnb.python")
    assert found["packages"].detail.startswith(f"wheelhouse {tmp_path / 'a-file' / 'jobs'}")
    one_line_each(list(found.values()))


def test_a_profile_namespace_on_the_fake_cluster(profile: FakeKube) -> None:
    operator(profile)
    found = check()
    assert [r.what for r in found] == CLUSTER_ROWS
    by = rows(found)
    assert by["backend"].detail == f"kubernetes: cluster {profile.url}, namespace alice"
    assert by["cluster"].detail.startswith(f"{profile.url} (kubeconfig ")
    assert by["namespace"].detail == "alice (the kubeconfig context's, else default)"
    assert by["access"].detail.startswith("all ") and by["access"].status == "ok"
    assert by["TFJob"].detail == (
        "kubeflow.org/v1 served; Training Operator v1-855e096 "
        "(kubeflow/training-operator:v1-855e096)"
    )
    assert by["TF Serving"].detail.startswith("tensorflow/serving:2.")
    assert by["GPU nodes"].detail == "1 (node-a): 2 GPUs, 2 free"
    assert "replicas opt out (sidecar.istio.io/inject=false)" in by["Istio"].detail
    assert by["Pod Security"].detail.startswith("restricted enforced in alice")
    # kfnb's local store is no place for a cluster's artifacts: said, with the fix.
    assert by["store"].status == "warn" and "pods cannot reach it" in by["store"].detail
    assert by["store"].fix.startswith("%config Kfnb.storage = 's3://")
    assert by["Python"].status == "ok" and "tensorflow/tensorflow:" in by["Python"].detail
    assert "from each replica: pods must reach it" in by["packages"].detail
    assert [r.what for r in found if r.status != "ok"] == ["store"]
    one_line_each(found)


def test_what_a_profile_user_may_not_read_is_unknown_not_failed(profile: FakeKube) -> None:
    profile.deny |= {
        ("create", "authorization.k8s.io", "selfsubjectaccessreviews"),
        ("get", "", "namespaces"),
        ("list", "", "nodes"),
        ("get", "apps", "deployments"),
    }
    found = rows(check())
    assert found["namespace"].status == "ok"  # not readable is not missing
    assert found["access"].status == "warn" and "may not ask" in found["access"].detail
    assert "system:basic-user" in found["access"].fix
    for what in ("Istio", "Pod Security"):
        assert found[what].status == "warn"
        assert found[what].detail.startswith("unknown: this account may not read namespace alice")
        assert found[what].fix.startswith("none needed")
    assert (
        found["GPU nodes"].status == "warn" and "deploy/rbac-nodes.yaml" in found["GPU nodes"].fix
    )
    assert "operator version unknown (this account may not read Deployment" in found["TFJob"].detail
    assert found["backend"].status == "ok"  # none of it stops a job


def test_missing_components_and_permissions(profile: FakeKube) -> None:
    profile.kserve = profile.argo = profile.katib = False
    profile.deny.add(("create", "kubeflow.org", "tfjobs"))
    profile.deny.add(("get", "", "pods/log"))
    found = rows(check())
    assert found["access"].status == "fail"
    assert found["access"].detail == "may not create tfjobs.kubeflow.org, get pods/log in alice"
    assert "deploy/rbac.yaml" in found["access"].fix
    assert found["KServe"].status == "warn" and "--runtime tfserving" in found["KServe"].fix
    assert found["Argo Workflows"].fix.startswith("install Argo Workflows")
    assert found["Katib"].fix.startswith("install Katib")
    assert found["TFJob"].status == "ok"  # kubeflow.org/v1 is served without Katib's v1beta1


def test_no_gpu_node_and_no_tfjob_crd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeKube(gpu_nodes={"node-c": 0}, crd=False) as fake:
        kubeconfig(fake, tmp_path, monkeypatch)
        auto = rows(check())
        asked = rows(check(backend="kubernetes"))
    # auto falls back to local, and still shows the cluster's rows that say why.
    assert auto["backend"].status == "warn"
    assert auto["backend"].detail.startswith("local: the cluster is not usable")
    assert auto["TFJob"].status == "fail" and "v1.9" in auto["TFJob"].fix
    assert auto["Katib"].status == "warn"  # Katib is kubeflow.org too
    assert "GPUs" in auto and auto["store"].status == "ok"  # the local backend's rows
    assert asked["backend"].detail == "kubernetes: --backend kubernetes"
    assert asked["GPU nodes"].status == "warn"
    assert asked["GPU nodes"].detail.startswith("no node offers nvidia.com/gpu")


def test_settings_that_break_a_profile_namespace(profile: FakeKube) -> None:
    settings().istio_sidecar = True
    settings().pod_template = {"spec": {"hostNetwork": True}}
    found = rows(check())
    assert found["Istio"].status == "warn" and found["Istio"].fix == (
        "%config Kfnb.istio_sidecar = False"
    )
    assert found["Pod Security"].status == "warn"
    assert "within restricted" in found["Pod Security"].fix


def test_in_cluster_with_the_pods_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeKube(tls=True) as fake:
        for key, value in fake.service_account(tmp_path / "serviceaccount").items():
            monkeypatch.setenv(key, value)
        found = rows(check())
        fake.tokens = {"another-token"}  # the pod's token expired
        refused = check()
    assert found["cluster"].detail == f"{fake.url} (in-cluster, this pod's service-account token)"
    assert found["namespace"].detail == "alice (this pod's service-account namespace)"
    assert found["access"].status == "ok" and found["TFJob"].status == "ok"
    # A refused token is one row, not one per check; the local rows remain.
    assert [r.what for r in refused] == [
        "backend",
        "cluster",
        "GPUs",
        "store",
        "Python",
        "packages",
    ]
    cluster = rows(refused)["cluster"]
    assert cluster.status == "fail" and "refused this pod's service-account credentials" in (
        cluster.detail
    )


def test_an_api_server_that_does_not_answer_is_one_row_and_quick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKube() as fake:
        kubeconfig(fake, tmp_path, monkeypatch)
    start = time.monotonic()
    found = check(backend="kubernetes")
    assert time.monotonic() - start < 10
    assert [r.what for r in found] == ["backend", "cluster", "store", "Python", "packages"]
    assert "cannot reach the Kubernetes API server" in rows(found)["cluster"].detail


def test_s3_store_and_wheelhouse_on_the_cluster(
    profile: FakeKube, moto_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.use_endpoint(monkeypatch, moto_port, "kfnb-test-access", "kfnb-test-secret")
    settings().storage = "s3://kfnb-check/jobs"
    settings().wheelhouse = "auto"
    found = rows(check())
    assert found["store"].status == "warn" and "no Secret with the S3 keys" in found["store"].detail
    assert found["packages"].detail.startswith("wheelhouse s3://kfnb-check/jobs/wheelhouse")
    settings().s3_secret = "minio-creds"
    settings().wheelhouse = str(Path.cwd())
    found = rows(check())
    assert found["store"] == CheckResult(
        "store", "ok", "s3://kfnb-check/jobs: reachable and writable"
    )
    assert found["packages"].status == "fail" and "pods cannot read a directory" in (
        found["packages"].detail
    )


def test_an_unreachable_s3_store_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from kfnb.backends.supervisor import free_port

    s3_server.use_endpoint(monkeypatch, free_port(), "kfnb-test-access", "kfnb-test-secret")
    found = rows(check(storage="s3://kfnb-check/jobs"))
    assert found["store"].status == "fail"
    assert "cannot reach the S3 endpoint" in found["store"].detail
    assert found["Python"].status == "ok"


def test_kfnb_check_prints_one_table_with_each_fix_under_its_problem(
    profile: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    profile.kserve = False
    shell.run_line_magic("kfnb", "check")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    kserve = next(i for i, line in enumerate(lines) if line.startswith("KServe "))
    assert lines[kserve].split()[1] == "warn"
    assert lines[kserve + 1].strip().startswith("fix: install KServe")
    assert lines[-1] == "Nothing stops a first job here; 2 warning(s)."
    shell.run_line_magic("kfnb", "check --backend local")
    out = capsys.readouterr().out
    assert "local: --backend local" in out


def test_kfnb_check_names_its_failures(
    profile: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    profile.crd = False
    shell.run_line_magic("kfnb", "check --backend kubernetes")
    out = capsys.readouterr().out
    assert "fix: install the Training Operator 1.9" in out
    assert out.splitlines()[-1].startswith("1 problem(s) stop jobs here")
