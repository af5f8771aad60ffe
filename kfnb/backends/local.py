"""The local backend: a TFJob's replicas as processes on this machine.

Each job gets a directory under the store (``<storage>/<job>/``) laid out as on
any store: ``code/``, ``logs/<replica>.log``, ``tensorboard/``, ``model/``,
``status/<replica>.json`` from the runtime and ``status.json`` for the job. A
supervisor process (see `kfnb.backends.supervisor`) runs the replicas in a
session of its own, so jobs outlive the kernel and any kernel can list,
follow and delete them.

With an ``s3://`` store the replicas still run here, in a scratch directory
under kfnb's home, and everything lands in the bucket in the same layout. Logs,
replica results and, once this machine no longer supervises the job, its status
are then read from the bucket, so any notebook can watch the job.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kfnb._util import (
    PRIVATE_UMASK,
    create_exclusive,
    open_private,
    pid_alive,
    private_dir,
    write_atomic,
)
from kfnb.backends import BackendError, JobNotFound
from kfnb.backends.process_groups import kill_recorded_groups
from kfnb.bundle import Bundle
from kfnb.config import settings
from kfnb.spec import SpecError, validate_name
from kfnb.status import JobStatus, StatusUnreadable, log_transition
from kfnb.storage import Store, StoreError, open_store

SUPERVISOR_MODULE = "kfnb.backends.supervisor"
log = logging.getLogger(__name__)
_children: dict[str, subprocess.Popen[bytes]] = {}  # supervisors this process started


def _supervisor_alive(pid: int) -> bool:
    """True if ``pid`` is a live kfnb supervisor (not a reused pid, not a zombie)."""
    child = next((p for p in _children.values() if p.pid == pid), None)
    if child is not None:
        return child.poll() is None  # and reaps it once it has exited
    return pid_alive(pid, SUPERVISOR_MODULE)


def local_gpus() -> list[str]:
    """GPU indices this machine has, from nvidia-smi (none when it is missing)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


