"""Concise text progress, where widgets cannot render: a terminal IPython, or a
headless run (``KFNB_WIDGETS=0``, which notebooks/run_demo.py sets)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from kfnb.job import Job
from kfnb.status import JobStatus
from kfnb.widgets.tf_messages import is_tensorflow_message


def _line(status: JobStatus) -> str:
    replicas = ", ".join(
        f"{r.name} {r.phase}" + (f" ↻{r.restarts}" if r.restarts else "") for r in status.replicas
    )
    elapsed = f" {status.elapsed:.0f}s" if status.elapsed is not None else ""
    return f"[{status.name}] {status.phase}{elapsed} ({replicas})"


def print_progress(
    job: Job,
    stream: TextIO | None = None,
    poll: float = 0.25,
    tensorflow_messages: bool = False,
) -> JobStatus:
    """Print phase changes and every replica's log lines, each line tagged with its
    replica (``[worker-1] Epoch 2/5``), until the job ends.

    TensorFlow's own log lines (``I0000 00:00:...] ...``) are left out unless
    ``tensorflow_messages``: they would bury the epochs. The log keeps them
    (``job.logs()``), and a failed job's `JobFailed` shows its tail unfiltered.
    When the job ends, the replicas' warnings (`Job.warnings`: a GPU asked for that
    TensorFlow did not see) are printed again before the last line.
    Ctrl-C deletes the job and re-raises, as `Job.wait` does.
    """
    out = stream or sys.stdout
    offsets: dict[str, int] = {}
    shown = None
    try:
        while True:
            status = job.status()
            for replica in job.replicas:
                start = offsets.get(replica, 0)
                text, offsets[replica] = job.log_since(replica, start, partial=status.finished)
                for line in text.splitlines():
                    if tensorflow_messages or not is_tensorflow_message(line):
                        print(f"[{replica}] {line}", file=out, flush=True)
            if status.finished:  # the replicas' warnings again, lest their logs buried them
                for replica, warnings in job.warnings().items():
                    for warning in warnings:
                        print(f"[{replica}] kfnb warning: {warning}", file=out, flush=True)
            phases = (status.phase, tuple((r.phase, r.restarts) for r in status.replicas))
            if phases != shown:  # a line per change, not per poll
                shown = phases
                print(_line(status), file=out, flush=True)
            if status.finished:
                return status
            time.sleep(poll)
    except KeyboardInterrupt:
        job.delete()
        raise
