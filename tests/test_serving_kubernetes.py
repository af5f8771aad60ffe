"""``%serve --backend kubernetes`` against the FAKE API server of tests/fake_kube.py.

The fake stores what kfnb creates and plays a fake KServe controller (Ready, URL,
canary traffic split); nothing here ran on a real cluster or a real KServe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import schema_validators
from tests.fake_kube import CORE, DEPLOYMENTS, ISVCS, FakeKube

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("kubernetes")
SECRET = "wJalrXUtnFEMI-kfnb-serving-secret"
JOB_A = "s3://tfmnist/jobs/tfjob-a/model"
JOB_B = "s3://tfmnist/jobs/tfjob-b/model"


@pytest.fixture
def fake_kube(fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    """conftest's fake, with an S3 key in the notebook's environment."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return fake_kube


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


def test_tf_serving_runtime_waits_for_the_deployment(
    shell: Any, fake_kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    served = shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes --runtime tfserving")
    assert served.url == "http://mnist-tf-serving.alice.svc.cluster.local:8501"
    assert capsys.readouterr().out.startswith("TF Serving 2.20.0: ")
    (deployment,) = created(fake_kube, *DEPLOYMENTS)
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["image"] == "tensorflow/serving:2.20.0"
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


MINIO = "minio-service.kubeflow:9000"


def add_secret(fake: FakeKube, annotations: dict[str, str] | None = None) -> None:
    """The user's S3 Secret, as they create it (kfnb never does)."""
    metadata: dict[str, Any] = {"name": "minio-s3", "annotations": annotations or {}}
    data = {"AWS_ACCESS_KEY_ID": "a2V5", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"}
    fake._put(CORE, "secrets", "alice", {"apiVersion": "v1", "kind": "Secret",
                                         "metadata": metadata, "data": data})  # fmt: skip


def test_kserve_reads_the_s3_endpoint_from_the_secret(
    shell: Any, fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.error import UsageError

    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import ServeError

    fake_kube.store_endpoint = MINIO  # the fake storage initializer finds models only there
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    shell.run_line_magic("config", "Kfnb.s3_secret = 'minio-s3'")
    shell.run_line_magic("config", f"Kfnb.s3_endpoint = '{MINIO}'")
    add_secret(fake_kube)

    # What kfnb used to render: the annotations on the ServiceAccount. The fake KServe,
    # as KServe, ignores them, and the storage initializer goes to AWS.
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "old-sa", "annotations": {"serving.kserve.io/s3-endpoint": MINIO}},
        "secrets": [{"name": "minio-s3"}],
    }
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "old"},
        "spec": {"predictor": {"serviceAccountName": "old-sa",
                               "model": {"modelFormat": {"name": "tensorflow"},
                                         "storageUri": JOB_A}}},
    }  # fmt: skip
    cluster = ClusterServing()
    cluster.apply([account, isvc])
    with pytest.raises(ServeError, match="from AWS S3 .no s3-endpoint annotation on the Secret"):
        cluster.wait("old", "kserve", timeout=5)

    # kfnb checks the Secret first and names the command that annotates it.
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    message = str(caught.value)
    assert "\n" not in message and "Secret minio-s3's annotations" in message
    assert (
        f"kubectl -n alice annotate secret minio-s3 --overwrite serving.kserve.io/s3-endpoint="
        f"{MINIO} serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1"
    ) in message
    assert created(fake_kube, *ISVCS)[0]["metadata"]["name"] == "old"  # nothing new applied

    add_secret(fake_kube, {"serving.kserve.io/s3-endpoint": MINIO,
                           "serving.kserve.io/s3-usehttps": "0",
                           "serving.kserve.io/s3-region": "us-east-1"})  # fmt: skip
    served = shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    assert served.url == "http://mnist.alice.example.com"


def test_a_model_that_fails_to_load_is_one_line_within_seconds(
    shell: Any, fake_kube: FakeKube
) -> None:
    import time

    from IPython.core.error import UsageError

    why = "Failed to fetch model. No model found in s3://tfmnist/jobs/tfjob-a/model."
    fake_kube.load_failures[JOB_A] = why
    started = time.monotonic()
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    assert time.monotonic() - started < 10  # not the 600 s timeout
    message = str(caught.value)
    assert message.startswith(f"KServe could not load mnist: ModelLoadFailed: {why}")
    assert "\n" not in message


def test_a_canary_is_done_when_its_revision_is_ready_with_its_share(
    shell: Any, fake_kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.step = 0.4  # the stale status (new generation observed, old revision) lasts
    shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    line = f"{JOB_A} --backend kubernetes --canary {JOB_B} --percent 10"
    shell.run_line_magic("serve", line)
    assert "(traffic: mnist-predictor-00002 10%, mnist-predictor-00001 90%)" in (
        capsys.readouterr().out
    )
    # The fake did report the stale state that an observedGeneration check takes as done.
    stale = [
        obj["status"]["components"]["predictor"]
        for _, path, _, _, obj in fake_kube.history
        if path == "/".join(ISVCS)
        and obj.get("status", {}).get("observedGeneration") == 2
        and obj["status"]["conditions"][-1]["status"] == "True"
    ]
    assert stale[0]["latestCreatedRevision"] != stale[0]["latestReadyRevision"]


def test_in_cluster_predictions_go_to_the_cluster_local_address(
    shell: Any, fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfnb.serving.kubernetes

    monkeypatch.setattr(kfnb.serving.kubernetes, "in_cluster", lambda: True)
    served = shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    assert served.url == "http://mnist.alice.svc.cluster.local"
    assert served.predict_url == "http://mnist.alice.svc.cluster.local/v1/models/mnist:predict"


def test_a_failing_copy_model_is_one_line_with_its_log(shell: Any, fake_kube: FakeKube) -> None:
    import time

    from IPython.core.error import UsageError

    fake_kube.copy_model_error = (
        "mc: <ERROR> Unable to list folder. Access Denied.\n"
        "mc: <ERROR> Unable to mirror. The specified bucket does not exist."
    )
    started = time.monotonic()
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes --runtime tfserving")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("copy-model could not copy the model into pod mnist-tf-serving-")
    assert (
        "(exit 1, Error): mc: <ERROR> Unable to mirror. The specified bucket does not exist."
    ) in message
    assert "\n" not in message


def test_the_release_follows_the_jobs_image(shell: Any, fake_kube: FakeKube) -> None:
    from kfnb.records import JobRecord, save_record

    save_record(JobRecord("tfjob-old", "kubernetes", "s3://tfmnist/jobs", namespace="alice",
                          image="tensorflow/tensorflow:2.19.1"))  # fmt: skip
    shell.run_line_magic("serve", "tfjob-old --backend kubernetes")
    (isvc,) = created(fake_kube, *ISVCS)
    assert isvc["spec"]["predictor"]["model"]["runtimeVersion"] == "2.19.0"
