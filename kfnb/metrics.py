"""TensorBoard scalars of a job, read incrementally with tensorboard's own event reader.

A job's chief writes events under ``<job_dir>/tensorboard/``: Keras's TensorBoard
callback writes the runs ``train/`` and ``validation/``, an evaluator writes
``evaluator/``. The job widget polls them about once a second while the job
runs, so each poll must read only what was appended since the last one: one
tensorboard ``EventFileLoader`` per event file keeps the file's offset, and a
record that is still being written is left for the next poll.

tensorboard imports TensorFlow (slow: what ``import kfnb`` must not do) as soon as
its reader resolves ``tensorboard.compat.tf``, unless told otherwise. When
TensorFlow is not already imported, the reader module is pointed at tensorboard's
own pure-Python stub instead (see ``_event_file_loader``); when it is,
TensorFlow's reader is used.
``import kfnb.metrics`` imports neither.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

__all__ = ["Points", "ScalarReader", "Scalars", "read_scalars"]

Points = list[tuple[int, float]]
# {tag: {run: [(step, value), ...]}}
Scalars = dict[str, dict[str, Points]]

EVENT_FILE_GLOB = "**/events.out.tfevents.*"
SCALARS_PLUGIN = "scalars"
# numpy dtype kinds that make a number: bool, signed, unsigned, float.
_NUMERIC_KINDS = frozenset("biuf")

logger = logging.getLogger(__name__)

_setup_lock = threading.Lock()
_loader_module: ModuleType | None = None


def _event_file_loader() -> ModuleType:
    """tensorboard's ``event_file_loader``, set up once so that reading never imports TF.

    The reader looks TensorFlow up through its module-level ``tf`` (a lazy
    ``tensorboard.compat.tf``), for the record iterator and its error classes.
    Without TensorFlow in the process, that name is bound to tensorboard's stub,
    in this one module only. The documented switch, putting an empty
    ``tensorboard.compat.notf`` into ``sys.modules``, resolves ``tensorboard.compat.tf``
    to the stub for the whole process for good: ``tf.summary.scalar`` (and so
    Keras's TensorBoard callback) then fails with "cannot import tensorflow 2.0 API"
    in a kernel that imports TensorFlow after a widget has polled.
    """
    global _loader_module
    with _setup_lock:
        if _loader_module is None:
            try:
                from tensorboard.backend.event_processing import (  # type: ignore[import-untyped]
                    event_file_loader,
                )
            except ImportError as exc:
                raise ImportError(
                    f"reading TensorBoard scalars needs tensorboard ({exc}): "
                    "`pip install tensorboard`"
                ) from exc

            if "tensorflow" not in sys.modules:
                from tensorboard.compat import (  # type: ignore[import-untyped]
                    tensorflow_stub,
                )

                event_file_loader.tf = tensorflow_stub
            _loader_module = event_file_loader
        return _loader_module


def _make_ndarray(tensor: Any) -> Any:
    from tensorboard.util import tensor_util  # type: ignore[import-untyped]

    return tensor_util.make_ndarray(tensor)


class _EventFile:
    """One event file: its loader, which remembers the offset, and each tag's plugin.

    Writers put a value's metadata (the plugin it belongs to) on the first event
    of a tag in a file only, so later events of the tag are judged by that.
    """

    __slots__ = ("path", "run", "loader", "plugins")

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.run = run
        self.loader: Any = None
        self.plugins: dict[str, str] = {}

    def read(self) -> list[tuple[str, int, float]]:
        """The scalar points of the records completed since the last read.

        A half-written last record is not an error: the loader stops before it
        and returns it once it is complete. A failure (a file that cannot be
        opened, a record that is not an Event) ends this read; the next poll tries
        again from where the loader stands, so one bad file never stops the others.
        A checksum that fails stops the loader at that record for good, as in
        TensorBoard. A missing tensorboard is raised, not read as "no scalars".
        """
        points: list[tuple[str, int, float]] = []
        module = _event_file_loader()
        try:
            if self.loader is None:
                self.loader = module.EventFileLoader(str(self.path))
            for event in self.loader.Load():
                if event.WhichOneof("what") != "summary":
                    continue  # file_version, graph_def, session_log, ...
                for value in event.summary.value:
                    number = self._scalar(value)
                    if number is not None:
                        points.append((value.tag, int(event.step), number))
        except Exception as exc:  # a bad file must not break the poll
            logger.debug("kfnb: stopped reading %s: %s", self.path, exc)
        return points

    def _scalar(self, value: Any) -> float | None:
        """The value as a float, or None when it is not a single number."""
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            self.plugins[value.tag] = plugin
        else:
            plugin = self.plugins.get(value.tag, "")
        if plugin and plugin != SCALARS_PLUGIN:
            return None  # the Keras model config, graphs, histograms, images, text
        kind = value.WhichOneof("value")
        if kind == "simple_value":  # older writers (the loader usually migrates these)
            return float(value.simple_value)
        if kind != "tensor" or len(value.tensor.tensor_shape.dim) != 0:
            return None  # checked before decoding, so large tensors are never decoded
        array = _make_ndarray(value.tensor)
        if array.ndim != 0 or array.dtype.kind not in _NUMERIC_KINDS:
            return None
        return float(array.item())

    def close(self) -> None:
        """Close the record iterator where it holds a file (TensorFlow's does, the stub's
        opens the file for each read)."""
        close = getattr(getattr(self.loader, "_iterator", None), "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # closing is best effort
                logger.debug("kfnb: closing %s: %s", self.path, exc)
        self.loader = None


class ScalarReader:
    """Reads the scalars under a TensorBoard logdir, a little more at each ``poll()``.

    Runs are event files' directories relative to ``logdir`` (``"train"``,
    ``"validation"``, ``"evaluator"``; ``"."`` for files directly in it). New event
    files (a second Keras run, a restarted replica) are found at every poll. A
    missing logdir reads as empty: a job that has not started writing has no
    scalars yet. Safe to share between a widget's thread and the kernel.
    """

    def __init__(
        self, logdir: str | os.PathLike[str], refresh: Callable[[], object] | None = None
    ) -> None:
        self.logdir = Path(logdir)
        # Called before each poll: a remote store's mirror fetches what is new into logdir.
        self.refresh = refresh
        self._files: dict[Path, _EventFile] = {}
        self._points: Scalars = {}
        self._lock = threading.Lock()
        self._closed = False

    def poll(self) -> Scalars:
        """New scalar points since the last poll: {tag: {run: [(step, value), ...]}}.

        Points come in the order they were written. Raises ValueError once closed.
        """
        with self._lock:
            if self._closed:
                raise ValueError(f"ScalarReader({str(self.logdir)!r}) is closed")
            new: Scalars = {}
            if self.refresh is not None:
                self.refresh()
            for event_file in self._discover():
                for tag, step, number in event_file.read():
                    new.setdefault(tag, {}).setdefault(event_file.run, []).append((step, number))
            for tag, runs in new.items():
                known = self._points.setdefault(tag, {})
                for run, points in runs.items():
                    known.setdefault(run, []).extend(points)
            return new

    def scalars(self) -> Scalars:
        """Everything read so far (polls first unless closed), points sorted by step.

        The sort is stable: points of one step keep the order they were read in,
        files in name order (their names start with the time they were created).
        """
        if not self._closed:
            self.poll()
        with self._lock:
            return {
                tag: {run: sorted(points, key=lambda p: p[0]) for run, points in runs.items()}
                for tag, runs in self._points.items()
            }

    def close(self) -> None:
        """Release the event files; what was read stays available from ``scalars()``."""
        with self._lock:
            for event_file in self._files.values():
                event_file.close()
            self._files.clear()
            self._closed = True

    def __enter__(self) -> ScalarReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._files)} event files"
        return f"<ScalarReader {str(self.logdir)!r}: {state}>"

    def _discover(self) -> list[_EventFile]:
        """All event files known, new ones added, in name order."""
        try:
            found = sorted(p for p in self.logdir.glob(EVENT_FILE_GLOB) if p.is_file())
        except OSError as exc:  # a directory removed or unreadable while walking
            logger.debug("kfnb: listing %s: %s", self.logdir, exc)
            found = []
        for path in found:
            if path not in self._files:
                run = path.parent.relative_to(self.logdir).as_posix()
                self._files[path] = _EventFile(path, run)
        return [self._files[p] for p in sorted(self._files)]


def read_scalars(logdir: str | os.PathLike[str]) -> Scalars:
    """All scalars under ``logdir`` at once, points sorted by step (see ``ScalarReader``)."""
    with ScalarReader(logdir) as reader:
        return reader.scalars()
