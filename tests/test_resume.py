"""Resuming after a restart: ``tfjob.checkpoint_dir`` and ``tfjob.backup_and_restore()``.

Real TensorFlow processes on the local backend, a real SIGKILL. The cell marks
each epoch's start in the log; worker 0, on its first run, writes a note with its
pid at the start of epoch 6 and waits to be killed. The test kills it, the
supervisor restarts it (``--restart-policy OnFailure``), and the epochs logged
after the restart tell where training went on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import kfnb
from kfnb.backends.local import LocalBackend
from kfnb.job import Job

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
pytestmark = pytest.mark.tensorflow

EPOCHS, KILL_AT = 10, 6
WAIT_SECONDS = 240.0  # two TensorFlow workers starting twice on a loaded 2-core machine

# {callbacks} is "[tfjob.backup_and_restore()]" or "[]".
CELL = """\
import os, time
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
        print(f"kfnb-test: epoch {{epoch}}", flush=True)
        ready = tfjob.artifacts / "kill-me"
        if epoch == {kill_at} and tfjob.is_chief and not ready.exists():
            ready.with_suffix(".tmp").write_text(str(os.getpid()))
            ready.with_suffix(".tmp").replace(ready)
            time.sleep(120)  # killed here by the test; never reaches its end

model.fit(data.repeat(), epochs={epochs}, steps_per_epoch=2, verbose=0,
          callbacks=[Mark()] + {callbacks})
print("kfnb-test: done", flush=True)
"""


def wait_for_file(path: Path, job: Job, timeout: float) -> str:
    """The file's text once it exists; fails early if the job ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert not job.status().finished, f"{job.name} ended first: {job.logs()}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.05)
    return path.read_text()


def epochs_after_restart(log: str) -> list[int]:
    """The epochs a replica began after its (first) restart marker, in order."""
    marker = log.index("--- kfnb: restart 1 of ")
    return [int(n) for n in re.findall(r"kfnb-test: epoch (\d+)", log[marker:])]


def run_killed_job(name: str, callbacks: str) -> Job:
    """A 2-worker job whose worker 0 is SIGKILLed in epoch KILL_AT; returns it finished."""
    cell = CELL.format(kill_at=KILL_AT, epochs=EPOCHS, callbacks=callbacks)
    job = kfnb.submit(
        cell,
        name=name,
        workers=2,
        restart_policy="OnFailure",
        backoff_limit=4,
        backend=LocalBackend(),
    )
    assert job.artifacts is not None
    pid = int(wait_for_file(job.artifacts / "kill-me", job, WAIT_SECONDS))
    status = json.loads((job.artifacts / "status" / "worker-0.json").read_text())
    assert status["pid"] == pid  # the replica's own process, as the runtime records it
    os.kill(pid, signal.SIGKILL)
    job.wait(timeout=WAIT_SECONDS)
    return job


def test_backup_and_restore_resumes_at_the_epoch_that_was_killed() -> None:
    job = run_killed_job("resume", "[tfjob.backup_and_restore()]")
    status = job.status()
    assert status.phase == "Succeeded"
    worker0 = status.replica("worker-0")
    assert worker0 is not None and worker0.restarts >= 1
    log0 = job.logs("worker-0")
    assert epochs_after_restart(log0) == list(range(KILL_AT, EPOCHS)), log0
    assert "kfnb-test: done" in log0
    assert f"kfnb: resuming from the backup at epoch {KILL_AT + 1}/{EPOCHS}" in log0
    # Worker 1 lost its peer mid all-reduce (UnavailableError): it restarts too, and
    # resumes from the chief's backup at the same epoch, or the all-reduces would not match.
    log1 = job.logs("worker-1")
    assert epochs_after_restart(log1) == list(range(KILL_AT, EPOCHS)), log1
    assert job.artifacts is not None
    # Keras removes its backup once fit() ends; checkpoints/ itself stays.
    assert (job.artifacts / "checkpoints").is_dir()
    assert not (job.artifacts / "checkpoints" / "backup" / "chief").exists()


def test_without_backup_and_restore_a_restart_starts_over() -> None:
    job = run_killed_job("startover", "[]")
    assert job.status().phase == "Succeeded"
    log0 = job.logs("worker-0")
    assert epochs_after_restart(log0) == list(range(EPOCHS)), log0
    assert "kfnb: resuming" not in log0
