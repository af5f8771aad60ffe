"""Small mechanisms many kfnb modules need, written once.

Standard library only, and nothing else of kfnb is imported here, so any module may
import this one without pulling in more. ``kfnb.runtime`` and ``kfnb.artifact_sync``
keep copies of their own: they run in replicas that have only TensorFlow (and the
minio client), never the rest of kfnb.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "first_line",
    "newest_version",
    "numbered_versions",
    "pid_alive",
    "version_number",
    "write_atomic",
    "write_json",
]


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all: readers in other processes never see half a file.

    The temporary file is named per process and thread, so two writers of one file
    (the supervisor and a kernel) never write into each other's; it starts with a
    dot, which the stores' syncers skip.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, doc: Any) -> None:
    """``doc`` as indented JSON, written atomically (records, status files)."""
    write_atomic(path, json.dumps(doc, indent=1))


def pid_alive(pid: int, *argv: str) -> bool:
    """Whether process ``pid`` runs, and is the one meant when ``argv`` names words of its
    command line (a pid can be reused by an unrelated process after a reboot).

    A zombie (exited, not yet reaped) is not alive; a process of another user is not
    ours, so not alive either. Without ``/proc`` (macOS) the pid is trusted.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:  # ProcessLookupError, or PermissionError: another user's process
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust the pid
    if state in ("Z", "X"):
        return False
    if not argv:
        return True
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # exited between the two reads
    return all(word.encode() in words for word in argv)


def first_line(error: BaseException | str, limit: int = 500) -> str:
    """The first non-blank line of a message, at most ``limit`` characters.

    For an exception with no message, its type's name; for blank text, "".
    """
    text = str(error)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line and isinstance(error, BaseException):
        line = type(error).__name__
    return line[:limit]


def version_number(name: str) -> int | None:
    """The model version a directory (or key segment) named ``name`` holds, else None.

    TF Serving's layout: all-ASCII digits. ``.staging-3`` (a model still being
    written) is not a version, nor ``١٢`` (digits ``isdigit`` accepts, TF Serving not).
    """
    return int(name) if name.isascii() and name.isdigit() else None


def newest_version(names: Iterable[str]) -> str | None:
    """The one of ``names`` that is the newest numbered version; None when none is one."""
    numbered = [(number, name) for name in names if (number := version_number(name)) is not None]
    return max(numbered)[1] if numbered else None


def numbered_versions(base: Path) -> dict[int, Path] | None:
    """The numbered version directories under ``base``; None when it cannot be read."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return None
    versions: dict[int, Path] = {}
    for entry in entries:
        number = version_number(entry.name)
        if number is not None and entry.is_dir():
            versions.setdefault(number, Path(entry.path))
    return versions
