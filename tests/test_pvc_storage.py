"""``--storage pvc://CLAIM/PATH``: the claim in every replica and serving pod, the
notebook's own mount of it, and a claim that cannot serve a job said in words.

The cluster here is the FAKE API server of tests/fake_kube.py (its scheduler and
attach controller word their events as Kubernetes does); nothing ran on Kubernetes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kfnb
from kfnb.api import prepare, render, render_serving
from kfnb.backends import BackendError
from kfnb.backends.kube_manifests import STORE_VOLUME, ClusterSettings, for_cluster
from kfnb.backends.kube_pvc import Mount, directory_in, forget_mounts
from kfnb.backends.kubernetes import KubernetesBackend
from kfnb.config import reset_settings, settings
from kfnb.storage import POD_PVC_ROOT, PvcStore, StoreError, open_store, parse_pvc
from tests.conftest import schema_errors, validate_tfjob
from tests.fake_kube import CORE, FakeKube
from tests.pod_security import restricted_violations

pytest.importorskip("kubernetes")


@pytest.fixture(autouse=True)
def _fresh_mounts() -> Iterator[None]:
    forget_mounts()
    yield
    forget_mounts()


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    """Where "this notebook" has claim ``data`` mounted, told through Kfnb.pvc_mounts."""
    path = tmp_path / "home" / "data"
    path.mkdir(parents=True)
    settings().pvc_mounts = {"data": str(path)}
    return path


def notebook_pod(fake: FakeKube, home: Path, name: str = "nb-0") -> None:
    """A Kubeflow notebook's pod: workspace claim at home, claim ``data`` under it, a sidecar."""
    fake._put(
        CORE,
        "pods",
        "alice",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"notebook-name": "nb"}},
            "spec": {
                "containers": [
                    {
                        "name": "nb",
                        "image": "kubeflownotebookswg/jupyter-tensorflow-full",
                        "volumeMounts": [
                            {"name": "workspace-nb", "mountPath": str(home)},
                            {"name": "data", "mountPath": str(home / "data")},
                        ],
                    },
                    {
                        "name": "istio-proxy",
                        "image": "istio/proxyv2",
                        "volumeMounts": [{"name": "data", "mountPath": "/elsewhere"}],
                    },
                ],
                "volumes": [
                    {"name": "workspace-nb", "persistentVolumeClaim": {"claimName": "ws-nb"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                ],
            },
        },
    )


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def worker_pod(tfjob: dict[str, Any], kind: str = "Worker") -> dict[str, Any]:
    spec: dict[str, Any] = tfjob["spec"]["tfReplicaSpecs"][kind]["template"]["spec"]
    return spec


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    main = next(c for c in pod["containers"] if c["name"] == "tensorflow")
    return {e["name"]: e.get("value", "") for e in main["env"]}


def message_with(backend: KubernetesBackend, name: str, words: str) -> str:
    """The job's status message once it holds ``words`` (within 10 s, as the user sees it)."""
    deadline = time.monotonic() + 10
    status = backend.status(name)
    while words not in status.message and time.monotonic() < deadline:
        time.sleep(0.05)
        status = backend.status(name)
    assert words in status.message, status
    assert status.phase == "Created" and "\n" not in status.message
    return status.message


# -- the URL and the notebook's side ---------------------------------------------------


def test_pvc_urls_parse_and_bad_ones_are_refused_in_one_line() -> None:
    assert parse_pvc("pvc://data/runs/a/").path == "runs/a"
    assert parse_pvc("pvc://data").pod_path("j") == f"{POD_PVC_ROOT}/j"
    for bad in ("pvc://Data/x", "pvc:///x", "pvc://data/../x"):
        with pytest.raises(StoreError) as error:
            parse_pvc(bad)
        assert "pvc://" in one_line(error) or "'..'" in str(error.value)


def test_a_claim_maps_to_the_notebooks_mount(mount: Path) -> None:
    store = open_store("pvc://data/runs")
    assert isinstance(store, PvcStore) and store.url == "pvc://data/runs"
    assert store.local_root == mount / "runs"
    store.check()
    store.write("j/status.json", b"{}")
    assert (mount / "runs" / "j" / "status.json").read_bytes() == b"{}"
    settings().pvc_mounts = {"data": str(mount.parent / "not-mounted")}
    with pytest.raises(StoreError) as error:
        open_store("pvc://data/runs").check()
    assert "not a directory here" in one_line(error) and "Kfnb.pvc_mounts" in str(error.value)


