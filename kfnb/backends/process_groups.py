"""The process groups of a local job, recorded so that they end with the job, always.

Each process the supervisor starts (a replica, the packages init container) leads a
session of its own, so it and everything the cell starts (a ``sleep``, a data loader)
share one process group: stopping the job stops the group, as the kubelet ends every
process of a container with it. A SIGKILLed supervisor runs no code: the kernel kills
each replica with it (``PR_SET_PDEATHSIG``), but not what the replica started. So the
supervisor records every group in ``groups.json`` in the job directory, and whoever
finds the supervisor dead (`LocalBackend.status`, and through it ``%kfnb delete``)
kills what is left of them with `kill_recorded_groups`.

A group id is a pid, and pids are reused. Linux never hands out a pid while a group of
that id exists, so a recorded group's members are the processes in that group that
started no earlier than its leader, in the same boot; when a process holds the id as
its pid but started at another time, the id was reused and nothing is killed. Without
``/proc`` (macOS) none of this can be checked, and outsiders kill nothing.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from kfnb._util import write_json

GROUPS_FILE = "groups.json"
_PROC = Path("/proc")


@dataclass(frozen=True)
class Group:
    """A process group, as recorded: its id and when its leader started."""

    pgid: int
    started: int  # the leader's start, in clock ticks since boot (/proc/PID/stat)
    boot: str  # /proc/sys/kernel/random/boot_id: ticks count from that boot


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start ticks) of ``pid``; None when it is gone."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command: state, ppid, pgrp, ..., starttime is the 20th.
    return fields[0], int(fields[2]), int(fields[19])


def _boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def group_of(pid: int) -> Group | None:
    """The group led by ``pid`` (a process started in a new session); None without /proc."""
    found = _stat(pid)
    return None if found is None else Group(pid, found[2], _boot_id())


def members(group: Group) -> list[int]:
    """The live processes of ``group``, if it is still the recorded one; else none."""
    if not group.boot or group.boot != _boot_id():
        return []
    leader = _stat(group.pgid)
    if leader is not None and leader[2] != group.started:
        return []  # the id is another process's now
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None:
            continue
        state, pgrp, started = stat
        if pgrp == group.pgid and started >= group.started and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def record_group(job_dir: Path, name: str, group: Group) -> None:
    """Add (or replace, on a restart) ``name``'s group in the job's record."""
    path = job_dir / GROUPS_FILE
    groups = _read(path)
    groups[name] = asdict(group)
    write_json(path, groups)


def _read(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_groups(job_dir: Path) -> dict[str, Group]:
    groups = {}
    for name, fields in _read(job_dir / GROUPS_FILE).items():
        try:
            groups[name] = Group(**fields)  # type: ignore[arg-type]
        except TypeError:
            continue
    return groups


def kill_recorded_groups(job_dir: Path) -> int:
    """SIGKILL every process left in the job's recorded groups; how many there were."""
    killed = 0
    for group in recorded_groups(job_dir).values():
        for pid in members(group):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed
