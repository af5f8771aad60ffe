"""kfnb.metrics: TensorBoard scalars read incrementally, without importing TensorFlow.

The Keras events are real: one module-scoped fixture trains a tiny model with
Keras 3 and with tf-keras in two subprocesses. Everything else writes records
with tensorboard's own TF-free RecordWriter, so this process never imports TF.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kfnb.metrics
from kfnb.metrics import ScalarReader, Scalars, read_scalars

pytest.importorskip("tensorboard")

REPO = Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    logdir, probe, scratch = sys.argv[1:4]
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    out = {}
    if not legacy:
        # The reader sets itself up without TensorFlow first, as in a kernel whose
        # widget polled before the user imported TensorFlow: Keras's TensorBoard
        # callback (tf.summary) must still work afterwards.
        from kfnb.metrics import read_scalars
        out["probe"] = read_scalars(probe)
        out["tf_before_training"] = "tensorflow" in sys.modules
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=3, validation_data=(x[:32], y[:32]),
                        verbose=0, callbacks=[tf.keras.callbacks.TensorBoard(logdir)])
    out["keras"] = type(model).__module__.split(".")[0]
    out["history"] = history.history
    if legacy:
        # TensorFlow is imported now, so the reader uses TensorFlow's record iterator.
        from kfnb.metrics import ScalarReader, read_scalars
        out["read_with_tf"] = read_scalars(logdir)
        train = os.path.join(logdir, "train")
        (name,) = [n for n in os.listdir(train) if n.startswith("events.out.tfevents.")]
        data = open(os.path.join(train, name), "rb").read()
        os.makedirs(os.path.join(scratch, "train"))
        copy = os.path.join(scratch, "train", name)
        cut = len(data) - 10  # inside the last record
        open(copy, "wb").write(data[:cut])
        with ScalarReader(scratch) as reader:
            first = reader.poll()
            open(copy, "ab").write(data[cut:])
            out["truncated_with_tf"] = [first, reader.poll(), reader.scalars()]
            out["tf_iterator"] = type(reader._files[Path(copy)].loader._iterator).__module__
    print(json.dumps(out))
    """
)


@pytest.fixture(autouse=True, scope="module")
def tf_free_reader() -> Iterator[None]:
    """Test the reader a kernel without TensorFlow gets, even in a suite that imported TF.

    kfnb.metrics uses TensorFlow's record reader when TF is already imported, as
    it is when test_tensorflow.py has been collected. Then these tests get a private
    copy of tensorboard's loader bound to its stub, as kfnb.metrics binds it without
    TF. (TensorFlow's reader is tested in a subprocess: test_reading_with_tensorflow_imported.)
    """
    if "tensorflow" not in sys.modules:
        yield
        return
    from tensorboard.compat import tensorflow_stub

    spec = importlib.util.find_spec("tensorboard.backend.event_processing.event_file_loader")
    assert spec is not None and spec.loader is not None
    private = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(private)
    private.tf = tensorflow_stub
    saved = kfnb.metrics._loader_module
    kfnb.metrics._loader_module = private
    yield
    kfnb.metrics._loader_module = saved


# ------------------------------------------------------------ writing events


def scalar_value(tag: str, value: float, metadata: bool = True, plugin: str = "scalars") -> Any:
    """A value as tf.summary.scalar writes it: a 0-d tensor, metadata on request."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    result = summary_pb2.Summary.Value(
        tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(value))
    )
    if metadata:
        result.metadata.plugin_data.plugin_name = plugin
    return result


def event(step: int, *values: Any) -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    message = event_pb2.Event(
        wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=list(values))
    )
    return bytes(message.SerializeToString())


def write_records(path: Path, records: Iterable[bytes]) -> None:
    """Append records in TFRecord framing, with tensorboard's TF-free RecordWriter."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("ab") as f:
        writer = RecordWriter(f)
        if new:
            version = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
            writer.write(version.SerializeToString())
        for record in records:
            writer.write(record)


def record_offsets(data: bytes) -> list[int]:
    """Where each record of an event file starts (and, last, the file's end)."""
    offsets = [0]
    while offsets[-1] < len(data):
        (length,) = struct.unpack("<Q", data[offsets[-1] : offsets[-1] + 8])
        offsets.append(offsets[-1] + 8 + 4 + length + 4)
    assert offsets[-1] == len(data)
    return offsets


