"""The Kubernetes backend, end to end through the real `kubernetes` client against
a FAKE API server on 127.0.0.1 (tests/fake_kube.py). Nothing here ran on Kubernetes."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

import kfnb
from kfnb.backends import BackendError, get_backend
from kfnb.backends.kube_api import forbidden_message
from kfnb.backends.kube_manifests import ClusterSettings, configmap_for, for_cluster, owned_by
from kfnb.backends.kube_watch import LogBuffer, parse_time
from kfnb.backends.kubernetes import NEEDED, KubernetesBackend, choose_auto
from kfnb.bundle import build_bundle
from kfnb.job import Job, JobFailed
from kfnb.spec import JobSpec
from tests.conftest import validate_tfjob
from tests.fake_kube import CORE, TFJOBS, UNAUTHORIZED, FakeKube, ReplicaScript

kubernetes_validate = pytest.importorskip("kubernetes_validate")
SEED_000 = (
    'tfjobs.kubeflow.org is forbidden: User "system:serviceaccount:kubeflow:default" cannot '
    'create tfjobs.kubeflow.org in the namespace "kubeflow"'
)


def raw_get(fake: FakeKube, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """A request to the fake without kfnb: the answer's status and JSON."""
    context = ssl.create_default_context(cadata=fake.ca_pem.decode())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(fake.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def submit(name: str = "mnist", workers: int = 2, **shape: Any) -> tuple[KubernetesBackend, str]:
    job = kfnb.submit(
        "print('hi')\n", name=name, workers=workers, names={}, backend="kubernetes", **shape
    )
    assert isinstance(job.backend, KubernetesBackend)
    return job.backend, name


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# -- manifests ---------------------------------------------------------------------


def test_cluster_manifests_validate(tfjob_validators: list[Any]) -> None:
    bundle = build_bundle("print(1)\n", {"x": 3}, job_name="mnist")
    spec = JobSpec(name="mnist", workers=16, ps=2, chief=1, gpus=1, code_files=tuple(bundle.files))
    store = ClusterSettings("alice", "s3://bucket/runs", "minio:9000", "s3-creds")
    tfjob = for_cluster(spec.to_manifest(), store)
    validate_tfjob(tfjob_validators, tfjob)
    tfjob["metadata"]["uid"] = "1234"
    configmap = owned_by(configmap_for(bundle, "mnist", "alice"), tfjob)
    kubernetes_validate.validate(configmap, "1.30", strict=True)
    for document in yaml.safe_load_all(Path("deploy/rbac.yaml").read_text()):
        kubernetes_validate.validate(document, "1.30", strict=True)
    for document in yaml.safe_load_all(Path("deploy/rbac-nodes.yaml").read_text()):
        kubernetes_validate.validate(document, "1.30", strict=True)
    misspelt = dict(configmap, dataz={})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, "1.30", strict=True)


def test_s3_keys_reach_pods_only_by_secret_reference(
    fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch, kfnb_home: Path
) -> None:
    from kfnb.config import settings

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    config = settings()
    config.storage, config.s3_secret, config.s3_endpoint = "s3://runs/kfnb", "s3-creds", "m:9000"
    backend, name = submit()
    Job(name, backend).wait(timeout=20)
    tfjob = fake_kube.get("apis/kubeflow.org/v1", "tfjobs", "alice", name)
    assert tfjob is not None
    env = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert {"name": "S3_ENDPOINT", "value": "m:9000"} in env
    everything = json.dumps([fake_kube.history, list(fake_kube.logs.items())])
    everything += "".join(p.read_text() for p in kfnb_home.rglob("*") if p.is_file())
    assert "very-secret-value" not in everything


# -- a job's life ------------------------------------------------------------------


def test_job_runs_with_owned_configmap_and_all_logs(fake_kube: FakeKube) -> None:
    backend, name = submit(workers=2)
    configmap = fake_kube.get("api/v1", "configmaps", "alice", f"{name}-code")
    tfjob = fake_kube.get("apis/kubeflow.org/v1", "tfjobs", "alice", name)
    assert configmap is not None and tfjob is not None
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == tfjob["metadata"]["uid"]
    job = Job(name, backend)
    status = job.wait(timeout=20)
    assert status.phase == "Succeeded" and [r.phase for r in status.replicas] == ["Succeeded"] * 2
    for replica in ("worker-0", "worker-1"):
        expected = "".join(f"{replica} says {i}\n" for i in range(6))
        assert backend.read_log_since(name, replica, 0, True)[0] == expected
        assert job.logs(replica) == expected
    assert [s.name for s in backend.list_jobs()] == [name]
    backend.delete(name, purge=True)
    assert fake_kube.get("api/v1", "configmaps", "alice", f"{name}-code") is None  # owned
    assert fake_kube.get("apis/kubeflow.org/v1", "tfjobs", "alice", name) is None


def test_failed_job_raises_with_the_log_tail(fake_kube: FakeKube) -> None:
    fake_kube.script = lambda job, replica: ReplicaScript(
        ["Traceback (most recent call last):", "ValueError: bad shape"],
        exit_code=1 if replica == "worker-1" else 0,
    )
    backend, name = submit(workers=2)
    with pytest.raises(JobFailed) as failed:
        Job(name, backend).wait(timeout=20)
    assert failed.value.replica == "worker-1"
    assert "ValueError: bad shape" in failed.value.log_tail
    assert "1 Worker replica(s) failed" in str(failed.value)


def test_a_failure_names_its_replica_when_the_pod_watch_lags(fake_kube: FakeKube) -> None:
    # The TFJob's Failed condition arrives before the pod that failed: wait for the pod.
    fake_kube.script = lambda job, replica: ReplicaScript(
        ["Traceback (most recent call last):", "ValueError: bad shape"],
        exit_code=1 if replica == "worker-1" else 0,
    )
    fake_kube.lag = {"pods": 0.4}
    backend, name = submit(workers=2)
    with pytest.raises(JobFailed) as failed:
        Job(name, backend).wait(timeout=20)
    assert failed.value.replica == "worker-1"
    assert "ValueError: bad shape" in failed.value.log_tail


@pytest.mark.parametrize(
    ("zone", "late"), [(0, frozenset()), (480, frozenset(range(4, 120, 9)))], ids=["utc", "+08:00"]
)
def test_dropped_streams_lose_and_repeat_no_line(
    fake_kube: FakeKube, zone: int, late: frozenset[int]
) -> None:
    # "+08:00": the node stamps lines in its local zone, and some (stderr's) are stamped
    # just before the line printed before them; all must arrive once, in the log's order.
    lines = [f"step {i}" for i in range(120)]
    fake_kube.script = lambda job, replica: ReplicaScript(lines, late=late)
    fake_kube.step = 0.02
    fake_kube.log_zone = zone
    backend, name = submit(workers=1)
    job = Job(name, backend)
    received = []
    offset = 0
    drops = 0
    while True:
        status = job.status()
        text, offset = job.log_since("worker-0", offset, partial=status.finished)
        received += text.splitlines()
        if status.finished:
            break
        if received and drops < 5:
            fake_kube.drop_streams()  # watches and the log stream, mid-job
            drops += 1
        time.sleep(0.03)
    assert drops >= 3
    assert received == lines


def test_log_buffer_skips_only_what_a_resumed_stream_repeats() -> None:
    buffer = LogBuffer()
    assert buffer.begin(resume=True) is None  # nothing yet: the whole log
    first = [
        b"2025-01-01T00:00:00.9Z x",
        b"2025-01-01T00:00:01.5Z a",
        b"2025-01-01T00:00:01.4Z err",  # stderr, stamped before the line before it
        b"2025-01-01T00:00:01.5Z b",
    ]
    for line in first:
        buffer.add(line)
    assert buffer.begin(resume=True) == "2025-01-01T00:00:01Z"
    # The kubelet repeats, in the file's order, every line stamped since that second.
    for line in [*first[1:], b"2025-01-01T00:00:01.5Z b", b"2025-01-01T00:00:01.3Z c"]:
        buffer.add(line)
    assert buffer.since(0, True)[0] == "x\na\nerr\nb\nb\nc\n"
    assert buffer.begin(resume=False) is None  # a new pod: its log from the start


def test_log_timestamps_with_a_zone_offset() -> None:
    utc = parse_time("2025-01-01T00:00:01.5Z")
    assert utc == 1735689601_500_000_000
    assert parse_time("2025-01-01T08:00:01.500000000+08:00") == utc
    assert parse_time("2024-12-31T18:30:01.5-05:30") == utc
    assert parse_time("2025-01-01T00:00:01") is None  # no zone: not RFC 3339


def test_exit_code_retry_keeps_the_log_of_the_new_pod(fake_kube: FakeKube) -> None:
    # Under ExitCode the operator deletes a pod killed by a signal and creates it again
    # under the same name: the follower must go on with the new pod.
    first = [f"attempt 1 line {i}" for i in range(6)]
    second = [f"attempt 2 line {i}" for i in range(6)]
    fake_kube.script = lambda job, replica: ReplicaScript(
        first, exit_code=137, retry=ReplicaScript(second)
    )
    backend, name = submit(workers=1, restart_policy="ExitCode")
    job = Job(name, backend)
    assert job.wait(timeout=20).phase == "Succeeded"
    # The operator's Running condition replaces Restarting: the restart is in the history.
    seen = [o for _, c, _, _, o in fake_kube.history if c.endswith("/tfjobs")]
    conditions = [c for o in seen for c in o.get("status", {}).get("conditions", [])]
    assert any(c["type"] == "Restarting" for c in conditions)
    assert backend.read_log_since(name, "worker-0", 0, True)[0] == "".join(
        f"{line}\n" for line in first + second
    )


def test_watches_resume_from_bookmarks_without_relisting(fake_kube: FakeKube) -> None:
    fake_kube.script = lambda job, replica: ReplicaScript([f"step {i}" for i in range(150)])
    fake_kube.bookmark_every = 0.1
    backend, name = submit(workers=1)
    wait_for(lambda: backend.status(name).phase == "Running")
    for i in range(20):  # other objects change: the job's watches see none of it
        fake_kube._put(CORE, "configmaps", "alice", {"metadata": {"name": f"other-{i}"}})
    time.sleep(1.0)  # a few bookmarks carry each watch's resourceVersion past them
    listed = len(fake_kube.lists)
    fake_kube.while_disconnected(lambda: None)  # the history before now is gone
    assert backend.status(name).phase == "Running"
    assert Job(name, backend).wait(timeout=20).phase == "Succeeded"
    assert fake_kube.lists[listed:] == []  # every watch resumed where its bookmark left it


def test_a_relist_after_410_drops_what_was_deleted_meanwhile(fake_kube: FakeKube) -> None:
    fake_kube.script = lambda job, replica: ReplicaScript([f"step {i}" for i in range(300)])
    backend, name = submit(workers=1)
    wait_for(lambda: backend.status(name).replicas[0].phase == "Running")
    listed = len(fake_kube.lists)
    pod = f"{name}-worker-0"
    fake_kube.while_disconnected(lambda: fake_kube.delete(CORE, "pods", "alice", pod))
    wait_for(lambda: backend.status(name).replicas[0].phase == "Stopped", timeout=4)
    assert "/api/v1/namespaces/alice/pods" in fake_kube.lists[listed:]  # after the 410


# -- in-cluster: the fake over TLS, with a service account's bearer token --------------


def test_in_cluster_job_runs_over_tls_with_the_token(in_cluster: FakeKube) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(in_cluster.url + "/api/v1/namespaces", timeout=5)
    assert raw_get(in_cluster, "/api/v1/namespaces/alice/pods", None) == (401, UNAUTHORIZED)
    backend, name = submit(workers=2)  # namespace alice: from the service account's file
    assert (backend.api.info.source, backend.namespace) == ("in-cluster", "alice")
    job = Job(name, backend)
    assert job.wait(timeout=20).phase == "Succeeded"
    assert in_cluster.get(*TFJOBS, "alice", name) is not None
    for replica in ("worker-0", "worker-1"):
        assert job.logs(replica) == "".join(f"{replica} says {i}\n" for i in range(6))
    assert in_cluster.refused == 1  # only the request above, which had no token


