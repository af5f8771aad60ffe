"""A job in a namespace like a Kubeflow profile's, against the **fake** API server
(tests/fake_kube.py): PodSecurity admission refuses pods as the API server does, and
init containers run (and fail) before the replica's container."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kfnb
from kfnb.config import settings
from kfnb.job import Job, JobFailed
from tests.fake_kube import ENFORCE_LABEL, FakeKube


@pytest.fixture
def restricted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """The fake, its namespace alice labelled pod-security.kubernetes.io/enforce: restricted."""
    labels = {ENFORCE_LABEL: "restricted", "istio-injection": "enabled"}
    with FakeKube(namespace_labels={"alice": labels}) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        yield fake


def submit(cell: str = "print('hi')\n", workers: int = 2) -> Job:
    return kfnb.submit(cell, workers=workers, names={}, backend="kubernetes")


def wait_for_message(job: Job, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = job.status().message
        if text in message:
            return message
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in {job.status().message!r}")


def test_kfnb_pods_run_in_a_restricted_namespace(restricted: FakeKube) -> None:
    job = submit("import mlxtend\n")  # with the kfnb-packages init container
    assert job.wait(timeout=30).phase == "Succeeded"
    pod = restricted.get("api/v1", "pods", "alice", f"{job.name}-worker-0")
    assert pod is not None and pod["spec"]["initContainers"][0]["name"] == "kfnb-packages"


def test_pods_as_kfnb_rendered_them_before_are_refused(
    restricted: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the securityContexts (kfnb until now) the fake refuses, as the API server."""
    monkeypatch.setattr("kfnb.pod_options.restrict", lambda pod, scratch="/tmp": None)
    job = submit()
    message = wait_for_message(job, "PodSecurity")
    assert message.startswith(
        'the namespace refuses the job\'s pods (PodSecurity "restricted:latest"): '
        'allowPrivilegeEscalation != false (container "tensorflow" must set '
        "securityContext.allowPrivilegeEscalation=false) (and 3 more)"
    )
    assert "\n" not in message and job.status().phase == "Created"
    job.delete()


def test_a_pod_template_that_breaks_restricted_is_one_line_naming_the_field(
    restricted: FakeKube,
) -> None:
    settings().pod_template = {"spec": {"securityContext": {"runAsUser": 0}}}
    job = submit()
    message = wait_for_message(job, "PodSecurity")
    assert "runAsUser=0 (pod and containers must not set runAsUser=0)" in message
    assert "Kfnb.pod_template" in message
    job.delete()


def test_an_init_container_failure_is_the_jobs_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    said = (
        "kfnb: installing 3 packages (mlxtend, ...) from https://pypi.org/simple\n"
        "kfnb: cannot reach the package index https://pypi.org from here (timed out): "
        "fill a wheelhouse from the notebook (--wheelhouse, the default with s3:// storage), "
        "or set PIP_INDEX_URL to a mirror this cluster reaches"
    )
    with FakeKube(init_failure=said) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        job = submit("import mlxtend\n", workers=1)
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=20)
    message = job.status().message
    assert message.startswith(
        "worker-0: its kfnb-packages init container failed: cannot reach the package index "
        "https://pypi.org from here"
    )
    assert "--wheelhouse" in message and "\n" not in message
    assert "cannot reach the package index" in str(failed.value)


@pytest.fixture
def labelled_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """The fake, its node-a labelled pool=training."""
    with FakeKube(node_labels={"node-a": {"pool": "training"}}) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        yield fake


def test_a_pull_secret_that_does_not_exist_is_named_before_and_after_submitting(
    labelled_nodes: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    image = labelled_nodes.private_registry + "trainer:1"
    job = kfnb.submit(
        "print(1)\n", names={}, backend="kubernetes", image=image, image_pull_secrets=["regcred"]
    )
    assert "the image pull secret regcred is not in namespace alice" in capsys.readouterr().err
    # The pod's state and the kubelet's events come on two watches, in either order.
    message = wait_for_message(job, "its image pull secret regcred is not in namespace alice")
    assert (
        message.startswith("worker-0 cannot pull its image (") and "pull access denied" in message
    )
    assert "\n" not in message
    job.delete()


def test_a_node_selector_no_node_matches_is_said_in_words(labelled_nodes: FakeKube) -> None:
    fine = kfnb.submit(
        "print(1)\n", names={}, backend="kubernetes", node_selector=["pool=training"]
    )
    assert fine.wait(timeout=20).phase == "Succeeded"
    job = kfnb.submit("print(1)\n", names={}, backend="kubernetes", gpu_type="NVIDIA-H200")
    message = wait_for_message(job, "Pending")
    assert message.startswith("worker-0 is Pending: no node has the labels it asks for (0/2 nodes")
    assert "--node-selector and --gpu-type" in message
    job.delete()
