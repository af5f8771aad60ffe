"""``%serve --backend kubernetes`` against the FAKE API server of tests/fake_kube.py.

The fake stores what kfnb creates and plays a fake KServe controller (Ready, URL,
canary traffic split); nothing here ran on a real cluster or a real KServe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import schema_validators
from tests.fake_kube import DEPLOYMENTS, ISVCS, FakeKube

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("kubernetes")
SECRET = "wJalrXUtnFEMI-kfnb-serving-secret"
JOB_A = "s3://tfmnist/jobs/tfjob-a/model"
JOB_B = "s3://tfmnist/jobs/tfjob-b/model"


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    with FakeKube() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        yield fake


@pytest.fixture(scope="module")
def isvc_validators() -> list[Any]:
    return schema_validators("InferenceService")


def created(fake: FakeKube, prefix: str, plural: str) -> list[dict[str, Any]]:
    """What kfnb sent, as the fake stored it (its status and server fields removed)."""
    with fake.cond:
        objects = list(fake.objects.get((prefix, plural), {}).values())
    cleaned = []
    for obj in objects:
        obj = json.loads(json.dumps(obj))
        obj.pop("status", None)
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            obj["metadata"].pop(key, None)
        cleaned.append(obj)
    return cleaned


def test_kserve_inference_service_with_a_canary(
    shell: Any,
    fake_kube: FakeKube,
    isvc_validators: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell.run_line_magic("config", "Kfnb.s3_secret = 'minio-s3'")
    served = shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    assert served.url == "http://mnist.alice.example.com"
    assert served.backend == "kubernetes" and served.namespace == "alice"
    (isvc,) = created(fake_kube, *ISVCS)
    for validator in isvc_validators:
        assert not list(validator.iter_errors(isvc))
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == JOB_A
    (account,) = created(fake_kube, "api/v1", "serviceaccounts")
    kubernetes_validate.validate(account, "1.30", strict=True)
    assert account["secrets"] == [{"name": "minio-s3"}]

    # The canary: the service is replaced in place; the fake KServe splits the traffic.
    line = f"{JOB_A} --backend kubernetes --canary {JOB_B} --percent 10"
    shell.run_line_magic("serve", line)
    assert "(traffic: mnist-predictor-00002 10%, mnist-predictor-00001 90%)" in (
        capsys.readouterr().out
    )
    (isvc,) = created(fake_kube, *ISVCS)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == JOB_B
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert ("PUT", "/apis/serving.kserve.io/v1beta1/namespaces/alice/inferenceservices/mnist") in (
        fake_kube.requests
    )
    stored = json.dumps([list(objects.values()) for objects in fake_kube.objects.values()])
    assert SECRET not in stored

    shell.run_line_magic("serve", "--list")
    assert "mnist  kserve" in capsys.readouterr().out
    shell.run_line_magic("serve", "--stop mnist")
    assert created(fake_kube, *ISVCS) == []
    assert created(fake_kube, "api/v1", "serviceaccounts") == []


def test_tf_serving_runtime_waits_for_the_deployment(shell: Any, fake_kube: FakeKube) -> None:
    served = shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes --runtime tfserving")
    assert served.url == "http://mnist-tf-serving.alice.svc.cluster.local:8501"
    (deployment,) = created(fake_kube, *DEPLOYMENTS)
    (service,) = created(fake_kube, "api/v1", "services")
    kubernetes_validate.validate(deployment, "1.30", strict=True)
    kubernetes_validate.validate(service, "1.30", strict=True)
    shell.run_line_magic("serve", "--stop mnist")
    assert created(fake_kube, *DEPLOYMENTS) == []


def test_cluster_faults_are_one_line(shell: Any, fake_kube: FakeKube) -> None:
    from IPython.core.error import UsageError

    fake_kube.kserve = False
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    assert "this cluster has no InferenceService resource: install KServe" in str(caught.value)
    fake_kube.kserve = True

    fake_kube.deny.add(("create", "serving.kserve.io", "inferenceservices"))
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    message = str(caught.value)
    assert "may not create inferenceservices.serving.kserve.io in namespace alice" in message
    assert "kubectl apply -f deploy/rbac.yaml" in message and "\n" not in message

    with pytest.raises(UsageError, match="keeps its model on this machine|neither"):
        shell.run_line_magic("serve", "some-local-path --backend kubernetes")


def test_no_cluster_is_one_line(
    shell: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.error import UsageError

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="no Kubernetes cluster is configured"):
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")


def test_rbac_role_grants_what_serving_needs() -> None:
    import yaml

    role = next(yaml.safe_load_all(Path("deploy/rbac.yaml").read_text()))
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for needed in [
        ("serving.kserve.io", "inferenceservices", "create"),
        ("serving.kserve.io", "inferenceservices", "update"),
        ("serving.kserve.io", "inferenceservices", "delete"),
        ("", "serviceaccounts", "create"),
        ("apps", "deployments", "create"),
        ("", "services", "create"),
    ]:
        assert needed in granted, needed
