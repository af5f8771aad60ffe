"""Epochs re-run after a worker is killed, with and without ``tfjob.backup_and_restore()``.

A local 2-worker job (``--restart-policy OnFailure``) fits a tiny Keras model for
10 epochs. When worker 0 begins epoch 6 it writes its pid; the benchmark kills it
with SIGKILL at once, mid-epoch. The supervisor restarts it; its peer, cut off
mid all-reduce, fails and restarts too. From worker 0's log: the epochs begun
before the kill and again after it (trained twice), and the time from the kill to
the job's success. Run: ``.venv/bin/python bench/resume.py [RUNS]``.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

from common import private_home

EPOCHS, KILL_AT = 10, 6
CELL = """\
import os
import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
data = tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype("int64"))).batch(16)

class Mark(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        print(f"bench: epoch {{epoch}}", flush=True)
        pid = tfjob.artifacts / "pid"
        if epoch == {kill_at} and tfjob.is_chief and not pid.exists():
            pid.with_suffix(".tmp").write_text(str(os.getpid()))
            pid.with_suffix(".tmp").replace(pid)

model.fit(data.repeat(), epochs={epochs}, steps_per_epoch=20, verbose=0,
          callbacks=[Mark()] + {callbacks})
"""


def wait_for_pid(path: Path, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return int(path.read_text())


def one_run(name: str, callbacks: str) -> tuple[int, int, float]:
    """(epochs trained twice, epochs begun in all, seconds from the kill to success)."""
    import kfnb
    from kfnb.backends.local import LocalBackend

    cell = CELL.format(kill_at=KILL_AT, epochs=EPOCHS, callbacks=callbacks)
    job = kfnb.submit(
        cell, name=name, workers=2, restart_policy="OnFailure", backoff_limit=4,
        backend=LocalBackend(),
    )
    assert job.artifacts is not None
    os.kill(wait_for_pid(job.artifacts / "pid"), signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=300, poll=0.05)
    elapsed = time.monotonic() - killed
    log = job.logs("worker-0")
    before, _, after = log.partition("--- kfnb: restart 1 of worker-0 ---")
    begun = [[int(n) for n in re.findall(r"bench: epoch (\d+)", part)] for part in (before, after)]
    assert after and begun[1][-1] == EPOCHS - 1, log  # restarted, and trained to the end
    return len(set(begun[0]) & set(begun[1])), len(begun[0]) + len(begun[1]), elapsed


def main(runs: int = 3) -> dict[str, list[tuple[int, int, float]]]:
    private_home()
    cases = {"with backup_and_restore()": "[tfjob.backup_and_restore()]", "without": "[]"}
    results: dict[str, list[tuple[int, int, float]]] = {case: [] for case in cases}
    for run in range(runs):  # interleaved, so machine noise hits both alike
        for i, (case, callbacks) in enumerate(cases.items()):
            results[case].append(one_run(f"resume-{run}-{i}", callbacks))
    print(f"\n== resume after SIGKILL of worker 0 in epoch {KILL_AT + 1} of {EPOCHS} "
          f"(2 workers, OnFailure, {runs} runs)")
    for case, values in results.items():
        twice = [v[0] for v in values]
        total = [v[1] for v in values]
        seconds = [v[2] for v in values]
        print(f"  {case:<26} epochs trained twice: median {statistics.median(twice):g} "
              f"{twice}; epochs begun: {total}; kill -> Succeeded median "
              f"{statistics.median(seconds):.1f} s [{', '.join(f'{s:.1f}' for s in seconds)}]")
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