def test_unmapped_claim_outside_a_pod_names_the_setting() -> None:
    with pytest.raises(StoreError) as error:
        open_store("pvc://data/runs")
    assert "Kfnb.pvc_mounts" in one_line(error) and "claim data" in str(error.value)


def test_mounts_come_from_the_environment_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFNB_PVC_MOUNTS", json.dumps({"data": str(tmp_path)}))
    reset_settings()
    assert open_store("pvc://data/x").local_root == tmp_path / "x"
    monkeypatch.setenv("KFNB_PVC_MOUNTS", "data=/mnt")
    reset_settings()
    with pytest.raises(ValueError, match="KFNB_PVC_MOUNTS must be a JSON object"):
        open_store("pvc://data/x")


def test_sub_path_mounts_resolve_only_below_their_sub_path() -> None:
    mounts = [Mount("data", "team/a", "/home/jovyan/a"), Mount("data", "", "/mnt/data")]
    assert directory_in(mounts, parse_pvc("pvc://data/team/a/runs")) == Path("/home/jovyan/a/runs")
    assert directory_in(mounts, parse_pvc("pvc://data/team/b")) == Path("/mnt/data/team/b")
    assert directory_in(mounts[:1], parse_pvc("pvc://data/team/ab")) is None


def test_in_a_notebook_pod_the_mount_is_read_from_its_own_spec(
    in_cluster: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook_pod(in_cluster, tmp_path / "jovyan")
    monkeypatch.setenv("HOSTNAME", "nb-0")
    store = open_store("pvc://data/runs")
    assert store.local_root == tmp_path / "jovyan" / "data" / "runs"  # not the sidecar's
    assert ("GET", "/api/v1/namespaces/alice/pods/nb-0") in in_cluster.requests
    with pytest.raises(StoreError) as error:
        open_store("pvc://other/runs")
    said = one_line(error)
    assert "does not mount claim other" in said and "data at" in said
    assert "Kfnb.pvc_mounts" in said


def test_a_notebook_that_may_not_read_its_pod_is_told_to_set_the_mounts(
    in_cluster: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook_pod(in_cluster, tmp_path / "jovyan")
    monkeypatch.setenv("HOSTNAME", "nb-0")
    in_cluster.deny.add(("get", "", "pods"))
    with pytest.raises(StoreError) as error:
        open_store("pvc://data/runs")
    said = one_line(error)
    assert "cannot read this notebook's pod nb-0" in said and "may not get pods" in said
    assert "%config Kfnb.pvc_mounts = {'data':" in said


# -- what pods get ------------------------------------------------------------------


def test_every_replica_mounts_the_claim_and_writes_its_job_dir(
    mount: Path, tfjob_validators: list[Any]
) -> None:
    settings().storage = "pvc://data/runs"
    manifest = render("print(1)\n", backend="kubernetes", names={}, workers=2, ps=1, chief=1)
    tfjob = for_cluster(manifest, ClusterSettings("alice", "pvc://data/runs"))
    validate_tfjob(tfjob_validators, tfjob)
    job = tfjob["metadata"]["name"]
    for kind in ("Chief", "Worker", "PS"):
        pod = worker_pod(tfjob, kind)
        assert restricted_violations(pod) == [], kind
        assert pod["securityContext"]["fsGroup"]  # the claim is writable by the pod's user
        assert {"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": "data"}} in pod[
            "volumes"
        ]
        env = env_of(pod)
        assert env["KFNB_ARTIFACTS"] == f"{POD_PVC_ROOT}/runs/{job}"
        assert "KFNB_STORE" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        main = next(c for c in pod["containers"] if c["name"] == "tensorflow")
        assert {"name": STORE_VOLUME, "mountPath": POD_PVC_ROOT, "readOnly": False} in main[
            "volumeMounts"
        ]


def test_serving_pods_read_the_model_from_the_claim(mount: Path) -> None:
    (isvc,) = render_serving("pvc://data/runs/j1/model", name="m")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "pvc://data/runs/j1/model"
    assert "serviceAccountName" not in isvc["spec"]["predictor"]  # no S3 keys needed
    assert schema_errors(isvc) == []
    deployment, _ = render_serving("pvc://data/runs/j1/model", name="m", runtime="tfserving")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # nothing to copy: TF Serving reads the claim
    claim = {"claimName": "data", "readOnly": True}
    assert {"name": STORE_VOLUME, "persistentVolumeClaim": claim} in pod["volumes"]
    args = pod["containers"][0]["args"]
    assert f"--model_base_path={POD_PVC_ROOT}/runs/j1/model" in args
    assert all(v["name"] != "models" for v in pod["volumes"])  # the emptyDir copy is gone
    assert restricted_violations(pod) == []


# -- a job end to end against the fake ------------------------------------------------


def test_a_job_with_a_pvc_store_end_to_end(
    in_cluster: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a notebook pod (in-cluster, against the fake): the claim is checked, mounted in
    the pods, and the notebook reads the job's directory from its own mount. The fake's
    replicas write no files, so the test writes the model a chief would."""
    home = tmp_path / "jovyan"
    (home / "data").mkdir(parents=True)
    notebook_pod(in_cluster, home)
    monkeypatch.setenv("HOSTNAME", "nb-0")
    in_cluster.claim("data")
    settings().storage = "pvc://data/runs"
    job = kfnb.submit("print('hi')\n", name="mnist", workers=2, names={}, backend="kubernetes")
    assert isinstance(job.backend, KubernetesBackend)
    job.wait(timeout=20)
    assert ("GET", "/api/v1/namespaces/alice/persistentvolumeclaims/data") in in_cluster.requests
    pod = in_cluster.get(CORE, "pods", "alice", "mnist-worker-1")
    assert pod is not None
    assert {"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": "data"}} in pod["spec"][
        "volumes"
    ]
    assert env_of(pod["spec"])["KFNB_ARTIFACTS"] == f"{POD_PVC_ROOT}/runs/mnist"
    assert job.artifacts == home / "data" / "runs" / "mnist"
    version = home / "data" / "runs" / "mnist" / "model" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    assert job.latest_model() == version
    assert job.logs("worker-0").splitlines()[-1] == "worker-0 says 5"  # from the pod's log


# -- faults, in words, within seconds ----------------------------------------------------


def test_a_missing_claim_is_refused_before_submitting(fake_kube: FakeKube, mount: Path) -> None:
    settings().storage = "pvc://data/runs"
    with pytest.raises(BackendError) as error:
        kfnb.submit("print(1)\n", name="j", names={}, backend="kubernetes")
    said = one_line(error)
    assert "there is no PersistentVolumeClaim data in namespace alice" in said
    assert fake_kube.get("apis/kubeflow.org/v1", "tfjobs", "alice", "j") is None


def test_a_claim_gone_after_the_check_is_the_pods_event_in_words(
    fake_kube: FakeKube, mount: Path
) -> None:
    settings().storage = "pvc://data/runs"
    submission = prepare("print(1)\n", name="j", names={}, backend="kubernetes")
    backend = submission.backend
    assert isinstance(backend, KubernetesBackend)
    backend.submit(submission.manifest, submission.bundle)  # as if deleted after preflight
    said = message_with(backend, "j", "does not exist")
    assert said.startswith("worker-0 is Pending: claim data does not exist in namespace alice")
    assert 'persistentvolumeclaim "data" not found' in said and "--storage" in said


def test_an_unbound_claim_warns_and_the_pending_pod_says_why(
    fake_kube: FakeKube, mount: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.claim("data", phase="Pending")
    settings().storage = "pvc://data/runs"
    job = kfnb.submit("print(1)\n", name="j", names={}, backend="kubernetes")
    assert "claim data is Pending, not bound to a volume" in capsys.readouterr().err
    assert isinstance(job.backend, KubernetesBackend)
    said = message_with(job.backend, "j", "not bound")
    assert "unbound immediate PersistentVolumeClaims" in said and "describe pvc" in said


def test_read_write_once_across_nodes_is_a_multi_attach_error_in_words(
    fake_kube: FakeKube, mount: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.claim("data", modes=("ReadWriteOnce",))
    settings().storage = "pvc://data/runs"
    job = kfnb.submit("print(1)\n", name="j", workers=2, names={}, backend="kubernetes")
    assert "claim data is ReadWriteOnce" in capsys.readouterr().err
    assert isinstance(job.backend, KubernetesBackend)
    said = message_with(job.backend, "j", "Multi-Attach")
    assert said.startswith("worker-1 cannot mount its claim: it is ReadWriteOnce")
    assert "already used by pod(s) j-worker-0" in said and "ReadWriteMany" in said


def test_a_single_pod_claim_is_refused(fake_kube: FakeKube, mount: Path) -> None:
    fake_kube.claim("data", modes=("ReadWriteOncePod",))
    settings().storage = "pvc://data/runs"
    with pytest.raises(BackendError) as error:
        kfnb.submit("print(1)\n", name="j", names={}, backend="kubernetes")
    assert "ReadWriteOncePod" in one_line(error) and "ReadWriteMany" in str(error.value)
