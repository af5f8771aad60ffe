"""The runtime as a replica pod runs it: the environment exactly as the rendered TFJob
sets it (Secret references resolved as the kubelet would), the bundle where the code
ConfigMap is mounted, and a read-only working directory, against a real S3 server
(moto's) on 127.0.0.1. No pod and no cluster are involved: a process stands in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kfnb.backends.kube_manifests import ClusterSettings, for_cluster
from kfnb.bundle import build_bundle
from kfnb.runtime import artifacts_dir
from kfnb.spec import CONTAINER_NAME, JobSpec
from kfnb.storage import S3Store, open_store, replica_env
from tests.s3_server import use_endpoint

pytest.importorskip("minio")
pytest.importorskip("moto")

ACCESS, SECRET = "pod-access", "pod-secret-value"
CELL = """
import os
try:
    open("probe", "w").close()
    print("cwd writable", flush=True)
except OSError:
    print("cwd read-only", flush=True)
with open(os.path.join(tfjob.model_dir, "saved_model.pb"), "w") as f:
    f.write("a model")
print("trained", flush=True)
"""


def pod_env(spec: JobSpec, settings: ClusterSettings) -> dict[str, str]:
    """The tensorflow container's env of the TFJob kfnb submits, Secret keys resolved."""
    tfjob = for_cluster(spec.to_manifest(), settings)
    pod = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER_NAME)
    secret = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    return {
        e["name"]: e["value"] if "value" in e else secret[e["valueFrom"]["secretKeyRef"]["key"]]
        for e in container["env"]
    }


def read_only(command: list[str], cwd: Path) -> tuple[list[str], bool]:
    """``command`` run in ``cwd`` made read-only, as a pod's root file system can be:
    by permissions, or for root (whom permissions do not stop) by a read-only bind
    mount in a mount namespace of its own. False when neither is possible here."""
    if os.geteuid() != 0:
        cwd.chmod(0o555)
        return command, True
    if shutil.which("unshare") is None:
        return command, False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return command, False
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && cd "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(cwd), *command], True


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, moto_port: int) -> str:
    use_endpoint(monkeypatch, moto_port, ACCESS, SECRET)
    name = f"kfnb-pod-{time.monotonic_ns()}"
    open_store(f"s3://{name}").check()  # creates it
    return name


def test_a_pod_with_an_s3_store_writes_scratch_under_tmp_not_its_working_directory(
    bucket: str, tmp_path: Path
) -> None:
    job = f"pod-{time.monotonic_ns() % 10**9}"
    store = open_store(f"s3://{bucket}/jobs")
    assert isinstance(store, S3Store)
    bundle = build_bundle(CELL, {}, job_name=job, s3=True)
    spec = JobSpec(
        name=job,
        code_files=tuple(bundle.files),
        storage_env=tuple(replica_env(store, job).items()),
    )
    settings = ClusterSettings("alice", f"s3://{bucket}/jobs", os.environ["S3_ENDPOINT"], "s3")
    env = pod_env(spec, settings)
    assert not env["KFNB_ARTIFACTS"].startswith("s3:"), env["KFNB_ARTIFACTS"]
    assert env["KFNB_STORE"] == f"s3://{bucket}/jobs/{job}"
    code = tmp_path / "code"  # where the ConfigMap would be mounted
    bundle.write(code)
    env["KFNB_CODE_DIR"] = str(code)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    command, locked = read_only([sys.executable, str(code / "runtime.py")], workdir)
    keep = {k: os.environ[k] for k in ("PATH", "SYSTEMROOT") if k in os.environ}
    try:
        out = subprocess.run(
            command, env={**keep, **env}, cwd=workdir, capture_output=True, text=True, timeout=120
        )
    finally:
        scratch = Path(env["KFNB_ARTIFACTS"])
        assert scratch.is_relative_to("/tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        workdir.chmod(0o755)
    assert out.returncode == 0, out.stderr
    if locked:
        assert "cwd read-only" in out.stdout
    assert list(workdir.iterdir()) == []  # no s3:/ tree beside the cell
    assert f"model saved as version 1 in s3://{bucket}/jobs/{job}/model" in out.stdout
    status = json.loads(store.read(f"{job}/status/worker-0.json") or b"{}")
    assert status["state"] == "exited" and status["not_uploaded"] == []
    assert store.read(f"{job}/model/1/saved_model.pb") == b"a model"
    assert "trained" in (store.read(f"{job}/logs/worker-0.log") or b"").decode()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KFNB_ARTIFACTS": "/data/j"}, "/data/j"),
        ({"KFNB_ARTIFACTS": "s3://b/p/j", "KFNB_JOB_NAME": "j"}, "TMP/kfnb-artifacts/j"),
        ({"KFNB_STORE": "s3://b/p/j", "KFNB_JOB_NAME": "j"}, "TMP/kfnb-artifacts/j"),
        ({}, "CWD"),
    ],
)
def test_artifacts_dir_is_never_a_url(env: dict[str, Any], expected: str) -> None:
    import tempfile

    wanted = expected.replace("TMP", tempfile.gettempdir()).replace("CWD", os.getcwd())
    assert artifacts_dir(env) == Path(wanted)
