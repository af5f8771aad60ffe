"""Time from a worker dying (SIGKILL mid-training) to the job being Failed.

Baseline: the same two workers started by hand, where only TensorFlow's own
heartbeat notices, when worker 0 gives up and exits.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from common import private_home, report, shell
from multiworker import HERE, by_hand


def wait_for(path: Path, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    time.sleep(0.1)
    return int(path.read_text())


def through_kfnb(ip: object, name: str) -> float:
    from kfnb.job import Job

    # --include: workload.py imports the `model` package inside a function, out of kfnb's sight.
    line = f"--name {name} --workers 2 --include {HERE.parent / 'model'}"
    job = ip.run_cell_magic("tfjob", line,  # type: ignore[attr-defined]
                            "endless(str(tfjob.artifacts))\n")
    assert isinstance(job, Job) and job.artifacts is not None
    os.kill(wait_for(job.artifacts / "pid-1"), signal.SIGKILL)
    killed = time.monotonic()
    while job.status().phase != "Failed":
        time.sleep(0.01)
    return time.monotonic() - killed


def tensorflow_alone() -> float:
    pid_dir = Path(tempfile.mkdtemp(prefix="bench-pids-"))
    worker0, worker1 = by_hand(["endless", str(pid_dir)])
    wait_for(pid_dir / "pid-0")
    os.kill(wait_for(pid_dir / "pid-1"), signal.SIGKILL)
    killed = time.monotonic()
    try:
        worker0.wait(timeout=120)
    finally:
        worker0.kill()
        worker1.wait()
    return time.monotonic() - killed


def main(runs: int = 2) -> float:
    private_home()
    ip = shell()
    ip.run_cell(f"import sys; sys.path.insert(0, {str(HERE)!r}); from workload import endless")
    times: dict[str, list[float]] = {"kfnb: kill -> Failed": [],
                                     "TensorFlow alone: kill -> worker 0 exits": []}
    for run in range(runs):
        times["kfnb: kill -> Failed"].append(through_kfnb(ip, f"fd-{run}"))
        times["TensorFlow alone: kill -> worker 0 exits"].append(tensorflow_alone())
    ratio = report("failure detection after SIGKILL of worker 1", times,
                   "TensorFlow alone: kill -> worker 0 exits", None)
    worst = max(times["kfnb: kill -> Failed"])
    print(f"  slowest kfnb detection: {worst:.2f} s ({'ok' if worst <= 5 else 'OVER 5 s'})")
    return ratio


if __name__ == "__main__":
    main()
