"""Small mechanisms many kfnb modules need, written once.

Standard library only, and nothing else of kfnb is imported here, so any module may
import this one without pulling in more. ``kfnb.runtime`` and ``kfnb.artifact_sync``
keep copies of their own: they run in replicas that have only TensorFlow (and the
minio client), never the rest of kfnb.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "PRIVATE_UMASK",
    "bundle_path_problem",
    "create_exclusive",
    "first_line",
    "inside",
    "newest_version",
    "numbered_versions",
    "open_private",
    "pid_alive",
    "private_dir",
    "version_number",
    "write_atomic",
    "write_json",
]

# kfnb's files hold pickled notebook values, cells and logs: the user's alone, from the
# moment they are created (a shared node's other users must not read them, nor write
# where an admin points the store at a shared directory).
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# For the processes kfnb starts (supervisors, replicas, servers): what TensorFlow and the
# user's cell create gets the same modes.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """``path`` as a directory, it and the parents it lacks created 0700 (``os.makedirs``
    gives its mode to the last one only); directories already there keep theirs."""
    missing, parent = [], path
    while not parent.is_dir() and parent.parent != parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:  # made meanwhile by another process
            if not directory.is_dir():
                raise
    return path


def _temporary(path: Path) -> tuple[int, str]:
    """A new 0600 file beside ``path``, its name unique (two writers of one file never
    share a temporary); the leading dot makes the stores' syncers skip it."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all: readers in other processes never see half a
    file. A new file is 0600 (the temporary's mode, which the rename keeps)."""
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` unless it exists (FileExistsError then): one of
    many processes creating it at once wins, and readers never see half of it.

    The whole file is written under a temporary name and hard-linked into place, which
    fails if the name exists. Where hard links are not supported, an exclusive create
    and a write: still one winner, but a reader may meet the file before it is whole.
    """
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        exclusive = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(exclusive, "wb") as out:
            out.write(data)
    finally:
        Path(tmp).unlink(missing_ok=True)


def open_private(path: Path) -> IO[bytes]:
    """``path`` opened to append (a log), created 0600 if it is new."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    return os.fdopen(os.open(path, flags, PRIVATE_FILE), "ab")


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` when it resolves inside ``root``, else None: an absolute path,
    ``..`` segments or a symbolic link can make a key, name or path lead out of the
    directory it was meant for. Links are resolved as they are now, on both sides."""
    path = root / relative
    base = os.path.realpath(root)
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        return None
    return path


def bundle_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file of a job's code, or None: it must be relative, of
    plain segments (no empty, ``.`` or ``..`` one), as Kubernetes' ConfigMap volume items
    require and so that no file of a bundle lands outside or on another's place."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        return "must be a relative path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "may hold no empty, '.' or '..' segment"
    return None


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