def test_a_rotated_token_file_is_read_again(in_cluster: FakeKube, tmp_path: Path) -> None:
    in_cluster.script = lambda job, replica: ReplicaScript([f"step {i}" for i in range(90)])
    backend, name = submit(workers=1)
    wait_for(lambda: backend.status(name).replicas[0].phase == "Running")
    old = next(iter(in_cluster.tokens or ()))
    new = in_cluster.rotate_token(tmp_path / "serviceaccount")  # and the old one expires
    assert raw_get(in_cluster, "/api/v1/namespaces/alice/pods", old)[0] == 401
    # The next request carries the new token (a 401 would raise here).
    assert [s.name for s in backend.list_jobs()] == [name]
    in_cluster.drop_streams()  # watches and log streams reconnect, with the new token
    job = Job(name, backend)
    assert job.wait(timeout=20).phase == "Succeeded"
    assert job.logs("worker-0") == "".join(f"step {i}\n" for i in range(90))
    assert in_cluster.tokens == {new}


def test_a_refused_token_is_one_line(in_cluster: FakeKube) -> None:
    in_cluster.tokens = {"a-token-kfnb-does-not-have"}  # expired, and the file not rotated
    with pytest.raises(BackendError) as error:
        submit()
    message = one_line(error)
    assert "refused this pod's service-account credentials (Unauthorized" in message
    assert "restart the notebook server" in message


# -- faults, each one line ---------------------------------------------------------


def test_no_kubeconfig_is_one_line() -> None:
    with pytest.raises(BackendError) as error:
        get_backend("kubernetes")
    assert "no Kubernetes cluster is configured" in one_line(error)


def test_unreachable_api_server_is_one_line_and_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKube() as fake:
        config = fake.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(config))  # the fake is gone: nobody listens there
    start = time.monotonic()
    with pytest.raises(BackendError) as error:
        submit()
    assert "cannot reach the Kubernetes API server" in one_line(error)
    assert time.monotonic() - start < 5


def test_missing_tfjob_crd_names_the_training_operator(fake_kube: FakeKube) -> None:
    fake_kube.crd = False
    with pytest.raises(BackendError) as error:
        submit()
    assert "Training Operator" in one_line(error) and "overlays/standalone" in str(error.value)
    assert choose_auto().name == "local" and "no TFJob" in choose_auto().reason


def test_seed_000_forbidden_wording_names_the_fix() -> None:
    message = forbidden_message(SEED_000)
    assert message.startswith("system:serviceaccount:kubeflow:default may not create tfjobs")
    assert "namespace kubeflow" in message and "deploy/rbac.yaml" in message


@pytest.mark.parametrize("legacy", [False, True])
def test_403_on_create_from_the_api_server(fake_kube: FakeKube, legacy: bool) -> None:
    fake_kube.deny.add(("create", "kubeflow.org", "tfjobs"))
    fake_kube.legacy_forbidden = legacy
    backend = KubernetesBackend()
    bundle = build_bundle("print(1)\n", {}, job_name="mnist")
    manifest = JobSpec(name="mnist", code_files=tuple(bundle.files)).to_manifest()
    with pytest.raises(BackendError) as error:
        backend.submit(manifest, bundle)  # no access review first: the server's own 403
    message = one_line(error)
    assert "may not create tfjobs.kubeflow.org in namespace alice" in message
    assert "kubectl apply -f deploy/rbac.yaml" in message


@pytest.mark.parametrize(
    ("verb", "group", "resource"),
    [("create", "kubeflow.org", "tfjobs"), ("get", "", "pods/log"), ("watch", "", "events")],
)
def test_access_review_names_what_is_missing(
    fake_kube: FakeKube, verb: str, group: str, resource: str
) -> None:
    fake_kube.deny.add((verb, group, resource))
    with pytest.raises(BackendError) as error:
        submit()
    what = f"{resource}.{group}" if group else resource
    assert f"may not {verb} {what} in namespace alice" in one_line(error)
    assert "deploy/rbac.yaml" in str(error.value)
    assert not any(m == "POST" and "tfjobs" in p for m, p in fake_kube.requests)


def test_a_suspended_job_is_phase_suspended_until_kueue_admits_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeKube(kueue=True) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        backend, name = submit(workers=1)
        job = Job(name, backend)
        wait_for(lambda: job.status().phase == "Suspended")
        status = job.status()
        assert status.message == f"TFJob {name} is suspended." and not status.finished
        assert status.elapsed is None  # it has not run
        fake.admit("alice", name)
        assert job.wait(timeout=20).phase == "Succeeded"
        conditions = fake.get(*TFJOBS, "alice", name)["status"]["conditions"]  # type: ignore[index]
        assert {c["type"]: c["status"] for c in conditions}["Suspended"] == "False"


