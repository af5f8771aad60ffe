"""kfnb replaces and deletes on a cluster only what it created (app.kubernetes.io/managed-by
kfnb): an InferenceService, Deployment, Service or ServiceAccount of the same name made by
someone else is refused in one line and left as it was. Against the FAKE API server of
tests/fake_kube.py; nothing here ran on Kubernetes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fake_kube import CORE, DEPLOYMENTS, ISVCS, TFJOBS, FakeKube

pytest.importorskip("kubernetes")
JOB_A = "s3://tfmnist/jobs/tfjob-a/model"
JOB_B = "s3://tfmnist/jobs/tfjob-b/model"


def foreign(fake: FakeKube, prefix: str, plural: str, name: str, kind: str) -> dict[str, Any]:
    """An object someone else made (a Helm release, say) under a name kfnb would use."""
    api = prefix.split("/", 1)[1] if prefix != CORE else "v1"
    obj: dict[str, Any] = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "spec": {"theirs": True},
    }
    fake._put(prefix, plural, "alice", obj)
    return json.loads(json.dumps(obj))


def unchanged(fake: FakeKube, prefix: str, plural: str, before: dict[str, Any]) -> bool:
    now = fake.get(prefix, plural, "alice", before["metadata"]["name"])
    return (
        now is not None
        and now["metadata"]["uid"] == before["metadata"]["uid"]
        and (now.get("spec") == before["spec"])
    )


def writes(fake: FakeKube) -> list[tuple[str, str]]:
    return [(m, p) for m, p in fake.requests if m in ("POST", "PUT", "DELETE")]


def test_serve_refuses_to_replace_an_inference_service_kfnb_did_not_create(
    shell: Any, fake_kube: FakeKube
) -> None:
    from IPython.core.error import UsageError

    theirs = foreign(fake_kube, *ISVCS, "mnist", "InferenceService")
    shell.run_line_magic("config", "Kfnb.s3_secret = 'minio-s3'")
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("InferenceService mnist in namespace alice was not created by kfnb")
    assert "managed-by" in message and "--name" in message
    assert unchanged(fake_kube, *ISVCS, theirs)
    # Refused before anything was written: not even the ServiceAccount.
    assert writes(fake_kube) == []


@pytest.mark.parametrize("kind", ["Deployment", "Service"])
def test_serve_tfserving_refuses_objects_kfnb_did_not_create(
    shell: Any, fake_kube: FakeKube, kind: str
) -> None:
    from IPython.core.error import UsageError

    where = DEPLOYMENTS if kind == "Deployment" else (CORE, "services")
    theirs = foreign(fake_kube, *where, "mnist-tf-serving", kind)
    with pytest.raises(UsageError, match=f"^{kind} mnist-tf-serving in namespace alice was not"):
        shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes --runtime tfserving")
    assert unchanged(fake_kube, *where, theirs)
    assert writes(fake_kube) == []


def test_a_foreign_object_created_while_applying_is_not_replaced(fake_kube: FakeKube) -> None:
    """The 409 path (someone created it between kfnb's check and its create) checks too."""
    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import ServeError

    cluster = ClusterServing()
    theirs = foreign(fake_kube, CORE, "serviceaccounts", "mnist-kfnb-s3", "ServiceAccount")
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "mnist-kfnb-s3", "labels": {"app.kubernetes.io/managed-by": "kfnb"}},
    }
    with pytest.raises(ServeError, match="ServiceAccount mnist-kfnb-s3 .* not created by kfnb"):
        cluster._apply(account)
    assert unchanged(fake_kube, CORE, "serviceaccounts", theirs)
    assert not any(m == "PUT" for m, _ in fake_kube.requests)


def test_kfnb_still_replaces_its_own_inference_service(shell: Any, fake_kube: FakeKube) -> None:
    shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes --canary {JOB_B} --percent 10")
    isvc = fake_kube.get(*ISVCS, "alice", "mnist")
    assert isvc is not None and isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_stop_leaves_what_kfnb_did_not_create(shell: Any, fake_kube: FakeKube) -> None:
    """Served by kfnb; then someone deleted the InferenceService and made their own under
    the name. `--stop` deletes kfnb's ServiceAccount, leaves theirs, and says so."""
    from IPython.core.error import UsageError

    shell.run_line_magic("config", "Kfnb.s3_secret = 'minio-s3'")
    shell.run_line_magic("serve", f"{JOB_A} --backend kubernetes")
    fake_kube.delete(*ISVCS, "alice", "mnist")
    theirs = foreign(fake_kube, *ISVCS, "mnist", "InferenceService")
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("serve", "--stop mnist")
    message = str(caught.value)
    assert "\n" not in message
    assert "left InferenceService mnist in namespace alice alone" in message
    assert "not created by kfnb" in message
    assert unchanged(fake_kube, *ISVCS, theirs)
    assert fake_kube.get(CORE, "serviceaccounts", "alice", "mnist-kfnb-s3") is None
    # kfnb's record of the server is gone: what it served no longer exists.
    shell.run_line_magic("serve", "--list")
    from kfnb.serving.local import LocalServing

    assert LocalServing().get("mnist") is None


