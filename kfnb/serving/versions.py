"""Model versions on disk and the manager that loads, serves and unloads them.

The layout is TF Serving's: ``<base>/<N>/saved_model.pb`` for each version N.
Directories that are not all digits (``model/.staging-2`` while a job writes it)
are ignored, so a half-written model is never loaded. Nothing here imports
TensorFlow at module level: loading goes through ``kfnb.serving.loader`` in the
manager's loader thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfnb._util import first_line, numbered_versions, version_number
from kfnb.serving.loader import LoadedModel, ModelLoadError, load_saved_model

__all__ = ["ModelManager", "VersionStatus", "check_base_path", "scan_versions"]

log = logging.getLogger("kfnb.serving")


def scan_versions(base: Path) -> dict[int, Path] | None:
    """Numbered version directories under ``base``; None when ``base`` cannot be read.

    Only all-digit names count: ``.staging-3`` (a model still being written) is not a version.
    """
    return numbered_versions(base)


def check_base_path(base: Path) -> str | None:
    """Why ``base`` cannot be served, with what to do; None when it has a version to load.

    Checked before TensorFlow is imported, so a wrong path fails in a fraction of a second.
    """
    if not base.exists():
        return (
            f"no model at {base}: the directory does not exist; export a SavedModel to "
            f"{base / '1'} (numbered version directories, as TF Serving expects) "
            "or fix --model-base-path"
        )
    if not base.is_dir():
        return f"no model at {base}: it is a file, not the directory of versions"
    if (base / "saved_model.pb").is_file():
        if version_number(base.name) is not None:
            hint = f"pass its parent, --model-base-path {base.parent}"
        else:
            hint = f"move it to {base / '1'}"
        return f"{base} is a SavedModel, not a directory of numbered versions: {hint}"
    versions = scan_versions(base)
    if versions is None:
        return f"no model at {base}: the directory cannot be read (check its permissions)"
    if not versions:
        staging = sorted(p.name for p in base.glob(".staging-*"))
        if staging:
            return (
                f"no model at {base} yet: {base / staging[0]} is still being written by a job; "
                "start the server when the job has finished"
            )
        return (
            f"no model at {base}: it has no numbered version directory ({base / '1'}, ...); "
            "train and export a model there first"
        )
    return None


def fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and times of a version's files: a failed version is retried when it changes."""
    found: list[tuple[str, int, int]] = []
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                stat = os.stat(full)
                found.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    except OSError as exc:
        found.append((f"unreadable: {exc}", 0, 0))
    return tuple(sorted(found))


