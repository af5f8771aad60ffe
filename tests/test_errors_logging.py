"""Errors keep their cause and storage catches only storage's errors; the ``kfnb``
logger says what the backends, stores and servers do, without secrets.

S3 is moto's server on 127.0.0.1 (see `tests.s3_server`), as in test_storage.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfnb.artifact_sync import StoreError, Syncer
from kfnb.backends import BackendError
from kfnb.backends.local import LocalBackend
from kfnb.bundle import build_bundle
from kfnb.config import reset_settings, settings
from kfnb.job import Job
from kfnb.spec import JobSpec
from kfnb.storage import S3Store, open_store, replica_env
from tests import s3_server

pytest.importorskip("minio")
pytest.importorskip("moto")

SECRET = "kfnb-log-secret-Xy7q"  # must never appear in a log line
ACCESS = "kfnb-log-access-Kp3m"


def use_endpoint(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    s3_server.use_endpoint(monkeypatch, port, ACCESS, SECRET)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, moto_port: int, request: pytest.FixtureRequest) -> str:
    """S3 settings for moto in the environment; a bucket name of this test's own."""
    use_endpoint(monkeypatch, moto_port)
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    return f"kfnb-{name[:40]}".strip("-")


@pytest.fixture
def kfnb_logger() -> Iterator[logging.Logger]:
    """The ``kfnb`` logger as a test left it is put back as it was."""
    logger = logging.getLogger("kfnb")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


class _Bug:
    """An S3 client whose every call hits a bug in kfnb (a wrong argument)."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise TypeError(f"{name}() got an unexpected keyword argument 'bogus'")

        return call


# -- storage catches storage's errors, and only those --------------------------------


def test_a_bug_in_kfnb_is_not_dressed_as_a_storage_error(s3: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{s3}/jobs")
    assert isinstance(store, S3Store)
    store._client = _Bug()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("x")
    calls = [
        store.check,
        lambda: store.read("a"),
        lambda: store.size("a"),
        lambda: store.write("a", b"x"),
        lambda: store.list("a"),
        lambda: store.upload_dir(tmp_path / "dir", "up"),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            call()
    syncer = Syncer(_Bug(), store.config, s3, "jobs")
    with pytest.raises(TypeError):
        syncer.upload_file(tmp_path / "dir" / "file", "logs/x.log")


def test_real_storage_failures_are_one_line_and_keep_their_cause(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    missing = open_store(f"s3://{s3}-missing/jobs")  # a bucket nobody created
    with pytest.raises(StoreError) as caught:
        missing.write("a", b"x")
    message = str(caught.value)
    assert "NoSuchBucket" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, S3Error)  # the client's own error, chained
    with pytest.raises(StoreError):
        missing.list("")

    from kfnb.backends.supervisor import free_port

    use_endpoint(monkeypatch, free_port())  # the server is down: nothing listens there
    down = open_store(f"s3://{s3}/jobs")
    with pytest.raises(StoreError) as caught:
        down.read("a")
    message = str(caught.value)
    assert "cannot reach the S3 endpoint" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, (HTTPError, OSError))
    assert SECRET not in message


def test_backend_errors_chain_the_store_error_they_word(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfnb.backends.supervisor import free_port

    use_endpoint(monkeypatch, free_port())  # the server is down
    with pytest.raises(BackendError) as caught:
        LocalBackend(storage=f"s3://{s3}/jobs").status("nothing")
    assert isinstance(caught.value.__cause__, StoreError)
    assert "cannot reach the S3 endpoint" in str(caught.value)


# -- the kfnb logger -----------------------------------------------------------------


def test_log_level_debug_shows_a_submit_without_secrets(
    s3: str, kfnb_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    settings().log_level = "debug"  # what `%config Kfnb.log_level = "DEBUG"` does
    assert settings().log_level == "DEBUG" and kfnb_logger.level == logging.DEBUG
    capsys.readouterr()
    storage = f"s3://{s3}/jobs"
    backend = LocalBackend(storage=storage)
    name = "logged"
    bundle = build_bundle("print('hello from the job')\n", {}, job_name=name, s3=True)
    spec = JobSpec(
        name=name,
        artifacts=str(backend.job_dir(name)),
        code_files=tuple(bundle.files),
        storage_env=tuple(replica_env(open_store(storage), name).items()),
    )
    backend.preflight(spec.to_manifest())  # creates the bucket
    backend.submit(spec.to_manifest(), bundle)
    final = Job(name, backend).wait(timeout=120)
    assert final.phase == "Succeeded"
    lines = capsys.readouterr().err.splitlines()
    text = "\n".join(lines)
    assert any("kfnb.backends.local DEBUG: submitted logged" in line for line in lines), text
    assert any("kfnb.storage DEBUG: S3 put_object" in line for line in lines), text
    assert any("job logged is Succeeded" in line for line in lines), text
    assert SECRET not in text and ACCESS not in text
    # The supervisor logged its processes into supervisor.log, without secrets too.
    supervisor = (backend.job_dir(name) / "supervisor.log").read_text()
    assert "started worker-0: process" in supervisor, supervisor
    assert "worker-0 exited with code 0" in supervisor
    assert SECRET not in supervisor and ACCESS not in supervisor


def test_log_level_warning_is_quiet_and_the_handler_is_added_once(
    kfnb_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings()
    config.log_level = "DEBUG"
    config.log_level = "INFO"
    config.log_level = "DEBUG"
    added = [h for h in kfnb_logger.handlers if h not in logging.getLogger().handlers]
    assert len(added) == 1
    logging.getLogger("kfnb.anything").debug("shown")
    config.log_level = "WARNING"
    logging.getLogger("kfnb.anything").debug("hidden")
    err = capsys.readouterr().err
    assert "kfnb.anything DEBUG: shown" in err and "hidden" not in err


def test_kfnb_log_level_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, kfnb_logger: logging.Logger
) -> None:
    monkeypatch.setenv("KFNB_LOG_LEVEL", "info")
    reset_settings()
    assert settings().log_level == "INFO" and kfnb_logger.level == logging.INFO
    monkeypatch.setenv("KFNB_LOG_LEVEL", "chatty")  # not a level: the default
    reset_settings()
    assert settings().log_level == "WARNING"


def test_a_kubernetes_submit_logs_its_api_calls_without_the_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kfnb_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kfnb.backends.kubernetes import KubernetesBackend
    from tests.fake_kube import FakeKube

    with FakeKube() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        settings().log_level = "DEBUG"
        capsys.readouterr()
        backend = KubernetesBackend()
        bundle = build_bundle("print('hi')\n", {}, job_name="kube-logged")
        manifest = JobSpec(name="kube-logged", code_files=tuple(bundle.files)).to_manifest()
        backend.submit(manifest, bundle)
        backend.status("kube-logged")
        err = capsys.readouterr().err
    assert "kfnb.backends.kube_api DEBUG: Kubernetes API POST /apis/kubeflow.org/v1" in err, err
    assert "submitted TFJob kube-logged and its code ConfigMap to alice" in err, err
    assert "job kube-logged is Created" in err, err
    assert "fake-token" not in err