@functools.cache
def interpreter_python(python: str) -> str | None:
    """``3.11`` for the interpreter ``python``; None when it cannot be run."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def _has_module(python: str, module: str) -> bool:
    # Not realpath: a venv's python links to its base interpreter, which lacks its packages.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return importlib.util.find_spec(module) is not None
    probe = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
        return found.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalBackend:
    name = "local"
    namespace = ""

    def __init__(self, storage: str | Path | None = None, python: str | None = None) -> None:
        config = settings()
        try:
            store = open_store(storage or config.storage)
        except StoreError as err:
            raise BackendError(str(err)) from err
        self.storage = store.url
        # A remote store's jobs run in a local scratch copy; None for a local store.
        self.remote: Store | None = None if store.local_root is not None else store
        self.root = store.local_root or Path(config.home).expanduser() / "scratch" / _slug(
            store.url
        )
        self.python = python or config.python
        # A job's replicas never change after submit; logs are read many times a second.
        self._replica_names: dict[str, list[str]] = {}
        self._phases: dict[str, str] = {}  # the phase each job was last seen in, for the log

    def job_dir(self, name: str) -> Path:
        return self.root / validate_name(name, "job name")

    def replica_python(self, image: str) -> str | None:
        """The Python version of the interpreter replicas run (the image does not apply)."""
        return interpreter_python(self.python)

    def _existing(self, name: str) -> Path:
        path = self.job_dir(name)
        if not (path / "manifest.json").exists() and not self._in_store(name):
            raise JobNotFound(f"no local job named {name!r}: `%kfnb list` shows the jobs")
        return path

    def _in_store(self, name: str) -> bool:
        return self.remote is not None and self._remote_read(f"{name}/manifest.json") is not None

    def _remote_read(self, key: str, offset: int = 0) -> bytes | None:
        assert self.remote is not None
        try:
            return self.remote.read(key, offset)
        except StoreError as err:
            raise BackendError(str(err)) from err

    def preflight(self, manifest: dict[str, Any]) -> list[str]:
        """Fail now, in one line, on what would only fail inside the replicas later."""
        if shutil.which(self.python) is None and not Path(self.python).exists():
            raise BackendError(
                f"the local backend's Python {self.python!r} does not exist: "
                "set %config Kfnb.python to an interpreter"
            )
        if not _has_module(self.python, "tensorflow"):
            raise BackendError(
                f"TensorFlow is not installed for {self.python}: pip install 'kfnb[tensorflow]' "
                "(or tensorflow-cpu) in the kernel's environment"
            )
        env = _container_env(manifest)
        installs = any(
            spec["template"]["spec"].get("initContainers")
            for spec in manifest["spec"]["tfReplicaSpecs"].values()
        )
        legacy = env.get("TF_USE_LEGACY_KERAS") == "1"
        if legacy and not installs and not _has_module(self.python, "tf_keras"):
            raise BackendError(
                "multi-worker Keras needs tf-keras (Keras 3 cannot fit under "
                "MultiWorkerMirroredStrategy), and installing packages is off: "
                "%config Kfnb.install_packages = True, pip install --no-deps tf-keras "
                "matching your TensorFlow, or pass --env TF_USE_LEGACY_KERAS=0"
            )
        if self.remote is not None:
            try:
                self.remote.check()
            except StoreError as err:
                raise BackendError(str(err)) from err
        warnings = []
        wants_gpus = any(
            c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            for spec in manifest["spec"]["tfReplicaSpecs"].values()
            for c in spec["template"]["spec"]["containers"]
        )
        if wants_gpus and not local_gpus():
            warnings.append("this machine has no GPU: the local backend runs the job on CPU")
        return warnings

    def submit(self, manifest: dict[str, Any], bundle: Bundle) -> JobStatus:
        name = manifest["metadata"]["name"]
        path = self.job_dir(name)
        self._reserve(name, path, json.dumps(manifest, indent=1).encode())
        self._replica_names.pop(name, None)  # purged elsewhere, now a new job
        status = JobStatus(name, self.name, "Created", message=f"TFJob {name} is created.")
        try:
            private_dir(path / "logs")
            bundle.write(path / "code")
            status.write(path / "status.json")
            if self.remote is not None:  # before the supervisor starts: the bucket has
                self.remote.upload_dir(path / "code", f"{name}/code")  # the job before it runs
                self.remote.write(f"{name}/status.json", (path / "status.json").read_bytes())
            process = self._start_supervisor(path)
        except BaseException as err:
            self._release(name, path)  # the name is free again, nothing of the job is left
            if isinstance(err, StoreError):
                raise BackendError(str(err)) from err
            raise
        _children[name] = process
        write_atomic(path / "supervisor.pid", str(process.pid))
        log.debug("submitted %s: supervisor process %d runs %s", name, process.pid, path)
        return self._seen(status)

    def _reserve(self, name: str, path: Path, manifest: bytes) -> None:
        """Take the job's name before anything of the job is written: its manifest, created
        only where none is (here, then in the bucket of an s3:// store, which other
        machines share). Of kernels submitting one name at once, one gets on; the others
        get the one-line error and have written nothing."""
        taken = BackendError(
            f"a job named {name!r} already exists in {self.storage}: pick another --name, "
            f"or `%kfnb delete {name} --purge` first"
        )
        private_dir(path)
        try:
            create_exclusive(path / "manifest.json", manifest)
        except FileExistsError:
            raise taken from None
        if self.remote is None:
            return
        try:
            reserved = self.remote.create(f"{name}/manifest.json", manifest)
        except StoreError as err:
            self._release(name, path, remote=False)
            raise BackendError(str(err)) from err
        if not reserved:
            self._release(name, path, remote=False)
            raise taken

    def _release(self, name: str, path: Path, remote: bool = True) -> None:
        """Undo a submit that holds the name: its files here, and in the bucket."""
        shutil.rmtree(path, ignore_errors=True)
        if remote and self.remote is not None:
            try:
                self.remote.delete_prefix(name)
            except StoreError as err:
                log.debug("submit of %s failed; its objects stay in the store: %s", name, err)

    def _start_supervisor(self, path: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "KFNB_PYTHON": self.python,
            "KFNB_LOCAL_GPUS": ",".join(local_gpus()),
            "KFNB_LOG_LEVEL": settings().log_level,  # the supervisor logs to supervisor.log
            # The packages init container's target, shared by later jobs with the same pins.
            "KFNB_PACKAGES_CACHE": str(Path(settings().home).expanduser() / "packages"),
            # Where replicas keep what tfjob.fetch downloads: this user's, as kfnb's home.
            "KFNB_DATA_CACHE": str(Path(settings().home).expanduser() / "data-cache"),
        }
        with open_private(path / "supervisor.log") as out:
            return subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the kernel, and Ctrl-C in it
                umask=PRIVATE_UMASK,  # what the job's processes create is the user's alone
            )

    def status(self, name: str) -> JobStatus:
        path = self._existing(name)
        if not (path / "manifest.json").exists():  # supervised elsewhere, or scratch removed
            where = f"{self.storage}/{name}/status.json"
            data = self._remote_read(f"{name}/status.json")
            if data is None:
                raise JobNotFound(f"job {name!r} has no status.json in {self.storage}")
            try:
                return self._seen(JobStatus.parse(data, where))
            except StatusUnreadable as err:
                return self._seen(JobStatus.unreadable(name, self.name, err, running=False))
        status = self._read_status(name, path)
        if not status.finished and not self._supervised(path):
            # Read again: the supervisor may have written its last status and exited since.
            status = self._read_status(name, path)
            if not status.finished:
                status = self._lost(path, status)
        return self._seen(status)

    def _lost(self, path: Path, status: JobStatus) -> JobStatus:
        """The job whose supervisor died without a word (killed, machine rebooted): the
        kernel killed its replicas with it, not what they started; that is stopped here,
        and the verdict written down (in the store too), so every reader agrees."""
        killed = kill_recorded_groups(path)
        log.debug(
            "job %s: its supervisor is gone; %d processes left were killed", status.name, killed
        )
        replicas = tuple(
            r if r.phase in ("Succeeded", "Failed", "Stopped") else replace(r, phase="Stopped")
            for r in status.replicas
        )
        status = JobStatus(
            status.name,
            self.name,
            "Failed",
            "SupervisorLost",
            "kfnb's local supervisor of this job is gone; its replicas were stopped with it",
            status.start_time,
            time.time(),
            replicas,
        )
        self._write_verdict(path, status)
        return status

    def _write_verdict(self, path: Path, status: JobStatus) -> None:
        """A status this backend decided (not the supervisor), here and in the store."""
        status.write(path / "status.json")
        if self.remote is not None:
            try:
                self.remote.write(f"{status.name}/status.json", (path / "status.json").read_bytes())
            except StoreError as err:
                log.debug("job %s: the store keeps its last status: %s", status.name, err)

    def _read_status(self, name: str, path: Path) -> JobStatus:
        """The job's status.json: Created while its submit is still writing the job, and
        an unreadable one said so, naming the file (the file is kept as it is)."""
        try:
            return JobStatus.read(path / "status.json")
        except FileNotFoundError:
            return JobStatus(name, self.name, "Created", message=f"TFJob {name} is created.")
        except StatusUnreadable as err:
            log.debug("job %s: %s", name, err)
            return JobStatus.unreadable(name, self.name, err, running=self._supervised(path))

    def _seen(self, status: JobStatus) -> JobStatus:
        return log_transition(log, self._phases, status)

    def _supervised(self, path: Path) -> bool:
        try:
            pid = int((path / "supervisor.pid").read_text())
        except FileNotFoundError:
            return True  # submit() is between starting the supervisor and writing its pid
        except (OSError, ValueError):
            return False
        return _supervisor_alive(pid)

    def _supervisor_running(self, path: Path) -> bool:
        """Whether the job has a supervisor that has not exited (one started, unlike
        `_supervised`, which counts a supervisor about to be started as one)."""
        return (path / "supervisor.pid").exists() and self._supervised(path)

    def delete(self, name: str, purge: bool = False, timeout: float = 10.0) -> JobStatus:
        """Stop the job (its logs and artifacts stay, unless ``purge``)."""
        path = self._existing(name)
        status = self.status(name)
        if not status.finished and (path / "supervisor.pid").exists():
            pid = int((path / "supervisor.pid").read_text())
            log.debug("deleting %s: SIGTERM to its supervisor process %d", name, pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while not status.finished and time.monotonic() < deadline:
                time.sleep(0.05)
                status = self.status(name)
            if status.reason == "SupervisorLost":
                # SIGTERM came before the supervisor set its handler (it sets it before
                # starting any replica), so it ended with nothing running: deleted, not lost.
                status = replace(
                    status,
                    phase="Deleted",
                    reason="TFJobDeleted",
                    message=f"TFJob {name} was deleted.",
                )
                self._write_verdict(path, status)
        if purge:
            # The supervisor writes logs and status (and uploads them) until it exits:
            # removing them under it would leave a half job, here or in the bucket.
            deadline = time.monotonic() + timeout
            while self._supervisor_running(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._supervisor_running(path):
                raise BackendError(
                    f"job {name!r} is still stopping: its supervisor is saving its logs and "
                    f"status; nothing was removed: run `%kfnb delete {name} --purge` again "
                    "in a moment"
                )
        child = _children.get(name)
        if child is not None and child.poll() is not None:
            del _children[name]  # reaped
        if purge:
            if self.remote is not None:
                try:
                    self.remote.delete_prefix(name)
                except StoreError as err:
                    raise BackendError(str(err)) from err
            shutil.rmtree(path, ignore_errors=True)
            self._replica_names.pop(name, None)  # the name may be used again
        return status

    def list_jobs(self) -> list[JobStatus]:
        if not self.root.is_dir():
            return []
        jobs = []
        for path in self.root.iterdir():
            if not (path / "manifest.json").exists() or not (path / "status.json").exists():
                continue
            try:
                jobs.append(self.status(path.name))
            except SpecError:  # a directory kfnb did not make: no job has that name
                continue
        return sorted(jobs, key=lambda s: s.start_time or 0.0)

    def replica_names(self, name: str) -> list[str]:
        if name not in self._replica_names:
            path = self._existing(name) / "manifest.json"
            key = f"{name}/manifest.json"
            data = path.read_bytes() if path.exists() else self._remote_read(key)
            manifest = json.loads(data or b"{}")
            self._replica_names[name] = [
                f"{kind.lower()}-{i}"
                for kind, spec in manifest["spec"]["tfReplicaSpecs"].items()
                for i in range(spec.get("replicas", 1))
            ]
        return self._replica_names[name]

    def _log_path(self, name: str, replica: str) -> Path:
        names = self.replica_names(name)
        if replica not in names:
            raise BackendError(
                f"job {name!r} has no replica {replica!r}: it has {', '.join(names)}"
            )
        return self.job_dir(name) / "logs" / f"{replica}.log"

    def read_log(self, name: str, replica: str) -> str:
        path = self._log_path(name, replica)
        if self.remote is not None:
            return (self._remote_read(f"{name}/logs/{replica}.log") or b"").decode(errors="replace")
        return path.read_text(errors="replace") if path.exists() else ""

    def read_log_since(
        self, name: str, replica: str, offset: int, partial: bool = False
    ) -> tuple[str, int]:
        """Lines written after byte ``offset``, and the offset to ask from next.

        A partial last line is left for the next call unless ``partial``; a log
        that shrank (replaced) is read again from the start.
        """
        path = self._log_path(name, replica)
        if self.remote is not None:  # the replica uploads its log every few seconds
            chunk = self._remote_read(f"{name}/logs/{replica}.log", offset)
            if chunk is None:
                return "", offset
            complete = chunk if partial else chunk[: chunk.rfind(b"\n") + 1]
            return complete.decode(errors="replace"), offset + len(complete)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                if offset > size:
                    offset = 0
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return "", offset
        complete = chunk if partial else chunk[: chunk.rfind(b"\n") + 1]
        return complete.decode(errors="replace"), offset + len(complete)

    def replica_result(self, name: str, replica: str) -> dict[str, Any] | None:
        path = self._existing(name) / "status" / f"{replica}.json"
        try:
            if self.remote is not None:
                data = self._remote_read(f"{name}/status/{replica}.json")
                if data is None:
                    return None
                result: dict[str, Any] = json.loads(data)
                return result
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return result


def _slug(url: str) -> str:
    """A directory name for a store URL: s3://tfmnist/jobs -> s3-tfmnist-jobs."""
    return "-".join(part for part in url.replace("://", "/").split("/") if part)


def _container_env(manifest: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for spec in manifest["spec"]["tfReplicaSpecs"].values():
        for container in spec["template"]["spec"]["containers"]:
            env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    return env
