"""Local model servers: started, listed and stopped from the kernel, run in processes of their own.

Each server is ``python -m kfnb.serving.server`` in its own session (it survives a
kernel restart, like a job's supervisor) with its output in
``<home>/servers/<name>.log`` and a record in ``<home>/servers/<name>.json``, so
``%serve --list`` and ``%serve --stop`` work from any kernel. The kernel never
imports TensorFlow or uvicorn for this.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kfnb.config import settings
from kfnb.serving import ERROR_PREFIX, READY_PATTERN
from kfnb.serving.config import DEFAULT_GRPC_PORT, DEFAULT_PORT, ServerConfig

__all__ = ["LocalServing", "ServeError", "ServedModel"]

RECORD_VERSION = 1
_GRPC_LINE = "kfnb model server: gRPC PredictionService on "


class ServeError(RuntimeError):
    """A server cannot be started or found; the message is one line with the fix."""


@dataclass(frozen=True)
class ServedModel:
    """A model being served: where to reach it and how it was started."""

    name: str
    url: str  # REST, e.g. http://127.0.0.1:8501
    grpc: str  # host:port of the gRPC PredictionService, "" without one
    source: str  # the job name, SavedModel path or URL that %serve was given
    model_base_path: str
    version: int  # the version it served first
    pid: int
    argv: tuple[str, ...]
    log: str
    backend: str = "local"  # or "kubernetes": then namespace and runtime say where
    started: float = field(default_factory=time.time)
    namespace: str = ""
    runtime: str = ""

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.name}:predict"

    def predictor(self, timeout: float = 10.0) -> Any:
        """A `Predictor` for this model (``predictor.predict(images)``)."""
        from kfnb.serving.client import Predictor

        return Predictor(self.url, self.name, timeout=timeout)

    def alive(self) -> bool:
        """Whether the local server process still runs (it may still be loading).

        A cluster keeps its servers itself: True for them (ask the cluster for more).
        """
        return self.backend != "local" or _alive(self.pid, self.name)

    def to_json(self) -> dict[str, Any]:
        return {"version_": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServedModel:
        if data.get("version_") != RECORD_VERSION:
            raise ValueError(f"server record version {data.get('version_')} is unknown")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["argv"] = tuple(known.get("argv", ()))
        return cls(**known)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def __str__(self) -> str:
        if self.backend != "local":
            where = f"{self.runtime} in namespace {self.namespace}"
            return f"{self.name} ({where}, from {self.source}): {self.predict_url}"
        state = "serving" if self.alive() else "stopped"
        grpc = f", gRPC {self.grpc}" if self.grpc else ""
        return f"{self.name} ({state}, from {self.source}): {self.predict_url}{grpc}"


class LocalServing:
    """Starts model servers on this machine and keeps their records."""

    def __init__(self, home: str | Path | None = None, python: str | None = None) -> None:
        self.root = Path(home or settings().home).expanduser() / "servers"
        self.python = python or settings().python or sys.executable

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
    ) -> ServedModel:
        """Start a server for ``model_base_path`` and wait until it answers predictions.

        ``port``/``grpc_port`` None: TF Serving's 8501/8500 when free, else free ones.
        A failure to start raises ServeError with the server's own one-line reason.
        """
        current = self.get(name)
        if current is not None and current.alive():
            raise ServeError(
                f"{name} is already served at {current.url}: `%serve --stop {name}` first, "
                "or pick another --name"
            )
        config = ServerConfig(
            model_base_path=model_base_path,
            model_name=name,
            host=host,
            port=_pick_port(host, DEFAULT_PORT) if port is None else port,
            grpc_port=_grpc_port(host, grpc_port),
        )
        argv = (*config.to_argv(self.python), *extra_args)
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        log.write_text("")
        proc = _spawn(argv, log)
        url, grpc, version = _wait_ready(proc, log, timeout)
        # Recorded with the ports it took, so a restart comes back at the same URLs.
        taken = replace(
            config,
            port=int(url.rsplit(":", 1)[1]),
            grpc_port=int(grpc.rsplit(":", 1)[1]) if grpc else None,
        )
        served = ServedModel(
            name=name,
            url=url,
            grpc=grpc,
            source=source,
            model_base_path=str(model_base_path),
            version=version,
            pid=proc.pid,
            argv=(*taken.to_argv(self.python), *extra_args),
            log=str(log),
        )
        self._save(served)
        return served

    def restart(self, name: str, timeout: float = 300.0) -> ServedModel:
        """Start a stopped (or killed) server again with its recorded command line."""
        old = self.get(name)
        if old is None:
            raise ServeError(f"no model server named {name}: see `%serve --list`")
        if old.alive():
            return old
        log = Path(old.log)
        start = log.stat().st_size if log.exists() else 0
        proc = _spawn(old.argv, log)
        url, grpc, version = _wait_ready(proc, log, timeout, offset=start)
        served = ServedModel(
            name=name,
            url=url,
            grpc=grpc,
            source=old.source,
            model_base_path=old.model_base_path,
            version=version,
            pid=proc.pid,
            argv=old.argv,
            log=old.log,
        )
        self._save(served)
        return served

    def get(self, name: str) -> ServedModel | None:
        try:
            return ServedModel.from_json(json.loads((self.root / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def list(self) -> list[ServedModel]:
        if not self.root.is_dir():
            return []
        found = (self.get(p.stem) for p in self.root.glob("*.json"))
        return sorted((s for s in found if s is not None), key=lambda s: s.started)

    def stop(self, name: str, timeout: float = 20.0) -> ServedModel:
        """Stop a server (SIGTERM, then SIGKILL) and forget it."""
        served = self.get(name)
        if served is None:
            raise ServeError(f"no model server named {name}: see `%serve --list`")
        if served.alive():
            _signal(served.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while served.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if served.alive():
                _signal(served.pid, signal.SIGKILL)
        (self.root / f"{name}.json").unlink(missing_ok=True)
        return served

    def save(self, served: ServedModel) -> None:
        """Keep ``served``'s record (a cluster's servers are recorded here too)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._save(served)

    def forget(self, name: str) -> None:
        (self.root / f"{name}.json").unlink(missing_ok=True)

    def _save(self, served: ServedModel) -> None:
        path = self.root / f"{served.name}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(served.to_json(), indent=1))
        tmp.replace(path)


