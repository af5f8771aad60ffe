"""API requests per job while a notebook watches a 16-worker TFJob for a minute, counted
at the FAKE API server (tests/fake_kube.py), not a cluster.

The job is submitted as `%%tfjob` submits it; a `JobView` (the widget `%%tfjob` shows,
refreshing every 0.25 s) follows its status and every replica's log, and `Job.wait`
polls the status every 0.1 s, as a cell run with --wait does. Each fake replica prints
for ``--seconds`` (30 lines a second). Printed: all requests, per replica, by kind, and
those after the first 10 s of Running: with watches and log streams (no polling of the
API) that is ~0 however long the job runs.

    .venv/bin/python bench/kube_requests.py [--workers 16] [--seconds 60] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import REPO, private_home

sys.path.insert(0, str(REPO))

STEP = 0.1  # the fake prints 3 lines per step: 30 lines a second per replica
SETTLE = 10.0  # seconds of Running after which no new request should be needed


def one_run(workers: int, seconds: float, run: int) -> tuple[Counter[str], Counter[str], int]:
    """(requests by kind, those after SETTLE s of Running, log lines the view got)."""
    import kfnb
    from kfnb.backends.kubernetes import stop_watchers
    from kfnb.widgets.job_view import JobView
    from tests.fake_kube import FakeKube, ReplicaScript

    lines = [f"step {i}" for i in range(int(seconds / STEP * 3))]
    with FakeKube(step=STEP, script=lambda job, replica: ReplicaScript(lines)) as fake:
        os.environ["KUBECONFIG"] = str(fake.kubeconfig(Path(tempfile.mkdtemp()) / "config"))
        name = f"watch-{run}"
        job = kfnb.submit("print(1)\n", name=name, workers=workers, names={}, backend="kubernetes")
        view = JobView(job, interval=0.25)
        settled: Counter[str] = Counter()

        def mark() -> None:
            while name not in fake.running_at:
                time.sleep(0.05)
            time.sleep(SETTLE)
            settled.update(fake.counts)

        threading.Thread(target=mark, daemon=True).start()
        job.wait(timeout=seconds + 120, poll=0.1)
        view.refresh()
        view.close()
        counts = Counter(fake.counts)
        got = sum(pane.lines for pane in view.panes.values())
        stop_watchers()
    return counts, counts - settled, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    private_home()
    totals, lates, kinds = [], [], []
    for run in range(args.runs):
        counts, late, got = one_run(args.workers, args.seconds, run)
        total = sum(counts.values())
        totals.append(total)
        lates.append(sum(late.values()))
        kinds.append(counts)
        print(f"  run {run + 1}: {total} requests, {got} log lines shown; after "
              f"{SETTLE:.0f} s of Running: {dict(late)}")
    print(f"\n== API requests for one {args.workers}-worker job watched for "
          f"{args.seconds:.0f} s (FAKE API server, not a cluster)")
    print(f"  total: median {statistics.median(totals):.0f}  [{', '.join(map(str, totals))}]")
    per = [t / args.workers for t in totals]
    print(f"  per replica: median {statistics.median(per):.2f}  "
          f"[{', '.join(f'{p:.2f}' for p in per)}]")
    print(f"  after {SETTLE:.0f} s of Running: [{', '.join(map(str, lates))}]")
    print("  by kind (min-max over runs):")
    for kind in sorted(set().union(*kinds)):
        values = [c[kind] for c in kinds]
        print(f"    {kind:<40} {min(values)}-{max(values)}")


if __name__ == "__main__":
    main()