def test_elapsed_time_counts_from_running_not_the_operators_first_reconcile(
    fake_kube: FakeKube,
) -> None:
    fake_kube.pull_seconds = 2.0  # the operator sets startTime before the pods run
    backend, name = submit(workers=1)
    job = Job(name, backend)
    wait_for(lambda: job.status().phase == "Running")
    status = job.status()
    tfjob = fake_kube.get(*TFJOBS, "alice", name)
    assert tfjob is not None and status.start_time is not None
    reconciled = (parse_time(tfjob["status"]["startTime"]) or 0) / 1e9
    assert 0 <= fake_kube.running_at[name] - status.start_time < 1.0  # stamps: whole seconds
    assert status.start_time - reconciled >= 1.0
    assert status.elapsed is not None and status.elapsed < 1.5
    done = job.wait(timeout=20)
    assert done.start_time == status.start_time and done.elapsed is not None


def test_status_and_log_reads_send_no_requests_while_the_job_runs(fake_kube: FakeKube) -> None:
    """Watches and log streams feed them: a view polling 4 times a second costs nothing.
    (The replicas print for about 15 s, so that a loaded machine still polls a running job.)"""
    fake_kube.script = lambda job, replica: ReplicaScript([f"line {i}" for i in range(900)])
    backend, name = submit(workers=4)
    job = Job(name, backend)
    # Every stream open before counting: a status read can come from the first list while
    # its watch is still being opened (a loaded machine opened one inside the window).
    watches = ("watch tfjobs", "watch pods", "watch events")
    wait_for(
        lambda: (
            job.status().phase == "Running"
            and fake_kube.counts["log follow"] == 4
            and all(fake_kube.counts[w] for w in watches)
        )
    )
    before = Counter(fake_kube.counts)
    for _ in range(30):
        assert job.status().phase == "Running"
        for replica in job.replicas:
            job.log_since(replica, 0)
        time.sleep(0.01)
    assert fake_kube.counts - before == Counter()


def role_rules() -> list[dict[str, Any]]:
    """The rules of the Role an admin applies (deploy/rbac.yaml)."""
    role = next(d for d in yaml.safe_load_all(Path("deploy/rbac.yaml").read_text()))
    assert role["kind"] == "Role"
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_the_role_grants_everything_the_access_review_asks() -> None:
    fake = FakeKube(rules=role_rules())
    missing = [needed for needed in NEEDED if not fake.allows(*needed)]
    assert missing == []
    assert ("delete", "", "configmaps") in NEEDED  # OwnerReferencesPermissionEnforcement's


def test_a_job_runs_under_owner_reference_enforcement_with_the_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake admits an ownerReference only with delete on the object, and
    blockOwnerDeletion only with update on the owner's finalizers, as OpenShift does."""
    with FakeKube(rules=role_rules(), owner_enforcement=True) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        backend, name = submit(workers=1)
        assert Job(name, backend).wait(timeout=20).phase == "Succeeded"
        configmap = fake.get(CORE, "configmaps", "alice", f"{name}-code")
        assert configmap is not None and configmap["metadata"]["ownerReferences"][0]["controller"]
        # The fake's own refusals, in the admission plugin's words.
        owner = {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "blockOwnerDeletion": True}
        blocking = {"metadata": {"ownerReferences": [owner]}}
        refusal = fake.owner_refusal("", "configmaps", blocking)
        assert refusal.startswith("cannot set blockOwnerDeletion")
        fake.deny.add(("delete", "", "configmaps"))
        refusal = fake.owner_refusal("", "configmaps", blocking)
        assert refusal.startswith("cannot set an ownerRef on a resource you can't delete")


def test_a_role_without_configmap_delete_is_named_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = [dict(rule) for rule in role_rules()]
    for rule in rules:
        if rule["resources"] == ["configmaps"]:
            rule["verbs"] = ["create"]  # the Role as it was
    with FakeKube(rules=rules, owner_enforcement=True) as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        with pytest.raises(BackendError) as error:
            submit(workers=1)
        assert "may not delete configmaps in namespace alice" in one_line(error)
        assert not any(m == "POST" and "tfjobs" in p for m, p in fake.requests)


