"""Integration: real TensorFlow processes run by the local backend, on small data."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from kfnb.job import Job, JobFailed

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
pytestmark = pytest.mark.tensorflow

NOTEBOOK = '''
import numpy as np
import tensorflow as tf
from tensorflow.keras import layers

def build_model():
    model = tf.keras.Sequential([tf.keras.Input((4,), name="x"),
                                 layers.Dense(8, activation="relu"), layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model

def dataset(batch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()

batch, epochs = 32, 2
'''


def test_multi_worker_keras_cell_with_notebook_functions(
    shell: InteractiveShell, kfnb_home: Path
) -> None:
    """The issue's example: plain tf.keras under MultiWorkerMirroredStrategy, two workers."""
    assert shell.run_cell(NOTEBOOK).success
    cell = (
        "import tensorflow as tf\n"
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()\n"
        "with strategy.scope():\n"
        "    model = build_model()\n"
        "history = model.fit(dataset(batch), epochs=epochs, steps_per_epoch=4,\n"
        "                    callbacks=[tfjob.tensorboard()], verbose=0)\n"
        "print('final loss %.6f' % history.history['loss'][-1])\n"
        "print('keras', type(model).__module__.split('.')[0])\n"
        "model.export(tfjob.model_dir)\n"
        "print('model_dir', tfjob.model_dir)\n"
    )
    job = shell.run_cell_magic("tfjob", "--name mwms --workers 2 --wait", cell)
    assert job.phase == "Succeeded"
    logs = [job.logs(f"worker-{i}") for i in range(2)]
    losses = [re.search(r"final loss (\S+)", log) for log in logs]
    assert all(losses), logs
    # Both workers trained one model: the all-reduce makes their losses agree.
    assert losses[0].group(1) == losses[1].group(1)  # type: ignore[union-attr]
    assert all("keras tf_keras" in log for log in logs)  # legacy Keras, as required
    job_dir = kfnb_home / "jobs" / "mwms"
    assert (job_dir / "model" / "1" / "saved_model.pb").exists()
    assert not list((job_dir / "model").glob(".staging-*"))
    assert list((job_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    scratch = re.search(r"model_dir (\S+)", logs[1])
    assert scratch and not Path(scratch.group(1)).exists()  # worker-1's copy was removed

    # A second run of the same job shape exports the next version.
    shell.run_cell_magic("tfjob", "--name mwms2 --workers 1 --wait",
                         "model = build_model()\nmodel.export(tfjob.model_dir)\n")
    assert (kfnb_home / "jobs" / "mwms2" / "model" / "1" / "saved_model.pb").exists()


def test_parameter_server_strategy(shell: InteractiveShell) -> None:
    """chief + ps + worker with tf-keras, a DatasetCreator and explicit steps_per_epoch."""
    assert shell.run_cell(NOTEBOOK).success
    cell = (
        "import tensorflow as tf\n"
        "if tfjob.task_type in ('ps', 'worker'):\n"
        "    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()\n"
        "    server = tf.distribute.Server(resolver.cluster_spec(), job_name=tfjob.task_type,\n"
        "                                  task_index=tfjob.task_index, protocol='grpc',\n"
        "                                  start=True)\n"
        "    server.join()\n"
        "resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()\n"
        "strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)\n"
        "with strategy.scope():\n"
        "    model = build_model()\n"
        "creator = tf.keras.utils.experimental.DatasetCreator(lambda ctx: dataset(batch))\n"
        "model.fit(creator, epochs=2, steps_per_epoch=4, verbose=0)\n"
        "print('ps training done')\n"
    )
    job = shell.run_cell_magic("tfjob", "--name psjob --chief 1 --ps 1 --workers 1 --wait", cell)
    status = job.status()
    assert status.phase == "Succeeded"
    assert "ps training done" in job.logs("chief-0")
    # The servers never exit by themselves: the job's success stopped them.
    assert status.replica("ps-0").phase == "Stopped"  # type: ignore[union-attr]
    assert status.replica("worker-0").phase == "Stopped"  # type: ignore[union-attr]


def test_killed_worker_fails_the_job_within_5_seconds(shell: InteractiveShell,
                                                      kfnb_home: Path) -> None:
    """TensorFlow's heartbeat would take 8-12 s to notice; the local backend sees the exit."""
    assert shell.run_cell(NOTEBOOK).success
    cell = (
        "import os, tensorflow as tf\n"
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()\n"
        "with strategy.scope():\n"
        "    model = build_model()\n"
        "class Pid(tf.keras.callbacks.Callback):\n"
        "    def on_train_batch_end(self, batch, logs=None):\n"
        "        if batch == 0:\n"
        "            open(os.path.join(tfjob.artifacts, f'pid-{tfjob.task_index}'), 'w')"
        ".write(str(os.getpid()))\n"
        "model.fit(dataset(batch), epochs=1000, steps_per_epoch=4, callbacks=[Pid()], verbose=0)\n"
    )
    job = shell.run_cell_magic("tfjob", "--name killed --workers 2", cell)
    pid_file = kfnb_home / "jobs" / "killed" / "pid-1"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), job.logs("worker-1")
    time.sleep(0.2)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(JobFailed) as failure:
        job.wait(timeout=30)
    detected = time.monotonic() - killed_at
    assert detected <= 5, f"took {detected:.1f} s"
    assert failure.value.replica == "worker-1"
    status = job.status()
    assert status.replica("worker-1").exit_code == 137  # type: ignore[union-attr]
    # No process outlives the job: worker-0 was stopped, not left in a collective op.
    worker0 = json.loads((kfnb_home / "jobs" / "killed" / "status" / "worker-0.json").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(worker0["pid"], 0)
    assert Job.attach("killed").logs("worker-0") != ""