def _env(**extra: str) -> dict[str, str]:
    """This environment, with the repository importable from a subprocess."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def steps(scalars: Scalars, tag: str, run: str) -> list[int]:
    return [step for step, _ in scalars.get(tag, {}).get(run, [])]


# ------------------------------------------------------------ real Keras events


@pytest.fixture(scope="module")
def keras_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Logdirs of a 3-epoch fit with validation data, by Keras 3 and by tf-keras."""
    for module in ("tensorflow", "tf_keras"):  # find_spec: this process stays TF-free
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    root = tmp_path_factory.mktemp("keras")
    script = root / "train.py"
    script.write_text(TRAIN_SCRIPT)
    probe = root / "probe"
    write_records(probe / "events.out.tfevents.0.probe", [event(7, scalar_value("p", 0.5))])
    base = _env(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    base.pop("TF_USE_LEGACY_KERAS", None)
    procs = {}
    for name, extra in (("keras3", {}), ("tf_keras", {"TF_USE_LEGACY_KERAS": "1"})):
        logdir, scratch = root / name, root / f"{name}-scratch"
        argv = [sys.executable, str(script), str(logdir), str(probe), str(scratch)]
        procs[name] = (
            logdir,
            subprocess.Popen(
                argv,
                env={**base, **extra},
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    runs = {}
    for name, (logdir, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name} training failed:\n{stderr[-3000:]}"
        runs[name] = (logdir, json.loads(stdout.strip().splitlines()[-1]))
    return runs


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_keras_epoch_scalars_match_history(
    keras_runs: dict[str, tuple[Path, Any]], flavour: str
) -> None:
    logdir, out = keras_runs[flavour]
    assert out["keras"] == {"keras3": "keras", "tf_keras": "tf_keras"}[flavour]
    scalars = read_scalars(logdir)
    history = out["history"]
    for run, prefix in (("train", ""), ("validation", "val_")):
        for metric in ("loss", "accuracy"):
            points = scalars[f"epoch_{metric}"][run]
            assert [step for step, _ in points] == [0, 1, 2]
            for (_, value), expected in zip(points, history[prefix + metric], strict=True):
                assert value == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert "keras" not in scalars  # the model config, a string tensor
    assert all(not tag.startswith("keras") for tag in scalars)
    for runs in scalars.values():
        for points in runs.values():
            for step, value in points:
                assert type(step) is int and type(value) is float


def test_keras3_callback_works_after_reading_without_tensorflow(
    keras_runs: dict[str, tuple[Path, Any]],
) -> None:
    """The reader set up before TensorFlow, in one process: tf.summary still writes."""
    _, out = keras_runs["keras3"]
    assert out["probe"] == {"p": {".": [[7, 0.5]]}}
    assert out["tf_before_training"] is False
    logdir, _ = keras_runs["keras3"]
    assert steps(read_scalars(logdir), "epoch_loss", "train") == [0, 1, 2]


def test_reading_with_tensorflow_imported(keras_runs: dict[str, tuple[Path, Any]]) -> None:
    """With TF already imported its reader is used: same points, partial records kept."""
    logdir, out = keras_runs["tf_keras"]
    assert out["tf_iterator"].startswith("tensorflow")
    without_tf = json.loads(json.dumps(read_scalars(logdir)))
    assert out["read_with_tf"] == without_tf
    first, second, everything = out["truncated_with_tf"]
    train_only = {
        tag: {"train": runs["train"]} for tag, runs in without_tf.items() if "train" in runs
    }
    assert everything == train_only
    assert second  # the cut record, completed
    for tag, runs in train_only.items():
        points = first.get(tag, {}).get("train", []) + second.get(tag, {}).get("train", [])
        assert points == runs["train"]


def test_reading_does_not_import_tensorflow(keras_runs: dict[str, tuple[Path, Any]]) -> None:
    logdir, _ = keras_runs["keras3"]
    code = textwrap.dedent(
        f"""
        import json, sys, time
        import kfnb.metrics
        cheap = not any(m.startswith("tensorboard") for m in sys.modules)
        start = time.perf_counter()
        scalars = kfnb.metrics.read_scalars({str(logdir)!r})
        print(json.dumps({{"seconds": time.perf_counter() - start, "cheap_import": cheap,
                          "tensorflow": "tensorflow" in sys.modules, "tags": sorted(scalars)}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["tensorflow"] is False
    assert result["cheap_import"] is True
    assert "epoch_loss" in result["tags"]
    assert result["seconds"] < 5, result  # ~0.15 s; importing TensorFlow alone takes ~5 s


def test_missing_tensorboard_says_how_to_fix_it(tmp_path: Path) -> None:
    """Without tensorboard a reader must fail loudly, not show "no scalars" forever."""
    write_records(tmp_path / "events.out.tfevents.1.h", [event(0, scalar_value("loss", 1.0))])
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["tensorboard"] = None  # as if not installed
        import kfnb.metrics
        assert kfnb.metrics.read_scalars({str(tmp_path / "none")!r}) == {{}}
        try:
            kfnb.metrics.read_scalars({str(tmp_path)!r})
        except ImportError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install tensorboard" in proc.stdout


@pytest.mark.parametrize("where", ["header", "data", "data crc"])
def test_truncated_file_then_completed(
    keras_runs: dict[str, tuple[Path, Any]], tmp_path: Path, where: str
) -> None:
    """A record being written is left for the next poll, whichever part is missing."""
    from tensorboard.compat.proto import event_pb2

    logdir, _ = keras_runs["keras3"]
    (source,) = (logdir / "train").glob("events.out.tfevents.*")
    data = source.read_bytes()
    offsets = record_offsets(data)
    # the record holding epoch_loss of the last epoch
    index = next(
        i
        for i in range(len(offsets) - 1)
        if (e := event_pb2.Event.FromString(data[offsets[i] + 12 : offsets[i + 1] - 4])).step == 2
        and any(v.tag == "epoch_loss" for v in e.summary.value)
    )
    start, end = offsets[index], offsets[index + 1]
    cut = {"header": start + 5, "data": (start + end) // 2, "data crc": end - 2}[where]
    copy = tmp_path / "tb" / "train" / source.name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(data[:cut])

    full = read_scalars(logdir)
    with ScalarReader(tmp_path / "tb") as reader:
        first = reader.poll()
        assert steps(first, "epoch_loss", "train") == [0, 1]
        assert reader.poll() == {}  # still incomplete: nothing new, no error
        with copy.open("ab") as f:
            f.write(data[cut:])
        second = reader.poll()
        assert second["epoch_loss"]["train"] == full["epoch_loss"]["train"][2:]
        assert reader.scalars() == {
            tag: {"train": runs["train"]} for tag, runs in full.items() if "train" in runs
        }


# ------------------------------------------------------------ incremental polls


def test_polls_return_only_new_points_and_find_new_files(tmp_path: Path) -> None:
    logdir = tmp_path / "tensorboard"
    train = logdir / "train" / "events.out.tfevents.100.host.1.0.v2"
    reader = ScalarReader(logdir)
    assert reader.poll() == {}  # the job has not written anything yet

    write_records(train, [event(0, scalar_value("epoch_loss", 1.0))])
    assert reader.poll() == {"epoch_loss": {"train": [(0, 1.0)]}}
    assert reader.poll() == {}

    # later events of a tag carry no metadata: the file's first one said "scalars"
    write_records(
        train,
        [
            event(1, scalar_value("epoch_loss", 0.5, metadata=False)),
            event(2, scalar_value("epoch_loss", 0.25, metadata=False)),
        ],
    )
    assert reader.poll() == {"epoch_loss": {"train": [(1, 0.5), (2, 0.25)]}}

    # a new run directory, and a second file in train/ (a restarted replica)
    write_records(
        logdir / "evaluator" / "events.out.tfevents.200.host.2.0.v2",
        [event(4, scalar_value("evaluation_loss_vs_iterations", 0.75))],
    )
    write_records(
        logdir / "train" / "events.out.tfevents.300.host.3.0.v2",
        [event(1, scalar_value("epoch_loss", 0.375))],
    )
    assert reader.poll() == {
        "evaluation_loss_vs_iterations": {"evaluator": [(4, 0.75)]},
        "epoch_loss": {"train": [(1, 0.375)]},
    }
    assert reader.poll() == {}
    assert reader.scalars() == {
        "epoch_loss": {"train": [(0, 1.0), (1, 0.5), (1, 0.375), (2, 0.25)]},
        "evaluation_loss_vs_iterations": {"evaluator": [(4, 0.75)]},
    }
    reader.close()


def test_files_directly_in_logdir_are_run_dot(tmp_path: Path) -> None:
    write_records(tmp_path / "events.out.tfevents.1.h", [event(3, scalar_value("x", 2.0))])
    assert read_scalars(tmp_path) == {"x": {".": [(3, 2.0)]}}


# ------------------------------------------------------------ values


def test_simple_values_are_read_and_non_scalars_skipped(tmp_path: Path) -> None:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    def value(tag: str, array: Any, plugin: str = "") -> Any:
        result = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(array))
        if plugin:
            result.metadata.plugin_data.plugin_name = plugin
        return result

    write_records(
        tmp_path / "old" / "events.out.tfevents.1.h",
        [
            event(0, summary_pb2.Summary.Value(tag="loss", simple_value=0.5)),
            event(
                1,
                summary_pb2.Summary.Value(tag="loss", simple_value=0.25),
                summary_pb2.Summary.Value(tag="acc", simple_value=1.0),
            ),
        ],
    )
    write_records(
        tmp_path / "new" / "events.out.tfevents.1.h",
        [
            event(
                0,
                value("keras", np.array(b'{"class_name": "Sequential"}'), "graph_keras_model"),
                value("hist", np.float32(1.0), "histograms"),
                value("vector", np.array([1.0, 2.0], np.float32), "scalars"),
                value("text", np.array(b"hello")),
                value("count", np.int64(3)),
                scalar_value("loss", 2.0),
            ),
            # no metadata now: "hist" stays a histogram even though it looks like a number
            event(1, value("hist", np.float32(2.0)), scalar_value("loss", 1.0, metadata=False)),
        ],
    )
    assert read_scalars(tmp_path) == {
        "loss": {"old": [(0, 0.5), (1, 0.25)], "new": [(0, 2.0), (1, 1.0)]},
        "acc": {"old": [(1, 1.0)]},
        "count": {"new": [(0, 3.0)]},
    }


def test_non_finite_values_pass_through(tmp_path: Path) -> None:
    write_records(
        tmp_path / "events.out.tfevents.1.h",
        [
            event(0, scalar_value("loss", float("nan"))),
            event(1, scalar_value("loss", float("inf"), metadata=False)),
        ],
    )
    (nan, inf) = read_scalars(tmp_path)["loss"]["."]
    assert math.isnan(nan[1]) and inf == (1, math.inf)


# ------------------------------------------------------------ faults


def test_missing_logdir_is_empty_until_it_appears(tmp_path: Path) -> None:
    logdir = tmp_path / "not-yet"
    assert read_scalars(logdir) == {}
    with ScalarReader(logdir) as reader:
        assert reader.poll() == {}
        assert reader.scalars() == {}
        write_records(
            logdir / "train" / "events.out.tfevents.1.h",
            [event(0, scalar_value("epoch_loss", 1.5))],
        )
        assert reader.poll() == {"epoch_loss": {"train": [(0, 1.5)]}}


def test_corrupt_files_do_not_break_the_others(tmp_path: Path) -> None:
    good = tmp_path / "good" / "events.out.tfevents.1.h"
    write_records(good, [event(0, scalar_value("loss", 1.0))])
    # garbage named like an event file
    garbage = tmp_path / "bad" / "events.out.tfevents.2.h"
    garbage.parent.mkdir()
    garbage.write_bytes(bytes(range(256)) * 8)
    # a good record, then a record whose checksum fails, then a good one (never reached)
    half = tmp_path / "half" / "events.out.tfevents.3.h"
    write_records(half, [event(0, scalar_value("loss", 3.0))])
    with half.open("ab") as f:
        f.write(struct.pack("<Q", 4) + b"\0\0\0\0" + b"abcd" + b"\0\0\0\0")
    write_records(half, [event(1, scalar_value("loss", 4.0))])
    # a record with correct checksums that is not an Event proto
    notproto = tmp_path / "notproto" / "events.out.tfevents.4.h"
    write_records(notproto, [b"\xff\xff\xff\xff"])
    # an empty file and a directory named like an event file
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "events.out.tfevents.5.h").write_bytes(b"")
    (tmp_path / "dir" / "events.out.tfevents.6.h").mkdir(parents=True)

    with ScalarReader(tmp_path) as reader:
        assert reader.poll() == {"loss": {"good": [(0, 1.0)], "half": [(0, 3.0)]}}
        assert reader.poll() == {}
        write_records(good, [event(1, scalar_value("loss", 0.5, metadata=False))])
        assert reader.poll() == {"loss": {"good": [(1, 0.5)]}}


def test_unreadable_file_is_retried(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "events.out.tfevents.1.h"
    write_records(path, [event(0, scalar_value("loss", 1.0))])
    path.chmod(0)
    with ScalarReader(tmp_path) as reader:
        assert reader.poll() == {}
        path.chmod(0o644)
        assert reader.poll() == {"loss": {".": [(0, 1.0)]}}


# ------------------------------------------------------------ life cycle


def test_close_keeps_what_was_read(tmp_path: Path) -> None:
    write_records(tmp_path / "events.out.tfevents.1.h", [event(0, scalar_value("loss", 1.0))])
    with ScalarReader(tmp_path) as reader:
        reader.poll()
    assert "closed" in repr(reader)
    with pytest.raises(ValueError, match="closed"):
        reader.poll()
    assert reader.scalars() == {"loss": {".": [(0, 1.0)]}}


def test_keras_logdir_copy_reads_the_same(
    keras_runs: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    """A logdir copied (as from S3 to a local cache) reads the same, runs by relative path."""
    logdir, _ = keras_runs["tf_keras"]
    shutil.copytree(logdir, tmp_path / "tensorboard")
    assert read_scalars(tmp_path / "tensorboard") == read_scalars(logdir)
