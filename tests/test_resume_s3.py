"""Checkpoints in an s3:// store: the chief uploads them as Keras writes them (state
files last, deleted ones removed), and a replica in a fresh pod downloads them.

Against a real S3 server (moto's) on 127.0.0.1; the Keras test runs in this
process, with a fresh directory standing in for a restarted pod's scratch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from kfnb import artifact_sync as sync
from kfnb.runtime import CHECKPOINTS, TFJobContext
from tests.s3_server import use_endpoint

pytest.importorskip("minio")
pytest.importorskip("moto")

PREFIX = "jobs/resume"


class Recording:
    """A minio client that records the keys it writes and removes, in order."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, str]] = []

    def put_object(self, bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("put", key.rsplit("/", 1)[-1]))
        return self.client.put_object(bucket, key, *args, **kwargs)

    def remove_object(self, bucket: str, key: str) -> Any:
        self.calls.append(("remove", key.rsplit("/", 1)[-1]))
        return self.client.remove_object(bucket, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, moto_port: int) -> tuple[Any, str]:
    use_endpoint(monkeypatch, moto_port, "kfnb-access", "kfnb-secret")
    client = sync.make_client(sync.S3Config.from_env(os.environ))
    name = f"kfnb-resume-{time.monotonic_ns()}"
    client.make_bucket(name)
    return client, name


def syncer_for(client: Any, bucket: str, root: Path) -> sync.Syncer:
    config = sync.S3Config.from_env(os.environ)
    syncer = sync.Syncer(client, config, bucket, PREFIX)
    last = ("checkpoint", "training_metadata.json")
    syncer.watch(root / CHECKPOINTS, CHECKPOINTS, mirror=True, last=last)
    return syncer


def keys(client: Any, bucket: str) -> set[str]:
    found = client.list_objects(bucket, prefix=f"{PREFIX}/{CHECKPOINTS}/", recursive=True)
    return {item.object_name.split(f"{CHECKPOINTS}/", 1)[1] for item in found}


def test_a_checkpoint_is_uploaded_state_file_last_and_old_ones_are_removed(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    recording = Recording(client)
    syncer = syncer_for(recording, name, tmp_path)
    ckpt = tmp_path / CHECKPOINTS / "backup" / "chief"
    ckpt.mkdir(parents=True)
    for file in ("checkpoint", "ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (ckpt / file).write_text(f"{file} of epoch 1")
    syncer.sync(only=CHECKPOINTS)
    assert recording.calls[-1] == ("put", "checkpoint")  # after the data it points to
    assert len(recording.calls) == 3

    for file in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (ckpt / file).unlink()  # what CheckpointManager(max_to_keep=1) does
    for file in ("ckpt-2.index", "ckpt-2.data-00000-of-00001", "checkpoint"):
        (ckpt / file).write_text(f"{file} of epoch 2")
    recording.calls.clear()
    syncer.sync(only=CHECKPOINTS)
    puts = [file for call, file in recording.calls if call == "put"]
    assert puts[-1] == "checkpoint" and len(puts) == 3
    assert keys(client, name) == {
        "backup/chief/checkpoint",
        "backup/chief/ckpt-2.index",
        "backup/chief/ckpt-2.data-00000-of-00001",
    }


def test_download_newer_fills_a_fresh_directory_and_updates_a_stale_one(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    chief = tmp_path / "chief"
    syncer = syncer_for(client, name, chief)
    backup = chief / CHECKPOINTS / "backup" / "chief"
    backup.mkdir(parents=True)
    (backup / "checkpoint").write_text("epoch 3")
    (backup / "ckpt-3.index").write_text("index 3")
    syncer.sync()
    prefix = f"{PREFIX}/{CHECKPOINTS}"

    fresh = tmp_path / "fresh" / CHECKPOINTS  # a new pod: everything
    got = sync.download_newer(client, name, prefix, fresh)
    assert sorted(p.name for p in got) == ["checkpoint", "ckpt-3.index"]
    assert (fresh / "backup" / "chief" / "checkpoint").read_text() == "epoch 3"
    # Again: nothing is newer than what it now has.
    assert sync.download_newer(client, name, prefix, fresh) == []

    (backup / "checkpoint").write_text("epoch 4")  # same size, written later by the chief
    os.utime(backup / "checkpoint", (time.time() + 5, time.time() + 5))
    (fresh / "backup" / "chief" / "mine").write_text("kept")
    os.utime(fresh / "backup" / "chief" / "checkpoint", (0, 0))  # older than the upload
    syncer.sync()
    got = sync.download_newer(client, name, prefix, fresh)
    assert [p.name for p in got] == ["checkpoint"]
    assert (fresh / "backup" / "chief" / "checkpoint").read_text() == "epoch 4"
    assert (fresh / "backup" / "chief" / "mine").read_text() == "kept"  # nothing removed


def test_backup_and_restore_resumes_from_the_bucket_in_a_fresh_directory(
    bucket: tuple[Any, str], tmp_path: Path
) -> None:
    """Keras in this process: fit() is interrupted in epoch 3; its backup reached the
    bucket before epoch 3 began (the callback pushes it, no sync thread runs); a
    replica with an empty scratch directory downloads it and fit() goes on at 3."""
    tf = pytest.importorskip("tensorflow")
    client, name = bucket
    import numpy as np

    def fit(context: TFJobContext, stop_at: int | None) -> list[int]:
        begun: list[int] = []

        class Mark(tf.keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                if epoch == stop_at:
                    raise KeyboardInterrupt("killed")
                begun.append(epoch)

        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
        model.compile("sgd", "mse")
        x = np.zeros((8, 4), "float32")
        callbacks = [context.backup_and_restore(), Mark()]
        try:
            model.fit(x, np.zeros((8, 2), "float32"), epochs=5, verbose=0, callbacks=callbacks)
        except KeyboardInterrupt:
            pass
        return begun

    first = TFJobContext("resume", tmp_path / "pod-1", {})
    first.sync = syncer_for(client, name, first.artifacts)
    assert fit(first, stop_at=3) == [0, 1, 2]
    assert keys(client, name)  # uploaded by the callback itself

    second = TFJobContext("resume", tmp_path / "pod-2", {})
    got = sync.download_newer(client, name, f"{PREFIX}/{CHECKPOINTS}", Path(second.checkpoint_dir))
    assert got
    second.sync = syncer_for(client, name, second.artifacts)
    assert fit(second, stop_at=None) == [3, 4]
    assert keys(client, name) == set()  # Keras removed its backup at the end: so did the bucket
