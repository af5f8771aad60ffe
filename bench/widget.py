"""JobView figures: log and scalar latency, the kernel's CPU while watching, long logs.

Baselines, measured in the same run on the same job: a thread that polls the
raw log file (or the raw event files) every 10 ms, the floor of any view that
reads files; and the kernel's CPU over the same time with no view.
"""

from __future__ import annotations

import re
import statistics
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from common import private_home

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kfnb  # noqa: E402
from kfnb.job import Job  # noqa: E402
from kfnb.metrics import ScalarReader  # noqa: E402
from kfnb.widgets.job_view import JobView  # noqa: E402

STAMP = re.compile(r"T (\d+\.\d+)")


def submit(name: str, cell: str, workers: int = 1) -> Job:
    return kfnb.submit(textwrap.dedent(cell), name=name, workers=workers, names={},
                       backend="local")


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def log_latency_and_cpu() -> None:
    cell = """
    import time
    for i in range(160):
        print(f"T {time.time():.6f}", flush=True)
        time.sleep(0.05)
    """
    job = submit("latency", cell)
    view_lat: list[float] = []
    raw_lat: list[float] = []

    def seen(change: dict[str, Any]) -> None:
        now = time.time()
        new = change["new"][len(change["old"]):] or change["new"]
        for output in new:
            view_lat.extend(now - float(t) for t in STAMP.findall(output.get("text", "")))

    def raw_reader() -> None:  # the baseline: the log file itself, polled every 10 ms
        offset = 0
        while not job.status().finished:
            text, offset = job.log_since("worker-0", offset)
            now = time.time()
            raw_lat.extend(now - float(t) for t in STAMP.findall(text))
            time.sleep(0.01)

    baseline = threading.Thread(target=raw_reader)
    cpu0, wall0 = time.process_time(), time.monotonic()
    view = JobView(job)  # default interval, as users get it
    view.panes["worker-0"].output.observe(seen, "outputs")
    baseline.start()
    job.wait(timeout=120)
    baseline.join()
    watched_cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    view.close()
    print("\n== log line: printed by the worker -> shown in the widget's log tab")
    print(f"  JobView              p50 {p(view_lat, 50):.3f} s  p95 {p(view_lat, 95):.3f} s  "
          f"({len(view_lat)} lines)")
    print(f"  raw file, 10 ms poll p50 {p(raw_lat, 50):.3f} s  p95 {p(raw_lat, 95):.3f} s")
    print(f"  ratio p95 JobView / raw file: {p(view_lat, 95) / p(raw_lat, 95):.2f}  "
          f"({'ok' if p(view_lat, 95) <= 0.5 else 'OVER 0.5 s'})")

    # The kernel's CPU while a view watches, against the same process not watching.
    # (The 10 ms baseline reader above ran too; measure the view alone.)
    job2 = submit("cpu", "import time\nfor i in range(80):\n    print(i, flush=True)\n"
                         "    time.sleep(0.1)\n")
    cpu0, wall0 = time.process_time(), time.monotonic()
    view2 = JobView(job2)
    while not job2.status().finished:
        time.sleep(0.5)
    watching = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    view2.close()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(4)
    idle = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    print("\n== kernel CPU while a JobView watches a running job (share of one core)")
    print(f"  watching {watching * 100:.2f} %   not watching {idle * 100:.2f} %   "
          f"(with the 10 ms baseline reader too: {watched_cpu * 100:.2f} %)")
    print(f"  ({'ok' if watching < 0.05 else 'OVER 5 %'})")


def scalar_latency() -> None:
    cell = """
    import time
    import tensorflow as tf
    writer = tf.summary.create_file_writer(tfjob.logdir + "/train")
    for step in range(12):
        with writer.as_default():
            tf.summary.scalar("epoch_loss", 1.0 / (step + 1), step=step)
        writer.flush()
        print(f"S {step} {time.time():.6f}", flush=True)
        time.sleep(0.5)
    """
    job = submit("scalars", cell)
    seen_at: dict[int, float] = {}
    raw_at: dict[int, float] = {}
    view = JobView(job)

    def watch_view() -> None:
        while not job.status().finished:
            for step, _ in view.scalars.get("epoch_loss", {}).get("train", []):
                seen_at.setdefault(step, time.time())
            time.sleep(0.01)

    def watch_raw() -> None:
        assert job.artifacts is not None
        with ScalarReader(job.artifacts / "tensorboard") as reader:
            while not job.status().finished:
                for step, _ in reader.poll().get("epoch_loss", {}).get("train", []):
                    raw_at.setdefault(step, time.time())
                time.sleep(0.01)

    threads = [threading.Thread(target=watch_view), threading.Thread(target=watch_raw)]
    for thread in threads:
        thread.start()
    job.wait(timeout=180)
    for thread in threads:
        thread.join()
    view.close()
    flushed = {int(s): float(t) for s, t in re.findall(r"S (\d+) (\S+)", job.logs())}
    view_lat = [seen_at[s] - flushed[s] for s in flushed if s in seen_at]
    raw_lat = [raw_at[s] - flushed[s] for s in flushed if s in raw_at]
    print("\n== scalar: flushed by the job -> in the widget's plot data")
    print(f"  JobView                 p50 {p(view_lat, 50):.3f} s  max {max(view_lat):.3f} s  "
          f"({len(view_lat)} of {len(flushed)} steps)")
    print(f"  raw events, 10 ms poll  p50 {p(raw_lat, 50):.3f} s  max {max(raw_lat):.3f} s")
    print(f"  ({'ok' if max(view_lat) <= 2 else 'OVER 2 s'})")


def long_log() -> None:
    job = submit("long", "for i in range(10_000):\n    print(f'line {i} ' + 'x' * 60)\n")
    job.wait(timeout=60)
    started = time.perf_counter()
    view = JobView(job)
    took = time.perf_counter() - started
    outputs = view.panes["worker-0"].output.outputs
    kept = sum(len(o.get("text", "")) for o in outputs)
    full = len(job.logs())
    print("\n== a 10,000-line log in the widget")
    print(f"  sent to the front end: {kept / 1024:.0f} KiB of {full / 1024:.0f} KiB "
          f"({view.panes['worker-0'].visible} of 10000 lines), view built in {took:.3f} s")
    print(f"  ratio front-end text / whole log: {kept / full:.3f}")
    view.close()


def main() -> None:
    private_home()
    log_latency_and_cpu()
    scalar_latency()
    long_log()


if __name__ == "__main__":
    main()
