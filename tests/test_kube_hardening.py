"""The Kubernetes backend's limits and leftovers: a replica's log kept in the kernel is
bounded (the whole log stays in the pod), `delete --purge` removes the job's artifacts
from the S3 store or says what it left, and the TF Serving copy-model init container runs
no shell and gets the S3 keys only through its environment.

Against the FAKE API server of tests/fake_kube.py and moto's S3 server; nothing here ran
on Kubernetes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from kfnb.backends.kube_watch import LogBuffer
from tests.fake_kube import FakeKube, ReplicaScript
from tests.s3_server import FaultProxy, use_endpoint


def stamped(i: int) -> bytes:
    return f"2025-01-01T00:00:{i // 1000:02d}.{i % 1000:09d}Z line {i:04d}".encode()


# -- the log kept in the kernel ----------------------------------------------------------


def test_the_log_buffer_keeps_a_bounded_tail_and_says_what_it_dropped() -> None:
    buffer = LogBuffer(limit=1000, whole_log="job.logs('worker-0')")
    for i in range(300):
        buffer.add(stamped(i))
    assert len(buffer.data) <= 1000  # 300 lines of 10 bytes: 3000 without the bound
    text, offset = buffer.since(0, False)
    notice, *kept = text.splitlines()
    assert notice.startswith(f"[kfnb: {300 - len(kept)} earlier lines are not kept here")
    assert "job.logs('worker-0')" in notice
    assert kept == [f"line {i:04d}" for i in range(300 - len(kept), 300)]  # the tail, whole lines
    # A reader that keeps up reads on from its offset: nothing repeated, nothing lost.
    for i in range(300, 340):
        buffer.add(stamped(i))
    more, offset = buffer.since(offset, False)
    assert more.splitlines() == [f"line {i:04d}" for i in range(300, 340)]
    assert buffer.since(offset, False) == ("", offset)


def test_a_resumed_stream_still_skips_what_it_repeats_after_trimming() -> None:
    buffer = LogBuffer(limit=200)
    for i in range(100):
        buffer.add(stamped(i))
    since = buffer.begin(resume=True)
    assert since is not None
    # The resumed stream repeats every line of the newest line's second (all 100 here,
    # most of them no longer in the buffer), then goes on.
    for i in range(105):
        buffer.add(stamped(i))
    text, _ = buffer.since(0, False)
    lines = text.splitlines()[1:]
    assert lines[-10:] == [f"line {i:04d}" for i in range(95, 105)]
    assert len(lines) == len(set(lines))


def test_a_long_log_is_bounded_in_the_kernel_and_whole_from_the_pod(
    fake_kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kfnb
    import kfnb.backends.kube_watch as kube_watch

    monkeypatch.setattr(kube_watch, "LOG_BUFFER_BYTES", 2000)
    fake_kube.script = lambda job, replica: ReplicaScript([f"step {i:05d}" for i in range(600)])
    job = kfnb.submit("print(1)\n", name="chatty", workers=1, names={}, backend="kubernetes")
    assert job.wait(timeout=60).phase == "Succeeded"
    text, _ = job.backend.read_log_since("chatty", "worker-0", 0, True)
    assert len(text.encode()) < 2000 + 200
    assert text.startswith("[kfnb: ") and "%kfnb logs chatty --replica worker-0" in text
    assert text.endswith("step 00599\n")
    # The pod keeps the whole log, and `%kfnb logs` / job.logs read it from there.
    assert job.logs("worker-0") == "".join(f"step {i:05d}\n" for i in range(600))


# -- delete --purge and the S3 store -------------------------------------------------------


@pytest.fixture
def s3_proxy(monkeypatch: pytest.MonkeyPatch, moto_port: int) -> Iterator[FaultProxy]:
    """moto behind a proxy whose rules can refuse requests; settings point at it."""
    proxy = FaultProxy(moto_port)
    use_endpoint(monkeypatch, proxy.port, "kfnb-access", "kfnb-secret-value")
    yield proxy
    proxy.close()


def artifacts(url: str, job: str) -> list[str]:
    from kfnb.storage import open_store

    return sorted(o.key for o in open_store(url).list(job))


def submit_with_artifacts(url: str) -> Any:
    """A finished job on the fake cluster, and the artifacts its replicas would have
    written to the store (the fake's replicas run no runtime.py: written here)."""
    import kfnb
    from kfnb.storage import open_store

    store = open_store(url)
    store.check()  # creates the bucket
    for key in ("logs/worker-0.log", "model/1/saved_model.pb", "status.json"):
        store.write(f"purged/{key}", b"x")
    store.write("other/status.json", b"x")  # another job's: stays
    job = kfnb.submit(
        "print(1)\n", name="purged", workers=1, names={}, backend="kubernetes", storage=url
    )
    assert job.wait(timeout=20).phase == "Succeeded"
    return job


def test_purge_removes_the_jobs_artifacts_from_the_s3_store(
    fake_kube: FakeKube, s3_proxy: FaultProxy, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "s3://kfnb-purge/jobs"
    submit_with_artifacts(url)
    assert len(artifacts(url, "purged")) == 3
    shell.run_line_magic("kfnb", "delete purged --purge")
    assert artifacts(url, "purged") == []
    assert artifacts(url, "other") == ["other/status.json"]
    assert "Job purged deleted, with its logs and artifacts" in capsys.readouterr().out
    assert fake_kube.get("apis/kubeflow.org/v1", "tfjobs", "alice", "purged") is None


def test_purge_that_cannot_reach_the_store_says_what_it_left(
    fake_kube: FakeKube, s3_proxy: FaultProxy, shell: Any
) -> None:
    from IPython.core.error import UsageError

    url = "s3://kfnb-purge-left/jobs"
    submit_with_artifacts(url)
    s3_proxy.rules.append(
        lambda method, path: (403, "AccessDenied", "Access Denied") if method == "POST" else None
    )
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("kfnb", "delete purged --purge")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("TFJob purged deleted, but its artifacts under "
                              "s3://kfnb-purge-left/jobs/purged/ were left")  # fmt: skip
    assert "AccessDenied" in message
    assert "open_store('s3://kfnb-purge-left/jobs').delete_prefix('purged')" in message
    assert "kfnb-secret-value" not in message
    s3_proxy.rules.clear()
    assert len(artifacts(url, "purged")) == 3  # truly left
    # Once the store answers, purging again finishes the job (the TFJob is gone already).
    shell.run_line_magic("kfnb", "delete purged --purge")
    assert artifacts(url, "purged") == []
    from kfnb.records import load_record

    assert load_record("purged") is None


# -- the TF Serving copy-model init container ------------------------------------------------


def copy_model(**changes: Any) -> dict[str, Any]:
    from kfnb.serving.compat import serving_release
    from kfnb.serving.manifests import ServingSpec, tf_serving

    spec = ServingSpec(
        "mnist",
        "s3://tfmnist/jobs/tfjob-abc/model",
        s3_secret="minio-s3",
        s3_endpoint="minio-service.kubeflow:9000",
        s3_use_https=False,
        release=serving_release("2.21.0"),
    )
    deployment, _ = tf_serving(replace(spec, **changes))
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    return dict(init)


def test_copy_model_runs_no_shell_and_keeps_keys_off_its_command_line() -> None:
    init = copy_model(storage_uri="s3://tfmnist/jobs/a b;touch /tmp/owned/model")
    argv = init["command"] + init.get("args", [])
    assert argv[0] == "mc" and "sh" not in argv and "-c" not in argv
    # Each value is one argument as given: nothing for a shell to split or run.
    assert argv[1:] == ["mirror", "--quiet", "store/tfmnist/jobs/a b;touch /tmp/owned/model",
                        "/models/mnist"]  # fmt: skip
    assert not any("AWS_" in arg for arg in argv)
    env = init["env"]
    names = [e["name"] for e in env]
    # The alias comes from MC_HOST_store, which the kubelet fills from the two Secret
    # references defined before it ($(VAR) expands only earlier variables).
    host = next(e for e in env if e["name"] == "MC_HOST_store")
    assert host["value"] == (
        "http://$(AWS_ACCESS_KEY_ID):$(AWS_SECRET_ACCESS_KEY)@minio-service.kubeflow:9000"
    )
    assert names.index("AWS_ACCESS_KEY_ID") < names.index("MC_HOST_store")
    assert names.index("AWS_SECRET_ACCESS_KEY") < names.index("MC_HOST_store")
    refs = [e for e in env if "valueFrom" in e]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in refs} == {"minio-s3"}
    assert "$(" not in json.dumps(argv)


def test_copy_model_without_a_secret_is_anonymous() -> None:
    init = copy_model(s3_secret="")
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["MC_HOST_store"] == "http://minio-service.kubeflow:9000"
    assert "AWS_ACCESS_KEY_ID" not in env
