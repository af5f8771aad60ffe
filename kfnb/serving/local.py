"""Local model servers: started, listed and stopped from the kernel, run in processes of their own.

Each server is ``python -m kfnb.serving.server`` in its own session (it survives a
kernel restart, like a job's supervisor) with its output in
``<home>/servers/<name>.log`` and a record in ``<home>/servers/<name>.json``, so
``%serve list`` and ``%serve stop`` work from any kernel. The kernel never
imports TensorFlow or uvicorn for this.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kfnb._util import (
    PRIVATE_UMASK,
    newest_version,
    numbered_versions,
    open_private,
    private_dir,
    write_atomic,
)
from kfnb.config import settings
from kfnb.hostcheck import configured_names
from kfnb.records import RecordDir
from kfnb.serving import ERROR_PREFIX, READY_PATTERN
from kfnb.serving.config import DEFAULT_GRPC_PORT, DEFAULT_PORT, ServerConfig
from kfnb.serving.served import ClusterServer, LocalServer, ServedModel, served_from_json
from kfnb.spec import validate_name

__all__ = ["ClusterServer", "LocalServer", "LocalServing", "ServeError", "ServedModel"]

log = logging.getLogger(__name__)

_GRPC_LINE = "kfnb model server: gRPC PredictionService on "


class ServeError(RuntimeError):
    """A server cannot be started or found; the message is one line with the fix."""


class LocalServing:
    """Starts model servers on this machine and keeps the records of all (a cluster's too)."""

    def __init__(self, home: str | Path | None = None, python: str | None = None) -> None:
        self.root = Path(home or settings().home).expanduser() / "servers"
        self.python = python or settings().python or sys.executable
        self._records: RecordDir[ServedModel] = RecordDir(
            self.root, served_from_json, "server name"
        )

    def start(
        self,
        name: str,
        model_base_path: Path,
        source: str,
        port: int | None = None,
        grpc_port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        timeout: float = 300.0,
        allowed_hosts: tuple[str, ...] = (),
    ) -> LocalServer:
        """Start a server for ``model_base_path`` and wait until it answers predictions.

        ``port``/``grpc_port`` None: TF Serving's 8501/8500 when free, else free ones.
        The REST port is bound here and its socket handed to the server process, so
        no other process can take it in between. ``allowed_hosts``: ``Host`` names it
        answers besides its own (with ``Kfnb.allowed_hosts``; see ``kfnb.hostcheck``).
        A failure to start raises ServeError with the server's own one-line reason.
        """
        validate_name(name, "server name")  # before its log and record are written
        current = self.get(name)
        if current is not None and current.alive():
            raise ServeError(
                f"{name} is already served at {current.url}: `%serve stop {name}` first, "
                "or pick another --name"
            )
        names = configured_names(list(settings().allowed_hosts), list(allowed_hosts))
        grpc_asked = _grpc_port(host, grpc_port)
        sock = _listen(host, port)
        with sock:
            config = ServerConfig(
                model_base_path=model_base_path,
                model_name=name,
                host=host,
                port=sock.getsockname()[1],
                grpc_port=grpc_asked,
                allowed_hosts=",".join(names) or None,
                listen_fd=sock.fileno(),
            )
            argv = (*config.to_argv(self.python), *extra_args)
            private_dir(self.root)
            log_file = self.root / f"{name}.log"
            write_atomic(log_file, "")  # a new log, 0600
            proc = _spawn(argv, log_file, pass_fds=(sock.fileno(),))
        url, grpc, version = _wait_ready(proc, log_file, timeout)
        # Recorded with the ports it took, so a restart comes back at the same URLs.
        taken = replace(
            config,
            port=int(url.rsplit(":", 1)[1]),
            grpc_port=int(grpc.rsplit(":", 1)[1]) if grpc else None,
            listen_fd=None,  # a restart binds the recorded port itself
        )
        served = LocalServer(
            name=name,
            url=url,
            grpc=grpc,
            source=source,
            model_base_path=str(model_base_path),
            version=version,
            pid=proc.pid,
            argv=(*taken.to_argv(self.python), *extra_args),
            log=str(log_file),
        )
        self.save(served)
        log.debug("server %s serves version %d at %s (pid %d)", name, version, url, proc.pid)
        return served

    def restart(self, name: str, timeout: float = 300.0) -> LocalServer:
        """Start a stopped (or killed) server again with its recorded command line."""
        old = self._local(name)
        if old.alive():
            return old
        log_file = Path(old.log)
        start = log_file.stat().st_size if log_file.exists() else 0
        proc = _spawn(old.argv, log_file)
        url, grpc, version = _wait_ready(proc, log_file, timeout, offset=start)
        served = replace(
            old, url=url, grpc=grpc, version=version, pid=proc.pid, started=time.time()
        )
        self.save(served)
        log.debug("server %s restarted at %s (pid %d)", name, url, proc.pid)
        return served

    def get(self, name: str) -> ServedModel | None:
        """The record of the server ``name``, None when there is none; SpecError when
        ``name`` cannot name a server."""
        return self._records.load(validate_name(name, "server name"))

    def list(self) -> list[ServedModel]:
        return sorted(self._records.all(), key=lambda s: s.started)

    def stop(self, name: str, timeout: float = 20.0) -> LocalServer:
        """Stop a server (SIGTERM, then SIGKILL) and forget it."""
        served = self._local(name)
        if served.alive():
            log.debug("stopping server %s (pid %d)", name, served.pid)
            _signal(served.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while served.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if served.alive():
                log.debug("server %s ignored SIGTERM for %.0f s: SIGKILL", name, timeout)
                _signal(served.pid, signal.SIGKILL)
        self.forget(name)
        return served

    def save(self, served: ServedModel) -> None:
        """Keep ``served``'s record (a cluster's servers are recorded here too)."""
        self._records.save(served.name, served.to_json())

    def forget(self, name: str) -> None:
        self._records.delete(name)

    def _local(self, name: str) -> LocalServer:
        served = self.get(name)
        if served is None:
            raise ServeError(f"no model server named {name}: see `%serve list`")
        if not isinstance(served, LocalServer):
            raise ServeError(
                f"{name} is served by {served.backend}, not by a process here: "
                f"`%serve stop {name}` deletes it there"
            )
        return served


def _spawn(
    argv: tuple[str, ...], log_file: Path, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """The server process, output appended to ``log_file``, in a session of its own.

    Its own session: it outlives the kernel, and Ctrl-C in the kernel spares it.
    ``pass_fds``: the listening socket it inherits.
    """
    env = {**os.environ}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO lines bury the log
    with open_private(log_file) as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            umask=PRIVATE_UMASK,
            pass_fds=pass_fds,
        )
    log.debug("started model server process %d: %s", process.pid, " ".join(argv))
    return process


def _wait_ready(
    proc: subprocess.Popen[bytes], log_file: Path, timeout: float, offset: int = 0
) -> tuple[str, str, int]:
    """(REST url, gRPC address, version) from the server's ready lines, or ServeError."""
    deadline = time.monotonic() + timeout
    grpc = ""
    while True:
        text = log_file.read_text(errors="replace")[offset:] if log_file.exists() else ""
        for line in text.splitlines():
            if line.startswith(_GRPC_LINE):
                grpc = line.removeprefix(_GRPC_LINE).strip()
            match = READY_PATTERN.match(line.strip())
            if match:
                return match.group("url"), grpc, int(match.group("version"))
        if proc.poll() is not None:
            log.debug("model server process %d exited with code %s", proc.pid, proc.returncode)
            errors = [ln for ln in text.splitlines() if ln.startswith(ERROR_PREFIX)]
            reason = errors[-1].removeprefix(ERROR_PREFIX) if errors else _last_line(text)
            raise ServeError(f"the model server did not start: {reason}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise ServeError(
                f"the model server did not answer within {timeout:.0f} s: see its log {log_file}"
            )
        time.sleep(0.05)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "it exited without a word"


def _listen(host: str, port: int | None) -> socket.socket:
    """The server's listening socket: on ``port``, or TF Serving's 8501 when free, else a
    free one. Bound here and inherited by the server (``--listen-fd``)."""
    from kfnb.serving.listen import StartError, bind

    try:
        if port is None:
            try:
                return bind(host, DEFAULT_PORT)
            except StartError:
                port = 0
        return bind(host, port)
    except StartError as exc:
        raise ServeError(f"the model server did not start: {exc}") from exc


def _pick_port(host: str, preferred: int) -> int:
    """``preferred`` if nothing listens there, else 0 (the server picks a free port)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, preferred))
        except OSError:
            return 0
    return preferred


def _grpc_port(host: str, asked: int | None) -> int | None:
    """The gRPC port to ask for: None (no gRPC) without TF Serving's protos installed."""
    if importlib.util.find_spec("tensorflow_serving") is None:
        if asked is not None:
            raise ServeError(
                "--grpc-port needs TF Serving's protos: pip install --no-deps "
                "tensorflow-serving-api"
            )
        return None
    return _pick_port(host, DEFAULT_GRPC_PORT) if asked is None else asked


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def model_base_path(source: str, name: str, home: Path) -> Path:
    """The directory of numbered versions to serve for a job, a SavedModel path or URL.

    A job: its ``model/`` (versions it exports later are picked up while served);
    from an S3 store, its newest version downloaded into this kernel's cache. A
    directory of numbered versions: itself. One SavedModel (``saved_model.pb``
    inside), local or ``s3://``: version 1 of ``<home>/servers/<name>.versions``,
    since TF Serving's layout wants numbered versions.
    """
    from kfnb.records import load_record

    validate_name(name, "server name")  # its versions directory is named after it
    record = load_record(source)
    if record is not None:
        return _job_model(source, record)
    versions = home / "servers" / f"{name}.versions"
    if source.startswith("s3://"):
        return _download_model(source, versions)
    path = Path(source).expanduser().absolute()
    if not path.exists():
        raise ServeError(
            f"no job or SavedModel named {source}: give a job from `%kfnb list`, the "
            "path of a SavedModel directory, or an s3:// URL"
        )
    if _is_saved_model(path):
        private_dir(versions)
        link = versions / "1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path, target_is_directory=True)
        return versions
    if path.is_dir() and numbered_versions(path):
        return path
    raise ServeError(
        f"{path} is not a SavedModel (no saved_model.pb) nor a directory of numbered "
        "versions: export with tf.saved_model.save(model, path)"
    )


def _is_saved_model(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def _job_model(name: str, record: Any) -> Path:
    from kfnb.job import Job
    from kfnb.storage import StoreError

    job = Job.from_record(record)
    try:
        latest = job.latest_model()
    except StoreError as err:
        raise ServeError(f"cannot read job {name}'s model: {err}") from err
    if latest is None:
        raise ServeError(
            f"job {name} has not exported a model yet ({job.status().phase}): save it to "
            "tfjob.model_dir in the cell, then %serve it"
        )
    return latest.parent


def _download_model(url: str, versions: Path) -> Path:
    """An ``s3://`` SavedModel, or the newest of its numbered versions, copied here."""
    import shutil

    from kfnb.storage import StoreError, open_store

    try:
        store = open_store(url)
        keys = [o.key for o in store.list("")]
        if not keys:
            raise ServeError(f"nothing is stored at {url}: check the URL with `mc ls`")
        if any(k in ("saved_model.pb", "saved_model.pbtxt") for k in keys):
            prefix, version = "", "1"
        else:
            newest = newest_version(k.split("/", 1)[0] for k in keys)
            if newest is None:
                raise ServeError(f"{url} holds neither a SavedModel nor numbered versions")
            prefix, version = newest, newest
        shutil.rmtree(versions, ignore_errors=True)
        store.download_dir(prefix, versions / version)
    except StoreError as err:
        raise ServeError(f"cannot download {url}: {err}") from err
    return versions