@dataclass(frozen=True)
class VersionStatus:
    """A version's state, in TF Serving's words (ModelVersionStatus)."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


class ModelManager:
    """The versions of one model: which are loaded, which failed, which to serve.

    Lives in the event loop; scanning and loading run in one loader thread, so
    requests keep being served by the loaded versions while a new one loads. The
    newest ``max_versions`` loadable versions are kept (TF Serving's
    ``latest {num_versions}`` policy); a version that fails to load is reported in
    its status and retried only when its files change, and never displaces the
    version being served. Switching to a new version is one assignment in the
    event loop, so each request sees either the old or the new version.
    """

    def __init__(
        self,
        name: str,
        base_path: Path,
        max_versions: int = 2,
        loader: Callable[[Path, int], LoadedModel] = load_saved_model,
        on_change: Callable[[VersionStatus, float], None] | None = None,
    ) -> None:
        if max_versions < 1:
            raise ValueError("max_versions must be at least 1")
        self.name = name
        self.base_path = base_path
        self.max_versions = max_versions
        self._loader = loader
        self._on_change = on_change
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kfnb-loader")
        self._loaded: dict[int, LoadedModel] = {}
        self._newest: LoadedModel | None = None
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._lock = asyncio.Lock()
        self._missing_base_logged = False

    # -- what requests see (event loop only)

    @property
    def newest(self) -> LoadedModel | None:
        """The version that requests without a version go to."""
        return self._newest

    def get(self, version: int) -> LoadedModel | None:
        return self._loaded.get(version)

    @property
    def loaded_versions(self) -> list[int]:
        return sorted(self._loaded, reverse=True)

    def statuses(self) -> list[VersionStatus]:
        """Every version seen, newest first (TF Serving lists unloaded and failed ones too)."""
        return [self._status[v] for v in sorted(self._status, reverse=True)]

    def status(self, version: int) -> VersionStatus | None:
        return self._status.get(version)

    # -- loading

    async def refresh(self) -> None:
        """Scan the base path once; load new versions, unload old or removed ones."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        failed = dict(self._failed)
        scan = await loop.run_in_executor(self._executor, _scan, self.base_path, failed)
        if scan is None:
            if not self._missing_base_logged:
                log.warning(
                    "%s: cannot read %s; still serving what is loaded", self.name, self.base_path
                )
                self._missing_base_logged = True
            return
        self._missing_base_logged = False
        on_disk, prints = scan
        for version, old in failed.items():
            if prints.get(version) != old:  # changed or removed: worth another try
                self._failed.pop(version, None)
        while True:
            candidates = sorted(
                {v for v in on_disk if v not in self._failed} | set(self._loaded), reverse=True
            )[: self.max_versions]
            missing = [v for v in candidates if v not in self._loaded]
            if not missing:
                break
            await self._load(missing[0], on_disk[missing[0]])
        self._unload(on_disk)

    async def _load(self, version: int, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._set(VersionStatus(version, "LOADING"), 0.0)
        before = await loop.run_in_executor(self._executor, fingerprint, path)
        started = time.perf_counter()
        try:
            model = await loop.run_in_executor(self._executor, self._loader, path, version)
        except ModelLoadError as exc:
            self._failed[version] = before
            self._set(
                VersionStatus(version, "END", exc.error_code, exc.message),
                time.perf_counter() - started,
            )
            return
        except Exception as exc:  # a loader bug must not stop the watcher
            self._failed[version] = before
            self._set(
                VersionStatus(version, "END", "UNKNOWN", first_line(exc)),
                time.perf_counter() - started,
            )
            return
        loaded = dict(self._loaded)
        loaded[version] = model
        self._publish(loaded)
        self._set(VersionStatus(version, "AVAILABLE"), time.perf_counter() - started)

    def _unload(self, on_disk: Mapping[int, Path]) -> None:
        keep = sorted(self._loaded, reverse=True)
        present = [v for v in keep if v in on_disk]
        # A version removed from disk is unloaded, unless it is all that is left to serve.
        keep = (present or keep[:1])[: self.max_versions]
        dropped = [v for v in self._loaded if v not in keep]
        if not dropped:
            return
        self._publish({v: m for v, m in self._loaded.items() if v in keep})
        for version in dropped:
            self._set(VersionStatus(version, "END"), 0.0)

    def _publish(self, loaded: dict[int, LoadedModel]) -> None:
        self._loaded = loaded
        self._newest = loaded[max(loaded)] if loaded else None

    def _set(self, status: VersionStatus, seconds: float) -> None:
        self._status[status.version] = status
        if self._on_change is not None:
            self._on_change(status, seconds)

    async def watch(self, interval: float) -> None:
        """Poll the base path forever (cancel to stop); a failing scan is logged, never fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # keep watching whatever happens
                log.exception("%s: scanning %s failed", self.name, self.base_path)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _scan(
    base: Path, failed: Mapping[int, Any]
) -> tuple[dict[int, Path], dict[int, tuple[tuple[str, int, int], ...]]] | None:
    versions = scan_versions(base)
    if versions is None or not base.is_dir():
        return None
    prints = {v: fingerprint(versions[v]) for v in failed if v in versions}
    return versions, prints