def test_deletes_carry_the_uid_kfnb_checked(fake_kube: FakeKube) -> None:
    """Between kfnb's check and its delete the object may be replaced: the delete names
    the uid it checked, and the API server (here the fake) refuses another object's."""
    from kfnb.backends.kube_api import ApiError, KubeApi
    from kfnb.backends.kube_owned import delete_exactly

    api = KubeApi()
    ours = fake_kube._put(*DEPLOYMENTS, "alice", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x", "labels": {"app.kubernetes.io/managed-by": "kfnb"}},
    })  # fmt: skip
    checked = json.loads(json.dumps(ours))
    fake_kube.delete(*DEPLOYMENTS, "alice", "x")
    theirs = foreign(fake_kube, *DEPLOYMENTS, "x", "Deployment")
    with pytest.raises(ApiError) as caught:
        delete_exactly(api, "/apis/apps/v1/namespaces/alice/deployments/x", checked)
    assert caught.value.status == 409 and "Precondition failed: UID in precondition" in str(
        caught.value
    )
    assert unchanged(fake_kube, *DEPLOYMENTS, theirs)


def test_kfnb_delete_refuses_a_tfjob_kfnb_did_not_create(
    fake_kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's record names a TFJob that someone else has since made under the name:
    deleting (and purging) it refuses, and leaves their TFJob."""
    import kfnb
    from kfnb.backends import BackendError
    from kfnb.job import Job

    job = kfnb.submit("print(1)\n", name="mnist", workers=1, names={}, backend="kubernetes")
    assert job.wait(timeout=20).phase == "Succeeded"
    from kfnb.backends.kubernetes import stop_watchers

    stop_watchers()  # a later kernel: nothing cached of the old TFJob
    fake_kube.delete(*TFJOBS, "alice", "mnist")
    theirs = foreign(fake_kube, *TFJOBS, "mnist", "TFJob")
    with pytest.raises(BackendError) as caught:
        Job.attach("mnist").backend.delete("mnist", purge=True)
    message = str(caught.value)
    assert "\n" not in message and "TFJob mnist in namespace alice was not created by kfnb" in (
        message
    )
    assert unchanged(fake_kube, *TFJOBS, theirs)


def test_a_configmap_of_someone_else_is_neither_replaced_nor_deleted(
    fake_kube: FakeKube,
) -> None:
    """The code ConfigMap's name is taken: the submit fails in one line, their ConfigMap
    stays, and only kfnb's own just-made TFJob is removed again."""
    import kfnb
    from kfnb.backends import BackendError

    theirs = foreign(fake_kube, CORE, "configmaps", "mnist-code", "ConfigMap")
    with pytest.raises(BackendError) as caught:
        kfnb.submit("print(1)\n", name="mnist", workers=1, names={}, backend="kubernetes")
    assert '"mnist-code" already exists' in str(caught.value) and "\n" not in str(caught.value)
    assert unchanged(fake_kube, CORE, "configmaps", theirs)
    assert fake_kube.get(*TFJOBS, "alice", "mnist") is None


def test_stopping_a_pipeline_run_leaves_a_workflow_kfnb_did_not_create(
    fake_kube: FakeKube,
) -> None:
    from kfnb.pipelines.cluster import delete_workflow
    from kfnb.pipelines.steps import PipelineError
    from tests.fake_kube import WORKFLOWS

    theirs = foreign(fake_kube, *WORKFLOWS, "mnist-run", "Workflow")
    with pytest.raises(PipelineError, match="^Workflow mnist-run in namespace alice was not"):
        delete_workflow("mnist-run", "alice")
    assert unchanged(fake_kube, *WORKFLOWS, theirs)
    fake_kube._put(
        *WORKFLOWS,
        "alice",
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": "ours", "labels": {"app.kubernetes.io/managed-by": "kfnb"}},
        },
    )
    delete_workflow("ours", "alice")
    assert fake_kube.get(*WORKFLOWS, "alice", "ours") is None
    delete_workflow("ours", "alice")  # gone already: nothing to do