def test_403_on_pods_log_and_events_after_submission(fake_kube: FakeKube) -> None:
    backend, name = submit(workers=1)
    fake_kube.deny |= {("get", "", "pods/log"), ("list", "", "events")}
    job = Job(name, backend)
    job.wait(timeout=20)
    with pytest.raises(BackendError) as error:
        job.logs("worker-0")
    assert "may not get pods/log in namespace alice" in one_line(error)


def test_name_conflict_is_409(fake_kube: FakeKube) -> None:
    from kfnb.records import delete_record

    submit(name="twice")
    delete_record("twice")  # as another kernel, which has no record of it, would submit
    with pytest.raises(BackendError) as error:
        submit(name="twice")
    assert 'tfjobs.kubeflow.org "twice" already exists: pick another --name' in one_line(error)


def test_missing_namespace(fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    from kfnb.config import settings

    settings().namespace = "nobody"
    with pytest.raises(BackendError) as error:
        submit()
    assert "namespace 'nobody' does not exist" in one_line(error)


def test_unschedulable_gpu_request_says_what_to_do(fake_kube: FakeKube) -> None:
    backend, name = submit(workers=1, gpus=4)
    deadline = time.monotonic() + 10
    status = backend.status(name)
    while "nvidia.com/gpu" not in status.message and time.monotonic() < deadline:
        time.sleep(0.05)
        status = backend.status(name)
    assert status.phase == "Created"
    assert status.message.startswith("worker-0 is Pending: no node has the GPUs it asks for")
    assert "Insufficient nvidia.com/gpu" in status.message and "%kfnb nodes" in status.message


def test_image_pull_error_says_what_to_do(fake_kube: FakeKube) -> None:
    backend, name = submit(workers=1, image="registry.example/does-not-exist:1")
    deadline = time.monotonic() + 10
    status = backend.status(name)
    while "cannot pull" not in status.message and time.monotonic() < deadline:
        time.sleep(0.05)
        status = backend.status(name)
    assert "worker-0 cannot pull its image" in status.message and "--image" in status.message


def test_garbage_from_the_api_server(fake_kube: FakeKube) -> None:
    fake_kube.garbage = True
    with pytest.raises(BackendError) as error:
        submit()
    assert "not Kubernetes JSON" in one_line(error)


# -- choosing the backend, the magics ----------------------------------------------


def test_auto_without_a_cluster_is_local_without_network_or_client() -> None:
    # Fast because it decides from the environment alone: no connection attempted (a
    # probe would wait on a timeout), no kubernetes client imported. Checked as such,
    # not with a stopwatch.
    code = (
        "import socket, sys\n"
        "tried = []\n"
        "real = socket.socket.connect\n"
        "socket.socket.connect = lambda self, addr: (tried.append(addr), real(self, addr))[1]\n"
        "from kfnb.backends import resolve_backend_name\n"
        "print(resolve_backend_name('auto'), 'kubernetes' in sys.modules, len(tried))\n"
    )
    env = {"KUBECONFIG": "/nonexistent/kubeconfig", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["local", "False", "0"], out.stderr


def test_auto_picks_the_fake_cluster(fake_kube: FakeKube) -> None:
    choice = choose_auto()
    assert choice.name == "kubernetes" and fake_kube.url in choice.reason


def test_tfjob_magic_and_nodes_table(
    fake_kube: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    job = shell.run_cell_magic("tfjob", "--workers 2 --name magic --namespace alice", "print(1)\n")
    assert job.wait(timeout=20).phase == "Succeeded"
    from kfnb.records import load_record

    record = load_record("magic")
    assert record is not None and (record.backend, record.namespace) == ("kubernetes", "alice")
    assert Job.attach("magic").status().phase == "Succeeded"
    assert "kubernetes backend: cluster http://127.0.0.1" in capsys.readouterr().out
    shell.run_line_magic("kfnb", "nodes")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "IPADDRESS", "ROLE", "GPU(Total)", "GPU(Allocated)"]
    assert table[1].split()[0] == "node-a" and table[1].split()[-2:] == ["2", "0"]
    assert table[-1] == "Allocated/Total GPUs in cluster: 0/2 (0%)"