def _spawn(argv: tuple[str, ...], log: Path) -> subprocess.Popen[bytes]:
    """The server process, output appended to ``log``, in a session of its own.

    Its own session: it outlives the kernel, and Ctrl-C in the kernel spares it.
    """
    env = {**os.environ}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO lines bury the log
    with open(log, "a") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def _wait_ready(
    proc: subprocess.Popen[bytes], log: Path, timeout: float, offset: int = 0
) -> tuple[str, str, int]:
    """(REST url, gRPC address, version) from the server's ready lines, or ServeError."""
    deadline = time.monotonic() + timeout
    grpc = ""
    while True:
        text = log.read_text(errors="replace")[offset:] if log.exists() else ""
        for line in text.splitlines():
            if line.startswith(_GRPC_LINE):
                grpc = line.removeprefix(_GRPC_LINE).strip()
            match = READY_PATTERN.match(line.strip())
            if match:
                return match.group("url"), grpc, int(match.group("version"))
        if proc.poll() is not None:
            errors = [ln for ln in text.splitlines() if ln.startswith(ERROR_PREFIX)]
            reason = errors[-1].removeprefix(ERROR_PREFIX) if errors else _last_line(text)
            raise ServeError(f"the model server did not start: {reason}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise ServeError(
                f"the model server did not answer within {timeout:.0f} s: see its log {log}"
            )
        time.sleep(0.05)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "it exited without a word"


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


def _alive(pid: int, name: str) -> bool:
    """Whether ``pid`` still runs this server (not a recycled pid of another process)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the pid
    if _zombie(pid):
        return False
    return b"kfnb.serving.server" in cmdline and name.encode() in cmdline


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


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
        versions.mkdir(parents=True, exist_ok=True)
        link = versions / "1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path, target_is_directory=True)
        return versions
    if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
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
        raise ServeError(f"cannot read job {name}'s model: {err}") from None
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
            numbered = {k.split("/", 1)[0] for k in keys if k.split("/", 1)[0].isdigit()}
            if not numbered:
                raise ServeError(f"{url} holds neither a SavedModel nor numbered versions")
            version = max(numbered, key=int)
            prefix = version
        shutil.rmtree(versions, ignore_errors=True)
        store.download_dir(prefix, versions / version)
    except StoreError as err:
        raise ServeError(f"cannot download {url}: {err}") from None
    return versions
