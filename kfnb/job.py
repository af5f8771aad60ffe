"""`Job`: the handle a ``%%tfjob`` cell returns, the same for every backend."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from kfnb._util import newest_version, numbered_versions
from kfnb.backends import Backend, JobNotFound, get_backend
from kfnb.records import JobRecord, load_record
from kfnb.spec import validate_name
from kfnb.status import JobStatus

if TYPE_CHECKING:
    from kfnb.metrics import ScalarReader
    from kfnb.storage import Store

LOG_TAIL_LINES = 20


class JobFailed(RuntimeError):
    """A job ended Failed; carries the failing replica's traceback.

    IPython shows ``_render_traceback_``: the replica's own traceback, as if the
    cell had raised in the notebook, then one line saying which replica failed.
    """

    def __init__(
        self,
        status: JobStatus,
        replica: str | None = None,
        traceback: str | None = None,
        log_tail: str = "",
    ) -> None:
        self.status = status
        self.replica = replica
        self.traceback = traceback
        self.log_tail = log_tail
        detail = status.message or status.reason
        if replica:
            code = status.replica(replica)
            exit_code = code.exit_code if code else None
            detail += f" {replica} exited with code {exit_code}."
        super().__init__(f"job {status.name} {status.phase.lower()}: {detail}".strip())

    def _render_traceback_(self) -> list[str]:
        lines: list[str] = []
        if self.traceback:
            lines += [f"--- traceback of {self.replica} ---", *self.traceback.rstrip().splitlines()]
        elif self.log_tail:
            lines += [
                f"--- last lines of {self.replica}'s log ---",
                *self.log_tail.rstrip().splitlines(),
            ]
        lines.append(f"JobFailed: {self}")
        return lines


class Job:
    """A submitted job: its status, logs and control, wherever it runs."""

    def __init__(self, name: str, backend: Backend) -> None:
        self.name = validate_name(name, "job name")
        self.backend = backend
        self._opened_store: Store | None = None

    @classmethod
    def attach(cls, name: str) -> Job:
        """The job ``name`` from its record, e.g. after a kernel restart."""
        record = load_record(validate_name(name, "job name"))
        if record is None:
            raise JobNotFound(f"no job named {name!r}: `%kfnb list` shows the jobs")
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: JobRecord) -> Job:
        backend = get_backend(record.backend, storage=record.storage, namespace=record.namespace)
        return cls(record.name, backend)

    def status(self) -> JobStatus:
        return self.backend.status(self.name)

    @property
    def phase(self) -> str:
        return self.status().phase

    @property
    def replicas(self) -> list[str]:
        return self.backend.replica_names(self.name)

    @property
    def decider(self) -> str:
        """The replica whose success decides the job: the chief, else worker 0."""
        names = self.replicas
        return next((n for n in names if n.startswith(("chief-", "master-"))), None) or (
            "worker-0" if "worker-0" in names else names[0]
        )

    @overload
    def logs(self, replica: str | None = None, follow: Literal[False] = False) -> str: ...

    @overload
    def logs(self, replica: str | None = None, *, follow: Literal[True]) -> Iterator[str]: ...

    def logs(self, replica: str | None = None, follow: bool = False) -> str | Iterator[str]:
        """A replica's log (the chief's by default); with ``follow``, its lines as they come."""
        replica = replica or self.decider
        if follow:
            self.log_since(replica, 0)  # the backend's check of the name, now, not at next()
            return self._follow(replica)
        return self.backend.read_log(self.name, replica)

    def log_since(self, replica: str, offset: int, partial: bool = False) -> tuple[str, int]:
        """New lines of a replica's log after byte ``offset``, and the next offset.

        Only complete lines, unless ``partial`` (for the last read of an ended job).
        """
        return self.backend.read_log_since(self.name, replica, offset, partial)

    def _follow(self, replica: str, poll: float = 0.1) -> Iterator[str]:
        offset = 0
        while True:
            finished = self.status().finished  # read before the log, so no line is lost
            text, offset = self.log_since(replica, offset, partial=finished)
            yield from text.splitlines(keepends=True)
            if finished:
                return
            time.sleep(poll)

    def scalars(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """The TensorBoard scalars the job wrote: {tag: {run: [(step, value)]}}."""
        reader = self.scalar_reader()
        if reader is None:
            return {}
        with reader:
            return reader.scalars()

    def _store(self) -> Store:
        from kfnb.storage import open_store

        if self._opened_store is None:
            self._opened_store = open_store(self.backend.storage)
        return self._opened_store

    def _cache(self) -> Path:
        """Where this kernel keeps copies of a remote store's files for this job."""
        from kfnb.config import settings

        slug = self.backend.storage.replace("://", "/").strip("/")
        return Path(settings().home).expanduser() / "cache" / slug / self.name

    def scalar_reader(self) -> ScalarReader | None:
        """A reader of the job's TensorBoard scalars, from its store (the widget polls it).

        For a remote store each poll first fetches the new bytes of the event files
        into a local mirror, then reads them with tensorboard's reader.
        """
        from kfnb.metrics import ScalarReader

        source = self.tensorboard_source()
        if source is None:
            return None
        logdir, refresh = source
        return ScalarReader(logdir, refresh=refresh)

    def tensorboard_source(self) -> tuple[Path, Callable[[], int] | None] | None:
        """A local directory of the job's TensorBoard events, and what keeps it current.

        The local store's own directory (nothing to refresh), or for a remote store
        this kernel's mirror of ``<job>/tensorboard/`` with its ``pull``, which
        fetches only the bytes added since. None when the job has no store here.
        """
        store = self._store()
        if store.local_root is None:
            from kfnb.storage import StoreMirror

            local = self._cache() / "tensorboard"
            return local, StoreMirror(store, f"{self.name}/tensorboard", local).pull
        root = self.artifacts
        return (root / "tensorboard", None) if root is not None else None

    @property
    def artifacts(self) -> Path | None:
        """The job's directory in the local store (logs, tensorboard/, model/)."""
        return self.backend.job_dir(self.name)

    def latest_model(self) -> Path | None:
        """The newest published model version (``model/<n>``), as TF Serving would pick it
        (a SavedModel, or a scikit-learn ``model.joblib``: `kfnb.serving.model_kind`).

        From a remote store it is downloaded once into this kernel's cache.
        """
        from kfnb.serving.model_kind import MODEL_FILES

        store = self._store()
        if store.local_root is None:
            prefix = f"{self.name}/model"
            names = {o.key[len(prefix) + 1 :].split("/", 1)[0] for o in store.list(prefix)}
            newest = newest_version(names)
            if newest is None:
                return None
            local = self._cache() / "model" / newest
            # A SavedModel's saved_model.pb is uploaded last; model.joblib is one file.
            if not any((local / name).exists() for name in MODEL_FILES):
                store.download_dir(f"{prefix}/{newest}", local)
            return local
        root = self.artifacts
        versions = numbered_versions(root / "model") if root is not None else None
        return versions[max(versions)] if versions else None

    def replica_warnings(self, replica: str) -> tuple[str, ...] | None:
        """What a replica's runtime warned of as it started (a GPU asked for that
        TensorFlow does not see); None until the replica has recorded its start.

        From the runtime's ``status/<replica>.json``: the backend's, or the job's
        s3:// store's (pods upload it there; a pod's own status has no such record).
        """
        result = self.backend.replica_result(self.name, replica) or {}
        if "warnings" not in result and self._store().local_root is None:
            data = self._store().read(f"{self.name}/status/{replica}.json")
            result = json.loads(data) if data else {}
        warnings = result.get("warnings")
        return None if warnings is None else tuple(warnings)

    def warnings(self) -> dict[str, tuple[str, ...]]:
        """Each replica's warnings, for the replicas that have any."""
        found = {replica: self.replica_warnings(replica) for replica in self.replicas}
        return {replica: warnings for replica, warnings in found.items() if warnings}

    def delete(self) -> JobStatus:
        """Stop the job. Its logs and artifacts are kept."""
        return self.backend.delete(self.name)

    def failure(self, status: JobStatus | None = None) -> JobFailed | None:
        """A `JobFailed` for a failed job, naming the replica that failed first."""
        status = status or self.status()
        if status.phase != "Failed":
            return None
        failed = [r for r in status.replicas if r.phase == "Failed"]
        # A replica that raised (exit 1-127) is the cause; those killed by signals follow it.
        failed.sort(key=lambda r: (r.exit_code is None or r.exit_code >= 128, r.type != "chief"))
        if not failed:
            return JobFailed(status)
        replica = failed[0].name
        result = self.backend.replica_result(self.name, replica) or {}
        tail = "".join(self.logs(replica).splitlines(keepends=True)[-LOG_TAIL_LINES:])
        return JobFailed(status, replica, result.get("traceback") or result.get("error"), tail)

    def wait(
        self, timeout: float | None = None, poll: float = 0.1, cancel_on_interrupt: bool = True
    ) -> JobStatus:
        """Block until the job ends; raise `JobFailed` if it failed.

        Ctrl-C deletes the job (``cancel_on_interrupt``) and re-raises.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            status = self.status()
            while not status.finished:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.name} is still {status.phase} after {timeout} s")
                time.sleep(poll)
                status = self.status()
        except KeyboardInterrupt:
            if cancel_on_interrupt:
                self.delete()
            raise
        error = self.failure(status)
        if error is not None:
            raise error
        return status

    def plot(self) -> Any:
        """A matplotlib figure of the job's TensorBoard scalars, one axes per tag."""
        from kfnb.widgets.static_plots import job_figure

        return job_figure(self)

    def summary(self, status: JobStatus | None = None) -> str:
        status = status or self.status()
        elapsed = f" {status.elapsed:.0f}s" if status.elapsed is not None else ""
        replicas = ", ".join(f"{r.name} {r.phase}" for r in status.replicas)
        return f"Job {self.name} ({self.backend.name}): {status.phase}{elapsed} [{replicas}]"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())
